"""VQ mode training: ``python -m nicodec.models.vq.train {vqgan,ladder,prior}``.

* ``vqgan --out runs/vq``: trains :class:`models.vq.vqgan.VQGAN` on random crops of the training
  photos (never Kodak): L1 + MS-SSIM reconstruction, codebook/commitment loss, and after
  ``--gan-start`` steps a hinge-loss patch discriminator. Resumable: ``checkpoint.pt`` in the run
  folder is written every ``--save-every`` steps, and the same command again continues (raise
  ``--steps`` to train longer). ``log.jsonl`` records PSNR and wall time, ``curve.jsonl`` the
  held-back PSNR of the full codebook every ``--eval-every`` steps (``python -m nicodec.eval.curves``).
  ``--init`` starts from a shipped VQ weight file instead of a random network.
* ``ladder --out runs/vq``: k-means of the trained codebook (weighted by how often each codeword
  is used) into the smaller ladder sizes, fine-tuning of each small codebook through the frozen
  decoder (``models/vq/ladder.py``), static index tables counted on training images, evaluation
  on the held-back training images, and with ``--export`` the shipped weight file
  (``models/vq/codec.py``).
* ``prior --out runs/vqprior``: the masked index transformer over the frozen ladder's index grids
  (entropy model and restorer of lost indices, ``models/vq/prior_train.py``); ``--export`` writes
  its exact integer weights (``models/vq/exact.py``).

CPU or CUDA unchanged (the device is picked automatically); ``--threads 1`` for a shared CPU;
``--minutes`` ends a ``vqgan`` or ``prior`` command early at a checkpoint (``models/training.py``).
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
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from nicodec.bitstream.entropy import freqs_from_counts
from nicodec.models import weightfile
from nicodec.models.codebooks import kmeans
from nicodec.models.data import DEFAULT_TRAIN, CropSampler, load_images, split_paths
from nicodec.models.training import Budget, Run, add_minutes_argument, checkpoint, restore
from nicodec.models.vq import codec, ladder
from nicodec.models.vq.prior_train import train_prior
from nicodec.models.vq.vqgan import VQGAN, PatchDiscriminator, VQGANConfig, nearest

MSSSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """MS-SSIM with as many of the five standard scales as the crop allows (11x11 windows need
    a side above 10 * 2**(scales - 1)); the weights of the kept scales are renormalised."""
    side = min(x.shape[-2:])
    scales = max(s for s in range(1, 6) if side > 10 * 2 ** (s - 1))
    betas = torch.tensor(MSSSIM_BETAS[:scales])
    return multiscale_structural_similarity_index_measure(
        x_hat, x, data_range=1.0, betas=tuple((betas / betas.sum()).tolist()))


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor, ssim_weight: float) -> torch.Tensor:
    """L1 plus ``ssim_weight`` * (1 - MS-SSIM) (MS-SSIM on the clamped image)."""
    loss = (x_hat - x).abs().mean()
    if ssim_weight:
        loss = loss + ssim_weight * (1 - ms_ssim(x_hat.clamp(0, 1), x))
    return loss


def adaptive_weight(rec: torch.Tensor, g_loss: torch.Tensor, model: VQGAN) -> torch.Tensor:
    """Ratio of the reconstruction and adversarial gradient norms at the decoder's last layer
    (Esser et al.): the adversarial term then pulls with ``--gan-weight`` times the strength of
    the reconstruction term, whatever the discriminator's current scale."""
    last = model.decoder.layers[-1].weight
    g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(max=1e4).detach()


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _config_from_args(args) -> VQGANConfig:
    widths = tuple(int(w) for w in args.widths.split(","))
    return VQGANConfig(widths=widths, blocks=args.blocks, codebook_size=args.codebook_size,
                       code_dim=args.code_dim, disc_width=args.disc_width)


def from_checkpoint(ckpt: dict) -> VQGAN:
    """The VQGAN of a run's checkpoint (its own config), in eval mode."""
    model = VQGAN(VQGANConfig(**json.loads(ckpt["config"])))
    model.load_state_dict(ckpt["model"])
    return model.eval()


@torch.no_grad()
def init_from_file(path: Path) -> VQGAN:
    """A VQGAN holding a shipped VQ file's transforms and full codebook (its last ladder rung):
    a new run continues from the shipped model (the discriminator and optimizers start fresh)."""
    net, _ = codec.load_weights(str(path))
    model = net.model
    model.quantizer.codebooks.copy_(net.codebooks[-1][None])
    model.quantizer.initialised.fill_(True)
    return model


@torch.no_grad()
def held_back_psnr(model: VQGAN, images: list) -> float:
    """PSNR of the full codebook on whole held-back images (the ladder's evaluation)."""
    model.eval()
    full = model.quantizer.codebooks[0]
    psnr = ladder.evaluate(model, [full], [freqs_from_counts(np.ones(len(full)))],
                           images)[0]["psnr"]
    model.train()
    return psnr


def train_vqgan(args) -> None:
    """``vqgan``: the VQGAN training loop (resumable, cut short by ``--minutes``)."""
    device = pick_device()
    run = Run(args.out, args.budget)
    ckpt = run.load(device)
    if ckpt is not None:  # the run's own config wins over the flags
        model = from_checkpoint(ckpt)
    elif args.init:
        model = init_from_file(args.init)
    else:
        model = VQGAN(_config_from_args(args))
    model = model.to(device)
    config = model.config
    disc = PatchDiscriminator(config.disc_width).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=args.lr, betas=(0.5, 0.9))
    train_paths, val_paths = split_paths(args.data)
    sampler = CropSampler(load_images(train_paths, args.crop), args.crop, seed=args.seed)
    val_images = load_images(val_paths, 64)[:8]
    step, wall = 0, 0.0
    if ckpt is not None:
        step = restore(ckpt, sampler, disc=disc, opt=opt, opt_d=opt_d)
        wall = float(ckpt["wall"])

    def save(done: int) -> None:
        run.save(checkpoint(done, sampler, model=model, disc=disc, opt=opt, opt_d=opt_d,
                            wall=wall, config=json.dumps(model.config_dict())))

    def record(done: int, loss: float) -> None:
        run.log({"step": done, "loss": loss,
                 "held_out_psnr": {"full": held_back_psnr(model, val_images)}})

    if step == 0:  # the starting point of the curve (an --init model's held-back PSNR)
        record(0, float("nan"))
    losses: list[float] = []
    model.train()
    for step in run.steps(step, args.steps, args.save_every, save, desc="vqgan"):
        start = time.time()
        lr = args.lr * (0.1 if step >= args.decay_at * args.steps else 1.0)
        lr *= min(1.0, (step + 1) / args.warmup) if args.warmup else 1.0
        for group in opt.param_groups + opt_d.param_groups:
            group["lr"] = lr
        x = sampler.batch(args.batch).to(device)
        out = model(x, args.beta)
        x_hat = out["x_hat"]
        rec = reconstruction_loss(x_hat, x, args.ssim_weight)
        loss = rec + out["vq_loss"]
        gan = step >= args.gan_start and args.gan_weight > 0
        if gan:  # generator side of the hinge loss, weighted as in VQGAN (below)
            g_loss = -disc(x_hat).mean()
            loss = loss + args.gan_weight * adaptive_weight(rec, g_loss, model) * g_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        d_loss = torch.zeros(())
        if gan:
            d_loss = (F.relu(1 - disc(x)).mean() + F.relu(1 + disc(x_hat.detach())).mean())
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        done = step + 1
        wall += time.time() - start
        losses.append(loss.item())
        if done % args.eval_every == 0 or done == args.steps:
            record(done, sum(losses) / len(losses))
            losses.clear()
        if done % 10 == 0:
            mse = F.mse_loss(x_hat.detach().clamp(0, 1), x).item()
            used = int((model.quantizer.usage > 0.03 / config.codebook_size).sum())
            row = {"step": done, "wall": round(wall, 1), "psnr": -10 * math.log10(mse),
                   "loss": loss.item(), "d_loss": d_loss.item(), "codes_used": used}
            run.log(row, "log.jsonl")
            run.bar.set_postfix(psnr=f"{row['psnr']:.2f}", used=used)


def run_ladder(args) -> None:
    """``ladder``: k-means of the trained codebook into the smaller sizes, fine-tuning, static
    tables, evaluation and export (``models/vq/ladder.py``); each fine-tuned codebook is kept in
    ``ladder.pt``, so a stopped command continues."""
    start = time.time()
    run = Run(args.out, args.budget)
    ckpt = run.load("cpu")
    if ckpt is None:
        raise SystemExit(f"{run.path}: no VQGAN checkpoint to build the ladder from (run vqgan)")
    model = from_checkpoint(ckpt)
    sizes = [int(s) for s in args.sizes.split(",")]
    full = model.quantizer.codebooks.detach()[0]
    full = F.normalize(full, dim=-1)
    if any(k >= len(full) for k in sizes) or sizes != sorted(sizes):
        raise SystemExit(f"--sizes must increase and stay below the codebook size {len(full)}")
    train_paths, val_paths = split_paths(args.data)
    images = load_images(train_paths, args.crop)
    pool = ladder.crop_pool(images, args.pool, args.crop, seed=args.seed)
    latents = ladder.encode_pool(model, pool)
    usage = torch.bincount(nearest(latents, full).flatten(), minlength=len(full)).float()
    state_path = run.out / "ladder.pt"
    done = torch.load(state_path, weights_only=True) if state_path.exists() else {}
    loss_fn = lambda x_hat, x: reconstruction_loss(x_hat, x, args.ssim_weight)  # noqa: E731
    codebooks = []
    for k in sizes:
        key = f"step{int(ckpt['step'])}:K{k}:tune{args.finetune_steps}"
        if key not in done:
            centroids = kmeans(full, k, weights=usage + 1e-3, seed=args.seed)
            done[key] = ladder.finetune_codebook(model, centroids, latents, pool,
                                                 args.finetune_steps, args.batch, args.lr,
                                                 loss_fn, seed=args.seed)
            torch.save(done, state_path)
        codebooks.append(done[key])
    codebooks.append(full)
    val_images = load_images(val_paths, 64)
    uniform = freqs_from_counts(np.ones(len(full)))
    fp32_psnr = ladder.evaluate(model, [full], [uniform], val_images)[0]["psnr"]
    if not args.fp32:  # evaluate, count and ship exactly the float16-rounded transforms
        weightfile.round_to_half(model, lambda k: k.startswith(codec.TRANSFORMS))
    counts = ladder.count_indices(model, codebooks,
                                  images[:: max(1, len(images) // args.count_images)])
    tables = [freqs_from_counts(c + 0.5) for c in counts]
    rows = ladder.evaluate(model, codebooks, tables, val_images)
    report = {"checkpoint_step": int(ckpt["step"]), "train_wall_seconds": float(ckpt["wall"]),
              "config": model.config_dict(), "sizes": [len(c) for c in codebooks],
              "finetune_steps": args.finetune_steps, "pool": args.pool, "crop": args.crop,
              "val_images": len(val_images),
              "full_codebook_used_on_pool": int((usage > 0).sum()),
              "full_codebook_perplexity_on_pool": ladder.perplexity(usage),
              "transforms": "float32" if args.fp32 else "float16",
              "full_codebook_psnr_float32": fp32_psnr,
              "ladder_wall_seconds": round(time.time() - start), "validation": rows}
    run.report(report, "ladder.json")
    meta = {"steps": int(ckpt["step"]), "validation": json.dumps(
        [{"quality": r["quality"], "bpp": r["bpp"], "psnr": r["psnr"]} for r in rows]),
        "data": f"{args.data.name}/ minus held-out 5% ({len(train_paths)} images)"}
    run.export(args.export, lambda path: codec.save_weights(model, codebooks, tables, path, meta,
                                                            half=not args.fp32))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["vqgan", "ladder", "prior"])
    parser.add_argument("--data", type=Path, default=DEFAULT_TRAIN, help="folder of training photos")
    parser.add_argument("--out", type=Path, default=Path("runs/vq"), help="run folder")
    parser.add_argument("--steps", type=int, default=2000, help="vqgan, prior: total steps")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=50)
    parser.add_argument("--widths", default="32,64,96,128", help="vqgan: channels per stage")
    parser.add_argument("--blocks", type=int, default=1, help="vqgan: residual blocks per stage")
    parser.add_argument("--codebook-size", type=int, default=4096)
    parser.add_argument("--code-dim", type=int, default=16, help="dimension of the lookup space")
    parser.add_argument("--disc-width", type=int, default=32)
    parser.add_argument("--beta", type=float, default=0.25, help="commitment weight")
    parser.add_argument("--ssim-weight", type=float, default=0.2, help="weight of 1 - MS-SSIM")
    parser.add_argument("--gan-start", type=int, default=10**9,
                        help="step from which the discriminator trains (after reconstructions "
                             "have stabilised)")
    parser.add_argument("--gan-weight", type=float, default=0.1,
                        help="adversarial gradient as a fraction of the reconstruction one")
    parser.add_argument("--warmup", type=int, default=0,
                        help="vqgan: steps of linear learning-rate warm-up (a fresh optimizer "
                             "on an --init model otherwise jolts it: -2 dB in 2 steps at 5e-4)")
    parser.add_argument("--decay-at", type=float, default=0.8,
                        help="fraction of --steps after which the learning rate drops 10x")
    parser.add_argument("--sizes", default="8,16,32,64,128,256,512,1024,2048",
                        help="ladder: codebook sizes of qualities 1.. (the full codebook is "
                             "the last quality)")
    parser.add_argument("--finetune-steps", type=int, default=150,
                        help="ladder: fine-tuning steps per small codebook")
    parser.add_argument("--pool", type=int, default=512, help="ladder: training crops to tune on")
    parser.add_argument("--count-images", type=int, default=160,
                        help="ladder: training images whose indices fill the static tables")
    parser.add_argument("--fp32", action="store_true", help="ladder: ship float32 transforms")
    parser.add_argument("--export", type=Path, default=None,
                        help="ladder, prior: weight file to write")
    parser.add_argument("--ladder", type=Path, default=weightfile.WEIGHTS / "vq-cpu.safetensors",
                        help="prior: the VQ weight file whose index grids it models")
    parser.add_argument("--dim", type=int, default=128, help="prior: transformer width")
    parser.add_argument("--layers", type=int, default=4, help="prior: transformer blocks")
    parser.add_argument("--heads", type=int, default=4, help="prior: attention heads")
    parser.add_argument("--radius", type=int, default=3,
                        help="prior: attention window radius (window side 2r+1)")
    parser.add_argument("--mlp", type=int, default=2, help="prior: MLP width / dim")
    parser.add_argument("--grid", type=int, default=16, help="prior: training crop in indices")
    parser.add_argument("--schedule", default="s6", help="prior: coding schedule to ship")
    parser.add_argument("--eval-every", type=int, default=500,
                        help="vqgan, prior: steps between held-back checks")
    parser.add_argument("--val-grids", type=int, default=29,
                        help="prior: held-back grids in the periodic check")
    parser.add_argument("--eval-qualities", default="6,8",
                        help="prior: qualities in the periodic check")
    parser.add_argument("--init", type=Path, default=None,
                        help="vqgan: start from a shipped VQ weight file (e.g. "
                             "vq-cpu.safetensors: its transforms and full codebook). prior: "
                             "continue from an exported prior file (e.g. the shipped "
                             "vq-prior.safetensors) instead of a random network; its own "
                             "configuration replaces --dim/--layers/...")
    parser.add_argument("--train-qualities", default="",
                        help="prior: train on these qualities only (default: every quality, one "
                             "network conditioned on the codebook)")
    add_minutes_argument(parser)
    args = parser.parse_args(argv)
    args.budget = Budget(args.minutes)  # start-up and image loading count too
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    {"vqgan": train_vqgan, "ladder": run_ladder, "prior": train_prior}[args.command](args)


if __name__ == "__main__":
    main()
