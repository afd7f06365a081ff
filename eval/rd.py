"""Rate-distortion evaluation of nicodec models against classical codecs, in one run.

    python -m nicodec.eval.rd [--images ../shared/data/kodak] [--models mcq-tiny] [--out nicodec-eval/rd]
    codec eval ...            (the same options)

Needs a folder of test images (``--images``; the Kodak set, kodim01-24.png, is the usual one).
Results go to ``--out`` (default ``nicodec-eval/rd``; the committed figures in ``eval/results/``
are made with an explicit ``--out``).

bpp is counted from the real file bytes, header included (CompressAI's evaluation leaves headers
out; we do not). Writes per-image rows (CSV and JSON), a summary (JSON and a text table, also
printed) with BD-rate and BD-PSNR of every curve against a reference codec, and RD plots.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from nicodec.eval.baselines import available_baselines
from nicodec.eval.bd import bd_psnr, bd_rate
from nicodec.eval.metrics import metric_set

DEFAULT_IMAGES = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "kodak"
PUBLISHED = Path(__file__).resolve().parent / "published" / "compressai_kodak.json"
PUBLISHED_IMAGES = 24  # the published curves are means over all 24 Kodak images
USAGE = 2  # exit status of a usage error, as argparse's


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each option's default, where it has one (not for flags, nor where the help
    already says it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default == [] \
                or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def load_images(folder: Path, limit: int | None) -> list[tuple[str, np.ndarray]]:
    """The first ``limit`` (all for None) PNG/PPM/BMP images of ``folder``, sorted by name, as
    RGB arrays; a missing or empty folder ends the command with one line (exit 2)."""
    paths = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in {".png", ".ppm", ".bmp"}) if folder.is_dir() else []
    if not paths:
        where = f"none in {folder}" if folder.is_dir() else f"folder {folder} not found"
        print(f"error: no test images ({where}): this command needs a folder of PNG, PPM or BMP "
              "images such as the Kodak set (kodim01-24.png); pass it with --images FOLDER",
              file=sys.stderr)
        raise SystemExit(USAGE)
    images = []
    for p in paths[:limit]:
        with Image.open(p) as img:
            images.append((p.name, np.asarray(img.convert("RGB"))))
    return images


def nicodec_runner(model: str, effort: int = 1):
    """(pixels, quality) -> (bytes, decoded pixels) for a nicodec model at an encoder effort."""
    from nicodec.codec.pipeline import decode_detailed, encode

    def run(pixels: np.ndarray, quality: float) -> tuple[bytes, np.ndarray]:
        data = encode(pixels, model=model, quality=int(quality), effort=effort)
        return data, decode_detailed(data).pixels
    return run


def measure(images, codecs, metrics) -> list[dict]:
    """Run every codec at every setting on every image; one row per (codec, setting, image)."""
    jobs = [(name, setting, run) for name, (settings, run) in codecs.items() for setting in settings]
    rows = []
    with tqdm(total=len(jobs) * len(images), desc="rd", file=sys.stderr,
              disable=None) as bar:  # None: hidden when stderr is not a terminal
        for name, setting, run in jobs:
            for image_name, pixels in images:
                start = time.perf_counter()
                data, decoded = run(pixels, setting)
                seconds = time.perf_counter() - start
                row = {"codec": name, "setting": setting, "image": image_name,
                       "bytes": len(data), "bpp": 8 * len(data) / (pixels.shape[0] * pixels.shape[1]),
                       "seconds": round(seconds, 4)}
                row.update({m: fn(pixels, decoded) for m, fn in metrics.items()})
                rows.append(row)
                bar.update(1)
    return rows


def summarize(rows: list[dict], metric_names: list[str]) -> dict[str, list[dict]]:
    """Per codec, per setting: mean bpp and mean of each metric over images (sorted by bpp)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["codec"], r["setting"])].append(r)
    curves: dict[str, list[dict]] = defaultdict(list)
    for (codec_name, setting), rs in groups.items():
        point = {"setting": setting, "bpp": float(np.mean([r["bpp"] for r in rs]))}
        point.update({m: float(np.mean([r[m] for r in rs])) for m in metric_names})
        curves[codec_name].append(point)
    return {name: sorted(points, key=lambda p: p["bpp"]) for name, points in curves.items()}


def msssim_db(values) -> list[float]:
    """MS-SSIM as -10 log10(1 - MS-SSIM), the scale on which BD figures are usually taken."""
    return [-10 * math.log10(max(1e-10, 1 - v)) for v in values]


def deltas(curves: dict[str, list[dict]], reference: str) -> dict[str, dict]:
    """BD-rate (PSNR and MS-SSIM) and BD-PSNR of every curve against ``reference``."""
    ref = curves[reference]
    out = {}
    for name, points in curves.items():
        rate = [p["bpp"] for p in points]
        out[name] = {
            "bd_rate_psnr_pct": bd_rate([p["bpp"] for p in ref], [p["psnr"] for p in ref],
                                        rate, [p["psnr"] for p in points]),
            "bd_psnr_db": bd_psnr([p["bpp"] for p in ref], [p["psnr"] for p in ref],
                                  rate, [p["psnr"] for p in points]),
            "bd_rate_msssim_pct": bd_rate([p["bpp"] for p in ref],
                                          msssim_db([p["ms_ssim"] for p in ref]),
                                          rate, msssim_db([p["ms_ssim"] for p in points])),
        }
    return out


def table(curves: dict[str, list[dict]], bd: dict[str, dict], reference: str) -> str:
    """The terminal summary: every RD point, then the BD figures."""
    lines = [f"{'codec':<34}{'setting':>9}{'bpp':>9}{'PSNR':>9}{'MS-SSIM':>9}"]
    for name, points in curves.items():
        for p in points:
            lines.append(f"{name:<34}{p['setting']:>9}{p['bpp']:>9.4f}{p['psnr']:>9.3f}"
                         f"{p['ms_ssim']:>9.4f}")
    lines.append("")
    lines.append(f"Bjøntegaard deltas against {reference} (over the overlapping range; nan: none)")
    lines.append(f"{'codec':<34}{'BD-rate PSNR':>14}{'BD-PSNR':>10}{'BD-rate MS-SSIM':>17}")
    for name, d in bd.items():
        lines.append(f"{name:<34}{d['bd_rate_psnr_pct']:>13.1f}%{d['bd_psnr_db']:>9.2f} "
                     f"{d['bd_rate_msssim_pct']:>15.1f}%")
    return "\n".join(lines)


def plot_title(count: int, folder: Path, published: bool) -> str:
    """What the measured curves are means over, and, when published curves are drawn on
    another set of images (a --limit subset, another folder), a note saying so."""
    title = f"measured: mean over {count} image{'s' if count != 1 else ''} of {folder.name}/"
    if published and not (count == PUBLISHED_IMAGES and "kodak" in folder.name.lower()):
        title += (f"\npublished curves (dashed): all {PUBLISHED_IMAGES} Kodak images, "
                  "not the same set")
    return title


def plot(curves: dict[str, list[dict]], published: dict, path: Path, metric: str,
         max_bpp: float, title: str = "") -> None:
    """One RD plot: measured curves solid, published anchors dashed and labelled as such."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    for name, points in curves.items():
        pts = [p for p in points if p["bpp"] <= max_bpp]
        style = "o-" if name.startswith("nicodec") else ".-"
        ax.plot([p["bpp"] for p in pts], [p[metric] for p in pts], style, label=name,
                linewidth=2.2 if name.startswith("nicodec") else 1.2)
    for name, c in published.items():
        pts = [(b, v) for b, v in zip(c["bpp"], c[metric]) if b <= max_bpp]
        ax.plot(*zip(*pts), "--", color="gray" if "hyper" in name else "black", label=name)
    ax.set_xlabel("bits per pixel (file bytes, header included)")
    ax.set_ylabel({"psnr": "PSNR (dB, RGB)", "ms_ssim": "MS-SSIM (RGB)"}[metric])
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="codec eval", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES,
                        help="folder of test images (PNG, PPM or BMP), such as Kodak")
    parser.add_argument("--models", default=None,
                        help="comma-separated nicodec models, each optionally name@q1/q2 "
                             "(default: every shipped lossy model at all its qualities)")
    parser.add_argument("--efforts", default="1",
                        help="comma-separated encoder effort levels; each model is run at every "
                             "level it has (curves 'nicodec NAME' for 1, 'nicodec NAME eE' above)")
    parser.add_argument("--baselines", default="jpeg,webp,avif,jxl",
                        help="comma-separated classical codecs (jpeg, webp, avif, jxl, jpeg2000), "
                             "or 'none'")
    parser.add_argument("--reference", default="webp", help="codec that BD figures compare to")
    parser.add_argument("--metric", action="append", default=[],
                        help="extra metric module:function (e.g. LPIPS with local weights)")
    parser.add_argument("--ssimulacra2", action="store_true", help="also compute SSIMULACRA2")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument("--out", type=Path, default=Path("nicodec-eval/rd"),
                        help="folder for CSV/JSON/PNG results (its files of those names are "
                             "replaced)")
    parser.add_argument("--max-bpp", type=float, default=1.2, help="x-axis limit of the plots")
    parser.add_argument("--no-published", action="store_true",
                        help="leave the published CompressAI curves off the plot")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser.parse_args(argv)


def _nicodec_codecs(spec: str | None, efforts: list[int]) -> dict:
    from nicodec.codec.registry import available_models, model_info

    entries = spec.split(",") if spec else available_models(lossy_only=True)
    codecs = {}
    for entry in entries:
        name, _, qs = entry.strip().partition("@")
        info = model_info(name)
        qualities = tuple(int(q) for q in qs.split("/")) if qs else info.qualities
        for effort in (e for e in efforts if e in info.efforts):
            label = f"nicodec {name}" + (f" e{effort}" if effort > 1 else "")
            codecs[label] = (qualities, nicodec_runner(name, effort))
    return codecs


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    images = load_images(args.images, args.limit)
    found, missing = available_baselines()
    wanted = [] if args.baselines == "none" else [b.strip() for b in args.baselines.split(",")]
    try:
        efforts = [int(e) for e in args.efforts.split(",")]
    except ValueError:
        raise SystemExit(f"error: --efforts takes comma-separated integers, got {args.efforts!r}")
    codecs = _nicodec_codecs(args.models, efforts)
    for name in wanted:
        if name in found:
            codecs[name] = (found[name].settings, found[name].run)
        elif name not in missing:
            raise SystemExit(f"error: unknown baseline {name!r}")
    skipped = {name: missing[name] for name in wanted if name in missing}
    for name, why in skipped.items():
        print(f"note: baseline {name} skipped: {why}", file=sys.stderr)
    metrics = metric_set(args.metric, args.ssimulacra2)
    rows = measure(images, codecs, metrics)
    curves = summarize(rows, list(metrics))
    reference = args.reference if args.reference in curves else next(iter(curves))
    bd = deltas(curves, reference)
    published = {} if args.no_published else json.loads(PUBLISHED.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "per_image.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "per_image.json").write_text(json.dumps(rows, indent=1))
    summary = {"images": str(args.images), "count": len(images), "reference": reference,
               "skipped_baselines": skipped, "curves": curves, "bd": bd,
               "published_source": published.get("source")}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    text = table(curves, bd, reference)
    (args.out / "summary.txt").write_text(text + "\n")
    for metric in ("psnr", "ms_ssim"):
        plot(curves, published.get("curves", {}), args.out / f"rd_{metric}.png", metric,
             args.max_bpp, plot_title(len(images), args.images, bool(published)))
    print(json.dumps(summary, indent=2) if args.json else text)
    print(f"results in {args.out}/", file=sys.stderr)
    return summary


if __name__ == "__main__":
    main()
