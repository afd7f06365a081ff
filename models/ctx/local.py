"""Coder revision r4's local predictor for the odd halves of split passes (prototype).

The even half of a split pass is decoded before its odd half and has the same geometry. For
every cell of the pass's grid, a small least-squares predictor is fitted on the even half's
samples of the cell and the cells around it (ridge towards the fit over the whole even half),
and applied to the cell's odd samples: its prediction is one more feature of the odd half's
global predictor. Everything here is exact and deterministic: the Gram matrices are sums of
integer products (exact in float64), the solves are elementwise float64 operations in a fixed
order over stacked cells, and the weights are rounded to fixed point before use.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from nicodec.models.ctx.levels import Pass

CELL = int(os.environ.get("LOC_CELL", 16))  # cell side in pixels
RADIUS = int(os.environ.get("LOC_RADIUS", 1))  # the fit's window: cells within this many
RIDGE = float(os.environ.get("LOC_RIDGE", 16))  # per sample, in 8-bit grey levels squared
RIDGE_BIAS = float(os.environ.get("LOC_RIDGE_BIAS", 1))  # the ones' ridge per sample
BIAS = int(os.environ.get("LOC_BIAS", 1))
FRAC = 12  # fixed-point bits of the local weights
OUT_FRAC = 2  # fractional bits of the feature


class Geometry(NamedTuple):
    """Where an odd half's even half lies, and the cells of both."""

    even_at: np.ndarray
    even_near: list[np.ndarray]  # the even samples' nearest four, in the pass's offset order
    odd_near: list[np.ndarray]
    even_cell: np.ndarray
    odd_cell: np.ndarray
    shape: tuple[int, int]  # cells (rows, columns)
    key: tuple


def geometry(p: Pass, height: int, width: int) -> Geometry:
    """The local fit's geometry of an odd half ``p``."""
    even = Pass(p.oy, p.ox, p.step, p.half, p.offsets[:4], 0)
    ys, xs = even.positions(height, width)
    near = [ny * width + nx for ny, nx in even.neighbours(ys, xs, height, width)]
    b = max(1, CELL // p.step)
    rows = -(-(-(-max(height - p.oy, 0) // p.step)) // b)
    cols = -(-(-(-max(width - p.ox, 0) // p.step)) // b)

    def cell(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        return ((y - p.oy) // p.step // b) * cols + (x - p.ox) // p.step // b

    oy, ox = p.positions(height, width)
    onear = [ny * width + nx for ny, nx in Pass(p.oy, p.ox, p.step, p.half, p.offsets[:4], 1).neighbours(oy, ox, height, width)]
    return Geometry(ys * width + xs, near, onear, cell(ys, xs), cell(oy, ox), (rows, cols), (p.oy, p.ox, p.step))


def window_sums(v: np.ndarray, shape: tuple[int, int], radius: int) -> np.ndarray:
    """Sums of ``v`` (cells, ...) over the cells within ``radius`` of each (exact: integers)."""
    rows, cols = shape
    grid = v.reshape(rows, cols, -1)
    pad = np.zeros((rows + 2 * radius, cols + 2 * radius, grid.shape[2]))
    pad[radius:radius + rows, radius:radius + cols] = grid
    out = np.zeros_like(grid)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out += pad[dy:dy + rows, dx:dx + cols]
    return out.reshape(v.shape)


def solve(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solutions of the symmetric positive definite systems gram (n, k, k) @ w = rhs (n, k),
    by Gaussian elimination without pivoting in elementwise float64 operations: the same
    result for each system whatever the others are or how they are stacked."""
    a, b = gram.copy(), rhs.copy()
    k = a.shape[1]
    for i in range(k):
        for j in range(i + 1, k):
            f = a[:, j, i] / a[:, i, i]
            a[:, j, i:] -= f[:, None] * a[:, i, i:]
            b[:, j] -= f * b[:, i]
    w = np.zeros_like(b)
    for i in reversed(range(k)):
        s = b[:, i].copy()
        for j in range(i + 1, k):
            s -= a[:, i, j] * w[:, j]
        w[:, i] = s / a[:, i, i]
    return w


def predict(g: Geometry, plane_rows: list[np.ndarray], even_rows: list[np.ndarray],
            target: np.ndarray, depth: int, rows=None) -> np.ndarray:
    """The local prediction (in units of 2**-OUT_FRAC) at the odd samples, from the feature
    rows ``plane_rows`` there and ``even_rows`` at the even samples (integer-valued float64;
    the ones appended here), ``target`` the even samples' values."""
    if BIAS:
        plane_rows = plane_rows + [np.ones(len(g.odd_cell))]
        even_rows = even_rows + [np.ones(len(g.even_cell))]
    k = len(even_rows)
    ncell = g.shape[0] * g.shape[1]
    sums = np.empty((ncell, k * k + k + 1))
    col = 0
    for i in range(k):
        for j in range(k):
            if j < i:
                sums[:, col] = 0
            else:
                sums[:, col] = np.bincount(g.even_cell, even_rows[i] * even_rows[j], ncell)
            col += 1
    for i in range(k):
        sums[:, col] = np.bincount(g.even_cell, even_rows[i] * target, ncell)
        col += 1
    sums[:, col] = np.bincount(g.even_cell, None, ncell)
    total = sums.sum(0)  # integers: exact in any order
    sums = window_sums(sums, g.shape, RADIUS)
    gram = sums[:, :k * k].reshape(-1, k, k)
    gram = np.triu(gram) + np.triu(gram, 1).transpose(0, 2, 1)
    rhs, count = sums[:, k * k:k * k + k], sums[:, -1]
    scale = np.full(k, float(4 ** (depth - 8)))
    if BIAS:
        scale[-1] *= RIDGE_BIAS / RIDGE
    g0 = total[:k * k].reshape(k, k)
    g0 = np.triu(g0) + np.triu(g0, 1).T
    ridge0 = scale * (total[-1] + 1) * 2.0 ** -10
    w0 = solve((g0 + np.diag(ridge0))[None], (total[k * k:k * k + k])[None])[0]
    lam = (RIDGE * (count + 1))[:, None] * scale  # (cells, k)
    gram = gram + lam[:, :, None] * np.eye(k)
    w = solve(gram, rhs + lam * w0)
    limit = np.full(k, float(1 << (FRAC + 4)))
    if BIAS:
        limit[-1] = float(1 << (FRAC + depth + 2))
    wi = np.clip(np.floor(w * (1 << FRAC) + 0.5), -limit, limit)
    out = np.zeros(len(g.odd_cell))
    for i in range(k):
        out += wi[g.odd_cell, i] * plane_rows[i]
    top = float(1 << (depth + OUT_FRAC + 1))
    return np.clip(np.floor(out / (1 << (FRAC - OUT_FRAC))), -top, top)


STASH = {}
ODD = {}
MODE_G = os.environ.get("LOC_MODE_G", "raw4")
MODE_C = os.environ.get("LOC_MODE_C", "raw4")


def candidate(x, res, ch, earlier, at, own, g, depth):
    mode = MODE_C if earlier else MODE_G
    ev = g.even_at
    if mode.startswith("full"):
        k = int(mode[4:] or 99)
        ev_rows = STASH[(g.key, ch)] if False else STASH[g.key + (ch,)]
        od_rows = ODD[ch]
        return predict(g, od_rows[:k], ev_rows[:k], x[ch].take(ev), depth)
    if mode == "none":
        return np.zeros(len(at))
    if mode == "gres":
        return res[earlier[-1]].take(at)
    if mode == "raw4":
        return predict(g, own[:4], [x[ch].take(i) for i in g.even_near], x[ch].take(ev), depth)
    if mode == "resbias":
        return predict(g, [], [], res[ch].take(ev), depth, rows=0)
    if mode == "resdir":
        e = [x[ch].take(i) for i in g.even_near]
        def dirs(f):
            a, b, c, d = f
            return [a + b - c - d, a - b, c - d]
        return predict(g, dirs(own[:4]), dirs(e), res[ch].take(ev), depth)
    if mode == "colres":
        return predict(g, [res[c2].take(at) for c2 in earlier],
                       [res[c2].take(ev) for c2 in earlier], res[ch].take(ev), depth)
    if mode == "colval":
        c2 = earlier[0]
        e = [x[ch].take(i) for i in g.even_near]
        pl = own[:4] + [x[c2].take(at)] + [x[c2].take(i) for i in g.odd_near]
        er = e + [x[c2].take(ev)] + [x[c2].take(i) for i in g.even_near]
        return predict(g, pl, er, x[ch].take(ev), depth)
    if mode == "coldiff":  # ch - G at pixel: fit (t - g_here) on (a - g_a ...), g_here
        c2 = earlier[0]
        e = [x[ch].take(i) - x[c2].take(i) for i in g.even_near]
        pl = [o - x[c2].take(i) for o, i in zip(own[:4], g.odd_near)]
        gh_o, gh_e = x[c2].take(at), x[c2].take(ev)
        return predict(g, pl + [gh_o], e + [gh_e], x[ch].take(ev) - gh_e, depth) + gh_o * 4
    raise ValueError(mode)


PIX = int(os.environ.get("LOC_PIX", 0))
PIX_NEAR = int(os.environ.get("LOC_PIX_NEAR", 99))
PIX_LAM = float(os.environ.get("LOC_PIX_LAM", 4))
PIX_CLIP = int(os.environ.get("LOC_PIX_CLIP", 64))
PIX_NEARW = int(os.environ.get("LOC_PIX_NEARW", 1))
PIX_COMPACT = int(os.environ.get("LOC_PIX_COMPACT", 0))
PIX_ALL = int(os.environ.get("LOC_PIX_ALL", 0))


def pixel_ratio(res, ch, earlier, at, nb, depth):
    out = []
    for c2 in (earlier if PIX_ALL else earlier[:1]):
        sxy = np.zeros(len(at))
        syy = np.zeros(len(at))
        sh = 2.0 ** (depth - 8)
        for n, i in enumerate(nb[:PIX_NEAR]):
            a = np.clip(np.floor(res[ch].take(i) / sh), -PIX_CLIP, PIX_CLIP)
            b = np.clip(np.floor(res[c2].take(i) / sh), -PIX_CLIP, PIX_CLIP)
            wn = PIX_NEARW if n < 4 else 1
            sxy += a * b * wn
            syy += b * b * wn
        here = res[c2].take(at)
        out.append(np.floor(here * sxy * 16 / (syy + PIX_LAM)))
    return out
