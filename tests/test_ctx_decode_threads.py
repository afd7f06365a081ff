"""ctx-photo's decoder on two threads (a second thread makes each step's features from its own
channel ahead, ``coder._Ahead``): the same samples as on one thread for every coder revision,
shape and depth; BLAS's limit (what ``--threads`` sets) chooses it; a damaged payload or a
failing step raises and leaves no thread behind."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from nicodec.codec import registry
from nicodec.codec.columns import UNDECODABLE
from nicodec.codec.pipeline import decode_detailed
from nicodec.models.ctx import coder
from nicodec.models.ctx.coder import Tables, decode_tile, encode_tile

GOLDEN = Path(__file__).parent / "data" / "golden"


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


@pytest.mark.parametrize("depth", [8, 16])
def test_two_threads_decode_the_same_samples_as_one(tables, depth):
    """Gray, two channels, RGB and RGBA, edge tiles of one row or column and tiles with split
    passes: both thread counts give back the image."""
    for shape in [(70, 129, 3), (23, 18, 1), (33, 65, 4), (40, 30, 2), (2, 40, 3), (5, 1, 3),
                  (1, 1, 1)]:
        image = _image(*shape, depth=depth)
        data = encode_tile(image, depth, tables)
        for threads in (1, 2):
            assert (decode_tile(data, shape, depth, tables, threads=threads) == image).all(), \
                (shape, threads)


def _threads() -> set[threading.Thread]:
    return set(threading.enumerate())


def _threads_of_own_features(monkeypatch) -> list[str]:
    """The names of the threads that make the steps' own features, from now on."""
    own, names = coder._own_features, []

    def spy(*args):
        names.append(threading.current_thread().name)
        return own(*args)

    monkeypatch.setattr(coder, "_own_features", spy)
    return names


def test_blas_limit_chooses_the_threads_and_gray_stays_on_one(monkeypatch):
    """``threads`` left to the decoder follows BLAS's limit: at two, a colour tile's own
    features are made on a second thread; at one, or with one channel, all in the caller's."""
    tables = registry.load_model("ctx-photo").net.tables
    names = _threads_of_own_features(monkeypatch)
    caller, before = threading.current_thread().name, _threads()
    for channels, limit, expected in ((3, 1, {caller}), (3, 2, {"ctx-decode-ahead"}),
                                      (1, 2, {caller})):
        image = _image(40, 48, channels)
        data = encode_tile(image, 8, tables, threads=1)
        names.clear()
        with threadpool_limits(limit, user_api="blas"):
            assert (decode_tile(data, image.shape, 8, tables) == image).all()
        assert set(names) == expected, (channels, limit)
    assert _threads() == before


def test_damaged_payloads_raise_and_leave_no_thread(tables):
    """Bit flips and truncation on two threads either decode to some tile or raise what the
    pipeline counts as a lost packet; either way the second thread has ended."""
    shape = (24, 40, 3)
    data = encode_tile(_image(*shape, seed=4), 8, tables)
    rng = np.random.default_rng(0)
    refused, before = 0, _threads()
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
        assert _threads() == before, trial
    assert refused > 5


def test_a_failing_step_on_the_second_thread_reaches_the_caller(monkeypatch):
    """An error while making a step's own features ahead is raised by the decoder (not a
    hang), and the thread has ended."""
    tables = registry.load_model("ctx-photo").net.tables
    image = _image(64, 64, 3)
    data = encode_tile(image, 8, tables, threads=1)
    own, made = coder._own_features, []

    def failing(*args):
        made.append(1)
        if len(made) == 7:
            raise MemoryError("step 7")
        return own(*args)

    monkeypatch.setattr(coder, "_own_features", failing)
    before = _threads()
    with pytest.raises(MemoryError, match="step 7"):
        decode_tile(data, image.shape, 8, tables, threads=2)
    assert _threads() == before


def test_golden_ctx_files_decode_the_same_on_two_threads():
    """The ctx-photo golden files (r2, r3 and r4 weights, 8 and 16 bits, gray to RGBA) through the
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
