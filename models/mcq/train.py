"""MCQ family training: ``python -m nicodec.models.mcq.train {tiny,mcq} --out runs/NAME``.

Resumable: the run folder holds ``checkpoint.pt`` (model, optimizer, step, sampler state), written
every ``--save-every`` steps and when ``--minutes`` runs out (``models/training.py``); running the
same command again continues where it stopped. Every ``--eval-every`` steps a line goes to
``curve.jsonl``: mean training loss and PSNR, and the PSNR of every quality on fixed crops of the
held-back images (plot with ``python -m nicodec.eval.curves``).
After the training steps the prior is fitted on the final indices and exported as integers, the
model is evaluated on the held-back training images (never Kodak) and, with ``--export``, the
shipped weight file is written.

* ``tiny``: TinyMCQ (``models/mcq/tiny.py``); EMA VQ, distortion-only training, then the prior
  is fitted on the training indices.
* ``mcq``: MCQ (``models/mcq/network.py``); the quantizer set by ``--set quantizer=``, the
  cascaded prior trained jointly on the (detached) indices and refitted at the end; optionally
  autoencoder pretraining first (``--pretrain-steps``, then k-means codebooks, frozen), or the
  residual stages of the ``--init`` model refitted by entropy-constrained k-means first
  (``--refit-codebooks``, frozen; with ``--steps 0`` only the prior is fitted after it).

Runs on CPU or CUDA unchanged (the device is picked automatically), and under
``torchrun --nproc_per_node N -m nicodec.models.mcq.train ...`` with DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from nicodec.bitstream.entropy import cost_bits
from nicodec.models import weightfile
from nicodec.models.codebooks import kmeans
from nicodec.models.data import DEFAULT_TRAIN, CropSampler, load_images, split_paths, whole_image
from nicodec.models.mcq import codec, network, tiny
from nicodec.models.mcq.quantizers import (GumbelMultiCodebookVQ, MultiCodebookVQ, ec_assign,
                                           ec_kmeans)
from nicodec.models.training import (Budget, Run, add_minutes_argument, checkpoint,
                                     init_distributed, restore)


def nested_loss(model, x: torch.Tensor, args, fewest: int) -> tuple[torch.Tensor, float]:
    """MSE with a random number of active groups per image (``fewest`` .. all; the first image
    always all, so the full-rate path is trained too), plus the commitment loss and, for models
    that return one, the prior's cross-entropy (which reaches only the prior's parameters)."""
    groups = _plain(model).config.groups
    active = torch.randint(fewest, groups + 1, (x.shape[0],), device=x.device)
    active[0] = groups
    out = model(x, active)
    mse = F.mse_loss(out["x_hat"], x)
    return mse + args.beta * out["commitment"] + out.get("prior_bits", 0.0), mse.item()


def autoencoder_loss(model, x: torch.Tensor, args) -> tuple[torch.Tensor, float]:
    """MSE of the transforms alone, nothing quantized (``--pretrain-steps``), the latent at unit
    RMS plus noise (``MCQ.pretrain_latent``). Trained jointly with the quantizers, the transforms
    stay far below what they can carry: r5 reconstructed held-back photos at 28.0 dB with its
    latent unquantized and at 27.8 dB through all 8 residual stages.

    At the end of pretraining :func:`handover` fits the codebooks by k-means and freezes them.
    From r5, 3 000 pretraining steps and 5 000 nested steps gave r6 (held-back BD-rate -12%
    against r5; ``models/weights/mcq.md``). Without the normalisation the latent grew about 13x
    in energy, and with codebooks re-drawn from one batch and EMA updates the nested phase swung
    between 15 and 25 dB on held-back crops (the "first hand-overs" in models/weights/mcq.md)."""
    mse = F.mse_loss(model(x, None)["x_hat"], x)
    return mse, mse.item()


def _plain(model: nn.Module) -> nn.Module:
    """The network itself, under a DistributedDataParallel wrapper or not."""
    return model.module if isinstance(model, DistributedDataParallel) else model


FAMILIES = {
    "tiny": (tiny.TinyMCQ, tiny.TinyMCQConfig, partial(nested_loss, fewest=1), ("prior.",)),
    "mcq": (network.MCQ, network.MCQConfig, partial(nested_loss, fewest=0), ()),
}


def make_config(config_cls, overrides: list[str]):
    """The default config with ``FIELD=VALUE`` overrides, each converted to the field's type."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    values = {}
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(fields)}")
        values[name] = type(fields[name].default)(value)
    return config_cls(**values)


def _freeze(model: nn.Module) -> None:
    """Every EMA quantizer of ``model`` keeps its codewords in training."""
    for module in model.modules():
        if isinstance(module, MultiCodebookVQ):
            module.update_codebooks = False


def freeze_codebooks(model: nn.Module, pretrain_steps: int) -> None:
    """``--freeze-codebooks``: every EMA quantizer of ``model`` keeps its codewords."""
    if pretrain_steps or any(isinstance(m, GumbelMultiCodebookVQ) for m in model.modules()):
        raise SystemExit("--freeze-codebooks needs EMA quantizers and no --pretrain-steps "
                         "(which fits the codebooks afresh and then freezes them itself)")
    _freeze(model)


def _pool_features(model: nn.Module, sampler: CropSampler, crops: int) -> torch.Tensor:
    """Analysis features of ``crops`` fixed training crops (seed 1): what codebooks are fitted to."""
    pool = CropSampler(sampler.images, sampler.crop, seed=1).batch(crops)
    device = next(model.parameters()).device
    return torch.cat([model.g_a(x.to(device)) for x in pool.split(8)])


def fit_residual_stages(model: nn.Module, residual: torch.Tensor,
                        rate_weights: tuple[float, ...]) -> None:
    """Fit every residual stage s in turn to what the stages before it leave of ``residual``
    (B, d, H, W), by entropy-constrained k-means (:func:`ec_kmeans`) at ``rate_weights[s]``
    (0: plain k-means)."""
    device = residual.device
    points = residual.permute(0, 2, 3, 1).reshape(-1, residual.shape[1]).cpu()
    for stage, rate_weight in zip(model.fine_vq.stages, rate_weights, strict=True):
        words, lengths = ec_kmeans(points, stage.codebook_size, rate_weight)
        stage.codebooks[0] = words.to(device)
        points = points - words[ec_assign(points, words, lengths, rate_weight)]


@torch.no_grad()
def handover(model: nn.Module, sampler: CropSampler, crops: int = 64) -> None:
    """End of ``--pretrain-steps``: make the pretrained transforms codable, then freeze the
    codebooks.

    The fine head is rescaled so that the latent has the unit RMS that pretraining normalised
    it to; the coarse codebooks and then every residual stage in turn are fitted by k-means to
    the latents (residuals) of ``crops`` training crops; all EMA quantizers are then frozen
    (EMA updates beside the encoder's gradient collapsed the first residual stage, and drawing
    the codewords from one batch left the nested phase swinging between 15 and 25 dB)."""
    model.eval()
    f = _pool_features(model, sampler, crops)
    y = model.fine_head(f)
    scale = y.pow(2).mean().rsqrt()
    model.fine_head.weight.mul_(scale)
    model.fine_head.bias.mul_(scale)
    y = y * scale
    coarse_vq, z = model.coarse_vq, model.h_a(f)
    for g, points in enumerate(coarse_vq._split(z)):
        coarse_vq.codebooks[g] = kmeans(points.cpu(), coarse_vq.codebook_size,
                                        iters=20).to(f.device)
    fit_residual_stages(model, y - model.h_s(coarse_vq.embed(coarse_vq.indices(z))),
                        (0.0,) * model.config.groups)
    for module in model.modules():
        if isinstance(module, MultiCodebookVQ):
            module.adopt_codebooks()
    _freeze(model)
    model.train()


@torch.no_grad()
def refit_codebooks(model: nn.Module, sampler: CropSampler, rate_weights: tuple[float, ...],
                    crops: int = 64) -> None:
    """``--refit-codebooks W1,...``: refit the residual stages of a trained model to its own
    residuals on ``crops`` training crops by entropy-constrained k-means, stage s at weight
    ``rate_weights[s]``, the transforms and the coarse level unchanged; the codebooks are
    frozen from then on (EMA-trained codewords spread the indices more evenly than a
    rate-aware fit: see models/weights/mcq.md)."""
    model.eval()
    f = _pool_features(model, sampler, crops)
    coarse_vq, z = model.coarse_vq, model.h_a(f)
    fit_residual_stages(model, model.fine_head(f) - model.h_s(coarse_vq.embed(
        coarse_vq.indices(z))), rate_weights)
    for stage in model.fine_vq.stages:
        stage.adopt_codebooks()
    _freeze(model)
    model.train()


def warm_start(model: nn.Module, path: Path) -> list[str]:
    """Copy the float tensors of a shipped weight file (``.safetensors``) or of a run's
    ``checkpoint.pt`` into ``model`` where name and shape match; returns the names taken."""
    if path.suffix == ".pt":
        tensors = torch.load(path, weights_only=True, map_location="cpu")["model"]
    else:
        _, tensors = weightfile.read(str(path))
    state = model.state_dict()
    taken = [k for k, v in tensors.items()
             if k in state and state[k].shape == v.shape and v.is_floating_point()]
    state.update({k: tensors[k] for k in taken})
    model.load_state_dict(state)
    for name, module in model.named_modules():  # loaded codebooks start trained, not from data
        if hasattr(module, "adopt_codebooks") and f"{name}.codebooks" in taken:
            module.adopt_codebooks()
    return taken


@torch.no_grad()
def held_out_psnr(model, crops: torch.Tensor, pretraining: bool = False) -> dict[str, float]:
    """PSNR of the model's reconstruction of fixed held-back crops at every quality, or of the
    autoencoder alone while pretraining (the codebooks are fitted only at the hand-over)."""
    was_training = model.training
    model.eval()
    actives = [None] if pretraining else range(model.config.groups + 1)
    out = {}
    for q in actives:
        active = None if q is None else torch.full((len(crops),), q, device=crops.device)
        x_hat = model(crops, active)["x_hat"]
        key = "autoencoder" if q is None else str(q)
        out[key] = round(-10 * math.log10(F.mse_loss(x_hat.clamp(0, 1), crops).item()), 3)
    model.train(was_training)
    return out


def train_steps(model, loss_fn, frozen: tuple[str, ...], sampler: CropSampler, args, run: Run,
                val_crops: torch.Tensor | None = None) -> None:
    """The training loop, resumable from the run's checkpoint; parameters under ``frozen`` are
    left out. ``run.finished`` then says whether ``--steps`` was reached (not when ``--minutes``
    ran out first).

    Under torchrun every process trains on its own crops (batch ``--batch`` each), gradients are
    averaged by DistributedDataParallel, and rank 0 writes the checkpoints and the curve.
    """
    device = run.device
    params = [p for n, p in model.named_parameters() if not n.startswith(frozen)]
    opt = torch.optim.Adam(params, lr=args.lr)
    step = 0
    ckpt = run.load(device)
    if ckpt is not None:
        step = restore(ckpt, sampler, model=model, opt=opt)
        if step > args.pretrain_steps > 0:  # handed over before the checkpoint: stay frozen
            _freeze(model)
    if run.world > 1:  # other ranks draw other crops, reproducibly
        sampler.rng = np.random.default_rng([run.rank, step, int(sampler.rng.integers(2**31))])
        net = DistributedDataParallel(model, device_ids=[device.index] if device.index is not None
                                      else None,
                                      find_unused_parameters=step < args.pretrain_steps)
    else:
        net = model
    net.train()
    sums = [0.0, 0.0, 0]  # loss, mse, steps since the last curve point
    def save(done: int) -> None:
        run.save(checkpoint(done, sampler, model=model, opt=opt))

    for step in run.steps(step, args.steps, args.save_every, save):
        for group in opt.param_groups:
            group["lr"] = args.lr * (0.1 if step >= 0.8 * args.steps else 1.0)
        pretraining = step < args.pretrain_steps
        if step == args.pretrain_steps > 0:
            handover(model, sampler)
        loss, mse = (autoencoder_loss if pretraining else loss_fn)(
            net, sampler.batch(args.batch).to(device), args)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(params, args.clip)
        opt.step()
        if run.world > 1:  # codeword re-seeding is local: keep every rank on rank 0's codebooks
            for name, p in model.named_parameters():
                if name.endswith("codebooks"):
                    dist.broadcast(p.data, 0)
        done = step + 1
        sums = [sums[0] + loss.item(), sums[1] + mse, sums[2] + 1]
        if run.rank == 0 and val_crops is not None and done % args.eval_every == 0:
            run.log({"step": done, "loss": sums[0] / sums[2],
                     "train_psnr": -10 * math.log10(sums[1] / sums[2]),
                     "held_out_psnr": held_out_psnr(model, val_crops.to(device), pretraining)})
            sums = [0.0, 0.0, 0]
        if done % 20 == 0:
            run.bar.set_postfix(psnr=f"{-10 * math.log10(mse):.2f}", loss=f"{loss.item():.4f}")


def center_crops(images: list[np.ndarray], size: int, unit: int, count: int = 8
                 ) -> torch.Tensor | None:
    """Up to ``count`` centre crops (at most ``size``, a multiple of ``unit``, square) of the
    first images, as one batch; None without images."""
    if not images:
        return None
    side = min(size, *(min(img.shape[:2]) for img in images[:count])) // unit * unit
    corners = [((img.shape[0] - side) // 2, (img.shape[1] - side) // 2) for img in images[:count]]
    crops = [img[y:y + side, x:x + side] for img, (y, x) in zip(images, corners)]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(255)


@torch.no_grad()
def collect_symbols(model, images: list[np.ndarray], quality: int, prior=None,
                    rate_weights: tuple[float, ...] = ()) -> np.ndarray:
    """Symbols (columns, N units) of whole images at one quality: nearest codewords, or with
    ``prior`` and ``rate_weights`` (one per quality) as the encoder picks them, image i at the
    weight of quality 1 + i mod (qualities - 1), so that every weight's choices are seen."""
    model.eval()
    parts = []
    for i, img in enumerate(tqdm(images, desc="indexing", leave=False, disable=None)):
        x = whole_image(img, model.unit)
        if prior is None:
            symbols = model.analyze(x, quality)
        else:
            weight = rate_weights[1 + i % (len(rate_weights) - 1)]
            symbols = model.analyze_coded(x, quality, prior, weight)[0]
        parts.append(symbols.reshape(model.columns(quality), -1))
    return np.concatenate(parts, axis=1)


def fit_prior(model, images: list[np.ndarray], steps: int,
              rate_weights: tuple[float, ...] = ()):
    """Fit the model's prior by cross-entropy on the indices of training images (the transforms
    and codebooks frozen), then export it as integers.

    The MCQ prior is also trained jointly, but on the indices of the training mode, where dead
    codewords are re-seeded all the time; measured on held-back images it then costs more than a
    static table of the final indices (7.7 against 4.6 bits per symbol for the first fine stage).
    Fitted here on the final indices it learns the distribution that is actually coded.

    With ``rate_weights`` (MCQ) the fit goes on for as many steps again on the indices that the
    rate-weighted encoder picks under the first fit's tables (the encoder's choices and the
    prior drawn together, as in entropy-constrained VQ): on r6 and 29 held-back photos that
    cost 1.1% fewer bits at equal PSNR, tuned weights against tuned weights.
    """
    units = torch.from_numpy(collect_symbols(model, images, model.config.groups))
    prior = _fit_prior_steps(model, units, steps)
    if rate_weights:
        units = torch.from_numpy(collect_symbols(model, images, model.config.groups, prior,
                                                 rate_weights))
        prior = _fit_prior_steps(model, units, steps)
    return prior


def _fit_prior_steps(model, units: torch.Tensor, steps: int):
    """``steps`` Adam steps of the model's float prior on random batches of the units; the
    integer prior exported from it (group 0's static table counted from these units)."""
    params = [p for n, p in model.named_parameters() if "prior." in n]
    opt = torch.optim.Adam(params, lr=3e-3)
    model.train()
    for _ in tqdm(range(steps), desc="prior", leave=False, disable=None):
        loss = model.unit_prior_loss(units[:, torch.randint(0, units.shape[1], (1024,))])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return model.export_prior(units[0].numpy())


@torch.no_grad()
def evaluate(model, prior, images: list[np.ndarray], qualities,
             rate_weights: tuple[float, ...] = ()) -> list[dict]:
    """Ideal bpp (integer prior) and PSNR on whole held-back images, per quality; with
    ``rate_weights`` (MCQ, one per quality) the indices the rate-weighted encoder picks."""
    model.eval()
    rows = []
    for q in qualities:
        bits = pixels = sq_err = 0.0
        for img in images:
            x = whole_image(img, model.unit)
            if rate_weights:
                sym, tables, _ = model.analyze_coded(x, q, prior, rate_weights[q])
                flat = sym.reshape(sym.shape[0], -1)
            else:
                sym = model.analyze(x, q)
                flat = sym.reshape(sym.shape[0], -1)
                tables = [prior.freqs(flat[:j], j) for j in range(len(flat))]
            bits += sum(cost_bits(f, t) for f, t in zip(flat, tables))
            x_hat = (model.synthesize(sym) * 255).round() / 255
            sq_err += F.mse_loss(x_hat, x, reduction="sum").item()
            pixels += x.shape[2] * x.shape[3]
        rows.append({"quality": q, "bpp": bits / pixels,
                     "psnr": -10 * math.log10(sq_err / (pixels * 3))})
    return rows


def _weight_list(text: str, flag: str) -> tuple[float, ...]:
    """Comma-separated non-negative numbers of a command-line flag."""
    try:
        weights = tuple(float(w) for w in text.split(",") if w)
    except ValueError:
        raise SystemExit(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if any(not w >= 0 for w in weights):
        raise SystemExit(f"{flag}: weights must be non-negative, got {text!r}")
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", choices=sorted(FAMILIES), help="model family to train")
    parser.add_argument("--data", type=Path, default=DEFAULT_TRAIN, help="folder of training photos")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default runs/FAMILY)")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=0.25, help="commitment weight (EMA VQ)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a field of the model config (repeatable), e.g. "
                             "--set quantizer=ema")
    parser.add_argument("--prior-steps", type=int, default=1500,
                        help="prior fitting steps after training")
    parser.add_argument("--rate-weights", default="", metavar="W0,W1,...",
                        help="mcq: the encoder's rate weights, one per quality (as in the "
                             "registry; python -m nicodec.eval.rate_weights tunes them): the prior is "
                             "fitted again on the indices they pick, and the held-back figures "
                             "are measured with them")
    parser.add_argument("--pretrain-steps", type=int, default=0,
                        help="mcq: the first N steps train the transforms alone, nothing "
                             "quantized (counted in --steps); then the codebooks are fitted by "
                             "k-means and frozen for the rest; see autoencoder_loss")
    parser.add_argument("--freeze-codebooks", action="store_true",
                        help="EMA quantizers keep their codewords (e.g. fine-tuning a shipped "
                             "model: EMA updates beside the encoder's gradient made its first "
                             "residual stage collapse within 600 steps; frozen, it stayed stable)")
    parser.add_argument("--refit-codebooks", default=None, metavar="W[,W2,...]",
                        help="mcq with quantizer=rvq: before training, refit the residual stages "
                             "of the --init model by entropy-constrained k-means at rate weight "
                             "W (squared latent error + W x bits; one weight per stage, or one "
                             "for all), then keep them frozen")
    parser.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping (0: off)")
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--eval-every", type=int, default=500,
                        help="steps between held-out PSNR points in curve.jsonl")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from the tensors of a shipped weight file or a run's "
                             "checkpoint.pt whose names and shapes match (e.g. the transforms "
                             "of another model)")
    parser.add_argument("--export", type=Path, default=None, help="write the shipped weights here")
    add_minutes_argument(parser)
    args = parser.parse_args()
    budget = Budget(args.minutes)  # start-up and image loading count too

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rank, world, device = init_distributed()
    run = Run(args.out or Path("runs") / args.family, budget, rank=rank, world=world,
              device=device)
    train_paths, val_paths = split_paths(args.data)
    start = time.time()
    net_cls, config_cls, loss_fn, frozen = FAMILIES[args.family]
    model = net_cls(make_config(config_cls, args.set))
    rate_weights = _weight_list(args.rate_weights, "--rate-weights")
    if rate_weights and (args.family != "mcq" or len(rate_weights) != model.config.groups + 1):
        raise SystemExit(f"--rate-weights is for the mcq family, one weight per quality "
                         f"(0..{model.config.groups})")
    if ((args.pretrain_steps or args.refit_codebooks is not None)
            and getattr(model.config, "quantizer", None) != "rvq"):
        raise SystemExit("--pretrain-steps and --refit-codebooks are for the mcq family with "
                         "--set quantizer=rvq (they fit residual stages by k-means)")
    refit = None  # per residual stage
    if args.refit_codebooks is not None:
        refit = _weight_list(args.refit_codebooks, "--refit-codebooks")
        if len(refit) not in (1, model.config.groups):
            raise SystemExit(f"--refit-codebooks takes one weight, or one per residual stage "
                             f"({model.config.groups})")
        if args.pretrain_steps or args.freeze_codebooks:
            raise SystemExit("--refit-codebooks freezes the codebooks itself; it cannot be "
                             "combined with --pretrain-steps (whose hand-over fits them "
                             "afresh) or --freeze-codebooks")
        if len(refit) == 1:
            refit = refit * model.config.groups
    if args.freeze_codebooks:
        freeze_codebooks(model, args.pretrain_steps)
    if args.init and not run.path.exists():
        print(f"initialised from {args.init}: {', '.join(warm_start(model, args.init))}")
    model = model.to(device)
    sampler = CropSampler(load_images(train_paths, args.crop), args.crop)
    val_images = load_images(val_paths, 64)
    if refit is not None:
        if run.path.exists():
            _freeze(model)  # resuming: the checkpoint holds the refitted codebooks
        else:
            refit_codebooks(model, sampler, refit)
    train_steps(model, loss_fn, frozen, sampler, args, run,
                val_crops=center_crops(val_images, 256, model.unit))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
        if rank > 0:
            return
    if not run.finished:
        return
    model = model.cpu().eval()
    if args.family == "mcq":  # fit and measure exactly what the float16 weight file holds
        weightfile.round_to_half(model, codec.shipped_float)
    prior = fit_prior(model, sampler.images[::4], args.prior_steps, rate_weights)
    qualities = range(1 if args.family == "tiny" else 0, model.config.groups + 1)
    rows = evaluate(model, prior, val_images, qualities, rate_weights) if val_images else []
    report = {"family": args.family, "config": model.config_dict(),
              "train_images": len(train_paths), "val_images": len(val_paths),
              "steps": args.steps, "batch": args.batch, "crop": args.crop,
              "rate_weights": list(rate_weights),
              "device": str(device), "processes": world, "threads": torch.get_num_threads(),
              "wall_seconds_this_run": round(time.time() - start), "validation": rows}
    run.report(report)
    save = tiny.save_weights if args.family == "tiny" else codec.save_weights
    run.export(args.export, lambda path: save(
        model, prior, path, {"steps": args.steps, "validation": json.dumps(rows),
                             "data": f"{args.data.name}/ minus held-out 5% "
                                     f"({len(train_paths)} images)"}))


if __name__ == "__main__":
    main()
