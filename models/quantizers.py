"""Vector quantizers.

:class:`MultiCodebookVQ` splits the latent channels into M groups and quantizes each group with its
own codebook (the multi-codebook VQ of McQuic). Training uses the straight-through estimator with
exponential-moving-average codebook updates, and re-seeds dead codewords from the current batch so
that the whole codebook stays in use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiCodebookVQ(nn.Module):
    """M codebooks of K codewords of dimension d over a (B, M*d, H, W) latent."""

    def __init__(self, groups: int, codebook_size: int, dim: int, decay: float = 0.99) -> None:
        super().__init__()
        self.groups, self.codebook_size, self.dim, self.decay = groups, codebook_size, dim, decay
        self.register_buffer("codebooks", torch.randn(groups, codebook_size, dim) * 0.1)
        self.register_buffer("ema_count", torch.ones(groups, codebook_size))
        self.register_buffer("ema_sum", self.codebooks.clone())
        self.register_buffer("initialised", torch.tensor(False))

    def _split(self, z: torch.Tensor) -> torch.Tensor:
        b, _, h, w = z.shape
        return z.view(b, self.groups, self.dim, h, w).permute(1, 0, 3, 4, 2).reshape(
            self.groups, -1, self.dim)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest codeword per group: (B, M*d, H, W) -> (B, M, H, W) int64."""
        b, _, h, w = z.shape
        flat = self._split(z)  # (M, N, d)
        dist = (flat.pow(2).sum(-1, keepdim=True) - 2 * flat @ self.codebooks.transpose(1, 2)
                + self.codebooks.pow(2).sum(-1)[:, None, :])
        return dist.argmin(-1).view(self.groups, b, h, w).permute(1, 0, 2, 3)

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Codewords of (B, M, H, W) indices as a (B, M*d, H, W) latent."""
        b, m, h, w = indices.shape
        parts = [self.codebooks[g][indices[:, g]] for g in range(m)]  # each (B, H, W, d)
        return torch.stack(parts, 1).permute(0, 1, 4, 2, 3).reshape(b, m * self.dim, h, w)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        if not bool(self.initialised):
            pick = torch.randint(0, flat.shape[1], (self.codebook_size,), device=flat.device)
            self.codebooks.copy_(flat[:, pick])
            self.ema_sum.copy_(self.codebooks)
            self.initialised.fill_(True)
            return
        onehot = F.one_hot(idx, self.codebook_size).type(flat.dtype)  # (M, N, K)
        self.ema_count.mul_(self.decay).add_(onehot.sum(1), alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.transpose(1, 2) @ flat, alpha=1 - self.decay)
        self.codebooks.copy_(self.ema_sum / self.ema_count.clamp(min=1e-5)[..., None])
        dead = self.ema_count < 1e-2
        if dead.any():
            for g in range(self.groups):
                n_dead = int(dead[g].sum())
                if n_dead:
                    pick = torch.randint(0, flat.shape[1], (n_dead,), device=flat.device)
                    self.codebooks[g, dead[g]] = flat[g, pick]
                    self.ema_sum[g, dead[g]] = flat[g, pick]
                    self.ema_count[g, dead[g]] = 1.0

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantize: returns (straight-through latent, indices (B, M, H, W), commitment loss)."""
        idx = self.indices(z)
        if self.training:
            flat = self._split(z.detach())
            self._update(flat, idx.permute(1, 0, 2, 3).reshape(self.groups, -1))
            idx = self.indices(z)
        zq = self.embed(idx)
        commitment = F.mse_loss(z, zq.detach())
        return z + (zq - z).detach(), idx, commitment
