"""Lossless benchmark: ``python -m nicodec.eval.lossless`` (bits per dimension, throughput, baselines).

For each small-image dataset (MNIST, Fashion-MNIST test sets) it measures

* nicodec's PC model coding the whole test set as **one stream** (one picture of 100 images per
  row, each image one unit: one header, units dealt to packets as usual), its bits per dimension from the file size, encode and decode
  throughput (images/s), and that the decode is exact;
* the cost of a **single-image file** (one digit, header included);
* the efficient (pre-order, computation reused) against the naive (every conditional from
  scratch) table computation on a few images: time and speed-up, tables checked identical;
* PNG (``optimize=True``), WebP lossless (method 6) and JPEG XL lossless in the same run, both
  per image file and on one grid image holding the whole set (their best case);

and the photo lossless mode (``codec encode --lossless``) on Kodak against the same codecs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, features
from tqdm import tqdm

from nicodec.codec.files import set_threads
from nicodec.codec.pipeline import decode_detailed, encode
from nicodec.codec.registry import LOSSLESS_MODEL, load_model
from nicodec.models.pc.train import load_split

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MODELS = {"mnist": "pc-mnist", "fashion-mnist": "pc-fashion"}


def lossless_baselines() -> dict[str, dict]:
    """Pillow save options of the lossless classical codecs available here."""
    found = {"png": {"format": "PNG", "optimize": True}}
    if features.check("webp"):
        found["webp-lossless"] = {"format": "WEBP", "lossless": True, "method": 6, "quality": 100}
    try:
        import pillow_jxl  # noqa: F401
        found["jxl-lossless"] = {"format": "JXL", "lossless": True, "effort": 7}
        found["jxl-lossless-e9"] = {"format": "JXL", "lossless": True, "effort": 9}
    except ImportError:
        pass
    return found


def _baseline_bytes(pixels: np.ndarray, options: dict) -> int:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, **options)
    with Image.open(io.BytesIO(buffer.getvalue())) as img:
        if not (np.asarray(img.convert("L" if pixels.ndim == 2 else "RGB")) == pixels).all():
            raise RuntimeError(f"{options['format']} did not round-trip losslessly")
    return len(buffer.getvalue())


def naive_vs_efficient(model_name: str, images: np.ndarray) -> dict:
    """Seconds to compute every table of ``images`` both ways (tables must agree)."""
    prior = load_model(model_name).prior.model
    data = images.reshape(len(images), -1).astype(np.int64)
    start = time.perf_counter()
    efficient = list(prior.tables(data))
    t_eff = time.perf_counter() - start
    start = time.perf_counter()
    for k in range(len(efficient)):
        if not (prior.naive_freqs(data, k) == efficient[k]).all():
            raise RuntimeError("naive and efficient tables differ")
    t_naive = time.perf_counter() - start
    return {"images": len(data), "efficient_s": t_eff, "naive_s": t_naive,
            "speedup": t_naive / t_eff}


def _grid(images: np.ndarray, columns: int = 100) -> np.ndarray:
    """Images (N, 28, 28) tiled into rows of ``columns`` (the last row padded with blank
    images, whose bits are then counted too): one picture holding the whole set."""
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    padded = np.zeros((rows * columns, 28, 28), np.uint8)
    padded[:len(images)] = images
    return padded.reshape(rows, columns, 28, 28).transpose(0, 2, 1, 3).reshape(rows * 28, -1)


def run_dataset(name: str, count: int, naive_images: int, baseline_images: int) -> dict:
    model = MODELS[name]
    images = load_split(DATA / name, "t10k").reshape(-1, 28, 28)[:count]
    dims = images.size
    grid = _grid(images)[:, :, None]  # one unit per image
    start = time.perf_counter()
    data = encode(grid, model=model)
    t_enc = time.perf_counter() - start
    start = time.perf_counter()
    decoded = decode_detailed(data)
    t_dec = time.perf_counter() - start
    if not (decoded.pixels == grid).all():
        raise RuntimeError("decode is not exact")
    single = [len(encode(img[:, :, None], model=model)) for img in images[:100]]
    row = {"dataset": name, "model": model, "images": len(images),
           "stream_bytes": len(data), "stream_bpd": 8 * len(data) / dims,
           "single_image_bytes_mean": float(np.mean(single)),
           "single_image_bpd": 8 * float(np.mean(single)) / 784,
           "encode_images_per_s": len(images) / t_enc,
           "decode_images_per_s": len(images) / t_dec,
           "naive_vs_efficient": naive_vs_efficient(model, images[:naive_images]),
           "baselines": {}}
    for codec_name, options in lossless_baselines().items():
        per_image = [_baseline_bytes(img, options) for img in images[:baseline_images]]
        row["baselines"][codec_name] = {
            "per_image_bpd": 8 * float(np.mean(per_image)) / 784,
            "grid_bpd": 8 * _baseline_bytes(grid[:, :, 0], options) / dims,
        }
    return row


def run_photos(folder: Path, limit: int | None, model: str | None = None) -> dict:
    """The photo lossless mode (``model``, default the ``--lossless`` default) on a folder of
    photos (Kodak) against the classical codecs; every decode is checked exact."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")[:limit]
    total = {"pixels": 0, "nicodec": 0, "encode_s": 0.0, "decode_s": 0.0}
    images = []
    tqdm.monitor_interval = 0  # no thread beside this one: ctx-photo's coder forks only then
    for path in tqdm(paths, desc="photos", leave=False, disable=None):
        pixels = np.asarray(Image.open(path).convert("RGB"))
        start = time.perf_counter()
        data = encode(pixels, model=model, lossless=True)
        total["encode_s"] += time.perf_counter() - start
        start = time.perf_counter()
        decoded = decode_detailed(data)
        total["decode_s"] += time.perf_counter() - start
        if not (decoded.pixels == pixels).all():
            raise RuntimeError(f"{path.name}: lossless decode is not exact")
        row = {"image": path.name, "nicodec_bpp": 8 * len(data) / pixels[..., 0].size}
        for name, options in lossless_baselines().items():
            row[f"{name}_bpp"] = 8 * _baseline_bytes(pixels, options) / pixels[..., 0].size
        images.append(row)
        total["pixels"] += pixels[..., 0].size
    keys = [k for k in images[0] if k.endswith("_bpp")]
    mean = {k: float(np.mean([r[k] for r in images])) for k in keys}
    return {"folder": str(folder), "model": model or LOSSLESS_MODEL, "images": len(images),
            "threads": torch.get_num_threads(), "load_average": round(os.getloadavg()[0], 1),
            "mean_bpp": mean,
            "ratio_to_png": mean["nicodec_bpp"] / mean["png_bpp"],
            "encode_s_per_image": total["encode_s"] / len(images),
            "decode_s_per_image": total["decode_s"] / len(images), "per_image": images}


def synthetic_16bit(size: int = 512, seed: int = 0) -> dict[str, np.ndarray]:
    """The 16-bit test set: grayscale images whose every bit carries content (none is 8-bit
    data shifted up), as a scientific camera or a raw developer would write them:

    * ``ramp``: a diagonal ramp over the whole range plus Gaussian noise of sigma 64;
    * ``waves``: six random low-frequency waves plus shot noise (sigma 2 sqrt(level)) and read
      noise (sigma 16);
    * ``fractal``: 1/f noise (a photo-like spectrum) over the whole range plus noise of sigma 8;
    * ``shapes``: random rectangles, slightly blurred, plus noise of sigma 32.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    top = 65535.0
    ramp = (x + y) / 2 * top + rng.normal(0, 64, x.shape)
    waves = sum(rng.uniform(3000, 8000) * np.sin(2 * np.pi * (rng.uniform(0.5, 4) * x
                + rng.uniform(0.5, 4) * y) + rng.uniform(0, 6.3)) for _ in range(6)) + top / 2
    waves = waves + rng.normal(0, 1, x.shape) * 2 * np.sqrt(np.maximum(waves, 0)) \
        + rng.normal(0, 16, x.shape)
    f = np.fft.fftfreq(size)
    radius = np.hypot(*np.meshgrid(f, f, indexing="ij"))
    spectrum = np.exp(2j * np.pi * rng.random((size, size))) / np.maximum(radius, 1 / size)
    fractal = np.real(np.fft.ifft2(spectrum))
    fractal = (fractal - fractal.min()) / np.ptp(fractal) * top + rng.normal(0, 8, x.shape)
    shapes = np.full(x.shape, top / 3)
    for _ in range(40):
        a, b = sorted(rng.integers(0, size, 2))
        c, d = sorted(rng.integers(0, size, 2))
        shapes[a:b, c:d] = rng.uniform(0, top)
    kernel = np.outer(*[np.array([1, 4, 6, 4, 1]) / 16] * 2)
    blurred = sum(np.roll(shapes, (i - 2, j - 2), (0, 1)) * kernel[i, j]
                  for i in range(5) for j in range(5))
    shapes = blurred + rng.normal(0, 32, x.shape)
    images = {"ramp": ramp, "waves": waves, "fractal": fractal, "shapes": shapes}
    return {k: np.clip(np.rint(v), 0, top).astype(np.uint16) for k, v in images.items()}


def run_16bit(model: str = "ctx-photo") -> dict:
    """Bits per sample of the 16-bit test set: the lossless model's coder (every decode checked
    exact), PNG and JPEG XL lossless (effort 7), both 16-bit grayscale through Pillow."""
    net = load_model(model).net
    rows = []
    for name, image in synthetic_16bit().items():
        start = time.perf_counter()
        payloads = net.encode_payloads(image[:, :, None], depth=16)
        t_enc = time.perf_counter() - start
        out = np.zeros(image.shape + (1,), np.uint16)
        start = time.perf_counter()
        lost = net.decode_payloads(payloads, out, depth=16)
        t_dec = time.perf_counter() - start
        if any(lost) or not (out[:, :, 0] == image).all():
            raise RuntimeError(f"{name}: 16-bit decode is not exact")
        row = {"image": name, "nicodec_bps": 8 * sum(map(len, payloads)) / image.size,
               "encode_s": t_enc, "decode_s": t_dec}
        for codec_name, options in lossless_baselines().items():
            if codec_name == "webp-lossless":
                continue  # 8-bit only
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, **options)
            back = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))
            if not (back == image).all():
                raise RuntimeError(f"{codec_name} did not keep 16 bits")
            row[f"{codec_name}_bps"] = 8 * len(buffer.getvalue()) / image.size
        rows.append(row)
    return {"model": model, "per_image": rows,
            "mean": {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "image"}}


def format_16bit(r: dict) -> str:
    keys = [k for k in r["per_image"][0] if k.endswith("_bps")]
    lines = [f"16-bit test set (512x512 grayscale, synthetic, eval/lossless.py synthetic_16bit), "
             f"bits per sample; nicodec is {r['model']}",
             "  image     " + "".join(f"{k[:-4]:>17}" for k in keys)]
    for row in r["per_image"] + [dict(r["mean"], image="mean")]:
        lines.append(f"  {row['image']:<8}  " + "".join(f"{row[k]:17.3f}" for k in keys))
    lines.append(f"  nicodec encode {r['mean']['encode_s']:.2f} s, decode "
                 f"{r['mean']['decode_s']:.2f} s per image (coder alone, one thread)")
    return "\n".join(lines)


def format_photos(r: dict) -> str:
    lines = [f"photos: {r['folder']} ({r['images']} images), mean bits per pixel; nicodec is "
             f"{r.get('model', 'pc-photo')}"]
    for key, value in r["mean_bpp"].items():
        lines.append(f"  {key[:-4]:<22}  {value:.3f} bpp")
    lines.append(f"  nicodec / PNG = {r['ratio_to_png']:.3f}; encode "
                 f"{r['encode_s_per_image']:.2f} s, decode {r['decode_s_per_image']:.2f} s per "
                 f"image, {r.get('threads', 2)} thread(s) (--threads; ctx-photo's encoder and "
                 f"decoder work in two processes on Linux), load average "
                 f"{r.get('load_average', '?')} at the end on the 2-core CPU")
    return "\n".join(lines)


def format_table(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        nv = r["naive_vs_efficient"]
        lines += [f"{r['dataset']} test set, {r['images']} images ({r['model']})",
                  f"  nicodec one stream      {r['stream_bpd']:.4f} bpd "
                  f"({r['stream_bytes']} bytes)",
                  f"  nicodec single-image    {r['single_image_bpd']:.4f} bpd "
                  f"({r['single_image_bytes_mean']:.1f} bytes per file, header included)",
                  f"  encode {r['encode_images_per_s']:.0f} images/s, decode "
                  f"{r['decode_images_per_s']:.0f} images/s (2-core CPU)",
                  f"  tables, {nv['images']} images: efficient {nv['efficient_s']:.3f} s, naive "
                  f"{nv['naive_s']:.1f} s -> {nv['speedup']:.0f}x"]
        for name, b in r["baselines"].items():
            lines.append(f"  {name:<22}  {b['grid_bpd']:.4f} bpd as one grid image, "
                         f"{b['per_image_bpd']:.4f} bpd per image file")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=sorted(MODELS), choices=sorted(MODELS))
    parser.add_argument("--count", type=int, default=10000, help="test images per dataset")
    parser.add_argument("--naive-images", type=int, default=10)
    parser.add_argument("--baseline-images", type=int, default=1000,
                        help="images coded one file each by the classical codecs")
    parser.add_argument("--photos", type=Path, default=DATA / "kodak",
                        help="folder of photos for the photo lossless mode")
    parser.add_argument("--photo-count", type=int, default=None, help="first N photos only")
    parser.add_argument("--skip-photos", action="store_true")
    parser.add_argument("--skip-datasets", action="store_true", help="photos only")
    parser.add_argument("--photo-model", default=None, help="lossless model for the photos")
    parser.add_argument("--deep", action="store_true", help="also the 16-bit test set")
    parser.add_argument("--out", type=Path, default=Path("eval/results/lossless"))
    parser.add_argument("--threads", type=int, default=2,
                        help="threads of the coder (torch and BLAS; the issue's timing is for 2)")
    args = parser.parse_args()
    set_threads(args.threads)
    rows = [] if args.skip_datasets else [
        run_dataset(name, args.count, args.naive_images, args.baseline_images)
        for name in args.datasets]
    photos = None if args.skip_photos else run_photos(args.photos, args.photo_count,
                                                      args.photo_model)
    args.out.mkdir(parents=True, exist_ok=True)
    deep = run_16bit(args.photo_model or LOSSLESS_MODEL) if args.deep else None
    (args.out / "summary.json").write_text(json.dumps({"datasets": rows, "photos": photos,
                                                       "16bit": deep}, indent=2))
    table = "\n".join([format_table(rows)] + ([format_photos(photos)] if photos else [])
                      + ([format_16bit(deep)] if deep else [])).strip("\n")
    (args.out / "summary.txt").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
