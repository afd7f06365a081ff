"""Side-by-side crops of decoded images, and the default model's figure for the README:
original, ``mcq`` at a target rate, WebP at the same file size.

    python -m nicodec.eval.figure [--image kodim23.png] [--bpp 0.2] [--box x0,y0,x1,y1] [--out PNG]

The whole image is coded (bpp counts every byte of each file); a crop of the decodes is shown.
``mcq`` meets the rate through ``codec.encode_to_target``; WebP takes the quality whose file is
closest to the ``mcq`` file's size.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from nicodec import codec
from nicodec.eval.baselines import available_baselines
from nicodec.eval.metrics import psnr
from nicodec.eval.rd import DEFAULT_IMAGES

DEFAULT_BOX = "200,120,456,376"  # the parrots' heads in kodim23


def save_sheet(pixels: np.ndarray, panels: list[tuple[str, np.ndarray, int | None]], box: str,
               out: Path) -> None:
    """One row of crops ``box`` (x0,y0,x1,y1) of ``panels`` (title, decoded pixels, file bytes or
    None for the original), each titled with its bpp and PSNR over the whole image."""
    n = pixels.shape[0] * pixels.shape[1]
    x0, y0, x1, y1 = (int(v) for v in box.split(","))
    w, h, label = x1 - x0, y1 - y0, 30
    sheet = Image.new("RGB", (w * len(panels), h + label), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (name, image, size) in enumerate(panels):
        sheet.paste(Image.fromarray(image[y0:y1, x0:x1]), (i * w, label))
        text = name if size is None else (f"{name}\n{size * 8 / n:.4f} bpp, "
                                          f"{psnr(pixels, image):.2f} dB")
        draw.multiline_text((i * w + 4, 1), text, fill="black")
        print(text.replace("\n", ": "))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")


def closest_setting(run, pixels: np.ndarray, settings, size: int) -> tuple[bytes, np.ndarray]:
    """The (file, decoded) of the setting whose file size is closest to ``size``."""
    results = [run(pixels, s) for s in settings]
    return min(results, key=lambda r: abs(len(r[0]) - size))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGES / "kodim23.png")
    parser.add_argument("--bpp", type=float, default=0.2, help="target rate of the mcq panel")
    parser.add_argument("--box", default=DEFAULT_BOX, help="crop x0,y0,x1,y1")
    parser.add_argument("--out", type=Path, default=Path("eval/results/mcq/side_by_side.png"))
    args = parser.parse_args(argv)
    with Image.open(args.image) as img:
        pixels = np.asarray(img.convert("RGB"))
    found = codec.encode_to_target(pixels, target_bpp=args.bpp)
    panels = [("original", pixels, None),
              (f"nicodec mcq q{found.quality}", codec.decode_array(found.data), len(found.data))]
    baselines, missing = available_baselines()
    if "webp" in baselines:
        data, decoded = closest_setting(baselines["webp"].run, pixels, range(101),
                                        len(found.data))
        panels.append(("WebP (same size)", decoded, len(data)))
    else:
        print(f"WebP: skipped ({missing['webp']})")
    save_sheet(pixels, panels, args.box, args.out)


if __name__ == "__main__":
    main()
