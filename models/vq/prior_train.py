"""Training of the masked index transformer: ``python -m nicodec.models.vq.train prior``.

The VQGAN and its ladder are frozen (the shipped ``vq-cpu.safetensors``), so the index grids of
the training photos are computed once, for every codebook of the ladder, and cached in the run
folder; each photo gives four grids (as is, mirrored, and both shifted by half a unit), because
the /16 grid is not shift- or flip-invariant. Training then sees only integers: random
``--grid`` x ``--grid`` crops of the grids, one ladder quality per step, masked as in
:func:`models.vq.transformer.training_masks`. Held-back photos (never Kodak) measure the coding
rate under each schedule every ``--eval-every`` steps (``log.jsonl``). Resumable: run the same
command again. ``--export`` writes the integer network (``models/vq/exact.py``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from nicodec.bitstream.entropy import LOGIT_FRAC, TOTAL
from nicodec.models.data import split_paths, whole_image
from nicodec.models.training import Run, checkpoint, restore
from nicodec.models.vq.codec import load_weights
from nicodec.models.vq.exact import ACT_FRAC, LOG2E, IntIndexTransformer, load_prior, save_prior
from nicodec.models.vq.transformer import (SCHEDULES, IndexTransformer, PriorConfig, stage_map,
                                           training_masks)
from nicodec.models.vq.vqgan import nearest


def static_logits(tables: list[np.ndarray]) -> list[torch.Tensor]:
    """log2-probabilities of the ladder's static integer tables."""
    return [torch.from_numpy(np.log2(t / TOTAL)).float() for t in tables]


@torch.no_grad()
def index_grids(net, paths: list[Path], variants: bool) -> list[np.ndarray]:
    """Index grids (qualities, h, w) int16 of each photo under every codebook of the ladder;
    with ``variants`` also of the mirrored photo and of both shifted by 8 pixels."""
    grids = []
    for path in tqdm(paths, desc="index grids", leave=False, disable=None):
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
        versions = [array, array[:, ::-1]] if variants else [array]
        shifts = [0, 8] if variants else [0]
        for version in versions:
            for s in shifts:
                x = whole_image(version[s:, s:], net.unit)
                if min(x.shape[-2:]) < net.unit:
                    continue
                z = net.model.encode(x)
                grids.append(np.stack([nearest(z, cb)[0].numpy() for cb in net.codebooks])
                             .astype(np.int16))
    return grids


def _save_grids(path: Path, grids: list[np.ndarray]) -> None:
    shapes = np.array([g.shape for g in grids], dtype=np.int64)
    np.savez(path, data=np.concatenate([g.ravel() for g in grids]), shapes=shapes)


def _load_grids(path: Path) -> list[np.ndarray]:
    with np.load(path) as f:
        data, shapes = f["data"], f["shapes"]
    grids, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        grids.append(data[start:start + size].reshape(shape))
        start += size
    return grids


def cached_grids(net, data: Path, out: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(training grids, held-back grids), computed once per run folder."""
    paths = {"train": out / "grids_train.npz", "val": out / "grids_val.npz"}
    if not all(p.exists() for p in paths.values()):
        train_paths, val_paths = split_paths(data)
        _save_grids(paths["train"], index_grids(net, train_paths, variants=True))
        _save_grids(paths["val"], index_grids(net, val_paths, variants=False))
    return _load_grids(paths["train"]), _load_grids(paths["val"])


class GridSampler:
    """Random square crops of the index grids at one quality, as a (B, g, g) int64 tensor."""

    def __init__(self, grids: list[np.ndarray], size: int, seed: int = 0) -> None:
        self.grids = [g for g in grids if min(g.shape[1:]) >= size]
        if not self.grids:
            raise ValueError(f"no index grid of at least {size}x{size}")
        self.size = size
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int, q: int) -> torch.Tensor:
        out = np.empty((n, self.size, self.size), dtype=np.int64)
        for i in range(n):
            g = self.grids[self.rng.integers(len(self.grids))][q - 1]
            y = self.rng.integers(g.shape[0] - self.size + 1)
            x = self.rng.integers(g.shape[1] - self.size + 1)
            out[i] = g[y:y + self.size, x:x + self.size]
        return torch.from_numpy(out)


@torch.no_grad()
def coding_bits(model: IndexTransformer, grid: np.ndarray, q: int, schedule: str) -> float:
    """Ideal bits of one (h, w) grid coded stage by stage under ``schedule`` (float model)."""
    h, w = grid.shape
    stages = torch.from_numpy(stage_map(h, w, schedule))
    n = int(stages.max()) + 1
    idx = torch.from_numpy(grid.astype(np.int64))[None].expand(n, h, w)
    visible = stages[None] < torch.arange(n)[:, None, None]
    logp = torch.log_softmax(model(idx, visible, q), -1) / math.log(2)
    chosen = logp.gather(-1, idx[..., None])[..., 0]  # (n, h, w)
    return float(-(chosen * (stages[None] == torch.arange(n)[:, None, None])).sum())


def evaluate(model: IndexTransformer, grids: list[np.ndarray], schedules: list[str],
             qualities: list[int]) -> list[dict]:
    """Bits per index under each schedule and quality on held-back grids."""
    model.eval()
    rows = []
    for q in qualities:
        k = len(model.codebook(q))
        count = sum(g[q - 1].size for g in grids)
        row = {"quality": q, "K": k, "fixed_bits": math.log2(k)}
        for s in schedules:
            row[s] = sum(coding_bits(model, g[q - 1], q, s) for g in grids) / count
        rows.append(row)
    model.train()
    return rows


def build_model(config: PriorConfig, net, ladder_prior) -> IndexTransformer:
    return IndexTransformer(config, net.codebooks, static_logits(ladder_prior.tables))


def _real(int_model, name: str, frac: int | None = None) -> torch.Tensor:
    """A stored integer tensor of the exported network as real values."""
    frac = int_model.fracs[name] if frac is None else frac
    return torch.from_numpy(int_model.t[name].astype(np.float64) / (1 << frac)).float()


@torch.no_grad()
def _fit_input(model: IndexTransformer, int_model) -> None:
    """Input side from the per-quality tables: each table is codeword @ W.T + u_q (one W for all
    qualities, u_q = bias + quality embedding), its last row mask_token + u_q; least squares."""
    c = model.config
    rows, targets = [], []
    for q in range(1, c.qualities + 1):
        cb = model.codebook(q)
        onehot = torch.zeros(len(cb), c.qualities)
        onehot[:, q - 1] = 1
        rows.append(torch.cat([cb, onehot], 1))
        targets.append(_real(int_model, f"embed.{q}")[:-1])
    solution = torch.linalg.lstsq(torch.cat(rows).double(), torch.cat(targets).double()).solution
    model.embed_in.weight.copy_(solution[: c.code_dim].T)
    model.embed_in.bias.zero_()
    model.quality.weight.copy_(solution[c.code_dim:])
    masks = torch.stack([_real(int_model, f"embed.{q}")[-1] for q in range(1, c.qualities + 1)])
    model.mask_token.copy_((masks - model.quality.weight).mean(0))


def _fit_output(model: IndexTransformer, int_model, iterations: int = 2000) -> float:
    """Output side: the codeword MLP is nonlinear, so it is refitted (full-batch L-BFGS) to the
    exported output tables of every quality; returns the final mean squared error."""
    qualities = range(1, model.config.qualities + 1)
    targets = [(_real(int_model, f"head.{q}.emb") / LOG2E,
                _real(int_model, f"head.{q}.bias", LOGIT_FRAC) / LOG2E) for q in qualities]
    opt = torch.optim.LBFGS([*model.out1.parameters(), *model.out2.parameters()],
                            max_iter=iterations, history_size=50, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = sum(F.mse_loss(emb, target_emb) + F.mse_loss(bias, target_bias)
                   for (emb, bias), (target_emb, target_bias)
                   in zip((model.output_table(q) for q in qualities), targets)) / len(targets)
        loss.backward()
        return loss

    opt.step(closure)
    return closure().item()


@torch.no_grad()
def _copy_blocks(model: IndexTransformer, int_model) -> None:
    """Blocks and final norm, undoing the scales folded in at export."""
    c = model.config
    scale = torch.ones(3 * c.dim)
    scale[: c.dim] = LOG2E / math.sqrt(c.head_dim)
    for i, block in enumerate(model.blocks):
        p = f"block.{i}."
        block.norm1.gain.copy_(_real(int_model, p + "norm1", ACT_FRAC))
        block.norm2.gain.copy_(_real(int_model, p + "norm2", ACT_FRAC))
        block.attn.qkv.weight.copy_(_real(int_model, p + "qkv.w") / scale[:, None])
        block.attn.qkv.bias.copy_(_real(int_model, p + "qkv.b", ACT_FRAC) / scale)
        block.attn.bias.copy_(_real(int_model, p + "attn_bias", LOGIT_FRAC) / LOG2E)
        for name, layer in (("proj", block.attn.proj), ("fc1", block.fc1), ("fc2", block.fc2)):
            layer.weight.copy_(_real(int_model, p + name + ".w"))
            layer.bias.copy_(_real(int_model, p + name + ".b", ACT_FRAC))
    model.norm.gain.copy_(_real(int_model, "norm", ACT_FRAC))


def warm_start(model: IndexTransformer, int_model, iterations: int = 2000) -> float:
    """Rebuild the float network from an exported integer one (``--init``), to continue its
    training: blocks and input embeddings exactly (up to the int16 rounding), the output
    codeword MLP refitted in ``iterations`` L-BFGS steps; returns that refit's mean squared
    error (natural-log logits)."""
    if int_model.config != model.config:
        raise SystemExit(f"--init: the file's network is {int_model.config}, not {model.config}")
    _copy_blocks(model, int_model)
    _fit_input(model, int_model)
    return _fit_output(model, int_model, iterations)


def train_prior(args) -> None:
    """The training loop (resumable, cut short by ``--minutes``), then optionally the export of
    the integer network."""
    run = Run(args.out, args.budget, checkpoint="prior.pt")
    net, ladder_prior = load_weights(str(args.ladder))  # the ladder the prior is trained for
    train_grids, val_grids = cached_grids(net, args.data, run.out)
    ckpt = run.load()
    int_model = None
    if ckpt is not None:  # the run's own config wins over the flags
        config = PriorConfig(**json.loads(ckpt["config"]))
    elif args.init:
        int_model, _ = load_prior(str(args.init))
        config = int_model.config
    else:
        config = PriorConfig(dim=args.dim, layers=args.layers, heads=args.heads,
                             radius=args.radius, mlp=args.mlp,
                             code_dim=net.codebooks[0].shape[1], qualities=len(net.codebooks))
    model = build_model(config, net, ladder_prior)
    if int_model is not None:
        print(f"initialised from {args.init} (output tables refitted, mse "
              f"{warm_start(model, int_model):.2e})")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sampler = GridSampler(train_grids, args.grid, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    step, wall = 0, 0.0
    if ckpt is not None:
        step = restore(ckpt, sampler, model=model, opt=opt)
        wall = float(ckpt["wall"])
        gen.set_state(ckpt["gen"])

    def save(done: int) -> None:
        run.save(checkpoint(done, sampler, model=model, opt=opt, wall=wall,
                            config=json.dumps(model.config_dict()), gen=gen.get_state()))

    schedules = list(SCHEDULES)
    qualities = ([int(v) for v in args.train_qualities.split(",")] if args.train_qualities
                 else list(range(1, config.qualities + 1)))
    model.train()
    for step in run.steps(step, args.steps, args.save_every, save, desc="index prior"):
        start = time.time()
        warm = min(1.0, (step + 1) / max(1, min(200, args.steps // 10)))
        decay = 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = args.lr * warm * (0.05 + 0.95 * decay)
        q = qualities[int(torch.randint(len(qualities), (), generator=gen))]
        idx = sampler.batch(args.batch, q)
        visible = training_masks(tuple(idx.shape), "s6", gen)
        loss = model.loss(idx, visible, q)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        done = step + 1
        wall += time.time() - start
        run.bar.set_postfix(bits=f"{loss.item():.3f}", K=len(model.codebook(q)))
        if done % 20 == 0:
            run.log({"step": done, "wall": round(wall, 1), "q": q, "train_bits": loss.item()},
                    "log.jsonl")
        if done % args.eval_every == 0 or done == args.steps:
            rows = evaluate(model, val_grids[: args.val_grids], schedules,
                            [int(v) for v in args.eval_qualities.split(",")])
            run.log({"step": done, "wall": round(wall, 1), "val": rows}, "log.jsonl")
            tqdm.write(f"step {done}: " + ", ".join(
                f"K={r['K']}: " + " ".join(f"{s} {r[s]:.3f}" for s in schedules)
                + f" (fixed {r['fixed_bits']:.0f})" for r in rows))
    if run.finished:
        export_prior(model, args, run, val_grids, wall, run.step)


def export_prior(model: IndexTransformer, args, run: Run, val_grids: list[np.ndarray],
                 wall: float, step: int) -> None:
    """With ``--export``: quantize to the exact integer network and write the shipped weight
    file. Its held-out figures per quality: the ladder's PSNR (same indices) at the
    transformer's rate."""
    from safetensors import safe_open

    if args.export is None:
        return
    model.eval()
    int_model = IntIndexTransformer.from_float(model, args.schedule)
    rows = evaluate(model, val_grids, [args.schedule], list(range(1, model.config.qualities + 1)))
    with safe_open(str(args.ladder), framework="pt") as f:
        ladder = {r["quality"]: r for r in json.loads(f.metadata().get("validation", "[]"))}
    measured = [{"quality": r["quality"], "bpp": r[args.schedule] / 256,
                 "psnr": ladder[r["quality"]]["psnr"]} for r in rows if r["quality"] in ladder]
    report = {"steps": step, "train_wall_seconds": round(wall), "schedule": args.schedule,
              "config": model.config_dict(), "grid": args.grid, "batch": args.batch,
              "validation_float": rows}
    run.report(report, "prior_export.json")
    run.export(args.export, lambda path: save_prior(int_model, path, args.ladder, {
        "steps": step, "train_wall_seconds": round(wall), "grid": args.grid,
        "bits_per_index": json.dumps(rows), "validation": json.dumps(measured)}))
