"""Rate-distortion curves of several committed ``codec eval`` runs on the same images, compared
in one table: every nicodec curve against every classical codec (BD-rate, BD-PSNR).

    python -m nicodec.eval.combine eval/results/mcq/summary.json eval/results/mcq/effort3/summary.json \\
        eval/results/kodak/summary.json --out eval/results/mcq/codecs

A full ``codec eval`` of a model against four codecs takes long on a small CPU; the classical
codecs' points do not change between runs (same images, same encoders), so a curve measured in
one run can be compared with the baselines of another. The runs must have used the same
images (folder name and count), and a curve found in two runs must be the same in both (up to
the order of float sums; checked: this is how a changed encoder or image set is caught).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nicodec.eval.rd import deltas, plot

CLASSICAL = ("jpeg", "webp", "avif", "jxl", "jpeg2000")


def same(a: list[dict], b: list[dict]) -> bool:
    """Two runs' points of a curve agree: the same settings and bytes, the same quality up to
    the order of the float sums (1e-3)."""
    return len(a) == len(b) and all(
        p["setting"] == q["setting"] and p["bpp"] == q["bpp"]
        and abs(p["psnr"] - q["psnr"]) < 1e-3 and abs(p["ms_ssim"] - q["ms_ssim"]) < 1e-3
        for p, q in zip(a, b))


def merge(paths: list[Path]) -> tuple[dict[str, list[dict]], dict]:
    """(the curves of all runs, the first run's summary); a clear error when the runs differ."""
    first = json.loads(paths[0].read_text())
    curves: dict[str, list[dict]] = {}
    for path in paths:
        run = json.loads(path.read_text())
        if (Path(run["images"]).name, run["count"]) != (Path(first["images"]).name,
                                                         first["count"]):
            raise SystemExit(f"error: {path} measured {run['count']} images of {run['images']}, "
                             f"{paths[0]} {first['count']} of {first['images']}")
        for name, points in run["curves"].items():
            if name in curves and not same(curves[name], points):
                raise SystemExit(f"error: curve {name!r} differs between the runs")
            curves[name] = points
    return curves, first


def compare(curves: dict[str, list[dict]]) -> str:
    """A markdown table: each nicodec curve's BD-rate (PSNR, MS-SSIM) and BD-PSNR against each
    classical codec (positive BD-rate: more bytes than that codec for the same quality)."""
    baselines = [name for name in CLASSICAL if name in curves]
    lines = ["| curve | against | BD-rate PSNR | BD-PSNR (dB) | BD-rate MS-SSIM |",
             "| --- | --- | --- | --- | --- |"]
    for reference in baselines:
        bd = deltas(curves, reference)
        for name in curves:
            if name.startswith("nicodec"):
                d = bd[name]
                lines.append(f"| {name} | {reference} | {d['bd_rate_psnr_pct']:+.1f}% | "
                             f"{d['bd_psnr_db']:+.2f} | {d['bd_rate_msssim_pct']:+.1f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("summaries", nargs="+", type=Path, help="summary.json of codec eval runs")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for summary.md, summary.json and the RD plots")
    parser.add_argument("--max-bpp", type=float, default=1.0, help="x-axis limit of the plots")
    args = parser.parse_args(argv)
    curves, first = merge(args.summaries)
    args.out.mkdir(parents=True, exist_ok=True)
    text = (f"{first['count']} images of {first['images']}, from "
            + ", ".join(f"`{p}`" for p in args.summaries) + "\n\n" + compare(curves) + "\n")
    (args.out / "summary.md").write_text(text)
    (args.out / "summary.json").write_text(json.dumps(
        {"images": first["images"], "count": first["count"],
         "sources": [str(p) for p in args.summaries], "curves": curves}, indent=2) + "\n")
    for metric in ("psnr", "ms_ssim"):
        plot(curves, {}, args.out / f"rd_{metric}.png", metric, args.max_bpp)
    print(text)


if __name__ == "__main__":
    main()
