"""Tiny images and thin strips with ``mcq``: bytes, PSNR (of the mean squared error over the
images of a row) and colour error, before and after the pixel-space index choice for images of
one unit (``models/mcq/search.py``, ``choose_in_pixels``).

    python -m nicodec.eval.small [--images ../shared/data/kodak] [--quality 4]
                         [--out eval/results/mcq/small-images.md]

Every size is cut from the centre of six Kodak images (kodim01, 05, 09, 13, 17, 21; a strip longer
than a Kodak side is the same band of the six images side by side, transposed for a column), plus
a single (200, 30, 40) pixel. "before" codes with the latent-space choice alone (as every image
was coded before), "after" as ``codec encode`` does now. The colour error is the mean over the
channels of |mean of the decoded channel - mean of the original channel|, in 8-bit levels.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from nicodec.codec.pipeline import decode_detailed, encode_detailed
from nicodec.codec.registry import load_model
from nicodec.eval.rd import DEFAULT_IMAGES
from nicodec.models.mcq import search

NAMES = ("kodim01", "kodim05", "kodim09", "kodim13", "kodim17", "kodim21")
SIZES = ((1, 1), (2, 2), (8, 8), (16, 16), (17, 17), (32, 32), (3, 500), (4000, 16), (16, 4000))


def crops(folder: Path, width: int, height: int) -> list[np.ndarray]:
    """A ``width`` x ``height`` crop from the centre of each image of NAMES (bands of them side
    by side for a strip longer than an image)."""
    photos = [np.asarray(Image.open(folder / f"{n}.png").convert("RGB")) for n in NAMES]
    if height > width:  # a column: the transposed row strip
        return [np.ascontiguousarray(c.transpose(1, 0, 2)) for c in crops(folder, height, width)]
    out = []
    for photo in photos:
        if width > photo.shape[1]:
            y = photo.shape[0] // 2 - height // 2
            band = np.concatenate([p[y:y + height] for p in photos], axis=1)
            out.append(np.ascontiguousarray(band[:, :width]))
            continue
        y, x = photo.shape[0] // 2 - height // 2, photo.shape[1] // 2 - width // 2
        out.append(np.ascontiguousarray(photo[y:y + height, x:x + width]))
    return out


def measure(images: list[np.ndarray], quality: int) -> dict:
    """Mean bytes, PSNR, colour error and encode seconds of ``images`` coded with ``mcq``."""
    rows = []
    for pixels in images:
        start = time.perf_counter()
        data = encode_detailed(pixels, "mcq", quality).data
        seconds = time.perf_counter() - start
        decoded = decode_detailed(data).pixels.astype(np.float64)
        original = pixels.astype(np.float64)
        mse = float(((decoded - original) ** 2).mean())
        colour = float(np.abs(decoded.mean((0, 1)) - original.mean((0, 1))).mean())
        rows.append((len(data), mse, colour, seconds))
    mean = dict(zip(("bytes", "mse", "colour", "seconds"), np.mean(rows, axis=0)))
    mean["psnr"] = 10 * np.log10(255 ** 2 / mean["mse"]) if mean["mse"] else float("inf")
    return mean


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=DEFAULT_IMAGES, help="folder holding the Kodak images")
    parser.add_argument("--quality", type=int, default=4, help="mcq quality (default 4)")
    parser.add_argument("--out", help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    load_model("mcq")
    sets = [("1x1 (200, 30, 40)", [np.array([[[200, 30, 40]]], np.uint8)])]
    sets += [(f"{w}x{h}", crops(Path(args.images), w, h)) for w, h in SIZES]
    lines = [f"`mcq` q{args.quality}, effort 1; means over the images of each row "
             f"(`python -m nicodec.eval.small --quality {args.quality}`)", "",
             "| image (WxH) | bytes before | after | PSNR before (dB) | after | colour error "
             "before | after | bpp after | encode s before | after |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    small = search.SMALL_UNITS
    for name, images in sets:
        search.SMALL_UNITS = 0
        before = measure(images, args.quality)
        search.SMALL_UNITS = small
        after = measure(images, args.quality)
        bpp = 8 * after["bytes"] / images[0].shape[0] / images[0].shape[1]
        lines.append(f"| {name} | {before['bytes']:.0f} | {after['bytes']:.0f} | "
                     f"{before['psnr']:.1f} | {after['psnr']:.1f} | {before['colour']:.2f} | "
                     f"{after['colour']:.2f} | {bpp:.2f} | {before['seconds']:.2f} | "
                     f"{after['seconds']:.2f} |")
        print(lines[-1], flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
