"""The ``codec`` command line: encode, decode, info, models.

Exit codes: 0 success, 1 bad data (unreadable image, damaged or foreign file), 2 usage error.
Outputs are written atomically (temporary file, then rename) and existing files are never
overwritten without ``--force``. Commands that only read headers or the registry (``--help``,
``info``, ``models``) never import torch: the coding commands import the pipeline when they run.
With ``--jobs N`` the inputs are coded by N worker processes, with the same outputs, messages
and exit codes as one by one.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Callable

import click

from bitstream.errors import BitstreamError
from bitstream.format import MAX_PIXELS, check_pixels, parse_header, unpack
from codec.image import IMAGE_SUFFIXES, UnsupportedImageError
from codec.registry import (DEFAULT_MODEL, LOSSLESS_MODEL, MODELS, available_models,
                            check_effort, measured_rates, resolve_model)

ENCODED_SUFFIX = ".nic"
BAD_DATA = 1


class Failure(Exception):
    """One input could not be processed; the message says why."""


def _read(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    return Path(source).read_bytes()


def _write(target: str, data: bytes, force: bool) -> None:
    """Write ``data`` to a file atomically, or to stdout for ``-``."""
    if target == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    path = Path(target)
    if path.exists() and not force:
        raise Failure(f"{path} exists (use --force to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _expand(inputs: tuple[str, ...], suffixes: set[str] | None) -> list[str]:
    """Input arguments with folders replaced by the matching files inside them."""
    files: list[str] = []
    for item in inputs:
        path = Path(item)
        if item != "-" and path.is_dir():
            found = sorted(str(p) for p in path.iterdir()
                           if p.is_file() and (suffixes is None or p.suffix.lower() in suffixes))
            if not found:
                raise click.UsageError(f"folder {item} holds no input files")
            files += found
        else:
            files.append(item)
    return files


def _targets(files: list[str], output: str | None, suffix: str, batch: bool) -> list[str]:
    """Output path of each input: -o itself for one input, else -o/<stem><suffix>."""
    if not batch:
        if output:
            out = Path(output)
            if output != "-" and out.is_dir():
                return [str(out / (Path(files[0]).stem + suffix))]
            return [output]
        if files[0] == "-":
            return ["-"]
        return [str(Path(files[0]).with_suffix(suffix))]
    if output == "-":
        raise click.UsageError("several inputs need an output folder, not -")
    folder = Path(output) if output else None
    targets = [str((folder or Path(f).parent) / (Path(f).stem + suffix)) for f in files]
    if len(set(targets)) != len(targets):
        raise click.UsageError("two inputs would write the same output name; encode them apart")
    return targets


Work = Callable[[str, str], "tuple[dict, list[str]]"]  # (input, output) -> (record, warnings)


def _init_worker() -> None:
    """A --jobs worker computes on one thread: N workers share the cores, not N x cores."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def _results(files: list[str], targets: list[str], work: Work, jobs: int):
    """(input, result or the exception it raised) per input, in input order; ``jobs`` > 1 runs
    ``work`` (a picklable module-level function) in that many worker processes (not with
    stdin among the inputs: a worker has none)."""
    pairs = list(zip(files, targets))
    if jobs <= 1 or len(pairs) <= 1 or "-" in files:
        for src, dst in pairs:
            try:
                yield src, work(src, dst)
            except Exception as exc:  # noqa: BLE001 (sorted out by the caller, as from a worker)
                yield src, exc
        return
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    from multiprocessing import get_context

    with ProcessPoolExecutor(min(jobs, len(pairs)), mp_context=get_context("spawn"),
                             initializer=_init_worker) as pool:
        futures = [pool.submit(work, src, dst) for src, dst in pairs]
        for (src, _), future in zip(pairs, futures):
            try:
                yield src, future.result()
            except BrokenProcessPool:
                yield src, Failure(f"{src}: the worker process died (out of memory?)")
            except Exception as exc:  # noqa: BLE001
                yield src, exc


def _run_batch(files: list[str], targets: list[str], work: Work, as_json: bool, what: str,
               jobs: int = 1) -> None:
    """Apply ``work(input, output) -> (record, warnings)`` to each file (in ``jobs`` processes);
    report; exit 1 if any failed."""
    from tqdm import tqdm  # not needed by --help

    records, failed = [], 0
    show = len(files) > 1 and not as_json
    results = _results(files, targets, work, jobs)
    for src, result in tqdm(results, total=len(files), desc=what, disable=not show,
                            file=sys.stderr):
        if isinstance(result, (Failure, BitstreamError, UnsupportedImageError, OSError,
                               MemoryError)):
            failed += 1
            if isinstance(result, Failure):
                message = str(result)
            elif isinstance(result, MemoryError):
                message = f"{src}: not enough memory"
            else:
                message = f"{src}: {result}"
            records.append({"input": src, "error": message})
            click.echo(f"error: {message}", err=True)
        elif isinstance(result, BaseException):
            raise result
        else:
            record, warnings = result
            records.append(record)
            for warning in warnings:
                click.echo(f"warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps(records if len(records) > 1 else records[0], indent=2))
    if failed:
        sys.exit(BAD_DATA)


def _max_pixels(_ctx, _param, value: str | None) -> int | None:
    """--max-pixels: a pixel count, or 0 / 'none' for no limit."""
    if value is None:
        return MAX_PIXELS
    if value.lower() == "none":
        return None
    try:
        limit = int(value)
    except ValueError:
        raise click.BadParameter(f"expected a pixel count or 'none', got {value!r}") from None
    if limit < 0:
        raise click.BadParameter("the limit cannot be negative")
    return limit or None


_jobs_option = click.option(
    "-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True,
    help="Worker processes for several inputs (one thread each); the outputs are the same as "
         "with one.")


def _encode_file(src: str, dst: str, model: str, quality: int | None, packets: int | None,
                 effort: int, force: bool) -> tuple[dict, list[str]]:
    from codec.pipeline import encode

    start = time.perf_counter()
    data = encode(_read(src), model=model, quality=quality, packets=packets, effort=effort)
    header, _ = parse_header(data)
    _write(dst, data, force)
    return {"input": src, "output": dst, "bytes": len(data), "width": header.width,
            "height": header.height, "bpp": round(8 * len(data) / header.width / header.height, 5),
            "model": model, "quality": header.quality, "effort": effort,
            "packets": len(header.packet_lengths),
            "seconds": round(time.perf_counter() - start, 3)}, []


def _decode_file(src: str, dst: str, strict: bool, max_pixels: int | None, force: bool
                 ) -> tuple[dict, list[str]]:
    start = time.perf_counter()
    data = _read(src)
    check_pixels(parse_header(data)[0], max_pixels)  # a bad header is refused without torch
    from PIL import Image

    from codec.image import to_pil
    from codec.pipeline import decode_detailed

    result = decode_detailed(data, strict=strict, max_pixels=max_pixels)
    warnings = []
    if result.lost_packets:
        warnings.append(f"{src}: {result.lost_packets} of {len(result.header.packet_lengths)} "
                        f"packets damaged; concealed {result.concealed_fraction:.1%} of the image"
                        + (" (lost indices restored by the index transformer)"
                           if result.restored else ""))
    buffer = io.BytesIO()
    fmt = "PNG" if dst == "-" else Image.registered_extensions()[Path(dst).suffix.lower()]
    to_pil(result.pixels).save(buffer, format=fmt)
    _write(dst, buffer.getvalue(), force)
    return {"input": src, "output": dst, "width": result.header.width,
            "height": result.header.height, "lost_packets": result.lost_packets,
            "concealed_fraction": round(result.concealed_fraction, 5),
            "seconds": round(time.perf_counter() - start, 3)}, warnings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nicodec")
def main() -> None:
    """nicodec: learned image compression.

    \b
      codec encode photo.png -o photo.nic       compress (default model, default quality)
      codec decode photo.nic -o photo.png       decompress
      codec info photo.nic                      header, packets, bits per pixel
      codec models                              shipped models and their rate settings
      codec eval                                rate-distortion run against classical codecs
      codec bench                               encode/decode timing

    Exit codes: 0 ok, 1 bad data, 2 usage error.
    """


@main.command("encode")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", help="Output file (one input) or folder (several inputs or a "
              "folder); '-' for stdout. Default: next to the input, with suffix .nic.")
@click.option("-m", "--model", type=click.Choice(sorted(MODELS)),
              help=f"Model to encode with. Default: {DEFAULT_MODEL} ({LOSSLESS_MODEL} with "
                   "--lossless).")
@click.option("--lossless", is_flag=True, help="Exact coding: every pixel decodes bit for bit "
              f"(the {LOSSLESS_MODEL} model, or the lossless --model given).")
@click.option("-q", "--quality", type=int, help="Rate setting of the model (see 'codec models'); "
              "higher means more bits. Default: the model's default.")
@click.option("--packets", type=click.IntRange(1, 4096), help="Number of independently decodable "
              "packets. Default: about one per 4 KB of payload (max 16).")
@click.option("-e", "--effort",
              type=click.IntRange(1, max(e for info in MODELS.values() for e in info.efforts)),
              default=1, show_default=True,
              help="Encoder effort: 1 is one pass (under a second for a Kodak image); 2 and 3 "
              "refine the latent through the decoder for a better rate-distortion trade-off "
              "(mcq only; several seconds per image). Files decode the same way at any effort.")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing output files.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report.")
@_jobs_option
def encode_cmd(inputs, output, model, lossless, quality, packets, effort, force, as_json, jobs
               ) -> None:
    """Compress images (files, folders, or '-' for stdin).

    Accepts PNG, JPEG, WebP, TIFF, BMP and anything else Pillow reads; 8-bit grayscale or RGB,
    EXIF orientation applied. Images with transparency or 16-bit samples are refused.
    """
    try:
        model = resolve_model(model, lossless)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--lossless") from None
    info = MODELS[model]
    if quality is not None and quality not in info.qualities:
        raise click.BadParameter(f"model {model} has qualities {list(info.qualities)}",
                                 param_hint="--quality")
    try:
        check_effort(model, effort)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--effort") from None
    files = _expand(inputs, IMAGE_SUFFIXES)
    targets = _targets(files, output, ENCODED_SUFFIX, len(files) > 1 or Path(inputs[0]).is_dir())

    work = partial(_encode_file, model=model, quality=quality, packets=packets, effort=effort,
                   force=force)
    _run_batch(files, targets, work, as_json, "encoding", jobs)


@main.command("decode")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", help="Output image (one input) or folder; '-' writes PNG to "
              "stdout. The format follows the suffix. Default: next to the input, as .png.")
@click.option("--strict", is_flag=True, help="Fail on any damaged packet instead of concealing it.")
@click.option("--max-pixels", callback=_max_pixels, metavar="N",
              help=f"Refuse files whose header promises more than N pixels, before decoding "
                   f"(a guard against decompression bombs); 0 or 'none': no limit. Default: "
                   f"{MAX_PIXELS} (Pillow's limit).")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing output files.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report.")
@_jobs_option
def decode_cmd(inputs, output, strict, max_pixels, force, as_json, jobs) -> None:
    """Decompress nicodec files (files, folders of .nic files, or '-' for stdin).

    Damaged packets are concealed from their surroundings and reported on stderr; with --strict
    any damage is an error. Any file that does not decode is reported in one line (exit 1).
    """
    from PIL import Image

    files = _expand(inputs, {ENCODED_SUFFIX})
    targets = _targets(files, output, ".png", len(files) > 1 or Path(inputs[0]).is_dir())
    for target in targets:
        if target != "-" and Path(target).suffix.lower() not in Image.registered_extensions():
            raise click.BadParameter(f"cannot tell the image format of {target!r} from its suffix",
                                     param_hint="--output")

    work = partial(_decode_file, strict=strict, max_pixels=max_pixels, force=force)
    _run_batch(files, targets, work, as_json, "decoding", jobs)


@main.command("info")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report.")
def info_cmd(inputs, as_json) -> None:
    """Show a file's header, its packets (and whether each passes its CRC) and bits per pixel.

    Reads the header and checks the packets' CRCs; never decodes the payload.
    """

    def work(src: str, _dst: str) -> tuple[dict, list[str]]:
        data = _read(src)
        header, payloads = unpack(data)
        _, header_bytes = parse_header(data)
        record = {"input": src, "bytes": len(data), "header_bytes": header_bytes,
                  "format_family": header.family.name.lower(), "model_id": header.model_id,
                  "model": next((n for n, i in MODELS.items() if i.model_id == header.model_id),
                                None),
                  "weights_digest": f"{header.weights_digest:04x}", "width": header.width,
                  "height": header.height, "channels": header.channels,
                  "bit_depth": header.bit_depth, "quality": header.quality,
                  "bpp": round(8 * len(data) / header.width / header.height, 5),
                  "packets": [{"bytes": n, "ok": p is not None}
                              for n, p in zip(header.packet_lengths, payloads)]}
        if not as_json:
            damaged = sum(not p["ok"] for p in record["packets"])
            click.echo(f"{src}: {record['model'] or 'unknown model'} ({record['format_family']}, "
                       f"weights {record['weights_digest']}) quality {header.quality}\n"
                       f"  image    {header.width}x{header.height}, {header.channels} channel(s), "
                       f"{header.bit_depth} bit\n"
                       f"  size     {len(data)} bytes, {record['bpp']} bpp, header "
                       f"{header_bytes} bytes\n"
                       f"  packets  {len(payloads)} ({damaged} damaged): "
                       + " ".join(str(n) for n in header.packet_lengths))
        return record, []

    files = list(inputs)
    _run_batch(files, files, work, as_json, "reading")


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report.")
def models_cmd(as_json) -> None:
    """List the shipped models and their rate settings."""
    shipped = set(available_models())
    records = [{"name": i.name, "id": i.model_id, "family": i.family.name.lower(),
                "qualities": list(i.qualities), "default_quality": i.default_quality,
                "efforts": list(i.efforts), "default": i.name == DEFAULT_MODEL,
                "installed": i.name in shipped,
                "description": i.description, "measured": measured_rates(i.name),
                "retired_weights": list(i.retired)}
               for i in MODELS.values()]
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    for r in records:
        flag = " (default)" if r["default"] else ""
        missing = "" if r["installed"] else " [weights missing]"
        efforts = f", efforts {r['efforts']}" if len(r["efforts"]) > 1 else ""
        click.echo(f"{r['name']}{flag}{missing}: {r['family']}, qualities {r['qualities']} "
                   f"(default {r['default_quality']}){efforts}\n  {r['description']}")
        if r["measured"] and "val_bpd" in r["measured"][0]:
            click.echo(f"  held-out data: {r['measured'][0]['val_bpd']:.4f} bits per symbol")
        elif r["measured"]:
            rates = ", ".join(f"q{m['quality']} {m['bpp']:.3f} bpp / {m['psnr']:.1f} dB"
                              for m in r["measured"])
            click.echo(f"  held-out photos: {rates}")
        if r["retired_weights"]:
            click.echo(f"  still decodes files of earlier weights: {', '.join(r['retired_weights'])}")


_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True,
                 "help_option_names": []}


@main.command("eval", context_settings=_PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def eval_cmd(args) -> None:
    """Rate-distortion run against JPEG, WebP, AVIF, JPEG XL (see 'codec eval --help')."""
    from eval.rd import main as rd_main

    rd_main(list(args))


@main.command("bench", context_settings=_PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_cmd(args) -> None:
    """Encode/decode timing next to CompressAI's hyperprior (see 'codec bench --help')."""
    from eval.bench import main as bench_main

    bench_main(list(args))


@main.command("loss", context_settings=_PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def loss_cmd(args) -> None:
    """Quality under lost packets: restored vs naive fills (see 'codec loss --help')."""
    from eval.loss import main as loss_main

    loss_main(list(args))


if __name__ == "__main__":
    main()
