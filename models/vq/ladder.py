"""The codebook ladder: one trained VQGAN, many rates.

A VQGAN's rate is fixed by its codebook size K (log2 K bits per 16x16 unit at most). Following
Mao et al., smaller codebooks are made from the trained one by k-means: the codewords, weighted by
how often training latents pick them, are clustered into K centroids. Each small codebook is then
fine-tuned with the encoder and decoder frozen: indices are the nearest centroids of the frozen
encoder's latents, and the centroids learn from the reconstruction loss through the frozen
decoder (the centroid of a cluster is a good average in the lookup space, but not necessarily the
codeword that decodes best; this matters most when K is small).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from bitstream.entropy import cost_bits, freqs_from_counts
from models import weightfile
from models.data import CropSampler, load_images, split_paths, whole_image
from models.quantizers import kmeans


def nearest(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codeword (K, d) for each position of a (B, d, h, w) latent."""
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    dist = codebook.pow(2).sum(1)[None] - 2 * flat @ codebook.T  # |z|^2 does not change argmin
    return dist.argmin(1).view(z.shape[0], *z.shape[2:])


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
    for _ in tqdm(range(steps), desc=f"tune K={len(codebook)}", leave=False):
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
    for img in tqdm(images, desc="counting", leave=False):
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
    for img in tqdm(images, desc="evaluating", leave=False):
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


def _perplexity(counts: torch.Tensor) -> float:
    """2**entropy of an index histogram: the number of equally used codewords it amounts to."""
    p = counts[counts > 0] / counts.sum()
    return float(2 ** -(p * p.log2()).sum())


def build_ladder(args) -> None:
    """``python -m models.vq.train ladder``: k-means, fine-tuning, tables, evaluation, export."""
    from models.vq import codec
    from models.vq.train import load_checkpoint, reconstruction_loss

    start = time.time()
    out: Path = args.out
    model, ckpt = load_checkpoint(out / "checkpoint.pt")
    sizes = [int(s) for s in args.sizes.split(",")]
    full = model.quantizer.codebooks.detach()[0]
    full = F.normalize(full, dim=-1)
    if any(k >= len(full) for k in sizes) or sizes != sorted(sizes):
        raise SystemExit(f"--sizes must increase and stay below the codebook size {len(full)}")
    train_paths, val_paths = split_paths(args.data)
    images = load_images(train_paths, args.crop)
    pool = crop_pool(images, args.pool, args.crop, seed=args.seed)
    latents = encode_pool(model, pool)
    usage = torch.bincount(nearest(latents, full).flatten(), minlength=len(full)).float()
    state_path = out / "ladder.pt"
    done = torch.load(state_path, weights_only=True) if state_path.exists() else {}
    loss_fn = lambda x_hat, x: reconstruction_loss(x_hat, x, args.ssim_weight)  # noqa: E731
    codebooks = []
    for k in sizes:
        key = f"step{int(ckpt['step'])}:K{k}:tune{args.finetune_steps}"
        if key not in done:
            centroids = kmeans(full, k, weights=usage + 1e-3, seed=args.seed)
            done[key] = finetune_codebook(model, centroids, latents, pool, args.finetune_steps,
                                          args.batch, args.lr, loss_fn, seed=args.seed)
            torch.save(done, state_path)
        codebooks.append(done[key])
    codebooks.append(full)
    val_images = load_images(val_paths, 64)
    uniform = freqs_from_counts(np.ones(len(full)))
    fp32_psnr = evaluate(model, [full], [uniform], val_images)[0]["psnr"]
    if not args.fp32:  # evaluate, count and ship exactly the float16-rounded transforms
        weightfile.round_to_half(model, lambda k: k.startswith(codec.TRANSFORMS))
    counts = count_indices(model, codebooks, images[:: max(1, len(images) // args.count_images)])
    tables = [freqs_from_counts(c + 0.5) for c in counts]
    rows = evaluate(model, codebooks, tables, val_images)
    report = {"checkpoint_step": int(ckpt["step"]), "train_wall_seconds": float(ckpt["wall"]),
              "config": model.config_dict(), "sizes": [len(c) for c in codebooks],
              "finetune_steps": args.finetune_steps, "pool": args.pool, "crop": args.crop,
              "val_images": len(val_images),
              "full_codebook_used_on_pool": int((usage > 0).sum()),
              "full_codebook_perplexity_on_pool": _perplexity(usage),
              "transforms": "float32" if args.fp32 else "float16",
              "full_codebook_psnr_float32": fp32_psnr,
              "ladder_wall_seconds": round(time.time() - start), "validation": rows}
    (out / "ladder.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    if args.export:
        meta = {"steps": int(ckpt["step"]), "validation": json.dumps(
            [{"quality": r["quality"], "bpp": r["bpp"], "psnr": r["psnr"]} for r in rows]),
            "data": f"{args.data.name}/ minus held-out 5% ({len(train_paths)} images)"}
        codec.save_weights(model, codebooks, tables, str(args.export), meta, half=not args.fp32)
        print(f"wrote {args.export} ({args.export.stat().st_size / 1e6:.1f} MB)")
