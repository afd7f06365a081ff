"""Encoder-side search of the VQ mode: the effort levels of ``codec encode --effort``.

At effort 1 every 16x16 unit takes the codeword nearest to the encoder's latent. At the small
codebooks of the ladder (K = 8 .. 2048) the nearest word in the lookup space is often not the
one whose *decoded pixels* are closest to the image. A higher effort re-chooses the indices **in
pixel space, through the frozen decoder**: each unit tries its few nearest codewords and keeps
the one that lowers the squared error of the pixels around it plus a rate weight times its code
length under the quality's static table (the transformer's context-dependent code lengths would
need a transformer pass per trial; the static table is their unconditional average).

Units are visited in ``SPACING`` x ``SPACING`` phases: in one phase only units ``SPACING`` apart
change, so one trial decode scores all of them at once, each on the window of 3 x 3 units around
it. The decoder reaches a little beyond that window, so a phase's choices are checked on the
real decode before they are kept. The grid is searched in tiles of ``TILE`` units with a margin
of ``MARGIN`` units that the decoder sees but the search leaves alone, so memory is that of one
tile whatever the image size. Only the encoder changes: decoder, prior and bitstream are those
of effort 1.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from nicodec.bitstream.entropy import PRECISION
from nicodec.models.tiling import Pixels

# (codewords tried per unit, sweeps over the grid) of each effort level (1: the nearest only)
EFFORT_SEARCH = {1: (1, 0), 2: (2, 1), 3: (3, 2)}
SPACING = 3  # units between two units that change in the same trial
TILE = 32  # units per tile side (512 pixels)
MARGIN = 2  # units of context around a tile


def effort_search(effort: int) -> tuple[int, int]:
    """(candidates, sweeps) of an effort level; a clear error for a level that does not exist."""
    if effort not in EFFORT_SEARCH:
        raise ValueError(f"effort must be one of {min(EFFORT_SEARCH)}..{max(EFFORT_SEARCH)}, "
                         f"got {effort}")
    return EFFORT_SEARCH[effort]


def _window_error(x_hat: torch.Tensor, x: torch.Tensor, unit: int) -> torch.Tensor:
    """Squared error (h, w) of the pixels of the 3 x 3 units around every unit."""
    per_unit = F.avg_pool2d((x_hat - x).pow(2).sum(1, keepdim=True), unit) * unit * unit
    return F.avg_pool2d(per_unit, 3, stride=1, padding=1, count_include_pad=False)[0, 0] * 9


@torch.no_grad()
def refine_indices(decode: Callable[[torch.Tensor], torch.Tensor], x: Pixels,
                   latent: torch.Tensor, codebook: torch.Tensor, table: np.ndarray,
                   effort: int, rate_weight: float) -> torch.Tensor:
    """Indices (h, w) of the codewords to code for the image ``x`` (16h x 16w once padded;
    the search reads it tile by tile).

    ``decode`` maps indices (1, h', w') to an image (1, 3, 16h', 16w') in [0, 1]; ``latent``
    (1, d, h, w) is the encoder's lookup-space latent, ``codebook`` (K, d) the quality's words,
    ``table`` (K,) its static frequencies and ``rate_weight`` the squared error (pixels in
    [0, 1], summed over channels) that one bit is worth.
    """
    candidates, sweeps = effort_search(effort)
    _, _, h, w = latent.shape
    flat = latent[0].flatten(1).T  # (h*w, d)
    order = (codebook.pow(2).sum(1)[None] - 2 * flat @ codebook.T).argsort(1)
    ranked = order[:, :min(candidates, len(codebook))].T.reshape(-1, h, w)  # (C, h, w)
    indices = ranked[0].clone()
    if len(ranked) == 1 or sweeps == 0:
        return indices
    bits = PRECISION - torch.from_numpy(np.asarray(table, dtype=np.float64)).float().log2()
    unit = x.width // w
    for y0 in range(0, h, TILE):
        for x0 in range(0, w, TILE):
            a, b = max(0, y0 - MARGIN), min(h, y0 + TILE + MARGIN)
            c, d = max(0, x0 - MARGIN), min(w, x0 + TILE + MARGIN)
            movable = torch.zeros(b - a, d - c, dtype=torch.bool)
            movable[y0 - a:min(h, y0 + TILE) - a, x0 - c:min(w, x0 + TILE) - c] = True
            indices[a:b, c:d] = _refine_tile(
                decode, x.tile(unit * a, unit * b, unit * c, unit * d), ranked[:, a:b, c:d],
                indices[a:b, c:d], movable, bits * rate_weight, sweeps, unit)
    return indices


def _refine_tile(decode, x, ranked, indices, movable, rate, sweeps, unit) -> torch.Tensor:
    """One tile of :func:`refine_indices`: only ``movable`` units change, each scored on its
    window; ``rate`` (K,) is the rate term of every codeword."""
    h, w = indices.shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    error = _window_error(decode(indices[None]), x, unit)
    for _ in range(sweeps):
        for phase in range(SPACING * SPACING):
            here = movable & (ys % SPACING == phase // SPACING) & (xs % SPACING == phase % SPACING)
            trials = torch.where(here[None], ranked[1:], indices[None])  # (C-1, h, w)
            trials = trials[(trials != indices[None])[:, here].any(1)]
            if not len(trials):
                continue
            costs = torch.stack([_window_error(decode(t[None]), x, unit) for t in trials])
            costs += rate[trials]
            best = costs.argmin(0)
            better = here & (costs.gather(0, best[None])[0] < error + rate[indices])
            proposal = torch.where(better, trials.gather(0, best[None])[0], indices)
            if torch.equal(proposal, indices):
                continue
            new_error = _window_error(decode(proposal[None]), x, unit)
            # windows overlap between phases: keep the phase only if the whole tile gains
            if new_error.sum() + rate[proposal].sum() < error.sum() + rate[indices].sum():
                indices, error = proposal, new_error
    return indices
