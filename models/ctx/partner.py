"""A second process for the coder (``coder.encode_tile`` and ``coder.decode_tile`` with two
threads): a forked process that runs the tasks it is sent, in order, and answers each, and
memory shared with it; one is kept from tile to tile (:func:`kept`).

Two threads of one Python process gain at most about 1.3x on the coder's many small numpy
operations, as they queue for the interpreter lock; two processes gain 1.9x
(``eval/results/lossless/explore.md``, "Two threads in one process"). All of the decoder's
work on a step but its range decoding is per sample, so the second process works the second
half of each big step's samples into arrays it shares with the decoding process, which works
the first half. The encoder's second process fits every other pass, its answers the fitted
steps (:func:`pack`). Forked, the process starts with everything the coder had (the tables);
each tile's arrays are carved from the memory made before the fork (the arena), and what the
process makes reaches the coder only through them and its answers. Linux only, and forked
only from a process's only Python thread (:func:`available`): elsewhere a fork may not be
safe with the libraries loaded.
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import ctypes
import math
import mmap
import os
import select
import struct
import sys
import threading
from typing import Callable, Iterator, NamedTuple

import numpy as np

ENDED = "the coder's second process ended unexpectedly"
PIPE_BYTES = 1 << 20  # each pipe's buffer, where the system allows it: the encoder's second
# process writes a fitted step (tens to hundreds of kB) and goes on while it waits there
IDLE_S = 30.0  # a kept partner (:func:`kept`) ends after this long without a task
PING = -1  # the task every partner answers itself (with nothing): :func:`kept` asks it to
# learn that a kept partner is still there


def available() -> bool:
    """Whether :class:`Partner` can run here, now: on Linux, when the calling thread is the
    process's only Python thread. A fork while another thread is inside a multithreaded BLAS
    call hangs that call (OpenBLAS stops its thread pool when the process forks:
    ``explore.md``, "Decoder in two processes"), and which library another thread is in
    cannot be known; with the caller alone, none is."""
    return sys.platform.startswith("linux") and hasattr(os, "fork") \
        and threading.active_count() == 1


class Partner:
    """A forked process that runs ``work(task, data)`` for each task :meth:`ask` sends, in the
    order asked, and answers each with what it returned (:meth:`wait`, in the same order). An
    error in it is raised by :meth:`wait`; it ends when :meth:`close` is called, when the
    asking process goes (its pipe closes), or after ``idle`` seconds without a task (None:
    never)."""

    def __init__(self, work: Callable[[int, bytes], bytes | None],
                 idle: float | None = None, start: Callable[[], None] | None = None) -> None:
        """``start``: called first in the partner."""
        import fcntl  # Unix only, as is the fork (:func:`available`)

        down_read, self.down = os.pipe()
        self.up, up_write = os.pipe()
        for fd in self.down, up_write:
            with contextlib.suppress(OSError, AttributeError):  # the system's default then
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        try:
            self.pid = os.fork()
        except OSError:
            for fd in (down_read, self.down, self.up, up_write):
                os.close(fd)
            raise
        if self.pid == 0:  # the partner: never returns
            status = 1
            try:
                os.close(self.down)
                os.close(self.up)
                if start is not None:
                    start()
                _serve(work, down_read, up_write, idle)
                status = 0
            finally:
                os._exit(status)  # no exit handlers, no buffers of the parent's flushed
        os.close(down_read)
        os.close(up_write)

    def ask(self, task: int, data: bytes = b"") -> None:
        """Queue ``work(task, data)`` in the partner. If the partner has ended (a task asked
        earlier failed, and its error is waiting among the answers), that error is raised."""
        try:
            _write(self.down, struct.pack("<qq", task, len(data)) + data)
            return
        except BrokenPipeError:
            pass
        while True:  # the answers it left: its error, else the end of them (ENDED)
            self.wait()

    def wait(self) -> bytes:
        """Wait for the earliest task not yet waited for; its answer, or its error raised."""
        head = _read(self.up, 9)
        if len(head) < 9:
            raise RuntimeError(ENDED)
        failed, size = struct.unpack("<?q", head)
        answer = _read(self.up, size)
        if len(answer) < size:
            raise RuntimeError(ENDED)
        if failed:
            raise _error(answer.decode(errors="replace"))
        return answer

    def close(self) -> None:
        """End the partner (at once, whatever it is doing) and wait for it."""
        os.close(self.down)
        os.close(self.up)
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)

    def __enter__(self) -> Partner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Kept(NamedTuple):
    """The kept partner (:func:`kept`)."""

    key: object  # what it was forked with (the caller's tables)
    partner: Partner
    arena: mmap.mmap  # memory shared with it, made before the fork


_KEPT: _Kept | None = None
_KEEPING = threading.Lock()  # one caller at a time uses the kept partner


@contextlib.contextmanager
def kept(key: object, size: int,
         work: Callable[[object, mmap.mmap, int, bytes], bytes | None]
         ) -> Iterator[tuple[Partner, mmap.mmap] | None]:
    """A second process kept from call to call (the encoder's, from tile to tile and image to
    image), with ``size`` bytes or more of memory shared with it (the arena), for the caller
    alone while the ``with`` lasts; None where there is none to have (another thread holds it,
    or a new one cannot be forked: :func:`available`, or the system refuses). A new one runs
    ``work(key, arena, task, data)`` for each task; it is forked anew when ``key`` is not the
    object the kept one was forked with (the tables it knows), when its arena is too small,
    and when it has ended (after IDLE_S seconds without a task, or an error). An error inside
    the ``with`` ends it (it may be amid a task). Kept, it saves a fork per tile, and above all
    the copy-on-write page faults that a fresh fork costs both processes, and its memory stays
    warm (``explore.md``, "A kept second process"); :func:`release` ends it. The process
    holds the pages it shares with this one while it lives, those this one frees included."""
    global _KEPT
    if not _KEEPING.acquire(blocking=False):
        yield None
        return
    try:
        if _KEPT is not None and (_KEPT.key is not key or len(_KEPT.arena) < size
                                  or not _answers(_KEPT.partner)):
            _end_kept()
        if _KEPT is None and available():
            arena = mmap.mmap(-1, size)
            try:
                other = Partner(lambda task, data: work(key, arena, task, data), IDLE_S,
                                _keep_heap)
            except OSError:  # a limit on processes or memory: none
                arena.close()
            else:
                _KEPT = _Kept(key, other, arena)
        if _KEPT is None:
            yield None
            return
        try:
            yield _KEPT.partner, _KEPT.arena
        except BaseException:
            _end_kept()
            raise
    finally:
        _KEEPING.release()


def _keep_heap() -> None:
    """In the kept partner, a process of the coder's own: glibc's allocator keeps the memory
    freed for reuse (arrays up to 32 MB from the heap, not mapped and unmapped each time; the
    heap's top given back only beyond 1 GB). Its page faults per Kodak encode fell from 7-10
    thousand to 0.02-0.6 thousand, its system time from 0.1-0.27 s to 0.00-0.06 s
    (``explore.md``, "A kept second process"). Process-wide settings: never made in the
    caller's process. Elsewhere than glibc, nothing."""
    with contextlib.suppress(OSError, AttributeError):
        mallopt = ctypes.CDLL(None).mallopt
        for option, value in ((-3, 1 << 25), (-1, 1 << 30), (-2, 1 << 26)):  # M_MMAP_THRESHOLD,
            mallopt(option, value)  # M_TRIM_THRESHOLD, M_TOP_PAD


def _answers(other: Partner) -> bool:
    """Whether a kept partner still answers (it ends by itself when idle for IDLE_S)."""
    try:
        other.ask(PING)
        other.wait()
    except (OSError, RuntimeError):
        return False
    return True


def _end_kept() -> None:
    """End the kept partner, if any (its lock held, or at exit)."""
    global _KEPT
    if _KEPT is not None:
        with contextlib.suppress(OSError):
            _KEPT.partner.close()
        _KEPT = None  # its arena is unmapped once no array is a view of it


def release() -> None:
    """End the kept second process now (:func:`kept`; it ends by itself after IDLE_S seconds
    without a task, and with this process): its memory, the pages it still shares with this
    process included, is freed at once. ``codec.release_workers`` is this."""
    with _KEEPING:
        _end_kept()


release_workers = release  # the name ``nicodec.codec`` gives it


def _forget_kept() -> None:
    """In a process forked from this one: the kept partner is not its own (its pipes are
    closed here, so that the partner still sees its own process's end)."""
    global _KEPT, _KEEPING
    _KEEPING = threading.Lock()  # another thread may have held it at the fork
    if _KEPT is not None:
        for fd in _KEPT.partner.down, _KEPT.partner.up:
            with contextlib.suppress(OSError):
                os.close(fd)
        _KEPT = None


def _at_exit() -> None:
    """End the kept partner as this process ends, unless another thread still uses it."""
    if _KEEPING.acquire(timeout=1):
        try:
            _end_kept()
        finally:
            _KEEPING.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_kept)
atexit.register(_at_exit)


def _read(fd: int, size: int) -> bytes:
    """``size`` bytes from ``fd``, fewer only at its end."""
    out = b""
    while len(out) < size:
        part = os.read(fd, size - len(out))
        if not part:
            break
        out += part
    return out


def _write(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd``."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _error(text: str) -> BaseException:
    """The partner's error (its type's name, a line break, its message) as the asking process
    raises it: the built-in exception of that name (ValueError of a damaged payload,
    MemoryError, KeyboardInterrupt), anything else as a RuntimeError naming it. Text, not a
    pickle: nothing sent between the processes is unpickled."""
    name, _, message = text.partition("\n")
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, BaseException):
        return kind(message)
    return RuntimeError(f"{name} in the coder's second process: {message}")


def _serve(work: Callable[[int, bytes], bytes | None], down: int, up: int,
           idle: float | None = None) -> None:
    """The partner's loop: each task asked, ``work(task, data)`` (nothing for :data:`PING`),
    then its answer; an error is sent (:func:`_error`) and ends the loop, as do the end of the
    asking process's pipe and ``idle`` seconds without a task."""
    while select.select([down], [], [], idle)[0] and len(asked := _read(down, 16)) == 16:
        task, size = struct.unpack("<qq", asked)
        data = _read(down, size)
        if len(data) < size:
            return
        try:
            answer = b"" if task == PING else work(task, data) or b""
        except BaseException as error:  # noqa: BLE001 - the asking process raises it
            message = f"{type(error).__name__}\n{error}".encode()
            _write(up, struct.pack("<?q", True, len(message)) + message)
            return
        _write(up, struct.pack("<?q", False, len(answer)) + answer)


NUMBERS = [np.dtype(t) for t in ("?", "<i1", "<i2", "<i4", "<i8", "<u1", "<u2", "<u4", "<u8",
                                  "<f4", "<f8")]  # the types :func:`pack` takes, by their number
_NUMBER = {kind: k for k, kind in enumerate(NUMBERS)}


def pack(arrays: list[np.ndarray]) -> bytes:
    """Arrays of numbers (:data:`NUMBERS`) as bytes for :func:`unpack`, with no pickle: what
    the encoder's second process answers. One int64 head (the count, then each array's type
    number, dimensions and shape), then each array's data."""
    arrays = [np.asarray(a, order="C") for a in arrays]  # (a 0-d array stays one)
    head = [len(arrays)]
    for a in arrays:
        if a.dtype not in _NUMBER:
            raise ValueError(f"only arrays of numbers are packed, not {a.dtype}")
        head += [_NUMBER[a.dtype], a.ndim, *a.shape]
    return b"".join([struct.pack("<q", len(head)), np.array(head, "<i8").tobytes(),
                     *(a.tobytes() for a in arrays)])


def unpack(data: bytes) -> list[np.ndarray]:
    """The arrays :func:`pack` made ``data`` of: read-only views of it."""
    (size,) = struct.unpack_from("<q", data)
    head = np.frombuffer(data, "<i8", size, 8).tolist()
    at, k, out = 8 + 8 * size, 1, []
    for _ in range(head[0]):
        number, ndim = head[k], head[k + 1]
        if not 0 <= number < len(NUMBERS):
            raise ValueError("only arrays of numbers are unpacked")
        kind, shape = NUMBERS[number], head[k + 2:k + 2 + ndim]
        k += 2 + ndim
        count = math.prod(shape)
        out.append(np.frombuffer(data, kind, count, at).reshape(shape))
        at += count * kind.itemsize
    return out
