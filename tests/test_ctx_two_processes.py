"""ctx-photo's coder with two threads, in two processes (``models/ctx/partner.py``): the
decoder's second process works the second half of each big step's samples and finds the
passes' positions (``coder._decode``), the encoder's fits every other pass
(``coder._fit_in_two``); one second process is kept from tile to tile (``partner.kept``).
The same samples and the same bytes as with one thread for every coder revision, shape and
depth, in any order of encodes and decodes; BLAS's limit (what ``--threads`` sets) chooses
it, and only the process's only thread forks; a damaged payload or a failing step in either
process raises and ends the second process; none is left after ``partner.release``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from nicodec import codec
from nicodec.codec import registry
from nicodec.codec.columns import UNDECODABLE
from nicodec.codec.pipeline import decode_detailed
from nicodec.models.ctx import coder, partner
from nicodec.models.ctx.coder import Tables, decode_tile, encode_tile

GOLDEN = Path(__file__).parent / "data" / "golden"
pytestmark = pytest.mark.skipif(not partner.available(), reason="no fork here (Linux only)")


def _image(h: int, w: int, c: int, depth: int = 8, seed: int = 0) -> np.ndarray:
    """Gradients that differ per channel, an edge and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    top = (1 << depth) - 1
    base = np.stack([top / 2 + np.sin(x / 5.0 + k) * np.cos(y / 7.0) * top / 3 for k in range(c)],
                    -1)
    base[h // 3: h // 2, w // 4: w // 2] = top * 0.8
    noisy = base + rng.normal(0, top / 70, base.shape)
    return np.clip(np.rint(noisy), 0, top).astype(np.uint8 if depth == 8 else np.uint16)


@pytest.fixture(scope="module", params=["r1", "r2", "r3", "r4", "current"])
def tables(request) -> Tables:
    """Each revision's tables (the current one shipped, r1 to r4 retired), their compact and
    split limits lowered so that small tiles take every path (split halves, passes that are not
    compact)."""
    weights = None if request.param == "current" else f"ctx-photo-{request.param}.safetensors"
    loaded = registry.load_model("ctx-photo", weights).net.tables
    assert loaded.revision == coder.REVISIONS[int(request.param[1:]) if request.param[0] == "r"
                                              else coder.SHIPPED]
    return replace(loaded, revision=replace(loaded.revision, compact_below=12, split_from=40))


@pytest.fixture
def forks(monkeypatch) -> Iterator[list[int]]:
    """The process ids of the coder's second processes started from now on; every step of
    4 samples or more is made in halves, and every tile with such a step is encoded in two
    processes, so that small tiles take those paths, and the caller counts as the process's
    only thread (idle threads that other tests leave, such as dask's, would keep the coder from
    forking). At the end, released, all have ended."""
    monkeypatch.setattr(coder, "HALVES_FROM", 4)
    monkeypatch.setattr(partner.threading, "active_count", lambda: 1)
    started = _started(monkeypatch)
    yield started
    partner.release()
    assert all(map(_gone, started))


def _started(monkeypatch) -> list[int]:
    """The process ids of the second processes started from now on."""
    started, real = [], partner.Partner.__init__

    def spy(self, *args):
        real(self, *args)
        started.append(self.pid)

    monkeypatch.setattr(partner.Partner, "__init__", spy)
    return started


def _uses(monkeypatch) -> list[int]:
    """The process ids of the second processes that coded a tile from now on, one per tile."""
    used, real = [], partner.kept

    @contextlib.contextmanager
    def spy(*args):
        with real(*args) as kept:
            if kept is not None:
                used.append(kept[0].pid)
            yield kept

    monkeypatch.setattr(partner, "kept", spy)
    return used


def _alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` (children of this process) still running."""
    def running(pid: int) -> bool:
        try:
            return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:  # ended and waited for
            return False

    return [pid for pid in pids if running(pid)]


def _failing(real, chosen, nth: int, message: str):
    """``real`` that raises MemoryError(``message``) at its ``nth`` call whose arguments
    ``chosen`` picks."""
    calls = []

    def failing(*args):
        if chosen(args):
            calls.append(1)
            if len(calls) == nth:
                raise MemoryError(message)
        return real(*args)

    return failing


def _gone(pid: int) -> bool:
    """Whether process ``pid``, a child of this one, has ended and been waited for."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


@pytest.mark.parametrize("depth", [8, 16])
def test_two_processes_decode_the_same_samples_as_one(tables, depth, forks, monkeypatch):
    """Gray, two channels, RGB and RGBA, edge tiles of one row or column and tiles with split
    passes: both thread counts give back the image, the second process kept from tile to
    tile (forked anew only for a bigger tile)."""
    uses = _uses(monkeypatch)
    shapes = [(70, 129, 3), (23, 18, 1), (33, 65, 4), (40, 30, 2), (2, 40, 3), (5, 1, 3),
              (1, 1, 1)]
    for shape in shapes:
        image = _image(*shape, depth=depth)
        data = encode_tile(image, depth, tables, threads=1)
        for threads in (1, 2):
            assert (decode_tile(data, shape, depth, tables, threads=threads) == image).all(), \
                (shape, threads)
    assert len(uses) == len(shapes) - 2  # (5, 1), (1, 1): no step of 4 samples
    assert len(forks) == 1 and len(_alive(forks)) == 1


def test_blas_limit_chooses_two_processes_for_tiles_with_big_steps(monkeypatch):
    """``threads`` left to the decoder follows BLAS's limit: at two, a tile with steps of
    HALVES_FROM samples or more, gray or colour, is decoded by two processes; at one, or
    with only small steps, by the caller's alone."""
    tables = registry.load_model("ctx-photo").net.tables
    monkeypatch.setattr(partner.threading, "active_count", lambda: 1)  # as in ``forks``
    uses = _uses(monkeypatch)
    for shape, limit, two in (((130, 140, 3), 1, False), ((130, 140, 3), 2, True),
                              ((130, 140, 1), 2, True), ((60, 60, 3), 2, False)):
        image = _image(*shape)
        data = encode_tile(image, 8, tables, threads=1)
        uses.clear()
        with threadpool_limits(limit, user_api="blas"):
            assert (decode_tile(data, image.shape, 8, tables) == image).all()
        assert len(uses) == two, (shape, limit)


def test_damaged_payloads_raise_and_leave_no_process(tables, forks):
    """Bit flips and truncation with two processes either decode to some tile or raise what
    the pipeline counts as a lost packet (and end the second process, which may have been amid
    a task); no more than the one kept second process is left, and no pipe of the others."""
    shape = (24, 40, 3)
    data = encode_tile(_image(*shape, seed=4), 8, tables)
    rng = np.random.default_rng(0)
    refused, descriptors = 0, len(os.listdir("/proc/self/fd"))
    for trial in range(40):
        damaged = bytearray(data[: int(rng.integers(0, len(data)))] if trial % 2 else data)
        if trial % 2 == 0:
            damaged[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
        try:
            out = decode_tile(bytes(damaged), shape, 8, tables, threads=2)
        except UNDECODABLE:
            refused += 1
        else:
            assert out.shape == shape and 0 <= out.min() and out.max() <= 255
        assert forks and len(_alive(forks)) <= 1, trial
    partner.release()
    assert refused > 5 and len(os.listdir("/proc/self/fd")) == descriptors  # pipes closed


@pytest.mark.parametrize("where", ["first", "second"])
def test_a_failing_step_in_either_process_reaches_the_caller(monkeypatch, forks, where):
    """An error while making a step's features, in the caller's process or in the second
    (its half: the columns from the middle on), is raised by the decoder (not a hang), and the
    second process has ended."""
    tables = registry.load_model("ctx-photo").net.tables
    image = _image(64, 64, 3)
    data = encode_tile(image, 8, tables, threads=1)
    monkeypatch.setattr(coder, "_own_features", _failing(
        coder._own_features, lambda args: (args[-1].start > 0) == (where == "second"), 7,
        f"step 7 of the {where} half"))
    with pytest.raises(MemoryError, match=f"step 7 of the {where} half"):
        decode_tile(data, image.shape, 8, tables, threads=2)
    assert len(forks) == 1 and _gone(forks[0])  # ended: it may have been amid a task


def test_the_second_process_errors_arrive_as_text():
    """An error crosses as its type's name and message (nothing is unpickled): a built-in one
    is raised as itself, any other as a RuntimeError naming it."""
    error = partner._error("ValueError\nbad side information")
    assert type(error) is ValueError and str(error) == "bad side information"
    error = partner._error("LinAlgError\nSingular matrix")
    assert type(error) is RuntimeError and "LinAlgError" in str(error)
    assert type(partner._error("print\nnot an error")) is RuntimeError


@pytest.mark.parametrize("side", ["encoder", "decoder"])
def test_an_ended_second_process_is_reported(monkeypatch, forks, side):
    """A second process that ends without answering (killed) makes the encoder or the decoder
    raise."""
    tables = registry.load_model("ctx-photo").net.tables
    image = _image(64, 64, 3)
    data = encode_tile(image, 8, tables, threads=1)
    real = partner.Partner.ask

    def ask(self, task, data=b""):
        if task > 20:
            os.kill(self.pid, 9)
        real(self, task, data)

    monkeypatch.setattr(partner.Partner, "ask", ask)
    with pytest.raises(RuntimeError, match="second process ended"):
        if side == "encoder":
            encode_tile(image, 8, tables, threads=2)
        else:
            decode_tile(data, image.shape, 8, tables, threads=2)
    assert len(forks) == 1 and _gone(forks[0])


def test_only_the_only_thread_forks(monkeypatch):
    """The second process is started only where fork is used (Linux) and from a process's
    only Python thread."""
    for count, expected in ((1, sys.platform.startswith("linux")), (2, False)):
        monkeypatch.setattr(partner.threading, "active_count", lambda: count)
        assert partner.available() == expected


def test_no_fork_while_another_thread_may_run_blas(monkeypatch):
    """Decodes on a worker thread while the main thread multiplies matrices on BLAS's two
    threads: they decode in one process (a fork then stopped OpenBLAS's thread pool under the
    main thread's product, which never returned), and both threads finish."""
    tables = registry.load_model("ctx-photo").net.tables
    monkeypatch.setattr(coder, "HALVES_FROM", 4)
    forks = _started(monkeypatch)
    image = _image(64, 80, 3)
    data = encode_tile(image, 8, tables, threads=1)
    results: list[bool] = []

    def decode_some() -> None:
        for _ in range(6):
            results.append(bool((decode_tile(data, image.shape, 8, tables, threads=2)
                                 == image).all()))

    worker = threading.Thread(target=decode_some)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 400))
    with threadpool_limits(2, user_api="blas"):
        worker.start()
        while worker.is_alive() and len(results) < 6:
            a = np.tanh(a @ a.T / 400)
        worker.join(timeout=120)
    assert not worker.is_alive() and results == [True] * 6 and forks == []


def test_a_refused_fork_decodes_in_one_process(monkeypatch, forks):
    """When the second process cannot be started (the system refuses the fork), the tile
    decodes all the same in the caller's process."""
    tables = registry.load_model("ctx-photo").net.tables
    image = _image(64, 64, 3)
    data = encode_tile(image, 8, tables, threads=1)

    def refused():
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", refused)
    descriptors = len(os.listdir("/proc/self/fd"))
    assert (decode_tile(data, image.shape, 8, tables, threads=2) == image).all()
    assert forks == [] and len(os.listdir("/proc/self/fd")) == descriptors  # no pipe left open


def test_golden_ctx_files_decode_the_same_with_two_processes(forks):
    """The ctx-photo golden files (r2 to r5 weights, 8 and 16 bits, gray to RGBA) through the
    pipeline with BLAS at two threads: the same pixels as their manifest's."""
    manifest = json.loads((GOLDEN / "manifest.json").read_text())
    names = [name for name, expected in manifest.items()
             if "ctx-photo" in name and "refused" not in expected]
    assert len(names) >= 5
    with threadpool_limits(2, user_api="blas"):
        for name in names:
            pixels = decode_detailed((GOLDEN / name).read_bytes()).pixels
            assert hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest() == \
                manifest[name]["pixels_sha256"], name
    assert forks


@pytest.mark.parametrize("depth", [8, 16])
def test_two_processes_encode_the_same_bytes_as_one(tables, depth, forks, monkeypatch):
    """Gray, two channels, RGB and RGBA, edge tiles and tiles with split passes: the encoder
    in two processes writes the bytes of the one-thread encoder (which decode to the image);
    the last pass is the second process's (an even count of passes) or this one's (odd: (17,
    17), (3, 40)). Gray has one chain of steps: it stays in one process. The second process is
    kept from tile to tile, and from encodes to decodes (with two processes too)."""
    uses = _uses(monkeypatch)
    shapes = [(70, 129, 3), (33, 65, 4), (40, 30, 2), (23, 18, 1), (2, 40, 3), (5, 1, 3),
              (17, 17, 3), (3, 40, 4)]
    for shape in shapes:
        image = _image(*shape, depth=depth, seed=2)
        one = encode_tile(image, depth, tables, threads=1)
        before = len(uses)
        assert encode_tile(image, depth, tables, threads=2) == one, shape
        assert len(uses) == before + (shape[2] > 1 and shape[0] * shape[1] >= 8), shape
        assert (decode_tile(one, shape, depth, tables, threads=2) == image).all(), shape
    assert len(forks) == 1


@pytest.mark.parametrize("where", ["first", "second"])
def test_a_failing_fit_in_either_process_reaches_the_encoder(monkeypatch, forks, where):
    """An error while fitting a step, in the caller's process (even passes) or in the second
    (odd passes), is raised by the encoder (not a hang), and the second process has ended."""
    tables = registry.load_model("ctx-photo").net.tables
    main = os.getpid()
    monkeypatch.setattr(coder, "_fit_step", _failing(
        coder._fit_step, lambda args: (os.getpid() != main) == (where == "second"), 5,
        f"step 5 of the {where} process"))
    with pytest.raises(MemoryError, match=f"step 5 of the {where} process"):
        encode_tile(_image(64, 64, 3), 8, tables, threads=2)
    assert len(forks) == 1 and _gone(forks[0])  # ended: it may have been amid a task


def test_a_refused_fork_encodes_on_two_threads(monkeypatch, forks):
    """When the encoder's second process cannot be started, its two threads fit the steps
    instead: the same bytes, no pipe left open."""
    tables = registry.load_model("ctx-photo").net.tables
    image = _image(64, 64, 3)
    one = encode_tile(image, 8, tables, threads=1)
    lanes, real = [], coder._in_order

    def spy(steps, fit, count, prepare=None):
        lanes.append(count)
        return real(steps, fit, count, prepare)

    def refused():
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(coder, "_in_order", spy)
    monkeypatch.setattr(os, "fork", refused)
    descriptors = len(os.listdir("/proc/self/fd"))
    assert encode_tile(image, 8, tables, threads=2) == one
    assert lanes == [2] and forks == [] and len(os.listdir("/proc/self/fd")) == descriptors


def test_the_encoder_forks_only_from_the_only_thread(monkeypatch):
    """With another Python thread alive, the encoder fits on two threads, not processes; a
    second process kept from before is used all the same (it is forked already)."""
    tables = registry.load_model("ctx-photo").net.tables
    monkeypatch.setattr(coder, "HALVES_FROM", 4)
    forks, uses = _started(monkeypatch), _uses(monkeypatch)
    image = _image(64, 64, 3)
    for count, forked, used in ((2, 0, 0), (1, 1, 1), (2, 1, 2)):
        monkeypatch.setattr(partner.threading, "active_count", lambda: count)
        assert encode_tile(image, 8, tables, threads=2) == encode_tile(image, 8, tables, 1)
        assert (len(forks), len(uses)) == (forked, used)


def test_the_kept_second_process_is_forked_anew_where_it_must_be(monkeypatch, forks):
    """One second process serves the tiles of one set of tables while they fit its shared
    memory; another set of tables, a bigger tile, its end after IDLE_S seconds without a task,
    and release each fork a new one; the ones replaced are gone."""
    monkeypatch.setattr(partner, "IDLE_S", 1.0)
    tables = registry.load_model("ctx-photo").net.tables
    other = replace(tables)  # equal, but another object: the second process knows only its own
    small, big = _image(40, 48, 3), _image(60, 48, 3)
    one = {id(i): encode_tile(i, 8, tables, threads=1) for i in (small, big)}

    def coded(image, with_tables=tables) -> None:
        assert encode_tile(image, 8, with_tables, threads=2) == one[id(image)]
        assert (decode_tile(one[id(image)], image.shape, 8, with_tables, threads=2)
                == image).all()

    for image, with_tables, started in ((small, tables, 1), (small, tables, 1), (big, tables, 2),
                                        (small, tables, 2), (small, other, 3)):
        coded(image, with_tables)
        assert len(forks) == started and _alive(forks) == forks[-1:]
    time.sleep(3)  # idle: it ends by itself
    assert _alive(forks) == []
    coded(small, other)
    assert len(forks) == 4 and _alive(forks) == forks[-1:]
    codec.release_workers()
    assert _alive(forks) == []


def test_an_encode_after_a_decode_that_forked_keeps_its_bytes(monkeypatch, forks):
    """A second process forked by a decoder with BLAS on two threads fits the encoder's steps
    on one thread (two would round otherwise, and change the bytes: OpenBLAS splits products
    of a few thousand rows or more)."""
    tables = registry.load_model("ctx-photo").net.tables
    image = _image(384, 512, 3)
    one = encode_tile(image, 8, tables, threads=1)
    with threadpool_limits(2, user_api="blas"):
        assert (decode_tile(one, image.shape, 8, tables) == image).all()
        assert len(forks) == 1
        assert encode_tile(image, 8, tables) == one
    assert len(forks) == 1


def test_a_caller_finding_the_second_process_busy_fits_on_two_threads(forks):
    """While one caller holds the kept second process, another's encode fits on two threads:
    the same bytes, no second fork."""
    tables = registry.load_model("ctx-photo").net.tables
    image = _image(64, 64, 3)
    one = encode_tile(image, 8, tables, threads=1)
    with partner.kept(tables, 1 << 20, coder._second) as held:
        assert held is not None and len(forks) == 1
        assert encode_tile(image, 8, tables, threads=2) == one
    assert len(forks) == 1


def test_a_process_forked_by_the_caller_does_not_use_its_second_process(forks):
    """A process forked from the caller (a pool of the caller's own) forgets the kept second
    process (whose pipes are the caller's) and codes alone or with one of its own."""
    tables = registry.load_model("ctx-photo").net.tables
    image = _image(64, 64, 3)
    one = encode_tile(image, 8, tables, threads=2)
    assert len(forks) == 1
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if partner._KEPT is None and encode_tile(image, 8, tables, 2) == one else 3
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    assert encode_tile(image, 8, tables, threads=2) == one and len(forks) == 1


def test_a_task_asked_after_a_failed_one_raises_its_error():
    """A task asked once the second process has ended on an earlier task's error raises that
    error (the encoder asks ahead of its answers), not that the process ended."""
    def work(task, data):
        if task == 1:
            raise ValueError("task 1 failed")
        return data

    with partner.Partner(work) as other:
        other.ask(0, b"fine")
        other.ask(1)
        os.waitid(os.P_PID, other.pid, os.WEXITED | os.WNOWAIT)  # ended, not yet waited for
        with pytest.raises(ValueError, match="task 1 failed"):
            other.ask(2)


def test_answers_come_in_the_order_asked():
    """The second process runs the tasks queued, in order, and answers each with what its
    work returned, large answers too."""
    with partner.Partner(lambda task, data: data * task) as other:
        for task in range(1, 6):
            other.ask(task, bytes([task]) * 100_000)
        assert [other.wait() for _ in range(5)] == [bytes([t]) * 100_000 * t
                                                   for t in range(1, 6)]


def test_packed_arrays_come_back_whole():
    """:func:`partner.pack` keeps each array's type, shape and values; arrays of anything but
    numbers are refused, packed or unpacked."""
    arrays = [np.arange(12, dtype=np.int64).reshape(3, 4), np.zeros((0, 20), np.uint8),
              np.array(7, np.uint16), np.linspace(0, 1, 5, dtype=np.float32)[::2],
              np.array([True, False])]
    back = partner.unpack(partner.pack(arrays))
    assert len(back) == len(arrays)
    for a, b in zip(arrays, back):
        assert a.dtype == b.dtype and a.shape == b.shape and (a == b).all()
    for refused in (np.array([None]), np.array(["text"]), np.zeros(2, ">f8")):
        with pytest.raises(ValueError, match="numbers"):
            partner.pack([refused])
    forged = bytearray(partner.pack([np.zeros(1)]))
    forged[16:24] = np.int64(len(partner.NUMBERS)).tobytes()  # the array's type number
    with pytest.raises(ValueError, match="numbers"):
        partner.unpack(bytes(forged))


def test_a_sorted_step_crosses_whole(tables):
    """A step sorted for coding and packed (the encoder's second process's answer) unpacks to
    the same values (tokens and raw values in smaller types) and plans and writes the same
    bytes, for every revision's steps (groups before r4 and after, coded raw bits or none)."""
    image = _image(40, 48, 3)
    classified: list = []
    real = coder._sorted

    def spy(step, *args):
        classified.append(step)
        return real(step, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(coder, "_sorted", spy)
        encode_tile(image, 8, tables, threads=1)
    assert len(classified) > 10
    previous: dict = {}
    previous_crossed: dict = {}
    for step in classified:
        sorted_ = coder._sorted(step, tables)
        crossed = coder._Sorted.unpacked(sorted_.packed())
        assert _alike(crossed, sorted_)
        written = []
        for s, prev in ((sorted_, previous), (crossed, previous_crossed)):
            encoder = coder.PacketEncoder()
            coder._write_step(encoder, coder._Side(enc=encoder),
                              coder._finished(s, tables, prev), tables)
            written.append(encoder.finish())
        assert written[0] == written[1]


def _alike(a, b) -> bool:
    """Whether two values are equal as numbers (arrays of any type, lists, tuples, data
    classes)."""
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_alike, a, b))
    if hasattr(a, "__dataclass_fields__"):
        return type(a) is type(b) and all(_alike(getattr(a, k), getattr(b, k))
                                          for k in a.__dataclass_fields__)
    return a == b


@pytest.mark.parametrize("ending", ["exit", "_exit"])
def test_the_second_process_ends_with_its_caller(ending):
    """A process that encodes with two threads and ends (normally: its exit handler ends the
    kept second process; at once, with ``os._exit``: the second sees its pipe close) leaves
    no second process running."""
    script = f"""
import os, numpy as np
from threadpoolctl import threadpool_limits
from nicodec.codec import registry
from nicodec.models.ctx import coder, partner
tables = registry.load_model("ctx-photo").net.tables
image = np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)
with threadpool_limits(2, user_api="blas"):
    coder.encode_tile(image, 8, tables)
print(partner._KEPT.partner.pid, flush=True)
{"os._exit(0)" if ending == "_exit" else ""}
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout.split()[-1])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.05)
    assert not _running(pid)


def _running(pid: int) -> bool:
    """Whether process ``pid`` (not a child of this one) is running (not ended, nor a zombie
    waiting for its new parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
