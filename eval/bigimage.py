"""Peak memory and wall time of encoding and decoding big images.

    python -m nicodec.eval.bigimage [--mpx 1,12,48,100] [--models mcq,vq,pc-photo] [--root DIR]
                            [--limit-gb 8] [--timeout 600] [--packets N] [--out FILE] [--stream]
                            [--threads N]
    python -m nicodec.eval.bigimage --seams [--mpx 12] [--models mcq,vq]

Test images are made here (never committed): a training photo upscaled (Lanczos) to 4:3 images
of the given megapixels, kept as ``.npy`` in a temporary folder. Each encode and each decode
runs in its own subprocess with one thread (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``;
``--threads N``: N BLAS threads, and the memory sampled is that of the subprocess and its
children, as ctx-photo's coder forks a second process, their shared memory counted once)
and reports its wall time (the codec call alone, not loading the array) and peak RSS
(``getrusage``: the whole process, model and pixel arrays included); a lossless model's decode
is marked "exact" when it gives the pixels back. ``--stream`` reads the image from an
uncompressed TIFF and decodes into a new one, both mapped into memory (``codec/bigtiff.py``), as
``codec encode``/``decode`` do for big TIFFs; the pages of mapped files count in the RSS but
the kernel can write them out and drop them, so the row also gives the highest private memory
(``RssAnon``) sampled, and the limit applies to it. A watchdog stops a subprocess whose RSS passes
``--limit-gb`` or that runs past ``--timeout`` and reports it as skipped, so a measurement never
starves the machine. ``--root`` runs the codec of another
checkout (e.g. ``/work/main``, for "before" figures), whatever the environment has installed:
the subprocess imports that checkout's package and only calls
``codec.pipeline.encode_detailed`` and ``decode_detailed``, which every version has.

``--seams`` checks the tiles instead (in this process): the file of a tiled encoding against an
untiled one (the tile size raised above the image), and the tiled decode against the untiled
decode of the same file, PSNR over all pixels and over those within 16 pixels of a tile seam.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from nicodec.bitstream.format import Family
from nicodec.codec.registry import MODELS

PHOTO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "train" / "bsds500"

_CHILD = """
import json, os, resource, sys, time
import numpy as np, torch
import nicodec
torch.set_num_threads(1)
from nicodec.codec.pipeline import decode_detailed, encode_detailed
mode, src, dst, model, packets, stream = sys.argv[1:7]
if stream == "1":  # pixels from and to uncompressed TIFF files mapped into memory
    from nicodec.codec import bigtiff
    from nicodec.codec.image import load_image
    bigtiff.STREAM_PIXELS = 0
if mode == "encode":
    pixels = np.load(src) if stream == "0" else None
    start = time.perf_counter()
    if stream == "1":
        pixels = load_image(src)
    data = encode_detailed(pixels, model=model, packets=int(packets) or None).data
    seconds = time.perf_counter() - start
    open(dst, "wb").write(data)
else:
    data = open(src, "rb").read()
    start = time.perf_counter()
    if stream == "1":
        out = lambda h, m: bigtiff.create(dst, h.height, h.width, h.channels, m)
        pixels = decode_detailed(data, max_pixels=None, out=out).pixels
        bigtiff.finish(pixels)
    else:
        pixels = decode_detailed(data, max_pixels=None).pixels
    seconds = time.perf_counter() - start
    if stream == "0":
        np.save(dst, pixels)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"seconds": seconds, "rss_gb": rss, "bytes": len(data),
                  "package": os.path.realpath(os.path.dirname(nicodec.__file__))}))
"""


def make_image(mpx: float, folder: Path, tiff: bool = False) -> Path:
    """A 4:3 RGB image of about ``mpx`` megapixels, upscaled from a training photo (``.npy``,
    or with ``tiff`` an uncompressed TIFF of the same pixels)."""
    path = folder / f"{mpx:g}mpx.npy"
    if not path.exists():
        photo = sorted(PHOTO.rglob("*.jpg"))[0] if PHOTO.exists() else None
        source = Image.open(photo).convert("RGB") if photo else Image.new("RGB", (64, 48), "gray")
        width = int(round((mpx * 1e6 * 4 / 3) ** 0.5))
        np.save(path, np.asarray(source.resize((width, width * 3 // 4), Image.LANCZOS)))
    if tiff and not path.with_suffix(".tif").exists():
        import tifffile

        tifffile.imwrite(path.with_suffix(".tif"), np.load(path, mmap_mode="r"),
                         photometric="rgb", bigtiff=True, metadata=None)
    return path.with_suffix(".tif") if tiff else path


def _rss_gb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory now (``RssAnon``: its private part, without the pages of
    mapped files, which the kernel can write out and drop; ``RssShmem``: its shared memory's;
    ``RssFile``: its mapped files')."""
    try:
        with open(f"/proc/{pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
        return kb / 2**20
    except (OSError, StopIteration):
        return 0.0


def _memory_gb(pid: int) -> tuple[float, float]:
    """(resident, private) memory now of a process and its children (ctx-photo's coder
    with two threads forks a second process, ``models/ctx/partner.py``): their own pages
    each, their shared memory once (the most either holds), and for the resident figure
    their mapped files' pages too."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            family = [pid] + [int(child) for child in f.read().split()]
    except OSError:
        family = [pid]
    private = sum(_rss_gb(p, "RssAnon") for p in family) + \
        max(_rss_gb(p, "RssShmem") for p in family)
    return private + sum(_rss_gb(p, "RssFile") for p in family), private


def run_child(root: Path, mode: str, src: Path, dst: Path, model: str, limit_gb: float,
              timeout: float, packets: int = 0, stream: bool = False, threads: int = 1
              ) -> dict:
    """One encode or decode in a subprocess of ``threads`` BLAS threads; {"skipped": why} past
    a limit. The result holds the highest private memory sampled (``anon_gb``) beside the peak
    RSS (with more than one thread the highest sampled, of the process and its children:
    :func:`_memory_gb`), and the folder of the package the child ran (``package``). The child
    imports ``root``'s package, whatever the environment has installed: the repository root
    is the package ``nicodec``, so a temporary folder holding a link of that name to it goes
    first on ``PYTHONPATH`` (the root itself there would not do: the installed package would
    be imported instead)."""
    root = Path(root).resolve()
    with tempfile.TemporaryDirectory() as top:
        (Path(top) / "nicodec").symlink_to(root, target_is_directory=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "OPENBLAS_NUM_THREADS": str(threads), "PYTHONPATH": top}
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, mode, str(src), str(dst), model,
                                 str(packets), str(int(stream))],
                                cwd=root, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        start, peak, anon, most = time.monotonic(), 0.0, 0.0, 0.0
        while proc.poll() is None:
            resident, private = _memory_gb(proc.pid)
            anon, most = max(anon, private), max(most, resident)
            peak = max(peak, private if stream else resident)
            why = (f"RSS over {limit_gb:g} GB" if peak > limit_gb else
                   f"over {timeout:g} s" if time.monotonic() - start > timeout else None)
            if why:
                proc.kill()
                proc.wait()
                return {"skipped": why}
            time.sleep(0.2)
        out, err = proc.communicate()
    if proc.returncode:
        return {"skipped": f"failed: {err.strip().splitlines()[-1] if err.strip() else ''}"}
    result = json.loads(out.strip().splitlines()[-1])
    if Path(result["package"]) != root:
        raise RuntimeError(f"the child ran the package in {result['package']}, not {root}")
    if threads > 1:  # the child's own peak RSS leaves out its children
        result["rss_gb"] = max(result["rss_gb"], most)
    return {**result, "anon_gb": anon}


def seam_check(model: str, mpx: float, folder: Path) -> str:
    """A markdown row: tiled vs untiled encoding (same file?) and decoding (PSNR between the
    two decodes, everywhere and near seams; PSNR of each against the original)."""
    import torch

    from nicodec.codec.pipeline import decode_detailed, encode_detailed
    from nicodec.models import tiling

    torch.set_num_threads(1)
    pixels = np.load(make_image(mpx, folder))
    tile = tiling.TILE
    tiled = encode_detailed(pixels, model=model)
    tiled_pixels = decode_detailed(tiled.data).pixels
    tiling.TILE = 1 << 16  # one tile: the whole image
    try:
        whole = encode_detailed(pixels, model=model)
        whole_pixels = decode_detailed(tiled.data).pixels
    finally:
        tiling.TILE = tile
    near = np.zeros(pixels.shape[:2], bool)
    for axis in (0, 1):
        seams = np.arange(tile, pixels.shape[axis], tile)
        index = np.abs(np.arange(pixels.shape[axis])[:, None] - seams[None]).min(1) < 16 \
            if len(seams) else np.zeros(pixels.shape[axis], bool)
        near |= index[:, None] if axis == 0 else index[None, :]

    def psnr(a: np.ndarray, b: np.ndarray) -> str:
        mse = np.mean((a.astype(np.float64) - b) ** 2)
        return "identical" if mse == 0 else f"{10 * np.log10(255 ** 2 / mse):.2f} dB"

    return (f"| {model} | {mpx:g} | {'yes' if tiled.data == whole.data else 'no'} | "
            f"{psnr(tiled_pixels, whole_pixels)} | {psnr(tiled_pixels[near], whole_pixels[near])}"
            f" | {np.mean(tiled_pixels != whole_pixels):.2e} | {psnr(tiled_pixels, pixels)} | "
            f"{psnr(whole_pixels, pixels)} |")


def _pixels(path: Path) -> np.ndarray:
    """A test image or a decoded one, mapped from its file."""
    if path.suffix == ".tif":
        import tifffile

        return tifffile.memmap(path, mode="r")
    return np.load(path, mmap_mode="r")


def _cell(result: dict, stream: bool) -> str:
    if "skipped" in result:
        return f"skipped ({result['skipped']})"
    private = f" ({result['anon_gb']:.2f} GB private)" if stream else ""
    return f"{result['seconds']:.1f} s / {result['rss_gb']:.2f} GB{private}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mpx", default="1,12,48,100")
    parser.add_argument("--models", default="mcq,vq,pc-photo")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="checkout whose codec runs (default: this one)")
    parser.add_argument("--limit-gb", type=float, default=8.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--images", type=Path, default=None,
                        help="folder for the test images (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None, help="also append the rows to FILE")
    parser.add_argument("--packets", type=int, default=0,
                        help="packets per file (default 0: the encoder's choice)")
    parser.add_argument("--stream", action="store_true",
                        help="read the image from an uncompressed TIFF and decode into one, "
                             "both mapped into memory (codec.bigtiff), and report the private "
                             "memory beside the peak RSS (which counts the mapped files' pages)")
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS threads of the encoding and decoding processes (default 1); "
                             "with more, the memory figures are the highest sampled of each "
                             "process and its children")
    parser.add_argument("--seams", action="store_true",
                        help="compare tiled and untiled coding instead of measuring")
    args = parser.parse_args(argv)
    folder = args.images or Path(tempfile.mkdtemp(prefix="bigimage-"))
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.seams:
        print("| model | Mpx | same file | tiled vs untiled decode | near seams | pixels "
              "differing | tiled vs original | untiled vs original |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for model in args.models.split(","):
            for mpx in (float(m) for m in args.mpx.split(",")):
                rows.append(seam_check(model, mpx, folder))
                print(rows[-1], flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write("\n".join(rows) + "\n")
        return
    print("| model | Mpx | encode (wall / peak RSS) | decode (wall / peak RSS) | file bytes |")
    print("| --- | --- | --- | --- | --- |")
    for model in args.models.split(","):
        for mpx in (float(m) for m in args.mpx.split(",")):
            src = make_image(mpx, folder, args.stream)
            coded = folder / f"{model}-{mpx:g}.nic"
            decoded = folder / f"{model}-{mpx:g}.out{'.tif' if args.stream else '.npy'}"
            enc = run_child(args.root, "encode", src, coded, model, args.limit_gb, args.timeout,
                            args.packets, args.stream, args.threads)
            dec = (run_child(args.root, "decode", coded, decoded, model, args.limit_gb,
                             args.timeout, stream=args.stream, threads=args.threads)
                   if "skipped" not in enc else {"skipped": "no file"})
            size = enc.get("bytes", "")
            exact = ""
            if MODELS[model].family == Family.LOSSLESS and "skipped" not in dec:
                same = np.array_equal(_pixels(decoded), _pixels(src))
                exact = ", exact" if same else ", NOT EXACT"
            row = (f"| {model} | {mpx:g} | {_cell(enc, args.stream)} | "
                   f"{_cell(dec, args.stream)}{exact} | {size} |")
            print(row, flush=True)
            rows.append(row)
            for path in (coded, decoded):
                path.unlink(missing_ok=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
