"""TinyMCQ: a one-level multi-codebook VQ codec, small enough to train on a CPU in minutes.

It is the foundation's default model, and the MCQ family in its smallest form:

* analysis transform to 1/8 resolution (three strided 5x5 convolutions with GDN), latent of
  M groups x d channels;
* multi-codebook VQ: each group has its own codebook of K codewords
  (``models/mcq/quantizers.py``);
* rate control by **nested groups**: quality q keeps the first q groups and the synthesis sees
  zeros for the others (trained with a random q per step, as in nested dropout);
* the prior codes the groups of one position in order: group 0 with a static table, group g with
  a small network on the indices of groups < g at the *same* position. No spatial context, so all
  positions of a group are decoded in one vectorised step, and packets stay independent.

The prior (``models/mcq/prior.py``) is trained in float and shipped as integers, evaluated
exactly so that probabilities are bit-identical on every machine. The weight file's reader and
writer live here too: this module is the codec interface the registry loads for ``mcq-tiny``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from nicodec.models import weightfile
from nicodec.models.tiling import Pixels
from nicodec.models.layers import GDN, conv, deconv, inpaint
from nicodec.models.mcq.prior import ChannelPrior, IntChannelPrior
from nicodec.models.mcq.quantizers import MultiCodebookVQ


@dataclass(frozen=True)
class TinyMCQConfig:
    """Widths of the network; stored in the weight file's metadata."""

    channels: int = 64
    groups: int = 4
    codebook_size: int = 256
    group_dim: int = 16
    prior_hidden: int = 64


class TinyMCQ(nn.Module):
    """Analysis / multi-codebook VQ / synthesis; the prior lives beside it (float and integer)."""

    unit = 8  # pixels per latent position: the packet unit

    def __init__(self, config: TinyMCQConfig = TinyMCQConfig()) -> None:
        super().__init__()
        self.config = config
        n, latent = config.channels, config.groups * config.group_dim
        self.g_a = nn.Sequential(conv(3, n), GDN(n), conv(n, n), GDN(n), conv(n, latent))
        self.g_s = nn.Sequential(deconv(latent, n), GDN(n, inverse=True), deconv(n, n),
                                 GDN(n, inverse=True), deconv(n, 3))
        self.quantizer = MultiCodebookVQ(config.groups, config.codebook_size, config.group_dim)
        self.prior = ChannelPrior(config.groups, config.codebook_size, config.prior_hidden)

    def columns(self, quality: int) -> int:
        """Symbols per unit at a quality: one index per kept group."""
        return quality

    def forward(self, x: torch.Tensor, active: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training pass: x in [0, 1], ``active`` groups per image."""
        zq, idx, commitment = self.quantizer(self.g_a(x), active)
        x_hat = self.g_s(zq)
        return {"x_hat": x_hat, "indices": idx, "commitment": commitment}

    @torch.no_grad()
    def analyze(self, x: torch.Tensor, groups: int) -> np.ndarray:
        """Image (1, 3, H, W) in [0, 1] (or :class:`models.tiling.Pixels`: taken whole), H and
        W multiples of 8 -> indices (groups, H/8, W/8)."""
        x = Pixels.of(x, self.unit).whole()
        return self.quantizer.indices(self.g_a(x))[0, :groups].cpu().numpy()

    @torch.no_grad()
    def synthesize(self, indices: np.ndarray, lost: np.ndarray | None = None) -> torch.Tensor:
        """Indices (q, h, w) -> image (1, 3, 8h, 8w) in [0, 1].

        ``lost`` (h, w) marks positions whose indices were in damaged packets: their latent is
        concealed by the mean of the surviving latents around them (repeated for lost runs).
        """
        idx = torch.from_numpy(np.ascontiguousarray(indices, dtype=np.int64))[None]
        z = self.quantizer.embed_prefix(idx)
        if lost is not None and lost.any():
            z = inpaint(z, torch.from_numpy(lost))
        return self.g_s(z).clamp(0, 1)

    def unit_prior_loss(self, units: torch.Tensor) -> torch.Tensor:
        """Prior cross-entropy (bits per symbol) of symbols (columns, N) of whole units."""
        return self.prior.loss(units[:0], units)

    def export_prior(self, column0: np.ndarray) -> IntChannelPrior:
        """The integer prior; group 0 gets a static table counted from ``column0`` symbols."""
        counts = np.bincount(column0, minlength=self.config.codebook_size) + 0.5
        return IntChannelPrior.from_float(self.prior, counts)

    def config_dict(self) -> dict:
        return asdict(self.config)


def save_weights(model: TinyMCQ, prior: IntChannelPrior, path: str, metadata: dict) -> None:
    """Write the shipped weights: float transforms and codebooks, integer prior, config."""
    weightfile.write(path, model,
                     lambda k: k.startswith(("g_a.", "g_s.")) or k == "quantizer.codebooks",
                     prior.tensors(), model.config_dict(), metadata)


def load_weights(path: str) -> tuple[TinyMCQ, IntChannelPrior]:
    """Read weights written by :func:`save_weights`."""
    config, tensors = weightfile.read(path)
    model = weightfile.load_state(TinyMCQ(TinyMCQConfig(**config)), tensors)
    return model, IntChannelPrior.from_tensors(tensors)
