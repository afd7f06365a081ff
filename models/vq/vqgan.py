"""A small VQGAN for extreme-rate image coding (after Mao et al., "Extreme Image Compression
using Fine-tuned VQGANs"), sized to train on one CPU thread.

The image is mapped to a grid of single codebook indices at 1/16 resolution, so the rate is at
most log2(K) / 256 bits per pixel (0.047 bpp for K = 4096); the decoder has to invent the detail
that does not fit, which is what the adversarial loss is for.

* :class:`Encoder`: four stride-2 convolutions (factor 16), a residual block after each;
* :class:`SphericalVQ`: a large codebook looked up in a low-dimensional space: the latent is
  projected to ``code_dim`` channels and l2-normalised, and so are the codewords (ViT-VQGAN), so
  nearest-codeword search is cosine similarity and no codeword can drift out of reach. Codewords
  that the batches stop using are re-seeded from batch latents (``models/codebooks.py``);
  :func:`nearest` is the same lookup in any codebook (the ladder's smaller ones);
* :class:`Decoder`: the mirror image, with transposed convolutions;
* :class:`PatchDiscriminator`: a few strided convolutions giving one real/fake logit per patch.

No normalisation layers: each residual branch starts at zero, which keeps the untrained network
an identity-like stack and lets Adam train it at batch sizes a CPU can afford.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nicodec.models.codebooks import Codebooks


@dataclass(frozen=True)
class VQGANConfig:
    """Widths of the network; stored in checkpoints and weight files."""

    widths: tuple[int, ...] = (32, 64, 96, 128)  # channels after each stride-2 stage
    blocks: int = 1  # residual blocks per stage (the 1/16 stage gets one more)
    codebook_size: int = 4096
    code_dim: int = 16  # dimension of the lookup space
    disc_width: int = 32

    def __post_init__(self) -> None:
        if len(self.widths) != 4:
            raise ValueError(f"a VQGAN here has 4 stride-2 stages (factor 16), got widths "
                             f"{self.widths}")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))


class ResBlock(nn.Module):
    """x + conv(act(conv(act(x)))), the second convolution zero-initialised."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class Encoder(nn.Module):
    """(B, 3, H, W) in [0, 1] -> (B, widths[-1], H/16, W/16)."""

    def __init__(self, widths: tuple[int, ...], blocks: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, cout in enumerate(widths):
            layers.append(nn.Conv2d(cin, cout, 5 if i == 0 else 4, stride=2,
                                    padding=2 if i == 0 else 1))
            layers += [ResBlock(cout) for _ in range(blocks + (i == len(widths) - 1))]
            cin = cout
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x * 2 - 1)


class Decoder(nn.Module):
    """(B, widths[-1], h, w) -> (B, 3, 16h, 16w), unclamped (clamp when producing pixels)."""

    def __init__(self, widths: tuple[int, ...], blocks: int) -> None:
        super().__init__()
        rev = list(reversed(widths))
        layers: list[nn.Module] = [ResBlock(rev[0]) for _ in range(blocks + 1)]
        for cin, cout in zip(rev, rev[1:]):
            layers.append(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1))
            layers += [ResBlock(cout) for _ in range(blocks)]
        layers += [nn.SiLU(), nn.ConvTranspose2d(rev[-1], 3, 4, stride=2, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (self.layers(z) + 1) / 2


class SphericalVQ(Codebooks):
    """One codebook of unit-norm codewords over a unit-norm (B, d, H, W) latent.

    Trained by gradient with the VQ-VAE codebook and commitment terms (on the sphere the squared
    distance is 2 - 2 cos); codewords are renormalised before each training lookup. A running
    usage estimate finds dead codewords, which are re-seeded from the batch (at most K/64 per
    step, so the codebook changes gradually).
    """

    def __init__(self, codebook_size: int, dim: int, usage_decay: float = 0.99) -> None:
        super().__init__(1, codebook_size, dim)
        self.usage_decay = usage_decay
        self.codebooks = nn.Parameter(F.normalize(torch.randn(1, codebook_size, dim), dim=-1))
        self.register_buffer("usage", torch.full((1, codebook_size), 1.0 / codebook_size))
        self.register_buffer("initialised", torch.tensor(False))

    def forward(self, z: torch.Tensor, beta: float = 0.25
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(straight-through codewords (B, d, H, W), indices (B, H, W), codebook loss)."""
        b, _, h, w = z.shape
        flat = self._split(z)  # (1, N, d)
        if self.training:
            with torch.no_grad():
                if not bool(self.initialised):  # start from the data: no codeword born dead
                    self._reseed(torch.ones_like(self.usage, dtype=torch.bool), flat)
                    self.initialised.fill_(True)
                self.codebooks.data = F.normalize(self.codebooks.data, dim=-1)
        with torch.no_grad():
            idx = self._distances(flat).argmin(-1)  # (1, N)
        zq = self.codebooks[0][idx[0]][None]
        loss = F.mse_loss(zq, flat.detach()) + beta * F.mse_loss(flat, zq.detach())
        if self.training:
            self._track_usage(idx, flat.detach())
        zq = self._merge(flat + (zq - flat).detach(), b, h, w)
        return zq, idx.view(b, h, w), loss


def nearest(z: torch.Tensor, codebook: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """Index of the nearest codeword (K, d) for each position of a (B, d, h, w) latent, for
    ``chunk`` positions at a time (the distances of all would be positions x K floats)."""
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    norms = codebook.pow(2).sum(1)[None]
    idx = torch.cat([(norms - 2 * part @ codebook.T).argmin(1)  # |z|^2 does not change argmin
                     for part in flat.split(chunk)]) if len(flat) else flat.new_zeros(0).long()
    return idx.view(z.shape[0], *z.shape[2:])


class VQGAN(nn.Module):
    """Encoder, projection to the lookup space, spherical VQ, projection back, decoder."""

    unit = 16  # pixels per latent position

    def __init__(self, config: VQGANConfig = VQGANConfig()) -> None:
        super().__init__()
        self.config = config
        top = config.widths[-1]
        self.encoder = Encoder(config.widths, config.blocks)
        self.quant_in = nn.Conv2d(top, config.code_dim, 1)
        self.quantizer = SphericalVQ(config.codebook_size, config.code_dim)
        self.quant_out = nn.Conv2d(config.code_dim, top, 1)
        self.decoder = Decoder(config.widths, config.blocks)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm lookup-space latent (B, code_dim, H/16, W/16) of an image in [0, 1]."""
        return F.normalize(self.quant_in(self.encoder(x)), dim=1)

    def decode(self, zq: torch.Tensor) -> torch.Tensor:
        """Image (unclamped) from lookup-space codewords (B, code_dim, h, w)."""
        return self.decoder(self.quant_out(zq))

    def forward(self, x: torch.Tensor, beta: float = 0.25) -> dict[str, torch.Tensor]:
        """Training pass: reconstruction, indices and the codebook/commitment loss."""
        zq, idx, vq_loss = self.quantizer(self.encode(x), beta)
        return {"x_hat": self.decode(zq), "indices": idx, "vq_loss": vq_loss}

    def config_dict(self) -> dict:
        return asdict(self.config)


class PatchDiscriminator(nn.Module):
    """Real/fake logits for overlapping patches (about 46 px receptive field), PatchGAN-style."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * width, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x * 2 - 1)
