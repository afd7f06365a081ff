"""Encode and decode wall time per image: nicodec models next to CompressAI's hyperprior.

    python -m nicodec.eval.bench [--images ../shared/data/kodak] [--limit 4] [--runs 3] [--threads N]
                         [--models mcq] [--qualities 1,4,8]
    codec bench ...

Times are medians over ``--runs`` repetitions of each image, then averaged over images, measured
in the same process on the same machine. CompressAI's ``bmshj2018_hyperprior`` is built with
untrained weights (nothing may be downloaded); its run time does not depend on the weights' values
beyond the rate, so this is a fair timing reference, not a quality one. Benchmark on an idle
machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nicodec.eval.rd import DEFAULT_IMAGES, HelpFormatter, load_images


def _median_seconds(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_nicodec(images, model: str, quality: int | None, runs: int, effort: int = 1) -> dict:
    """Whole pipeline: pixels -> file bytes, file bytes -> pixels."""
    from nicodec import codec

    codec.load_model(model)  # loading is not part of coding time
    enc, dec, size = [], [], []

    def encode(pixels):
        return codec.encode(pixels, model=model, quality=quality, effort=effort)

    for _, pixels in images:
        data = encode(pixels)
        enc.append(_median_seconds(lambda: encode(pixels), runs))
        dec.append(_median_seconds(lambda: codec.decode_array(data), runs))
        size.append(8 * len(data) / (pixels.shape[0] * pixels.shape[1]))
    return {"codec": f"nicodec {model}" + (f" q{quality}" if quality is not None else "")
                     + (f" e{effort}" if effort > 1 else ""),
            "encode_s": float(np.mean(enc)), "decode_s": float(np.mean(dec)),
            "bpp": float(np.mean(size))}


def bench_hyperprior(images, quality: int, runs: int) -> dict:
    """CompressAI bmshj2018_hyperprior (untrained weights): compress and decompress."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from compressai.zoo import bmshj2018_hyperprior
    net = bmshj2018_hyperprior(quality=quality, pretrained=False).eval()
    net.update(force=True)
    enc, dec = [], []
    for _, pixels in images:
        def to_tensor():
            x = torch.from_numpy(np.array(pixels)).permute(2, 0, 1)[None].float() / 255
            h, w = x.shape[2:]
            return F.pad(x, (0, -w % 64, 0, -h % 64))
        with torch.no_grad():
            out = net.compress(to_tensor())
            enc.append(_median_seconds(lambda: net.compress(to_tensor()), runs))
            dec.append(_median_seconds(
                lambda: net.decompress(out["strings"], out["shape"])["x_hat"].clamp(0, 1), runs))
    return {"codec": f"compressai bmshj2018-hyperprior q{quality} (untrained)",
            "encode_s": float(np.mean(enc)), "decode_s": float(np.mean(dec)), "bpp": None}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="codec bench", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES,
                        help="folder of test images (PNG, PPM or BMP), such as Kodak")
    parser.add_argument("--limit", type=int, default=4, help="number of images")
    parser.add_argument("--runs", type=int, default=3, help="repetitions per image (median)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1, as codec encode/decode; 0: torch's "
                             "default, one per core)")
    parser.add_argument("--models", default=None, help="comma-separated nicodec models "
                        "(default: every shipped lossy model, default quality)")
    parser.add_argument("--qualities", default=None, metavar="Q1,Q2,...",
                        help="qualities to time for every model in --models (default: each "
                             "model's default quality), e.g. 1,4,8 for the MCQ rate range")
    parser.add_argument("--efforts", default="1", metavar="E1,E2,...",
                        help="encoder effort levels to time, for the models that have them")
    parser.add_argument("--hyperprior-quality", type=int, default=4,
                        help="quality (1-8) of CompressAI's hyperprior timed for comparison")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    try:
        qualities = [int(q) for q in args.qualities.split(",")] if args.qualities else [None]
        efforts = [int(e) for e in args.efforts.split(",")]
    except ValueError:
        parser.error(f"--qualities and --efforts take comma-separated integers, got "
                     f"{args.qualities!r} and {args.efforts!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    from nicodec.codec.registry import available_models, model_info

    images = load_images(args.images, args.limit)
    names = args.models.split(",") if args.models else available_models(lossy_only=True)
    jobs = [(m, q, e) for m in names for q in qualities for e in efforts
            if e in model_info(m).efforts]
    rows = []
    with tqdm(total=len(jobs) + 1, desc="bench", file=sys.stderr, disable=None) as bar:
        for m, q, e in jobs:  # disable=None: the bar shows only on a terminal
            rows.append(bench_nicodec(images, m, q, args.runs, e))
            bar.update(1)
        try:
            rows.append(bench_hyperprior(images, args.hyperprior_quality, args.runs))
        except ImportError:  # compressai comes with the eval extra only
            print("note: compressai is not installed (pip install 'nicodec[eval]'): no "
                  "hyperprior row, no speed-up column", file=sys.stderr)
        bar.update(1)
    if rows[-1]["codec"].startswith("compressai"):
        ref = rows[-1]["encode_s"] + rows[-1]["decode_s"]
        for r in rows:
            r["speedup_vs_hyperprior"] = ref / (r["encode_s"] + r["decode_s"])
    meta = {"threads": torch.get_num_threads(), "images": len(images), "runs": args.runs}
    if args.json:
        print(json.dumps({"setup": meta, "rows": rows}, indent=2))
        return rows
    print(f"{len(images)} images, median of {args.runs} runs each, "
          f"torch threads: {meta['threads']}", file=sys.stderr)
    print(f"{'codec':<48}{'encode s':>10}{'decode s':>10}{'speed-up':>10}")
    for r in rows:
        speedup = r.get("speedup_vs_hyperprior")
        print(f"{r['codec']:<48}{r['encode_s']:>10.3f}{r['decode_s']:>10.3f}"
              + (f"{speedup:>9.2f}x" if speedup else f"{'-':>10}"))
    return rows


if __name__ == "__main__":
    main()
