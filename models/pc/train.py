"""Train an HCLT: ``python -m nicodec.models.pc.train {mnist,fashion-mnist,photos} --out runs/NAME``.

Data: the MNIST-format datasets (one sample = one 28 x 28 image; the last 5 000 training images
are held back for validation, a tenth of smaller sets; the test set is only read for the final
report), or ``photos``: 4 x 4 patches of colour-transformed prediction residuals from random
32 x 32 tiles of the training photos (never Kodak), validated on the held-back photos.
Structure: the Chow-Liu tree of the variables (mutual information on 4 bins of 20 000 samples).
Parameters: mini-batch EM, the step size decaying from ``--step`` to ``--min-step``, Laplace
pseudocounts. Resumable: the run folder holds a checkpoint after every epoch (running the same
command again continues; ``--minutes`` ends a command at the first epoch boundary past the
budget, ``models/training.py``). With ``--export`` the integer model is written as a shipped
weight file.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from nicodec.bitstream.entropy import TOTAL
from nicodec.models.data import load_idx, split_paths
from nicodec.models.pc.coder import IntHCLT
from nicodec.models.pc.hclt import HCLT, HCLTConfig, bits_per_dim, chow_liu_tree, mutual_information
from nicodec.models.pc.codec import TileLayout, save_weights
from nicodec.models.training import Budget, Run, add_minutes_argument

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
DATASETS = {"mnist": "mnist", "fashion-mnist": "fashion-mnist", "photos": "train"}
HELD_OUT = 5000
DIGITS = TileLayout(unit=28, patch=28, channels=1)
PHOTO_UNIT = 32


def load_split(root: Path, split: str) -> np.ndarray:
    """Images of an IDX dataset folder as (N, H*W) uint8; split is "train" or "t10k"."""
    images = load_idx(root / f"{split}-images-idx3-ubyte.gz")
    return images.reshape(len(images), -1)


def photo_samples(layout: TileLayout, paths: list[Path], count: int, seed: int) -> np.ndarray:
    """``count`` HCLT samples (residual patches) from random tiles of the photos."""
    rng = np.random.default_rng(seed)
    u, per_tile = layout.unit, layout.patches
    tiles = []
    per_image = max(1, -(-count // (per_tile * max(1, len(paths)))))
    for path in tqdm(paths, desc="sampling tiles", leave=False, disable=None):
        img = np.asarray(Image.open(path).convert("RGB"))
        ys = rng.integers(0, img.shape[0] - u + 1, per_image)
        xs = rng.integers(0, img.shape[1] - u + 1, per_image)
        tiles += [img[y:y + u, x:x + u] for y, x in zip(ys, xs)]
    samples = layout.samples(np.stack(tiles)).reshape(-1, layout.variables)
    return samples[rng.permutation(len(samples))[:count]]


def load_dataset(name: str, root: Path, samples: int, patch: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, TileLayout]:
    """(train, validation, test or None, layout); samples are rows of HCLT variables."""
    if name == "photos":
        layout = TileLayout(unit=PHOTO_UNIT, patch=patch, channels=3)
        train_paths, val_paths = split_paths(root)
        train = photo_samples(layout, train_paths, samples, 0)
        val = photo_samples(layout, val_paths, samples // 10, 1)
        return train, val, None, layout
    images = load_split(root, "train")
    held = min(HELD_OUT, len(images) // 10)
    return images[:-held], images[-held:], load_split(root, "t10k"), DIGITS


def ideal_bits(model: IntHCLT, data: np.ndarray, batch: int = 5000) -> float:
    """Bits per dimension under the integer tables the coder uses (exact -log2 of the tables)."""
    total = 0.0
    for start in range(0, len(data), batch):
        part = data[start:start + batch].astype(np.int64)
        for freqs, node in zip(model.tables(part), model.order.preorder):
            total -= np.log2(np.take_along_axis(freqs, part[:, node, None], 1) / TOTAL).sum()
    return total / data.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--data", type=Path, default=None, help="folder of the IDX files")
    parser.add_argument("--out", type=Path, default=None, help="run folder")
    parser.add_argument("--hidden", type=int, default=32, help="latent states per variable")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--step", type=float, default=0.5, help="initial EM step size")
    parser.add_argument("--min-step", type=float, default=0.05)
    parser.add_argument("--decay", type=float, default=0.995, help="step-size decay per batch")
    parser.add_argument("--pseudocount", type=float, default=0.01)
    parser.add_argument("--polish-epochs", type=int, default=0,
                        help="extra epochs at the end with 4x the batch and a fifth of the "
                             "minimum step (less noisy EM: measured -0.008 bpd on MNIST)")
    parser.add_argument("--samples", type=int, default=400000,
                        help="training patches drawn from the photos (photos only)")
    parser.add_argument("--patch", type=int, default=4,
                        help="patch side in pixels, one HCLT sample (photos only)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--export", type=Path, default=None)
    add_minutes_argument(parser, unit="epoch")
    args = parser.parse_args()
    budget = Budget(args.minutes)  # start-up and data loading count too
    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.data or DATA / DATASETS[args.dataset]
    run = Run(args.out or Path("runs") / f"pc-{args.dataset}", budget,
              checkpoint="checkpoint.safetensors")
    train, val, test, layout = load_dataset(args.dataset, root, args.samples, args.patch)
    start = time.time()

    config = HCLTConfig(variables=train.shape[1], values=layout.values, hidden=args.hidden)
    progress = run.out / "progress.json"
    if run.path.exists():
        state = load_file(str(run.path))
        model = HCLT(config, state["parent"].numpy())
        model.load_state_dict(state)
        done = json.loads(progress.read_text())
    else:
        model = HCLT(config, chow_liu_tree(mutual_information(train, layout.values)))
        model.init_emissions(train)
        done = {"epoch": 0, "batches": 0, "history": []}

    def save(epochs: int) -> None:  # the epoch count is in ``done``, written beside the model
        save_file(model.state_dict(), str(run.path))
        progress.write_text(json.dumps(done))

    rng = np.random.default_rng(done["epoch"])
    total = args.epochs + args.polish_epochs
    for epoch in run.steps(done["epoch"], total, 1, save, desc="EM epochs", unit="epoch"):
        polish = epoch >= args.epochs
        batch = args.batch * 4 if polish else args.batch
        perm = rng.permutation(len(train))
        bar = tqdm(range(0, len(train), batch), desc=f"EM epoch {epoch + 1}/{total}",
                   dynamic_ncols=True, leave=False, disable=None)
        for s in bar:
            x = torch.from_numpy(train[perm[s:s + batch]].astype(np.int64))
            ll, counts = model.expected_counts(x)
            step = args.min_step / 5 if polish else max(
                args.min_step, args.step * args.decay ** done["batches"])
            model.em_update(counts, step, args.pseudocount)
            done["batches"] += 1
            bar.set_postfix(bpd=f"{-ll / (x.numel() * np.log(2)):.4f}", step=f"{step:.3f}")
        done["epoch"] = epoch + 1
        done["history"].append({"epoch": epoch + 1, "val_bpd": bits_per_dim(model, val)})
        tqdm.write(json.dumps(done["history"][-1]))
    if not run.finished:
        return

    int_model = IntHCLT.from_float(model)
    report = {"dataset": args.dataset, "config": config.__dict__, "epochs": args.epochs,
              "polish_epochs": args.polish_epochs,
              "batch": args.batch, "train_samples": len(train), "val_samples": len(val),
              "history": done["history"],
              "val_bpd_float": bits_per_dim(model, val),
              "val_bpd_integer": ideal_bits(int_model, val),
              "test_bpd_integer": None if test is None else ideal_bits(int_model, test),
              "wall_seconds_this_run": round(time.time() - start)}
    run.report(report)
    run.export(args.export, lambda path: save_weights(
        int_model, layout, path, asdict(config),
        {"validation": json.dumps({"val_bpd": report["val_bpd_integer"]}),
         "data": f"{root} ({len(train)} training samples)"}))


if __name__ == "__main__":
    main()
