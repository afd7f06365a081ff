"""ctx-photo coder revision r5's flag ``first_plane`` (r4 with it alone: r5's raw-bit flags need
learned tables, and ``test_ctx_raw.py`` tests r5 whole): the first channel's passes all come
before the other channels' (which follow pass by pass), which then see it whole: its values
around the sample, their colour difference to it interpolated along it and that difference's
spread. Exact for every tile shape, channel count and depth, the same bytes for any thread
count of the encoder and samples for any of the decoder; gray tiles are r4's."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest

from nicodec.models.ctx import coder, colour
from nicodec.models.ctx.coder import R4, R5, decode_tile, encode_tile
from nicodec.models.ctx.colour import GUIDE_CAP, GUIDE_FRAC, GUIDE_ONE
from tests.test_ctx_r4 import _image, _small_limits
from tests.test_ctx_side import _refused_when_damaged

FIRST = replace(R4, first_plane=True)


@pytest.mark.parametrize("depth", [8, 16])
def test_r5_tiles_round_trip_exactly_on_one_and_two_threads(depth):
    """Every channel count, edges, compact passes and split halves included; gray has no later
    channel, so its bytes are r4's; with colour the first channel's whole plane changes them."""
    r5, r4 = _small_limits(FIRST), _small_limits(R4)
    for shape in [(70, 129, 3), (23, 18, 1), (33, 65, 4), (40, 30, 2), (2, 40, 2), (5, 1, 3),
                  (1, 1, 1)]:
        image = _image(*shape, depth=depth)
        data = {encode_tile(image, depth, r5, threads=t) for t in (1, 2)}
        assert len(data) == 1, shape
        data = data.pop()
        for threads in (1, 2):
            assert (decode_tile(data, shape, depth, r5, threads=threads) == image).all(), shape
        if shape[2] == 1:
            assert data == encode_tile(image, depth, r4), shape
        elif shape[0] * shape[1] > 500:
            assert data != encode_tile(image, depth, r4), shape


def test_r5_noise_flat_and_checkered_tiles_round_trip():
    """Path costs at their cap (noise over the whole range, alternating extremes) and none at
    all (flat), on two decoding threads."""
    r5 = _small_limits(FIRST)
    rng = np.random.default_rng(5)
    for image in (rng.integers(0, 1 << 16, (40, 37, 3)), np.full((20, 30, 3), 65535),
                  np.indices((31, 31, 3)).sum(0) % 2 * 65535):
        image = image.astype(np.uint16)
        data = encode_tile(image, 16, r5)
        assert (decode_tile(data, image.shape, 16, r5, threads=2) == image).all()


def test_the_payload_holds_the_first_channel_whole_then_the_others_pass_by_pass():
    """The decoder's step order (``written``): every pass of channel position 0, then each pass's
    later channels; the encoder's fits stay pass by pass, and r4's two orders are one."""
    def order(rev, written):
        return [(v.p, c) for v in coder._visits(70, 90, [1, 0, 2], rev, written)
                for c, _ in v.channels]

    fitted, written = order(R5, False), order(R5, True)
    assert sorted(fitted, key=str) == sorted(written, key=str)
    first = [step for step in written if step[1] == 0]
    assert written[:len(first)] == first and len(first) == len(written) // 3
    assert written[len(first):] == [step for step in fitted if step[1] > 0]
    assert order(R4, True) == order(R4, False) == fitted


def test_the_first_channel_around_a_sample():
    """The positions the later channels see the first channel at besides their neighbours:
    the centres' (D) axis neighbours and the horizontal midpoints' (A1) diagonals at the
    level's distance; from h = 2 on, also the eight pixels next to the sample."""
    fine = {(p.oy, p.ox): coder._around(p) for p in coder.passes(64, 64) if p.half == 1}
    assert set(fine[1, 1]) == {(0, -1), (0, 1), (-1, 0), (1, 0)}
    assert set(fine[0, 1]) == {(-1, -1), (-1, 1), (1, -1), (1, 1)}
    assert fine[1, 0] == ()
    for p in coder.passes(64, 64):
        if p.half >= 2 and p.offsets:
            seen = set(coder._around(p)) | set(p.offsets)
            assert {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx} <= seen
            h = p.half
            assert {(dy, dx) for dy in (-h, 0, h) for dx in (-h, 0, h) if dy or dx} <= seen


@pytest.mark.parametrize("depth", [8, 16])
def test_the_guided_difference_is_exact_at_its_largest_inputs(depth):
    """Weights floor(2**20 / (cost + 1)**2) from path costs up to and beyond the cap, the
    weighted mean of differences at the ends of the range with the largest neighbourhood (20)
    and their weighted spread about it: the float floors equal the integer formulas' (Python
    integers and fractions)."""
    rng = np.random.default_rng(17)
    n, k, top = 4000, 20, (1 << depth) - 1
    here = rng.integers(0, top + 1, n)
    theirs = rng.integers(0, top + 1, (k, n))
    mine = rng.integers(0, top + 1, (k, n))
    mids = {i: rng.integers(0, top + 1, n) for i in range(0, k, 2)}
    here[:500], theirs[:, :500], mine[:, :500] = top, 0, top  # the largest differences
    here[500:1000], theirs[:, 500:1000], mine[:, 500:1000] = 0, top, 0
    for i in mids:
        mids[i][:1000] = 0
    weights = colour.guide_weights(here.astype(np.float64), theirs.astype(np.float64),
                                   {i: m.astype(np.float64) for i, m in mids.items()}, depth)
    got = colour.guided(weights, (mine - theirs).astype(np.float64))
    spread = colour.guided_spread(weights, (mine - theirs).astype(np.float64), got, np.empty(n))
    shift = depth - 8
    for j in range(0, n, 7):
        w = []
        for i in range(k):
            h, t = int(here[j]), int(theirs[i, j])
            cost = abs(h - int(mids[i][j])) + abs(int(mids[i][j]) - t) if i in mids else abs(h - t)
            w.append(GUIDE_ONE // (min(cost >> shift, GUIDE_CAP) + 1) ** 2)
        assert weights[:k, j].tolist() == w and weights[k, j] == sum(w)
        total = sum(wi * (int(mine[i, j]) - int(theirs[i, j])) for i, wi in enumerate(w))
        assert got[j] == Fraction(total * (1 << GUIDE_FRAC), sum(w)).__floor__()
        far = sum(wi * abs((int(mine[i, j]) - int(theirs[i, j])) * (1 << GUIDE_FRAC) - int(got[j]))
                  for i, wi in enumerate(w))
        assert spread[j] == far // sum(w)


@pytest.mark.parametrize("depth", [8, 16])
def test_the_guide_weights_are_exact_for_every_cost(depth):
    """Every path cost a guide weight can see (0 to twice the top, through the pixel halfway;
    its float32 arithmetic) gives floor(2**20 / (min(cost in 8-bit units, cap) + 1)**2)."""
    top = (1 << depth) - 1
    cost = np.arange(2 * top + 1)
    mid = np.minimum(cost, top)  # |0 - mid| + |mid - (2 mid - cost)| = cost
    weights = colour.guide_weights(np.zeros(len(cost)), (2 * mid - cost)[None].astype(float),
                                   {0: mid.astype(float)}, depth)
    capped = np.minimum(cost >> (depth - 8), GUIDE_CAP)
    assert (weights[0] == GUIDE_ONE // (capped + 1) ** 2).all()
    assert (weights[1] == weights[0]).all()


def test_r5_damaged_payloads_raise_or_decode_in_range():
    """Bit flips and truncation: refused (``UNDECODABLE``) or samples of the right shape."""
    r5 = _small_limits(FIRST)
    shape = (24, 40, 3)
    data = encode_tile(_image(*shape, seed=4), 8, r5)
    assert _refused_when_damaged(data, shape, r5, len(data)) > 5


def test_r5_leaves_r4_alone():
    """r5's flags are off in r4 and on in r5, and r5 differs from r4 in nothing else."""
    flags = {"first_plane": True, "raw_coded": coder.RAW_CODED, "raw_sign": True,
             "ranged": True, "clipped_class": True}
    assert not any(getattr(R4, name) for name in flags)
    assert R5 == replace(R4, **flags) and coder.REVISIONS[5] == R5
