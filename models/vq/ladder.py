"""The codebook ladder: one trained VQGAN, many rates.

A VQGAN's rate is fixed by its codebook size K (log2 K bits per 16x16 unit at most). Following
Mao et al., smaller codebooks are made from the trained one by k-means: the codewords, weighted by
how often training latents pick them, are clustered into K centroids. Each small codebook is then
fine-tuned with the encoder and decoder frozen: indices are the nearest centroids of the frozen
encoder's latents, and the centroids learn from the reconstruction loss through the frozen
decoder (the centroid of a cluster is a good average in the lookup space, but not necessarily the
codeword that decodes best; this matters most when K is small).

The ``ladder`` command of ``models/vq/train.py`` runs these steps on a VQGAN run's checkpoint and
exports the shipped file.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nicodec.bitstream.entropy import cost_bits
from nicodec.models.data import CropSampler, whole_image
from nicodec.models.vq.vqgan import nearest


def crop_pool(images: list[np.ndarray], n: int, crop: int, seed: int = 0) -> torch.Tensor:
    """n random crops (uint8, (n, 3, crop, crop)) of the training images, fixed by the seed."""
    sampler = CropSampler(images, crop, seed=seed)
    return torch.cat([(sampler.batch(min(64, n - i)) * 255).round().to(torch.uint8)
                      for i in range(0, n, 64)])


@torch.no_grad()
def encode_pool(model, pool: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """Lookup-space latents (n, d, h, w) of a crop pool (the encoder is frozen: computed once)."""
    return torch.cat([model.encode(pool[i:i + batch].float() / 255)
                      for i in range(0, len(pool), batch)])


def finetune_codebook(model, codebook: torch.Tensor, latents: torch.Tensor, pool: torch.Tensor,
                      steps: int, batch: int, lr: float, loss_fn, seed: int = 0) -> torch.Tensor:
    """Fine-tune the codewords (K, d) through the frozen decoder; returns the new codebook."""
    for p in model.parameters():
        p.requires_grad_(False)
    cb = torch.nn.Parameter(codebook.clone())
    opt = torch.optim.Adam([cb], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc=f"tune K={len(codebook)}", leave=False,
                  disable=None):
        pick = torch.randint(0, len(pool), (batch,), generator=gen)
        z = latents[pick]
        idx = nearest(z, cb.detach())
        x_hat = model.decode(cb[idx].permute(0, 3, 1, 2))
        loss = loss_fn(x_hat, pool[pick].float() / 255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return cb.detach()


@torch.no_grad()
def count_indices(model, codebooks: list[torch.Tensor], images: list[np.ndarray]
                  ) -> list[np.ndarray]:
    """Index counts of every codebook over whole training images (the encoder runs once)."""
    counts = [np.zeros(len(cb), dtype=np.int64) for cb in codebooks]
    for img in tqdm(images, desc="counting", leave=False, disable=None):
        z = model.encode(whole_image(img, model.unit))
        for c, cb in zip(counts, codebooks):
            c += np.bincount(nearest(z, cb).flatten().numpy(), minlength=len(cb))
    return counts


@torch.no_grad()
def evaluate(model, codebooks: list[torch.Tensor], tables: list[np.ndarray],
             images: list[np.ndarray]) -> list[dict]:
    """Per quality: ideal bpp under the static table and PSNR (8-bit rounded pixels, pooled over
    the images), on whole images cropped to multiples of 16."""
    bits = np.zeros(len(codebooks))
    sq_err = np.zeros(len(codebooks))
    pixels = 0
    for img in tqdm(images, desc="evaluating", leave=False, disable=None):
        x = whole_image(img, model.unit)
        z = model.encode(x)
        for q, (cb, table) in enumerate(zip(codebooks, tables)):
            idx = nearest(z, cb)
            bits[q] += cost_bits(idx.flatten().numpy(), table)
            x_hat = (model.decode(cb[idx].permute(0, 3, 1, 2)).clamp(0, 1) * 255).round() / 255
            sq_err[q] += F.mse_loss(x_hat, x, reduction="sum").item()
        pixels += x.shape[2] * x.shape[3]
    return [{"quality": q + 1, "K": len(cb), "bpp": bits[q] / pixels,
             "psnr": -10 * math.log10(sq_err[q] / (3 * pixels))}
            for q, cb in enumerate(codebooks)]


def perplexity(counts: torch.Tensor) -> float:
    """2**entropy of an index histogram: the number of equally used codewords it amounts to."""
    p = counts[counts > 0] / counts.sum()
    return float(2 ** -(p * p.log2()).sum())
