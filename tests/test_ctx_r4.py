"""ctx-photo coder revision r4 (retired by r5; its tables are in test_ctx_mix.py): the later
channel's residual times the local ratio of their residuals at the neighbours, and its deviation
from its nearest four times the local slope of their values. Exact for every tile shape,
channel count and depth, and independent of the encoder's thread count."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from nicodec.codec import registry
from nicodec.models.ctx.codec import load_weights
from nicodec.models.ctx import colour
from nicodec.models.ctx.coder import R4, Tables, decode_tile, encode_tile
from nicodec.models.ctx.colour import (RATIO_CLIP, RATIO_FRAC, RATIO_NEAR, RATIO_RIDGE, SLOPE_FRAC,
                                       SLOPE_NEAR, SLOPE_RIDGE)
from nicodec.models.ctx.side import SideModel



def _image(h: int, w: int, c: int, depth: int = 8, seed: int = 0) -> np.ndarray:
    """Colour gradients whose channels' ratio changes across the tile, an edge and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    top = (1 << depth) - 1
    wave = np.sin(x / 5.0) * np.cos(y / 7.0)
    base = np.stack([top / 2 + wave * top / 3 * (1 + k * x / max(w, 1)) * (-1) ** k
                     for k in range(c)], -1)
    base[h // 3: h // 2, w // 4: w // 2] = top * 0.8
    noisy = base + rng.normal(0, top / 80, base.shape)
    return np.clip(np.rint(noisy), 0, top).astype(np.uint8 if depth == 8 else np.uint16)


def _small_limits(revision) -> Tables:
    """The shipped bank with ``revision``, its compact and split limits lowered so that small
    tiles take every path (split halves, passes that are not compact), and a side model that
    knows nothing (r4's features change the coefficients' layout)."""
    shipped = registry.load_model("ctx-photo", "ctx-photo-r4.safetensors").net.tables
    return Tables(shipped.bank, shipped.edges, replace(revision, compact_below=12, split_from=40),
                  side=SideModel.neutral())


@pytest.mark.parametrize("depth", [8, 16])
def test_r4_tiles_round_trip_exactly(depth):
    """Every channel count (gray has no earlier channel: its bytes are those of r4 without the
    colour features), edges and split halves included; with colour, the ratios and slopes
    change the bytes (so they are used)."""
    r4 = _small_limits(R4)
    plain = _small_limits(replace(R4, colour_ratio=False, colour_slope=False))
    for shape in [(70, 129, 3), (23, 18, 1), (33, 65, 4), (40, 30, 2), (2, 40, 2), (5, 1, 3),
                  (1, 1, 1)]:
        image = _image(*shape, depth=depth)
        data = encode_tile(image, depth, r4)
        assert (decode_tile(data, shape, depth, r4) == image).all(), shape
        if shape[2] == 1:
            assert data == encode_tile(image, depth, plain), shape
        elif shape[0] * shape[1] > 500:
            assert data != encode_tile(image, depth, plain), shape


@pytest.mark.parametrize("depth", [8, 16])
def test_r4_noise_flat_and_checkered_tiles_round_trip(depth):
    """Residuals beyond the clip (noise over the whole range), none at all (flat: every ratio
    0 / RATIO_RIDGE) and alternating extremes."""
    r4 = _small_limits(R4)
    rng = np.random.default_rng(3)
    top = (1 << depth) - 1
    dtype = np.uint8 if depth == 8 else np.uint16
    for image in (rng.integers(0, top + 1, (40, 37, 3)), np.full((20, 30, 3), top),
                  np.indices((31, 31, 3)).sum(0) % 2 * top):
        image = image.astype(dtype)
        data = encode_tile(image, depth, r4)
        assert (decode_tile(data, image.shape, depth, r4) == image).all()


@pytest.mark.parametrize("depth", [8, 16])
def test_the_colour_ratio_is_exact_at_its_largest_inputs(depth):
    """The ratio divides a float64 product of a residual and a sum of clipped products by a sum
    of squares: its floor must be the integer quotient's, with every neighbour of the largest
    neighbourhood (20) beyond the clip and the residual at the ends of its range."""
    rng = np.random.default_rng(11)
    n, neighbours, half = 50_000, 20, 1 << (depth - 1)
    big = RATIO_CLIP << (depth - 8)
    mine = rng.integers(-2 * big, 2 * big + 1, (neighbours, n))
    theirs = rng.integers(-2 * big, 2 * big + 1, (neighbours, n))
    mine[:, :1000], theirs[:, :1000], theirs[:, 1000:2000] = half - 1, -half, half - 1
    residual = rng.integers(-half, half, n)
    residual[:3000:2], residual[1:3000:2] = -half, half - 1
    ratio = colour.colour_ratio(colour.ratio_sums(mine.astype(np.float64), depth, False),
                                colour.ratio_sums(theirs.astype(np.float64), depth, True),
                                residual.astype(np.float64))
    weight = np.where(np.arange(neighbours) < 4, RATIO_NEAR, 1)[:, None]
    q, q2 = (np.clip(v >> (depth - 8), -RATIO_CLIP, RATIO_CLIP) for v in (mine, theirs))
    cross, energy = (weight * q * q2).sum(0), (weight * q2 * q2).sum(0)
    exact = [r * x * (1 << RATIO_FRAC) // (e + RATIO_RIDGE)  # Python integers
             for r, x, e in zip(residual.tolist(), cross.tolist(), energy.tolist())]
    assert (ratio == np.array(exact)).all()


@pytest.mark.parametrize("depth", [8, 16])
def test_the_colour_slope_is_exact_at_its_largest_inputs(depth):
    """The slope's cross and energy sums are expanded into float32 sums of products and its
    quotient is a float division: both must give the integer formula's result exactly, with
    samples at the ends of the range and the largest neighbourhood (20)."""
    rng = np.random.default_rng(13)
    n, neighbours, top = 20_000, 20, (1 << depth) - 1
    own = rng.integers(0, top + 1, (neighbours, n))
    theirs = rng.integers(0, top + 1, (neighbours, n))
    here = rng.integers(0, top + 1, n)
    own[:, :500], theirs[:4, :500], theirs[4:, :500] = top, 0, top  # largest contrasts
    here[:250], here[250:500] = top, 0
    own[:4, 500:1000], theirs[:4, 500:1000] = 0, top
    slope = colour.colour_slope(colour.slope_sums(own.astype(np.float64), depth, False),
                                colour.slope_sums(theirs.astype(np.float64), depth, True),
                                here.astype(np.float64), theirs[:4].astype(np.float64))
    weight = np.where(np.arange(neighbours) < 4, SLOPE_NEAR, 1)[:, None]
    m, t = own >> (depth - 8), theirs >> (depth - 8)
    a, b = 4 * m - m[:4].sum(0), 4 * t - t[:4].sum(0)
    cross, energy = (weight * a * b).sum(0), (weight * b * b).sum(0)
    deviation = 4 * here - theirs[:4].sum(0)
    exact = [d * x * (1 << SLOPE_FRAC) // (e + SLOPE_RIDGE)  # Python integers
             for d, x, e in zip(deviation.tolist(), cross.tolist(), energy.tolist())]
    assert (slope == np.array(exact)).all()


def test_r4_bytes_do_not_depend_on_the_thread_count():
    """With two threads the last channel runs a pass behind on its own thread, reading the
    sums the earlier channels of its pass left while the first thread codes the next pass: the
    same bytes as one."""
    r4 = _small_limits(R4)
    image = _image(96, 128, 3, seed=4)
    coded = {encode_tile(image, 8, r4, threads=t) for t in (1, 2)}
    assert len(coded) == 1
    assert (decode_tile(coded.pop(), image.shape, 8, r4) == image).all()


def test_the_r4_file_codes_at_the_real_limits():
    shipped = load_weights(str(registry.WEIGHTS_DIR / "ctx-photo-r4.safetensors"))[0].tables
    assert shipped.revision == R4
    for depth, shape in ((8, (96, 128, 3)), (16, (40, 50, 3))):  # the real limits
        image = _image(*shape, depth=depth, seed=9)
        data = encode_tile(image, depth, shipped)
        assert (decode_tile(data, shape, depth, shipped) == image).all()
