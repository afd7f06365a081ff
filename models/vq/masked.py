"""The VQ model with the masked index transformer as its entropy model and restorer.

Coding (``codec/pipeline.py``): a file of one packet (the default: VQ files are a few KB) codes
its index grid in the stages of the prior's schedule (``models/vq/transformer.py``:
:data:`SCHEDULES`); the indices of stage s are coded with the tables the exact integer
transformer (``models/vq/exact.py``) computes from the indices of stages < s. A file split into
several packets for loss resilience codes each packet with the ladder's static table instead:
packets must decode independently, and a packet's own indices are too sparse a context to pay
for a transformer pass per packet and stage (``eval/loss.py`` measures what it would save).

Restoration: the indices of lost packets are masked and predicted from everything that arrived
(in one pass by default; more passes commit the most confident predictions first, as in MaskGIT's
decoding), and each lost unit is synthesized from the expected codeword under its prediction.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch

from nicodec.bitstream.entropy import TOTAL
from nicodec.models.vq.codec import LadderPrior, StaticPrior, VQNet, load_weights as load_ladder
from nicodec.models.vq.exact import IntIndexTransformer, load_prior
from nicodec.models.vq.transformer import num_stages, stage_map

# Passes of most-confident-first restoration. Measured on Kodak (4 images x 2 draws, 20% of
# indices lost, q8): 1 pass 0.93 dB below the loss-free decode, 2 passes 0.96, 4 passes 0.98,
# 8 passes 1.00 (and each pass costs a transformer evaluation): with the expected-codeword
# synthesis, committing hard guesses as context for later passes does not pay.
RESTORE_PASSES = 1
BAND_POSITIONS = 1 << 15  # grid positions per band of the transformer's pass (tests lower it)


class StagedPrior:
    """The transformer at one quality: stage tables for the coder, restoration of lost indices."""

    spatial = True

    def __init__(self, model: IntIndexTransformer, quality: int, static: StaticPrior) -> None:
        self.model, self.quality, self.static = model, quality, static
        self.stages = num_stages(model.schedule)

    def freqs(self, context: np.ndarray, j: int) -> np.ndarray:
        """The static table (files of several packets code every index with it)."""
        return self.static.freqs(context, j)

    def stage_map(self, h: int, w: int) -> np.ndarray:
        """(h*w,) coding stage of every grid position, raster order."""
        return stage_map(h, w, self.model.schedule).ravel()

    def bands(self, h: int, w: int) -> list[tuple[int, int]]:
        """Bands of grid rows (start, end) that the coder takes one at a time: about
        BAND_POSITIONS positions each, so tables and the transformer's pass stay bounded."""
        rows = max(1, BAND_POSITIONS // max(w, 1))
        return [(a, min(h, a + rows)) for a in range(0, h, rows)]

    def stage_tables(self, grid: np.ndarray, s: int, h: int, w: int,
                     band: tuple[int, int] | None = None) -> np.ndarray:
        """Tables of the stage-s positions (raster order) of ``grid`` (h*w,), or of those in the
        grid rows ``band``, when the indices of the earlier stages are known (only those are
        read): (count, K), or one shared (K,) table for stage 0. With nothing visible every
        position holds the mask token, attention averages identical values, and every position
        gets exactly the features of a 1x1 grid."""
        if s == 0:
            features = self.model.features(np.zeros((1, 1, 1), np.int64),
                                           np.zeros((1, 1, 1), bool), self.quality)[0]
            return self.model.freqs(features, self.quality)[0]
        stage = self.stage_map(h, w).reshape(h, w)
        a, b = band or (0, h)
        rows = np.flatnonzero(stage[a:b] == s) + a * w
        return self.model.freqs(self._features(grid.reshape(h, w), stage < s, rows),
                                self.quality)

    def _features(self, grid: np.ndarray, visible: np.ndarray, rows: np.ndarray
                  ) -> torch.Tensor:
        """Features (len(rows), dim) of the raster positions ``rows`` (ascending) of a grid
        (h, w) under ``visible`` (h, w), computed band by band: each band of grid rows with
        the transformer's reach (layers x radius) of rows above and below it. Attention only
        reaches that far and the pass is exact integer arithmetic, so the features are
        identical to those of the whole grid."""
        h, w = grid.shape
        reach = self.model.config.layers * self.model.config.radius
        parts = []
        for a, b in self.bands(h, w):
            lo, hi = np.searchsorted(rows, [a * w, b * w])
            if hi > lo:
                top, bottom = max(0, a - reach), min(h, b + reach)
                parts.append(self.model.features(grid[None, top:bottom], visible[None, top:bottom],
                                                 self.quality, rows[lo:hi] - top * w)[0])
        return torch.cat(parts) if parts else torch.zeros(0, self.model.config.dim,
                                                          dtype=torch.float64)

    def restore(self, grid: np.ndarray, lost: np.ndarray, passes: int = RESTORE_PASSES
                ) -> tuple[np.ndarray, np.ndarray]:
        """Fill the ``lost`` (h, w) positions of ``grid`` (h, w). Each pass predicts every
        remaining lost index and commits the most confident share (highest integer probability;
        ties by position), so later passes see the earlier commits as context.

        Returns the filled grid and, for each lost position in raster order, the predicted
        distribution (n, K) it was committed with: the decoder synthesizes the expected
        codeword under it, which costs less PSNR than a wrong hard index.
        """
        grid, known = grid.copy(), ~lost
        todo_all = np.flatnonzero(lost)
        probs = np.zeros((len(todo_all), self.model.sizes[self.quality - 1]))
        for p in range(passes):
            todo = np.flatnonzero(~known)
            if not len(todo):
                break
            features = self._features(grid, known, todo)
            freqs = self.model.freqs(features, self.quality)
            best, confidence = freqs.argmax(1), freqs.max(1)
            keep = np.argsort(-confidence, kind="stable")[: math.ceil(len(todo) / (passes - p))]
            grid.flat[todo[keep]] = best[keep]
            known.flat[todo[keep]] = True
            probs[np.searchsorted(todo_all, todo[keep])] = freqs[keep] / TOTAL
        return grid, probs


class MaskedLadderPrior:
    """The transformer for every quality of the ladder; ``at(quality)`` as the registry asks."""

    def __init__(self, model: IntIndexTransformer, static: LadderPrior) -> None:
        self.model, self.static = model, static

    def at(self, quality: int) -> StagedPrior:
        return StagedPrior(self.model, quality, self.static.at(quality))


def load_weights(path: str) -> tuple[VQNet, MaskedLadderPrior]:
    """The prior file and the VQ ladder file it names (beside it, checked by SHA-256)."""
    model, meta = load_prior(path)
    ladder = Path(path).parent / meta["ladder"]
    if hashlib.sha256(ladder.read_bytes()).hexdigest() != meta["ladder_sha256"]:
        raise ValueError(f"{path} was trained for another version of {ladder.name}")
    net, static = load_ladder(str(ladder))
    if net.sizes != model.sizes:
        raise ValueError(f"{path}: codebook sizes {model.sizes} differ from the ladder's")
    return net, MaskedLadderPrior(model, static)
