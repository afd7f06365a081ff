"""Training entry point: ``python -m models.train tiny --out runs/tiny``.

Resumable: the run folder holds ``checkpoint.pt`` (model, optimizer, step, sampler state), written
every ``--save-every`` steps; running the same command again continues where it stopped. After the
autoencoder steps the prior is fitted on the training indices, the model is evaluated on the
held-back training images (never Kodak) and the shipped weight file is written.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from bitstream.entropy import cost_bits
from models.data import CropSampler, is_held_out, list_images, load_images
from models.prior import IntChannelPrior
from models.tiny_mcq import TinyMCQ, TinyMCQConfig, save_weights

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "train"


def _crop8(img: np.ndarray) -> torch.Tensor:
    h, w = img.shape[0] // 8 * 8, img.shape[1] // 8 * 8
    return torch.from_numpy(img[:h, :w].copy()).permute(2, 0, 1)[None].float().div(255)


def train_autoencoder(model: TinyMCQ, sampler: CropSampler, args: argparse.Namespace,
                      ckpt_path: Path, device: torch.device) -> None:
    """Distortion-only training (the VQ fixes the rate) with nested random group counts."""
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if not n.startswith("prior.")],
                           lr=args.lr)
    step = 0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        step = int(ckpt["step"])
        sampler.rng.bit_generator.state = json.loads(ckpt["sampler"])
    groups = model.config.groups
    bar = tqdm(total=args.steps, initial=step, desc="autoencoder", dynamic_ncols=True)
    model.train()
    while step < args.steps:
        lr = args.lr * (0.1 if step >= 0.8 * args.steps else 1.0)
        for group in opt.param_groups:
            group["lr"] = lr
        x = sampler.batch(args.batch).to(device)
        active = torch.randint(1, groups + 1, (x.shape[0],), device=device)
        active[0] = groups  # always train the full-rate path too
        out = model(x, active)
        mse = F.mse_loss(out["x_hat"], x)
        loss = mse + args.beta * out["commitment"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(psnr=f"{-10 * math.log10(mse.item()):.2f}")
        if step % args.save_every == 0 or step == args.steps:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                        "sampler": json.dumps(sampler.rng.bit_generator.state)}, ckpt_path)
    bar.close()


@torch.no_grad()
def collect_indices(model: TinyMCQ, images: list[np.ndarray]) -> np.ndarray:
    """Indices (M, N) of all positions of whole images."""
    model.eval()
    parts = [model.analyze(_crop8(img), model.config.groups).reshape(model.config.groups, -1)
             for img in tqdm(images, desc="indexing", leave=False)]
    return np.concatenate(parts, axis=1)


def fit_prior(model: TinyMCQ, indices: np.ndarray, steps: int) -> IntChannelPrior:
    """Cross-entropy fit of the channel prior on training indices, then integer export."""
    k = model.config.codebook_size
    counts = np.bincount(indices[0], minlength=k) + 0.5
    idx = torch.from_numpy(indices)
    prior = model.prior.train()
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    for step in tqdm(range(steps), desc="prior", leave=False):
        pick = torch.randint(0, idx.shape[1], (4096,))
        batch = idx[:, pick]
        loss = prior.loss(batch[:0], batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return IntChannelPrior.from_float(prior, counts)


@torch.no_grad()
def evaluate(model: TinyMCQ, prior: IntChannelPrior, images: list[np.ndarray]) -> list[dict]:
    """Ideal bpp (integer prior) and PSNR on whole held-back images, per quality."""
    model.eval()
    rows = []
    for q in range(1, model.config.groups + 1):
        bits = pixels = sq_err = 0.0
        for img in images:
            x = _crop8(img)
            idx = model.analyze(x, q)
            flat = idx.reshape(q, -1)
            bits += sum(cost_bits(flat[g], prior.freqs(flat[:g], g)) for g in range(q))
            x_hat = (model.synthesize(idx) * 255).round() / 255
            sq_err += F.mse_loss(x_hat, x, reduction="sum").item()
            pixels += x.shape[2] * x.shape[3]
        mse = sq_err / (pixels * 3)
        rows.append({"quality": q, "bpp": bits / pixels, "psnr": -10 * math.log10(mse)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", choices=["tiny"], help="model family to train")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of training photos")
    parser.add_argument("--out", type=Path, default=Path("runs/tiny"), help="run folder")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=0.25, help="commitment loss weight")
    parser.add_argument("--prior-steps", type=int, default=1500)
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--export", type=Path, default=None, help="write the shipped weights here")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    paths = list_images(args.data)
    train_paths = [p for p in paths if not is_held_out(p)]
    val_paths = [p for p in paths if is_held_out(p)]
    start = time.time()
    model = TinyMCQ(TinyMCQConfig()).to(device)
    sampler = CropSampler(load_images(train_paths, args.crop), args.crop)
    train_autoencoder(model, sampler, args, args.out / "checkpoint.pt", device)
    model = model.cpu()
    prior = fit_prior(model, collect_indices(model, sampler.images[::4]), args.prior_steps)
    val_images = load_images(val_paths, 64)
    rows = evaluate(model, prior, val_images) if val_images else []
    report = {"train_images": len(train_paths), "val_images": len(val_paths),
              "steps": args.steps, "batch": args.batch, "crop": args.crop,
              "device": str(device), "threads": torch.get_num_threads(),
              "wall_seconds_this_run": round(time.time() - start), "validation": rows}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    if args.export:
        save_weights(model, prior, str(args.export),
                     {"steps": args.steps, "validation": json.dumps(rows),
                      "data": f"{args.data.name}/ minus held-out 5% ({len(train_paths)} images)"})
        print(f"wrote {args.export}")


if __name__ == "__main__":
    main()
