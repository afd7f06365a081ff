"""What the index transformer saves: VQ rates against fixed-length and static-table coding.

    python -m nicodec.eval.vq_rate [--images ../shared/data/kodak] [--qualities 1,...,10] [--limit N]
                           [--out eval/results/vq-prior]

For every quality (codebook size K) and image, the same index grid is written three ways:
fixed-length coding (log2(K) bits per 16x16 unit, i.e. log2(K)/256 bpp, no header: the paper's
rate), ``vq-static`` (static table) and ``vq`` (the masked transformer, one packet). bpp for the
two nicodec models counts the whole file, header and CRC included. Encode and decode seconds
(one run each, after a warm-up image) show what the transformer adds to decoding. Writes
``rate.json`` and ``rate.txt``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from tqdm import tqdm

from nicodec.eval.rd import DEFAULT_IMAGES, load_images


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def measure(images, qualities: list[int]) -> list[dict]:
    from nicodec import codec
    from nicodec.codec.registry import load_model

    sizes = load_model("vq").net.sizes
    codec.decode_array(codec.encode(images[0][1], model="vq", quality=qualities[0]))  # warm-up
    rows = []
    for q in tqdm(qualities, desc="qualities", file=sys.stderr, disable=None):
        totals = {"pixels": 0, "vq": 0, "vq-static": 0, "vq_enc": 0.0, "vq_dec": 0.0,
                  "static_enc": 0.0, "static_dec": 0.0}
        for _, pixels in images:
            totals["pixels"] += pixels.shape[0] * pixels.shape[1]
            for model, key in (("vq", "vq"), ("vq-static", "static")):
                data, enc = _timed(lambda: codec.encode(pixels, model=model, quality=q))
                _, dec = _timed(lambda: codec.decode_array(data))
                totals[model] += len(data)
                totals[f"{key}_enc"] += enc
                totals[f"{key}_dec"] += dec
        n, px = len(images), totals["pixels"]
        fixed = math.log2(sizes[q - 1]) / 256
        row = {"quality": q, "K": sizes[q - 1], "fixed_bpp": fixed,
               "static_bpp": totals["vq-static"] * 8 / px, "vq_bpp": totals["vq"] * 8 / px,
               "vq_encode_s": totals["vq_enc"] / n, "vq_decode_s": totals["vq_dec"] / n,
               "static_encode_s": totals["static_enc"] / n,
               "static_decode_s": totals["static_dec"] / n}
        row["saving_vs_fixed"] = 1 - row["vq_bpp"] / fixed
        row["saving_vs_static"] = 1 - row["vq_bpp"] / row["static_bpp"]
        rows.append(row)
    return rows


def table(rows: list[dict], images: int) -> str:
    lines = [f"Kodak ({images} images), bpp from file bytes; fixed = log2(K)/256",
             "  q     K   fixed   static   vq (saving vs fixed, vs static)   "
             "decode s vq / static   encode s vq / static"]
    for r in rows:
        lines.append(f"{r['quality']:3d} {r['K']:5d}  {r['fixed_bpp']:.4f}  {r['static_bpp']:.4f}  "
                     f"{r['vq_bpp']:.4f} ({r['saving_vs_fixed']:+.1%}, {r['saving_vs_static']:+.1%})"
                     f"        {r['vq_decode_s']:.3f} / {r['static_decode_s']:.3f}"
                     f"          {r['vq_encode_s']:.3f} / {r['static_encode_s']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES,
                        help="folder of test images (default: Kodak)")
    parser.add_argument("--qualities", default=",".join(str(q) for q in range(1, 11)),
                        help="ladder qualities, comma-separated (default: all ten)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--out", type=Path, default=Path("eval/results/vq-prior"),
                        help="folder for rate.json and rate.txt (default: eval/results/vq-prior)")
    args = parser.parse_args(argv)
    images = load_images(args.images, args.limit)
    rows = measure(images, [int(q) for q in args.qualities.split(",")])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rate.json").write_text(json.dumps(rows, indent=1))
    text = table(rows, len(images))
    (args.out / "rate.txt").write_text(text + "\n")
    print(text)
    return rows


if __name__ == "__main__":
    main()
