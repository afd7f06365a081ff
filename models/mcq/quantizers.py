"""The MCQ family's vector quantizers.

The multi-codebook quantizers split the latent channels into M groups and quantize each group with
its own codebook (the multi-codebook VQ of McQuic), and re-seed dead codewords from the current
batch so that the whole codebook stays in use. They differ in training:

* :class:`MultiCodebookVQ`: straight-through nearest codeword, exponential-moving-average codebooks
  and a commitment loss (the VQ-VAE recipe);
* :class:`GumbelMultiCodebookVQ`: probabilistic quantization as in McQuic. Logits are negative
  scaled distances to the codewords, so the latent is modelled as a Gaussian mixture whose means
  are the codewords; training draws a hard Gumbel-softmax sample (straight-through on the soft
  one) and the codebooks learn by gradient. Encoding uses the nearest codeword.

:class:`ResidualVQ` instead quantizes the *whole* latent in S stages, each stage the error that
the stages before it left (residual VQ, as in SoundStream), with EMA codebooks.

All three are *nested*: given ``active`` (B,) the training output keeps only the first groups
(stages) per image, and ``embed_prefix`` decodes the first q groups of indices into the full latent
(zeros, or the partial sum, for the rest). That is the rate control of the MCQ models.

:func:`ec_kmeans` is the entropy-constrained form of k-means (``models/codebooks.py``), for
codebooks whose indices are entropy-coded (the residual stages, ``--refit-codebooks``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nicodec.models.codebooks import Codebooks, kmeans, squared_distances


class MultiCodebookVQ(Codebooks):
    """Straight-through VQ with EMA codebook updates."""

    def __init__(self, groups: int, codebook_size: int, dim: int, decay: float = 0.99) -> None:
        super().__init__(groups, codebook_size, dim)
        self.decay = decay
        self.update_codebooks = True  # False: training leaves the codewords as they are
        self.register_buffer("codebooks", torch.randn(groups, codebook_size, dim) * 0.1)
        self.register_buffer("ema_count", torch.ones(groups, codebook_size))
        self.register_buffer("ema_sum", self.codebooks.clone())
        self.register_buffer("initialised", torch.tensor(False))

    @torch.no_grad()
    def adopt_codebooks(self) -> None:
        """As for every codebook, and the EMA statistics restart from the loaded codewords."""
        super().adopt_codebooks()
        self.ema_count.fill_(1.0)
        self.ema_sum.copy_(self.codebooks)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        if not bool(self.initialised):
            pick = torch.randint(0, flat.shape[1], (self.codebook_size,), device=flat.device)
            self.codebooks.copy_(flat[:, pick])
            self.ema_sum.copy_(self.codebooks)
            self.ema_count.fill_(1.0)
            self.initialised.fill_(True)
            return
        onehot = F.one_hot(idx, self.codebook_size).type(flat.dtype)  # (M, N, K)
        self.ema_count.mul_(self.decay).add_(onehot.sum(1), alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.transpose(1, 2) @ flat, alpha=1 - self.decay)
        self.codebooks.copy_(self.ema_sum / self.ema_count.clamp(min=1e-5)[..., None])
        dead = self.ema_count < 1e-2
        if dead.any():
            self._reseed(dead, flat)
            self.ema_sum[dead] = self.codebooks[dead]
            self.ema_count[dead] = 1.0

    def forward(self, z: torch.Tensor, active: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantize: returns (straight-through latent, indices (B, M, H, W), commitment loss);
        with ``active`` only the first groups of each image are kept."""
        idx = self.indices(z)
        if self.training and self.update_codebooks:
            flat = self._split(z.detach())
            self._update(flat, idx.permute(1, 0, 2, 3).reshape(self.groups, -1))
            idx = self.indices(z)
        zq = self.embed(idx)
        commitment = F.mse_loss(z, zq.detach())
        zq = z + (zq - z).detach()
        return (zq if active is None else zq * self.group_mask(active)), idx, commitment


class GumbelMultiCodebookVQ(Codebooks):
    """Probabilistic multi-codebook quantization (McQuic): hard Gumbel-softmax in training.

    The mixture is restricted to each latent's ``candidates`` nearest codewords: the other
    components carry negligible probability, and the restriction makes the sampling and its
    backward pass K / candidates times cheaper (measured 0.58 s -> 0.1 s per CPU step at K = 256).
    """

    def __init__(self, groups: int, codebook_size: int, dim: int, tau: float = 1.0,
                 candidates: int = 16, usage_decay: float = 0.99, sharpness: float = 4.0) -> None:
        super().__init__(groups, codebook_size, dim)
        self.tau, self.usage_decay, self.sharpness = tau, usage_decay, sharpness
        self.candidates = min(candidates, codebook_size)
        self.codebooks = nn.Parameter(torch.randn(groups, codebook_size, dim) * 0.1)
        self.log_scale = nn.Parameter(torch.zeros(groups))  # logits = -scale * distance
        self.register_buffer("usage", torch.ones(groups, codebook_size) / codebook_size)
        self.register_buffer("initialised", torch.tensor(False))

    @torch.no_grad()
    def _init_from_data(self, flat: torch.Tensor) -> None:
        """Codewords drawn from the first batch (no dead start) and a mixture scale that makes
        the typical nearest codeword ``sharpness`` nats likelier than a uniform pick among the
        candidates: with the default scale of 1 a small latent gives near-uniform samples, pure
        noise that teaches the synthesis to ignore the group."""
        self._reseed(torch.ones_like(self.usage, dtype=torch.bool), flat)
        dist = self._distances(flat).topk(self.candidates, dim=-1, largest=False).values
        spread = (dist.mean(-1) - dist[..., 0]).mean(-1).clamp(min=1e-8)  # (M,)
        self.log_scale.copy_((self.sharpness / spread).log())
        self.initialised.fill_(True)

    def forward(self, z: torch.Tensor, active: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantize: returns (latent, indices (B, M, H, W), zero auxiliary loss); with
        ``active`` only the first groups of each image are kept."""
        b, _, h, w = z.shape
        flat = self._split(z)
        if self.training and not bool(self.initialised):
            self._init_from_data(flat.detach())
        with torch.no_grad():
            nearest = self._distances(flat).topk(self.candidates, dim=-1, largest=False).indices
        idx = nearest[..., 0]  # (M, N): topk is sorted, the first is the nearest
        if self.training:
            cand = torch.stack([self.codebooks[g][nearest[g]] for g in range(self.groups)])
            dist = (flat[:, :, None, :] - cand).pow(2).sum(-1)  # (M, N, candidates)
            logits = -dist * self.log_scale.exp()[:, None, None]
            sample = F.gumbel_softmax(logits, tau=self.tau, hard=True)
            # the sampled codeword, with an identity path to the latent as well: through the
            # softmax alone the encoder's gradient vanishes as the mixture sharpens
            zq = self._merge((sample[..., None] * cand).sum(-2), b, h, w) + z - z.detach()
            self._track_usage(idx, flat.detach())
        indices = idx.view(self.groups, b, h, w).permute(1, 0, 2, 3)
        if not self.training:
            zq = self.embed(indices)
        if active is not None:
            zq = zq * self.group_mask(active)
        return zq, indices, z.new_zeros(())


class ResidualVQ(nn.Module):
    """S stages of EMA VQ over the whole latent (B, d, H, W): stage s quantizes the error left by
    stages < s, so every stage refines all channels. A stage costs the same bits as a channel
    group, but a later stage still has the whole remaining error to work on, where a later
    channel group of a nested split only has its own channels (measured: their energy falls
    off steeply, so those groups spend full rate on almost nothing)."""

    def __init__(self, stages: int, codebook_size: int, dim: int, decay: float = 0.99) -> None:
        super().__init__()
        self.groups, self.codebook_size, self.dim = stages, codebook_size, dim
        self.stages = nn.ModuleList(MultiCodebookVQ(1, codebook_size, dim, decay)
                                    for _ in range(stages))

    @property
    def width(self) -> int:
        return self.dim

    def _quantize(self, z: torch.Tensor, update: bool, stages: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(stage codewords (S, B, d, H, W), indices (B, S, H, W)) of the first ``stages``
        stages (default all); ``update``: EMA step."""
        residual, words, indices = z.detach(), [], []
        for stage in self.stages[:stages]:
            idx = stage.indices(residual)
            if update and stage.update_codebooks:
                stage._update(stage._split(residual), idx.permute(1, 0, 2, 3).reshape(1, -1))
                idx = stage.indices(residual)
            word = stage.embed(idx)
            residual = residual - word
            words.append(word)
            indices.append(idx)
        return torch.stack(words), torch.cat(indices, 1)

    @torch.no_grad()
    def indices(self, z: torch.Tensor, stages: int | None = None) -> torch.Tensor:
        """Indices (B, S, H, W) of every stage, in order, or of the first ``stages`` (the later
        ones are not computed: encoding at quality q needs q stages)."""
        if stages == 0:
            b, _, h, w = z.shape
            return torch.zeros((b, 0, h, w), dtype=torch.long, device=z.device)
        return self._quantize(z, update=False, stages=stages)[1]

    def stage_codebook(self, s: int) -> tuple[slice, torch.Tensor]:
        """(the latent channels that stage s codes: all of them, its codewords (K, d))."""
        return slice(None), self.stages[s].codebooks[0]

    def embed_prefix(self, indices: torch.Tensor) -> torch.Tensor:
        """The sum of the first q stages' codewords (zeros for q = 0)."""
        b, q, h, w = indices.shape
        total = indices.new_zeros((b, self.dim, h, w), dtype=torch.float)
        for s in range(q):
            total = total + self.stages[s].embed(indices[:, s : s + 1])
        return total

    def forward(self, z: torch.Tensor, active: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantize: (straight-through partial sum of the first ``active`` stages per image,
        indices (B, S, H, W), commitment of z to the sum of all stages)."""
        words, idx = self._quantize(z, update=self.training)
        sums = words.cumsum(0)  # (S, B, d, H, W): the latent after 1..S stages
        if active is None:
            active = torch.full((z.shape[0],), self.groups, device=z.device)
        b = torch.arange(z.shape[0], device=z.device)
        partial = torch.cat([torch.zeros_like(sums[:1]), sums])[active, b]
        commitment = F.mse_loss(z, sums[-1])
        through = (active > 0).float()[:, None, None, None]  # no gradient when nothing is sent
        return partial + (z - z.detach()) * through, idx, commitment


def ec_assign(points: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor,
              rate_weight: float) -> torch.Tensor:
    """Entropy-constrained assignment: per point, the codeword minimising squared error plus
    ``rate_weight`` x its code length in bits."""
    return (squared_distances(points, words) + rate_weight * lengths).argmin(-1)


@torch.no_grad()
def ec_kmeans(points: torch.Tensor, k: int, rate_weight: float, iters: int = 20
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy-constrained k-means (ECVQ, Chou, Lookabaugh & Gray 1989) of points (N, d):
    (codewords (k, d), code lengths (k,) in bits).

    Plain :func:`kmeans` first, then ``iters`` Lloyd iterations whose assignment is
    :func:`ec_assign` under the code lengths -log2 of each codeword's share of the points
    (add-half smoothed). The rate term concentrates the points on fewer, more probable
    codewords, whose indices then cost fewer bits under the prior: on MCQ's residual stages
    that beat plain k-means by 9% BD-rate (models/weights/mcq.md). Weight 0 is plain k-means.
    """
    words = kmeans(points, k, iters=iters)
    lengths = torch.full((k,), math.log2(k))
    for _ in range(iters if rate_weight else 0):
        idx = ec_assign(points, words, lengths, rate_weight)
        count = torch.bincount(idx, minlength=k).float()
        sums = torch.zeros_like(words).index_add_(0, idx, points)
        words = torch.where(count[:, None] > 0, sums / count.clamp(min=1)[:, None], words)
        lengths = -torch.log2((count + 0.5) / (count.sum() + 0.5 * k))
    return words, lengths
