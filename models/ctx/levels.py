"""The coarse-to-fine order of a tile and each pass's neighbourhood.

A tile is coded in passes. The first (``base``) codes the grid of every ``TOP``-th pixel in
both directions. Then each level of step s (TOP, TOP/2, ..., 2; h = s/2) codes, in three
passes, the centres (y, x) = (h, h) mod s of the known s-grid (``D``), the horizontal midpoints
(0, h) mod s (``A1``) and the vertical midpoints (h, 0) mod s (``A2``). Every pass sees known
neighbours on all sides at distance h (and some further), so its samples are predicted by
interpolation, and all samples of a pass are coded in one vectorised step.

A neighbour outside the tile is replaced by its mirror image about the sample (keeping its
offset's parity in units of h, so it is known too), or by the pass's first neighbour, which is
always inside.

Coder revision r2 splits each pass of the finest level (h = 1) that holds at least
``split_from`` samples in two halves (r3: also the level above, h = 2), the grid positions
(i, j) of the pass with i + j even, then odd: the odd half also sees the even half's samples
next to it on its grid (offsets (0, +-s), (+-s, 0)), whose residuals come from the same
predictor at the same scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOP = 32  # step of the base grid


@dataclass(frozen=True)
class Pass:
    """One pass: samples at (oy + i*step, ox + j*step), neighbours at ``offsets``."""

    oy: int
    ox: int
    step: int
    half: int  # h: the parity unit of the offsets
    offsets: tuple[tuple[int, int], ...]
    parity: int = -1  # -1: every position of the grid; 0 or 1: those whose i + j has it

    def positions(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Row and column of every sample, row-major."""
        ys, xs = np.meshgrid(np.arange(self.oy, height, self.step),
                             np.arange(self.ox, width, self.step), indexing="ij")
        ys, xs = ys.ravel(), xs.ravel()
        if self.parity < 0:
            return ys, xs
        keep = ((ys - self.oy) // self.step + (xs - self.ox) // self.step) % 2 == self.parity
        return ys[keep], xs[keep]

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """How many rows and columns of the pass's grid fall inside the tile."""
        return (-(-max(height - self.oy, 0) // self.step),
                -(-max(width - self.ox, 0) // self.step))

    def count(self, height: int, width: int) -> int:
        """How many positions of the whole grid (any parity) fall inside the tile."""
        rows, cols = self.grid(height, width)
        return rows * cols

    def neighbours(self, ys: np.ndarray, xs: np.ndarray, height: int, width: int
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
        """The known position standing for each offset of each sample."""
        found = [(_axis(ys, dy, height, self.half), _axis(xs, dx, width, self.half))
                 for dy, dx in self.offsets]
        if not found:
            return found
        first_y, first_x = found[0]
        out = []
        for ny, nx in found:  # none found, or the sample itself (an offset of 2h mirrored to 0)
            bad = (ny < 0) | (nx < 0) | ((ny == ys) & (nx == xs))
            out.append((np.where(bad, first_y, ny), np.where(bad, first_x, nx)))
        return out

    def samples(self, height: int, width: int) -> int:
        """How many samples the pass has in the tile (those of :meth:`positions`)."""
        rows, cols = self.grid(height, width)
        if self.parity < 0:
            return rows * cols
        return (-(-rows // 2) * -(-max(cols - self.parity, 0) // 2)
                + rows // 2 * -(-max(cols - 1 + self.parity, 0) // 2))

    def flat(self, height: int, width: int, out: np.ndarray | None = None
             ) -> tuple[np.ndarray, list[np.ndarray]]:
        """The flat positions (y * width + x) of :meth:`positions` and of :meth:`neighbours`,
        computed on grids of rows and columns (:meth:`_grids`; faster, and decoding cannot start
        before it), into ``out`` (offsets + 1, samples) when given. A half pass keeps, on the
        grid's rows 0, 2, ..., the columns of its parity, on rows 1, 3, ... the others: in
        row-major order, a row of each in turn."""
        rows = np.arange(self.oy, height, self.step)
        cols = np.arange(self.ox, width, self.step)
        k = len(self.offsets) + 1
        if out is None:
            out = np.empty((k, self.samples(height, width)), np.int64)
        if self.parity < 0:
            self._grids(rows, cols, height, width, out.reshape(k, len(rows), len(cols)))
            return out[0], list(out[1:])
        even, odd = rows[0::2], rows[1::2]
        kept = cols[self.parity::2], cols[1 - self.parity::2]
        pairs = out[:, :len(odd) * len(cols)].reshape(k, len(odd), len(cols))
        self._grids(even[:len(odd)], kept[0], height, width, pairs[:, :, :len(kept[0])])
        self._grids(odd, kept[1], height, width, pairs[:, :, len(kept[0]):])
        self._grids(even[len(odd):], kept[0], height, width,  # the last row of an odd count
                    out[:, len(odd) * len(cols):].reshape(k, len(even) - len(odd), len(kept[0])))
        return out[0], list(out[1:])

    def _grids(self, rows: np.ndarray, cols: np.ndarray, height: int, width: int,
               out: np.ndarray) -> None:
        """The flat positions of the samples at ``rows`` x ``cols``, then of each offset's
        neighbour, into ``out`` (offsets + 1, rows, cols): a neighbour's row depends only on
        the sample's row, its column only on its column, and the few that stand for the first
        neighbour (as in :meth:`neighbours`) lie in whole rows and columns."""
        np.add((rows * width)[:, None], cols, out=out[0])
        ys: dict[int, np.ndarray] = {}  # the offsets share their rows' and columns' moves
        xs: dict[int, np.ndarray] = {}
        for grid, (dy, dx) in zip(out[1:], self.offsets):
            if dy not in ys:
                ys[dy] = _axis(rows, dy, height, self.half)
            if dx not in xs:
                xs[dx] = _axis(cols, dx, width, self.half)
            ny, nx = ys[dy], xs[dx]
            np.add((ny * width)[:, None], nx, out=grid)
            first = out[1]  # none found, or the sample itself: the first (at edges only)
            if (ny < 0).any():
                grid[ny < 0] = first[ny < 0]
            if (nx < 0).any():
                grid[:, nx < 0] = first[:, nx < 0]
            if (ny == rows).any() and (nx == cols).any():
                same = np.ix_(ny == rows, nx == cols)
                grid[same] = first[same]


def _axis(pos: np.ndarray, d: int, size: int, h: int) -> np.ndarray:
    """pos + d, else the first of -d, d -+ 2h, ... (same parity in units of h) that is inside;
    -1 where none is."""
    chain = [d, -d]
    m = abs(d)
    while m >= 2 * h:
        m -= 2 * h
        chain += [m, -m] if m else [0]
    out = pos + d
    bad = np.flatnonzero((out < 0) | (out >= size))  # few: only near the tile's edges
    edge, found = pos[bad], np.full(len(bad), -1, pos.dtype)
    for c in reversed(chain[1:]):  # the earliest candidate inside wins
        q = edge + c
        found = np.where((q >= 0) & (q < size), q, found)
    out[bad] = found
    return out


def passes(height: int, width: int, split_from: int | None = None, split_top: int = 1
           ) -> list[Pass]:
    """Every pass of a ``height`` x ``width`` tile, in coding order; the passes of the levels
    with h up to ``split_top`` (r2: 1, the finest; r3: 2) of at least ``split_from`` samples in
    two halves (None: none, as r1)."""
    out = [Pass(0, 0, TOP, TOP, ())]
    s = TOP
    while s >= 2:
        h = s // 2
        near_d = ((-h, -h), (-h, h), (h, -h), (h, h))
        far_d = ((-h, -3 * h), (-h, 3 * h), (h, -3 * h), (h, 3 * h),
                 (-3 * h, -h), (-3 * h, h), (3 * h, -h), (3 * h, h))
        far_a = ((-2 * h, -h), (-2 * h, h), (2 * h, -h), (2 * h, h),
                 (-h, -2 * h), (-h, 2 * h), (h, -2 * h), (h, 2 * h))
        level = [Pass(h, h, s, h, near_d + far_d),
                 Pass(0, h, s, h, ((0, -h), (0, h), (-h, 0), (h, 0)) + far_a),
                 Pass(h, 0, s, h, ((-h, 0), (h, 0), (0, -h), (0, h)) + far_a + near_d)]
        if split_from is not None and h <= split_top:
            same = ((0, -s), (0, s), (-s, 0), (s, 0))  # the even half, on the pass's grid
            level = [half for p in level for half in (
                (Pass(p.oy, p.ox, s, h, p.offsets, 0),
                 Pass(p.oy, p.ox, s, h, p.offsets[:4] + same + p.offsets[4:], 1))
                if p.count(height, width) >= split_from else (p,))]
        out += level
        s = h
    return out
