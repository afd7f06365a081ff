"""Codebooks and k-means: what every vector quantizer here is built on.

:class:`Codebooks` holds M codebooks of K codewords over a (B, M*d, H, W) latent: the split into
groups, nearest-codeword indices, embedding, nested group masks, and the re-seeding of dead
codewords from batch latents that keeps a whole codebook in use. The MCQ family's quantizers
(``models/mcq/quantizers.py``) and the VQGAN's spherical codebook (``models/vq/vqgan.py``)
subclass it.

:func:`kmeans` fits codebooks offline: the VQ ladder's smaller codebooks, and MCQ's at the end of
autoencoder pretraining (and, through ``ec_kmeans``, its residual stages).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def squared_distances(points: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """Squared distances (..., N, K) of points (..., N, d) to codewords (..., K, d)."""
    return (points.pow(2).sum(-1, keepdim=True) - 2 * points @ words.transpose(-1, -2)
            + words.pow(2).sum(-1).unsqueeze(-2))


class Codebooks(nn.Module):
    """M codebooks of K codewords of dimension d over a (B, M*d, H, W) latent."""

    codebooks: torch.Tensor

    def __init__(self, groups: int, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.groups, self.codebook_size, self.dim = groups, codebook_size, dim

    def _split(self, z: torch.Tensor) -> torch.Tensor:
        b, _, h, w = z.shape
        return z.view(b, self.groups, self.dim, h, w).permute(1, 0, 3, 4, 2).reshape(
            self.groups, -1, self.dim)

    def _merge(self, flat: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
        return flat.view(self.groups, b, h, w, self.dim).permute(1, 0, 4, 2, 3).reshape(
            b, self.groups * self.dim, h, w)

    def _distances(self, flat: torch.Tensor) -> torch.Tensor:
        """Squared distances (M, N, K) of split latents (M, N, d) to every codeword."""
        return squared_distances(flat, self.codebooks)

    def stage_codebook(self, g: int) -> tuple[slice, torch.Tensor]:
        """(the latent channels that group g codes, its codewords (K, d))."""
        return slice(g * self.dim, (g + 1) * self.dim), self.codebooks[g]

    def indices(self, z: torch.Tensor, groups: int | None = None) -> torch.Tensor:
        """Nearest codeword per group: (B, M*d, H, W) -> (B, M, H, W) int64, or only the first
        ``groups`` of them."""
        b, _, h, w = z.shape
        dist = self._distances(self._split(z))
        return dist.argmin(-1).view(self.groups, b, h, w).permute(1, 0, 2, 3)[:, :groups]

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Codewords of (B, M, H, W) indices as a (B, M*d, H, W) latent."""
        b, m, h, w = indices.shape
        parts = [self.codebooks[g][indices[:, g]] for g in range(m)]  # each (B, H, W, d)
        return torch.stack(parts, 1).permute(0, 1, 4, 2, 3).reshape(b, m * self.dim, h, w)

    @property
    def width(self) -> int:
        """Channels of the quantized latent."""
        return self.groups * self.dim

    def embed_prefix(self, indices: torch.Tensor) -> torch.Tensor:
        """Codewords of the first q groups (B, q, H, W) as the full latent, zeros elsewhere."""
        b, q, h, w = indices.shape
        head = self.embed(indices) if q else indices.new_zeros((b, 0, h, w), dtype=torch.float)
        return F.pad(head, (0, 0, 0, 0, 0, (self.groups - q) * self.dim))

    def group_mask(self, active: torch.Tensor) -> torch.Tensor:
        """(B,) number of active groups -> (B, M*d, 1, 1) mask keeping the first groups' channels
        (nested groups: the rate control of the multi-codebook models)."""
        group = torch.arange(self.groups, device=active.device)
        keep = (group[None, :] < active[:, None]).float()
        return keep.repeat_interleave(self.dim, 1)[:, :, None, None]

    @torch.no_grad()
    def adopt_codebooks(self) -> None:
        """Treat the current codewords as trained (after loading them from a weight file that
        keeps no training state): no re-initialisation from the first batch."""
        self.initialised.fill_(True)

    @torch.no_grad()
    def _track_usage(self, idx: torch.Tensor, flat: torch.Tensor) -> None:
        """Running share of each codeword in the indices (M, N) (subclasses keep a ``usage``
        buffer and ``usage_decay``); codewords far below a uniform share are re-seeded from the
        batch latents (M, N, d), at most K/64 per call."""
        counts = torch.zeros_like(self.usage).scatter_add_(
            1, idx, torch.ones_like(idx, dtype=self.usage.dtype)) / idx.shape[1]
        self.usage.mul_(self.usage_decay).add_(counts, alpha=1 - self.usage_decay)
        dead = self.usage < 0.03 / self.codebook_size
        self._reseed(dead, flat, limit=max(1, self.codebook_size // 64))
        self.usage[dead] = 1.0 / self.codebook_size

    @torch.no_grad()
    def _reseed(self, dead: torch.Tensor, flat: torch.Tensor, limit: int | None = None) -> None:
        """Replace dead codewords (M, K mask) by random latents of the batch (M, N, d), at most
        ``limit`` per group and call (so that the codebook changes gradually)."""
        for g in range(self.groups):
            where = dead[g].nonzero()[:, 0][:limit]
            if len(where):
                pick = torch.randint(0, flat.shape[1], (len(where),), device=flat.device)
                self.codebooks.data[g, where] = flat[g, pick]
                dead[g] = False
                dead[g, where] = True


def kmeans(points: torch.Tensor, k: int, weights: torch.Tensor | None = None, iters: int = 40,
           seed: int = 0) -> torch.Tensor:
    """Weighted k-means (Lloyd) of points (N, d) into k centroids (k, d).

    Initialised by weighted k-means++ seeding; a centroid left without points is moved to the
    point that is currently worst served. Deterministic for a given seed.
    """
    n = len(points)
    if not 1 <= k <= n:
        raise ValueError(f"k must be 1..{n} for {n} points, got {k}")
    w = torch.ones(n) if weights is None else weights.float().clamp(min=0)
    if w.sum() <= 0:
        raise ValueError("k-means weights must not all be zero")
    gen = torch.Generator().manual_seed(seed)
    points = points.float()
    centroids = points[torch.multinomial(w, 1, generator=gen)]
    best = (points - centroids[0]).pow(2).sum(1)
    for _ in range(1, k):  # k-means++: next seed with probability ~ weight * distance^2
        p = w * best
        pick = torch.multinomial(p if p.sum() > 0 else w, 1, generator=gen)
        centroids = torch.cat([centroids, points[pick]])
        best = torch.minimum(best, (points - points[pick]).pow(2).sum(1))
    for _ in range(iters):
        dist = torch.cdist(points, centroids).pow(2)
        assign = dist.argmin(1)
        total = torch.zeros(k).index_add_(0, assign, w)
        sums = torch.zeros_like(centroids).index_add_(0, assign, points * w[:, None])
        new = torch.where(total[:, None] > 0, sums / total.clamp(min=1e-12)[:, None], centroids)
        for empty in (total == 0).nonzero()[:, 0]:
            served = (w * dist.gather(1, assign[:, None])[:, 0])
            worst = int(served.argmax())
            new[empty] = points[worst]
            dist[worst] = 0  # do not hand the same point to two empty clusters
        if torch.allclose(new, centroids):
            break
        centroids = new
    return centroids
