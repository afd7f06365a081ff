"""Encoding to a target rate or PSNR on a folder of images: what the search chose, what it hit.

    python -m nicodec.eval.target --bpp 0.2 [--images ../shared/data/kodak] [--model mcq] [--limit N]
                          [--out eval/results/mcq/target-bpp-0.2.md]
    python -m nicodec.eval.target --psnr 27 ...

Prints a markdown table (image, quality chosen, encoder rate weight, bpp from the file's bytes,
PSNR of the decoded file, encode time of the whole search) and a summary line: the bpp range and
how many images landed within 10% of the target (``codec.target.RATE_TOLERANCE``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from nicodec.codec.pipeline import decode_detailed
from nicodec.codec.registry import DEFAULT_MODEL, load_model
from nicodec.codec.target import RATE_TOLERANCE, encode_to_target, psnr
from nicodec.eval.rd import DEFAULT_IMAGES, load_images


def run(images: list, kind: str, target: float, model: str, effort: int) -> list[dict]:
    """One row per image: the search's choice and the figures of the file it wrote."""
    load_model(model)  # loading the weights is not part of the encode time
    rows = []
    for name, pixels in tqdm(images, desc="target", file=sys.stderr, disable=None):
        start = time.perf_counter()
        result = encode_to_target(pixels, model=model, effort=effort,
                                  **{f"target_{kind}": target})
        seconds = time.perf_counter() - start
        decoded = decode_detailed(result.data).pixels
        rows.append({"image": name, "quality": result.quality, "rate_weight": result.rate_weight,
                     "bytes": len(result.data),
                     "bpp": 8 * len(result.data) / (pixels.shape[0] * pixels.shape[1]),
                     "psnr": psnr(pixels, decoded), "seconds": seconds, "trials": result.trials,
                     "met": result.met})
    return rows


def report(rows: list[dict], kind: str, target: float, header: str) -> str:
    """The markdown table and its summary."""
    lines = [header, "", "| image | quality | rate weight | bytes | bpp | PSNR (dB) | encode s "
             "| encoder runs | met |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        weight = "-" if r["rate_weight"] is None else f"{r['rate_weight']:.3f}"
        lines.append(f"| {r['image']} | {r['quality']} | {weight} | {r['bytes']} | "
                     f"{r['bpp']:.4f} | {r['psnr']:.2f} | {r['seconds']:.2f} | {r['trials']} | "
                     f"{'yes' if r['met'] else 'no'} |")
    bpps = [r["bpp"] for r in rows]
    lines += ["", f"{len(rows)} images: bpp {min(bpps):.4f} .. {max(bpps):.4f} (mean "
              f"{sum(bpps) / len(bpps):.4f}), PSNR mean "
              f"{sum(r['psnr'] for r in rows) / len(rows):.2f} dB, encode time mean "
              f"{sum(r['seconds'] for r in rows) / len(rows):.2f} s; target met: "
              f"{sum(r['met'] for r in rows)} of {len(rows)}"]
    if kind == "bpp":
        close = sum(abs(b - target) <= RATE_TOLERANCE * target for b in bpps)
        lines[-1] += f"; within {RATE_TOLERANCE:.0%} of {target:g} bpp: {close} of {len(rows)}"
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nicodec.eval.target", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    goal = parser.add_mutually_exclusive_group(required=True)
    goal.add_argument("--bpp", type=float, help="target bits per pixel (file bytes)")
    goal.add_argument("--psnr", type=float, help="target PSNR in dB")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--effort", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    kind, target = ("bpp", args.bpp) if args.bpp is not None else ("psnr", args.psnr)
    images = load_images(args.images, args.limit)
    load = os.getloadavg()[0]  # times are only comparable on an idle machine
    rows = run(images, kind, target, args.model, args.effort)
    command = " ".join(["python -m nicodec.eval.target", *(argv if argv is not None else sys.argv[1:])])
    header = (f"# Target {kind} {target:g}: {args.model}, effort {args.effort}, "
              f"{len(images)} images of {args.images.name}\n\n"
              f"`{command}` ({time.strftime('%Y-%m-%d %H:%M')}, torch threads "
              f"{args.threads}, load average {load:.1f} on {os.cpu_count()} cores at the "
              f"start). bpp from the file's bytes (header included); encode time is "
              f"the whole search (every encoder run"
              f"{', with a decode each' if kind == 'psnr' else ''}).")
    text = report(rows, kind, target, header)
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
