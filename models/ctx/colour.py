"""ctx-photo r4's local colour features (``coder._colour_features``): for the later channels
of a pass, each earlier channel's residual at the sample times the local ratio of the two
channels' residuals at the neighbours, and its deviation from its nearest four times the local
slope of the two channels' values there. Both are ridge regressions through 0 over the
neighbours, computed in exact integer sums (float32 or float64 sums of small integers, floors
of quotients shown exact), so the decoder reproduces them on any machine; nothing is sent."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

RATIO_CLIP = 24  # r4: the neighbours' residuals (in 8-bit units) clipped to +-this in the colour
# ratios (64: +0.0014 bpp, 255: +0.0022)
RATIO_NEAR = 2  # r4: weight of the nearest four's products in the ratios, against 1 for the
# further neighbours (1: +0.0014 bpp)
RATIO_RIDGE = 4  # r4: added to the ratios' denominators (1, 16: +0.0008 bpp)
RATIO_FRAC = 4  # r4: fractional bits of a colour ratio feature
SLOPE_NEAR = 4  # r4: weight of the nearest four in the colour slopes, against 1 for the others
# (1, 2, 8: +0.0015, +0.0008, +0.0007 bpp)
SLOPE_RIDGE = 1024  # r4: added to the colour slopes' denominators, in (4 x 8-bit units)**2
# (with the nearest four weighted 2: 64 +0.0020 bpp, 256 +0.0009, 4096 +0.0008, 16 384 +0.0027)
SLOPE_FRAC = 2  # r4: fractional bits of a colour slope feature
GUIDE_CAP = 1023  # r5: the largest path cost (8-bit units) of the guided colour difference
GUIDE_ONE = 1 << 20  # r5: its weights are floor(GUIDE_ONE / (cost + 1)**2), at least 1
GUIDE_FRAC = 2  # r5: fractional bits of the guided colour difference


class Sums(NamedTuple):
    """r4: one channel's rows at a pass's K neighbours as its colour ratios or slopes use
    them (small integers in float32: their products' sums stay below 2**24, exact in any
    order), with their sums over the neighbours (weighted, the nearest four by RATIO_NEAR or
    SLOPE_NEAR)."""

    rows: np.ndarray  # (K, n)
    near: np.ndarray | None  # slopes: the sum of the nearest four
    total: np.ndarray | None  # slopes: the weighted sum
    energy: np.ndarray | None  # the weighted sum of squares (slopes: of the deviations 4 v - near)
    # (None when no later channel reads it)


def weighted_dot(a: np.ndarray, b: np.ndarray, near: int) -> np.ndarray:
    """sum over the neighbours k of w_k a_k b_k, w = ``near`` for the nearest four, else 1
    (float32 sums of integers below 2**24: exact in any order)."""
    out = np.einsum("kn,kn->n", a, b)
    if near != 1:
        out += (near - 1) * np.einsum("kn,kn->n", a[:4], b[:4])
    return out.astype(np.float64)


def ratio_sums(residuals: np.ndarray, depth: int, energy: bool) -> Sums:
    """r4: a channel's residuals at the neighbours (K, n) for :func:`colour_ratio`: in 8-bit
    units (rounded down), clipped to +-RATIO_CLIP (a few large ones at edges would rule the
    sums); with their energy if ``energy`` (a later channel will read them)."""
    q = (residuals if depth == 8 else np.floor(residuals * 2.0 ** (8 - depth))).astype(np.float32)
    np.minimum(q, RATIO_CLIP, out=q)
    np.maximum(q, -RATIO_CLIP, out=q)
    return Sums(q, None, None, weighted_dot(q, q, RATIO_NEAR) if energy else None)


def colour_ratio(mine: Sums, theirs: Sums, residual: np.ndarray) -> np.ndarray:
    """r4: an earlier channel's ``residual`` at the sample times the local ratio of this
    channel's residuals to its: a ridge regression through 0 on the neighbours' clipped
    residuals (:func:`ratio_sums`), sum(w q q2) / (sum(w q2 q2) + RATIO_RIDGE), in units of
    2**-RATIO_FRAC, rounded down. The predictor's colour weights are one per pass; this follows
    how the channels' errors move together where the sample is (chroma changes from region to
    region). Exact: the numerator is an integer below 2**40, so the float quotient's floor is
    the integer quotient's (as in :func:`_weighted`)."""
    cross = weighted_dot(mine.rows, theirs.rows, RATIO_NEAR)
    return np.floor(residual * cross * (1 << RATIO_FRAC) / (theirs.energy + RATIO_RIDGE))


def slope_sums(values: np.ndarray, depth: int, energy: bool) -> Sums:
    """r4: a channel's values at the neighbours (K, n) for :func:`colour_slope`, in 8-bit
    units (rounded down), with the sum of the nearest four, the weighted sum and (if
    ``energy``) the weighted energy of the deviations 4 v_k - near: sum w (4 v - S)**2 =
    16 sum w v v - 8 S sum w v + S S sum w (integers below 2**27)."""
    v = values if depth == 8 else np.floor(values * 2.0 ** (8 - depth))
    v = v.astype(np.float32)
    near = v[:4].sum(0, dtype=np.float64)
    total = v.sum(0, dtype=np.float64) + (SLOPE_NEAR - 1) * near
    if not energy:
        return Sums(v, near, total, None)
    weights = SLOPE_NEAR * 4 + len(v) - 4
    return Sums(v, near, total, 16 * weighted_dot(v, v, SLOPE_NEAR) - 8 * near * total
                 + near * near * weights)


def colour_slope(mine: Sums, theirs: Sums, here: np.ndarray, nearest: np.ndarray
                  ) -> np.ndarray:
    """r4: an earlier channel's deviation at the sample from its ``nearest`` four values,
    4 x - (n0 + n1 + n2 + n3), times the local slope of this channel's values against its: a
    ridge regression through 0 of this channel's deviations at the neighbours (4 v_k - the sum
    of its nearest four) on the earlier channel's, in 8-bit units, the nearest four weighted
    SLOPE_NEAR: floor(2**SLOPE_FRAC d X / (E + SLOPE_RIDGE)) (sums of :func:`slope_sums`).
    The residual ratios of :func:`colour_ratio` follow the channels' errors; this follows
    their local contrast (a colour edge, a tinted shadow). The cross sum expands as
    sum w (4 m - S)(4 t - T) = 16 sum w m t - 4 (T sum w m + S sum w t) + S T sum w (integers
    below 2**27), whence a numerator below 2**46, and the float quotient's floor is the
    integer quotient's (as in :func:`_weighted`)."""
    weights = SLOPE_NEAR * 4 + len(mine.rows) - 4
    cross = 16 * weighted_dot(mine.rows, theirs.rows, SLOPE_NEAR) \
        - 4 * (theirs.near * mine.total + mine.near * theirs.total) \
        + mine.near * theirs.near * weights
    deviation = 4 * here - nearest.sum(0)
    return np.floor(deviation * cross * (1 << SLOPE_FRAC) / (theirs.energy + SLOPE_RIDGE))


def guide_weights(here: np.ndarray, theirs: np.ndarray, mids: dict[int, np.ndarray],
                  depth: int) -> np.ndarray:
    """r5: the weights (K + 1, n) of :func:`guided` from the first channel, whole: for each
    neighbour k, floor(GUIDE_ONE / (cost + 1)**2), the cost being how much the first channel
    changes on the way from the sample (``here``) to its value at the neighbour
    (``theirs[k]``): |here - m| + |m - theirs[k]| through its value ``mids[k]`` halfway, or
    |here - theirs[k]| for a neighbour next to the sample (in 8-bit units, rounded down, at
    most GUIDE_CAP); their sum last. As in demosaicing, a colour difference is interpolated
    from where the first channel does not cross an edge. Exact: the quotients' floors are
    those of integers (numerator 2**20, quotient at most 2**20)."""
    k = len(theirs)
    out = np.empty((k + 1, len(here)))
    # in float32, exact: the costs are integers below 2**18, their squares (capped) at most
    # 2**20, and a float32 quotient of 2**20 by such an integer d is off by at most 2**-4 / d,
    # less than the 1 / d that a quotient of integers lies from the next integer when it is
    # not one, so its floor is the integer quotient's
    cost, step = np.empty((2, len(here)), np.float32)
    mine = here.astype(np.float32)
    for i in range(k):
        if i in mids:
            np.abs(np.subtract(mine, mids[i], out=cost, casting="same_kind"), out=cost)
            np.abs(np.subtract(mids[i], theirs[i], out=step, casting="same_kind"), out=step)
            cost += step
        else:
            np.abs(np.subtract(mine, theirs[i], out=cost, casting="same_kind"), out=cost)
        if depth > 8:  # a power of 2: exact
            np.floor(np.multiply(cost, np.float32(2.0 ** (8 - depth)), out=cost), out=cost)
        np.minimum(cost, GUIDE_CAP, out=cost)
        cost += 1
        np.multiply(cost, cost, out=cost)
        np.floor(np.divide(np.float32(GUIDE_ONE), cost, out=cost), out=out[i])
    out[k] = out[:k].sum(0)
    return out


def guided(weights: np.ndarray, differences: np.ndarray) -> np.ndarray:
    """r5: a later channel's difference to the first channel at the neighbours (its values
    there less the first channel's, ``differences`` (K, n)), interpolated with the weights of
    :func:`guide_weights`: floor(2**GUIDE_FRAC sum w (m - t) / sum w). Exact: the products
    are integers below 2**37 (16-bit samples), their sums below 2**41, the quotient below
    2**18 and the denominator at most 2**24, so the float quotient's floor is the integer
    quotient's (as in ``coder._weighted``)."""
    total = np.einsum("kn,kn->n", weights[:len(differences)], differences)
    return np.floor(total * (1 << GUIDE_FRAC) / weights[-1])


def guided_spread(weights: np.ndarray, differences: np.ndarray, difference: np.ndarray,
                  out: np.ndarray) -> np.ndarray:
    """r5's activity feature of the later channels: how far the ``differences`` at the
    neighbours (m - t, of :func:`guided`; worked on in place) lie from their :func:`guided`
    mean ``difference``, with the same weights: floor(sum w |2**GUIDE_FRAC (m - t) -
    difference| / sum w), into ``out``. Where the colour difference changes around the
    sample, its interpolation is less sure. Exact: the products are integers below 2**40
    (16-bit samples), their sums below 2**44, and the quotient's floor is the integer
    quotient's (as in :func:`guided`)."""
    spread = differences
    spread *= 1 << GUIDE_FRAC
    spread -= difference
    np.abs(spread, out=spread)
    return np.floor(np.einsum("kn,kn->n", weights[:len(spread)], spread) / weights[-1], out=out)
