"""Side-by-side crop: original, nicodec VQ near a target rate, classical codecs at their nearest
points: ``python -m nicodec.eval.vq_figure [--image kodim23.png] [--bpp 0.03] [--out PNG]``.

The whole image is coded (bpp counts every byte of each file); a crop of the decodes is shown.
JPEG 2000 is rate-targeted to the VQ file's exact bpp; AVIF, WebP and JPEG run at their lowest
quality setting (none of them reaches 0.05 bpp on Kodak).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from nicodec import codec
from nicodec.eval.baselines import available_baselines
from nicodec.eval.figure import DEFAULT_BOX, save_sheet
from nicodec.eval.rd import DEFAULT_IMAGES

# (panel title, baseline, setting): JPEG 2000 is targeted at the VQ file's bpp (setting None)
CLASSICAL = [("JPEG 2000 (same size)", "jpeg2000", None), ("AVIF quality 0", "avif", 0),
             ("JPEG quality 1", "jpeg", 1)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGES / "kodim23.png")
    parser.add_argument("--bpp", type=float, default=0.03, help="target rate of the VQ panel")
    parser.add_argument("--box", default=DEFAULT_BOX, help="crop x0,y0,x1,y1")
    parser.add_argument("--out", type=Path, default=Path("eval/results/vq/side_by_side.png"))
    args = parser.parse_args(argv)
    with Image.open(args.image) as img:
        pixels = np.asarray(img.convert("RGB"))
    n = pixels.shape[0] * pixels.shape[1]
    runs = {q: codec.encode(pixels, model="vq", quality=q) for q in range(1, 11)}
    q = min(runs, key=lambda k: abs(len(runs[k]) * 8 / n - args.bpp))
    vq_bpp = len(runs[q]) * 8 / n
    panels = [("original", pixels, None)]
    panels.append((f"nicodec vq q{q}", codec.decode_array(runs[q]), len(runs[q])))
    baselines, missing = available_baselines()
    for title, name, setting in CLASSICAL:
        if name not in baselines:
            print(f"{title}: skipped ({missing[name]})")
            continue
        data, decoded = baselines[name].run(pixels, vq_bpp if setting is None else setting)
        panels.append((title, decoded, len(data)))
    save_sheet(pixels, panels, args.box, args.out)


if __name__ == "__main__":
    main()
