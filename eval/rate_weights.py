"""Tune the MCQ encoder's rate weights on held-back training photos (never Kodak).

    python -m nicodec.eval.rate_weights [--weights models/weights/mcq.safetensors] [--limit N]
                                [--grid 0,0.01,...] [--out eval/results/mcq/rate_weights.json]

The MCQ encoder may pick each residual stage's codeword by squared latent error plus a weight
times the codeword's bits under the prior (``MCQ.analyze_coded``), instead of the nearest one.
For every quality and every weight of the grid this measures ideal bpp (the integer prior's
code length) and PSNR on whole held-back photos, then picks per quality the weight whose point
lies furthest above the nearest-codeword curve (weight 0) at equal rate (PSNR interpolated by
PCHIP in log-rate). The chosen weights go into ``rate_weights`` of the model's registry entry;
the BD-rate of the chosen points against weight 0 is printed and written with every point.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.interpolate import PchipInterpolator
from tqdm import tqdm

from nicodec.bitstream.entropy import cost_bits
from nicodec.eval.bd import bd_rate
from nicodec.models.data import DEFAULT_TRAIN, load_images, split_paths, whole_image
from nicodec.models.mcq.codec import load_weights
from nicodec.models.weightfile import WEIGHTS

DEFAULT_GRID = (0.0, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3)


@torch.no_grad()
def measure(weights: str, images: list[np.ndarray], grid: list[float]) -> list[dict]:
    """Ideal bpp and PSNR per (quality, weight) over ``images``. The stages are chosen one after
    another, so quality q's symbols are the first columns of the full-quality choice."""
    net, prior = load_weights(weights)
    mc, stages = net.config.coarse_groups, net.config.groups
    totals = {(q, w): [0.0, 0.0] for q in range(stages + 1) for w in grid}  # bits, squared error
    pixels = 0
    for img in tqdm(images, desc="held-back photos", file=sys.stderr,
                    disable=None):
        x = whole_image(img, net.unit)
        pixels += x.shape[2] * x.shape[3]
        for w in grid:
            symbols, tables, _ = net.analyze_coded(x, stages, prior, w)
            flat = symbols.reshape(len(symbols), -1)
            bits = np.cumsum([cost_bits(f, t) for f, t in zip(flat, tables)])
            for q in range(stages + 1):
                columns = mc + 4 * q
                x_hat = (net.synthesize(symbols[:columns]) * 255).round() / 255
                totals[q, w][0] += bits[columns - 1]
                totals[q, w][1] += (x_hat - x).pow(2).sum().item()
    return [{"quality": q, "weight": w, "bpp": bits / pixels,
             "psnr": -10 * math.log10(err / (3 * pixels))}
            for (q, w), (bits, err) in totals.items()]


def choose(points: list[dict]) -> dict[int, float]:
    """Per quality, the weight with the largest PSNR gain over the weight-0 curve at equal rate
    (0 where none gains)."""
    base = sorted((p for p in points if p["weight"] == 0), key=lambda p: p["bpp"])
    curve = PchipInterpolator(np.log([p["bpp"] for p in base]), [p["psnr"] for p in base])
    for p in points:
        p["gain_db"] = float(p["psnr"] - curve(np.log(p["bpp"])))
    chosen = {}
    for q in sorted({p["quality"] for p in points}):
        best = max((p for p in points if p["quality"] == q), key=lambda p: p["gain_db"])
        chosen[q] = best["weight"] if best["gain_db"] > 0 else 0.0
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--weights", default=str(WEIGHTS / "mcq.safetensors"),
                        help="MCQ weight file to tune (default: the shipped mcq)")
    parser.add_argument("--data", type=Path, default=DEFAULT_TRAIN,
                        help="training photos; their held-back part is measured")
    parser.add_argument("--limit", type=int, default=0, help="held-back photos to use (0: all)")
    parser.add_argument("--grid", default=",".join(map(str, DEFAULT_GRID)),
                        help="comma-separated rate weights to try (0 is always added)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", type=Path, default=None, help="write every point and the "
                        "choice as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    grid = sorted({0.0, *(float(v) for v in args.grid.split(","))})
    images = load_images(split_paths(args.data)[1], 64)[: args.limit or None]
    if not images:
        raise SystemExit(f"no held-back photos under {args.data}")
    points = measure(args.weights, images, grid)
    chosen = choose(points)
    picked = [next(p for p in points if p["quality"] == q and p["weight"] == w)
              for q, w in chosen.items()]
    base = [p for p in points if p["weight"] == 0]
    saving = bd_rate([p["bpp"] for p in base], [p["psnr"] for p in base],
                     [p["bpp"] for p in picked], [p["psnr"] for p in picked])
    print(f"{'quality':>7} {'weight':>7} {'bpp':>8} {'PSNR':>8} {'gain dB':>8}")
    for p in picked:
        print(f"{p['quality']:>7} {p['weight']:>7g} {p['bpp']:>8.4f} {p['psnr']:>8.3f} "
              f"{p['gain_db']:>+8.3f}")
    print(f"BD-rate of the chosen weights against nearest codewords: {saving:+.2f}% "
          f"({len(images)} held-back photos)")
    print("rate_weights=(" + ", ".join(f"{w:g}" for w in chosen.values()) + ")")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"weights": Path(args.weights).name,
                                        "images": len(images), "chosen": chosen,
                                        "bd_rate_vs_nearest": saving, "points": points},
                                       indent=1))


if __name__ == "__main__":
    main()
