"""The ``codec`` command line: encode, decode, info, models.

Exit codes: 0 success, 1 bad data (unreadable image, damaged or foreign file) or a broken
installation (a missing or damaged weight file: one line, and the batch stops), 2 usage error.
Outputs are written atomically (temporary file, then rename). Every output is checked before
anything is coded (``codec.batch``): an existing file without ``--force``, an input, an image
suffix on a nicodec output are usage errors, reported for all inputs at once. Commands that
only read headers or the registry (``--help``, ``info``, ``models``) never import torch: the
coding commands import the pipeline when they run. With ``--jobs N`` the inputs are coded by
N worker processes, with the same outputs, messages and exit codes as one by one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Callable

import click

from nicodec.bitstream.errors import BitstreamError, CorruptMetadataError
from nicodec.bitstream.format import (MAX_PIXELS, Family, check_pixels, metadata_records,
                                      parse_header, unpack)
from nicodec.bitstream.metadata import describe
from nicodec.codec import bigtiff
from nicodec.codec.batch import (ENCODED_SUFFIX, STDIO, PlanError, check_outputs, expand,
                                 image_suffixes, looks_nicodec, nicodec_files, targets)
from nicodec.codec.image import IMAGE_SUFFIXES, POLICIES, UnsupportedImageError
from nicodec.codec.registry import (DEFAULT_MODEL, LOSSLESS_MODEL, MODELS, WeightsError,
                                    available_models, check_effort, measured_rates, resolve_model)

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
    with _atomic(target, force) as tmp:
        Path(tmp).write_bytes(data)


@contextlib.contextmanager
def _atomic(target: str, force: bool):
    """A temporary file's name beside ``target``, renamed to it when the block succeeds and
    removed when it fails: a reader never sees a half-written output."""
    path = Path(target)
    if path.exists() and not force:
        raise Failure(f"{path} exists (use --force to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


@contextlib.contextmanager
def _usage_errors():
    """A batch plan that fails (``codec.batch.PlanError``) is a usage error: exit 2."""
    try:
        yield
    except PlanError as error:
        raise click.UsageError(str(error)) from None


def _plan(inputs: tuple[str, ...], output: str | None, suffix: str,
          input_suffixes: set[str]) -> tuple[list[str], list[str]]:
    """The input files (folders expanded) and the output of each."""
    with _usage_errors():
        files = expand(inputs, input_suffixes)
        return files, targets(files, output, suffix, len(files) > 1 or Path(inputs[0]).is_dir())


def _check_outputs(files: list[str], outs: list[str], force: bool) -> None:
    """Before any work: no output over an input, none over an existing file without --force."""
    with _usage_errors():
        check_outputs(files, outs, force)


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
               jobs: int = 1, json_to_stderr: bool = False) -> None:
    """Apply ``work(input, output) -> (record, warnings)`` to each file (in ``jobs`` processes);
    report (the JSON report on stderr with ``json_to_stderr``: stdout carries an output);
    exit 1 if any failed."""
    from tqdm import tqdm  # not needed by --help

    records, failed = [], 0
    show = len(files) > 1 and not as_json
    results = _results(files, targets, work, jobs)
    for src, result in tqdm(results, total=len(files), desc=what,
                            disable=None if show else True,  # None: hidden off a terminal
                            file=sys.stderr):
        if isinstance(result, WeightsError):  # every other input would fail the same way
            _broken(result)
        if isinstance(result, (Failure, BitstreamError, UnsupportedImageError, OSError,
                               MemoryError)):
            failed += 1
            if isinstance(result, Failure):
                message = str(result)
            elif isinstance(result, MemoryError):
                message = f"{src}: not enough memory"
            elif isinstance(result, OSError):
                message = _os_message(src, result)
            else:
                message = f"{src}: {result}"
            records.append({"input": src, "error": message})
            click.echo(f"error: {message}", err=True)
        elif isinstance(result, BaseException):
            raise result
        else:
            record, notes = result
            records.append(record)
            for note in notes:
                click.echo(f"warning: {note}", err=True)
    if as_json:
        click.echo(json.dumps(records if len(records) > 1 else records[0], indent=2),
                   err=json_to_stderr)
    if failed:
        sys.exit(BAD_DATA)


def _os_message(src: str, error: OSError) -> str:
    """A system error in words ("x.png: no such file"), without errno and quoted paths."""
    why = {FileNotFoundError: "no such file", IsADirectoryError: "is a folder, not a file",
           PermissionError: "permission denied"}.get(type(error))
    if error.filename is None:  # not about a path: our own words (e.g. no room for scratch)
        why = None
    if not why:
        why = error.strerror[:1].lower() + error.strerror[1:] if error.strerror else str(error)
    about = None if error.filename is None or str(error.filename) == src else error.filename
    return f"{src}: {about}: {why}" if about else f"{src}: {why}"


def _broken(error: WeightsError) -> None:
    """A broken installation: one line, exit 1."""
    click.echo(f"error: {error}", err=True)
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


_threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=1, show_default=True,
    help="Torch threads per process. More can be faster on an idle machine, but when another "
         "program keeps a core busy, two threads ran several times slower than one.")


def _set_threads(threads: int) -> None:
    """Use ``threads`` torch threads: set now if torch is loaded, else through
    OMP_NUM_THREADS, which torch reads when it is imported (a file refused from its header
    never loads torch)."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    else:
        os.environ["OMP_NUM_THREADS"] = str(threads)


def _with_threads(work: Work, threads: int, src: str, dst: str) -> tuple[dict, list[str]]:
    """``work(src, dst)`` on ``threads`` torch threads."""
    _set_threads(threads)
    return work(src, dst)


def _check_quality(model: str, quality: int | None) -> None:
    """--quality must be one of the model's rate settings (None: its default)."""
    qualities = MODELS[model].qualities
    if quality is not None and quality not in qualities:
        raise click.BadParameter(f"model {model} has qualities {list(qualities)}",
                                 param_hint="--quality")


_jobs_option = click.option(
    "-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True,
    help="Worker processes for several inputs (--threads threads each); the outputs are the "
         "same as with one.")


_ALREADY_CODED = ("already a nicodec file: decode it with 'codec decode' (coding it again "
                  "would only lose more)")


def _encode_file(src: str, dst: str, model: str, quality: int | None, packets: int | None,
                 effort: int, force: bool, policy: dict, goal: dict, verbose: bool
                 ) -> tuple[dict, list[str]]:
    """Encode one file (``goal``: a target kind and value, or empty for ``quality``)."""
    from nicodec.codec.pipeline import encode
    from nicodec.codec.target import metadata_note

    start = time.perf_counter()
    found = None
    source = _read(src) if src == STDIO else src  # a path: a big TIFF is read piece by piece
    if src == STDIO and looks_nicodec(source[:2]):
        raise Failure(f"{src}: {_ALREADY_CODED}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if goal:
            from nicodec.codec.target import encode_to_target

            found = encode_to_target(source, model=model, effort=effort, packets=packets,
                                     **policy, **{f"target_{k}": v for k, v in goal.items()})
            data = found.data
        else:
            data = encode(source, model=model, quality=quality, packets=packets,
                          effort=effort, **policy)
    notes = list(dict.fromkeys(str(w.message) for w in caught))  # a target search repeats them
    if found and not found.met:
        notes.append(found.describe())
    elif note := metadata_note(data):
        notes.append(note)
    header, _ = parse_header(data)
    _write(dst, data, force)
    record = {"input": src, "output": dst, "bytes": len(data), "width": header.width,
              "height": header.height,
              "bpp": round(8 * len(data) / header.width / header.height, 5),
              "model": model, "quality": header.quality, "effort": effort,
              "packets": len(header.packet_lengths), "metadata_bytes": header.metadata_length,
              "warnings": notes, "seconds": round(time.perf_counter() - start, 3)}
    if found:
        record.update(target={"kind": found.kind, "value": found.target},
                      achieved=round(found.achieved, 5), met=found.met,
                      rate_weight=found.rate_weight, encoder_runs=found.trials)
    if verbose:
        searched = "" if not found else (
            f" (target {found.kind} {found.target:g} {'met' if found.met else 'not met'}"
            + ("" if found.rate_weight is None else f", rate weight {found.rate_weight:.3g}")
            + ")")
        click.echo(f"{src} -> {dst}: {len(data)} bytes, {record['bpp']:.4f} bpp, {model} "
                   f"q{header.quality}{searched}, {header.width}x{header.height}, "
                   f"metadata {header.metadata_length} bytes, {record['seconds']:.2f} s", err=True)
    return record, [f"{src}: {note}" for note in notes]


def _save(pixels, metadata, fmt: str) -> bytes:
    from nicodec.codec.image import to_pil

    buffer = io.BytesIO()
    to_pil(pixels, metadata).save(buffer, format=fmt, **metadata.pil_info())
    return buffer.getvalue()


def _image_bytes(result, fmt: str, src: str) -> tuple[bytes, list[str]]:
    """The decoded image in format ``fmt`` with the file's ICC profile and EXIF; without the
    alpha plane (and a warning) when the format cannot hold one."""
    try:
        return _save(result.pixels, result.metadata, fmt), []
    except (OSError, ValueError, KeyError):
        if result.metadata.alpha is None:
            raise
    return (_save(result.pixels, dataclasses.replace(result.metadata, alpha=None), fmt),
            [f"{src}: {fmt} cannot hold transparency; alpha plane dropped (decode to .png, "
             ".webp or .tiff to keep it)"])


def _decode_file(src: str, dst: str, strict: bool, max_pixels: int | None, force: bool,
                 verbose: bool) -> tuple[dict, list[str]]:
    start = time.perf_counter()
    data = _read(src)
    header = parse_header(data)[0]
    check_pixels(header, max_pixels)  # a bad header is refused without torch
    from PIL import Image

    from nicodec.codec.pipeline import decode_detailed

    if dst != "-" and Path(dst).suffix.lower() in bigtiff.TIFF_SUFFIXES and \
            bigtiff.is_big(header.width, header.height):
        return _decode_streamed(src, dst, data, strict, max_pixels, force, verbose, start)
    result = decode_detailed(data, strict=strict, max_pixels=max_pixels)
    notes = _decode_notes(src, result)
    fmt = "PNG" if dst == "-" else Image.registered_extensions()[Path(dst).suffix.lower()]
    image, dropped = _image_bytes(result, fmt, src)
    _write(dst, image, force)
    return _decode_record(src, dst, result, start, verbose), notes + dropped


def _decode_streamed(src: str, dst: str, data: bytes, strict: bool, max_pixels: int | None,
                     force: bool, verbose: bool, start: float) -> tuple[dict, list[str]]:
    """Decode a big image straight into a new TIFF file mapped into memory (``codec.bigtiff``)
    under a temporary name, renamed when complete."""
    from nicodec.codec.pipeline import decode_detailed

    with _atomic(dst, force) as tmp:
        result = decode_detailed(data, strict=strict, max_pixels=max_pixels,
                                 out=lambda header, metadata: bigtiff.create(
                                     tmp, header.height, header.width, header.channels, metadata))
        bigtiff.finish(result.pixels)
    notes = _decode_notes(src, result)
    if result.metadata.exif:
        notes.append(f"{src}: EXIF is not written to a streamed TIFF")
    return _decode_record(src, dst, result, start, verbose), notes


def _decode_notes(src: str, result) -> list[str]:
    """What a decode lost, one line each."""
    notes = []
    if result.lost_packets:
        notes.append(f"{src}: {result.lost_packets} of {len(result.header.packet_lengths)} "
                     f"packets damaged; concealed {result.concealed_fraction:.1%} of the image"
                     + (" (lost indices restored by the index transformer)"
                        if result.restored else "")
                     + ("; this lossless file no longer decodes exactly (lost parts are "
                        "mid-grey; --strict refuses it)"
                        if result.header.family == Family.LOSSLESS else ""))
    if result.metadata_lost:
        notes.append(f"{src}: the metadata block is damaged; ICC profile, EXIF and alpha plane "
                     "dropped")
    return notes


def _decode_record(src: str, dst: str, result, start: float, verbose: bool) -> dict:
    """The JSON record of a decode (and its line with --verbose)."""
    record = {"input": src, "output": dst, "width": result.header.width,
              "height": result.header.height, "lost_packets": result.lost_packets,
              "concealed_fraction": round(result.concealed_fraction, 5),
              "seconds": round(time.perf_counter() - start, 3)}
    if verbose:
        click.echo(f"{src} -> {dst}: {result.header.width}x{result.header.height}, "
                   f"{result.lost_packets} of {len(result.header.packet_lengths)} packets "
                   f"lost, {record['seconds']:.2f} s", err=True)
    return record


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
      codec demo                                code a sample photo, show what happened

    Exit codes: 0 ok, 1 bad data, 2 usage error.
    """


@main.command("encode")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", help="Output file (one input; not an image suffix such as "
              ".png) or folder (several inputs or a folder: an existing folder, or a name "
              "without a file suffix, created); '-' for stdout (then --json reports on "
              "stderr). Default: next to the input, with suffix .nic. Never the input itself.")
@click.option("-m", "--model", type=click.Choice(sorted(MODELS)),
              help=f"Model to encode with. Default: {DEFAULT_MODEL} ({LOSSLESS_MODEL} with "
                   "--lossless).")
@click.option("--lossless", is_flag=True, help="Exact coding: every pixel decodes bit for bit "
              f"(the {LOSSLESS_MODEL} model, or the lossless --model given).")
@click.option("-q", "--quality", type=int, help="Rate setting of the model (see 'codec models'); "
              "higher means more bits. Default: the model's default.")
@click.option("--packets", type=click.IntRange(1, 4096), help="Number of independently decodable "
              "packets. Default: about one per 4 KB of payload (max 16). An image holds at "
              "most one per coded block (16x16 pixels for mcq); more is lowered to that, "
              "with a warning.")
@click.option("-e", "--effort",
              type=click.IntRange(1, max(e for info in MODELS.values() for e in info.efforts)),
              default=1, show_default=True,
              help="Encoder effort: 1 is one pass (under a second for a Kodak image); 2 and 3 "
              "search through the decoder for a better rate-distortion trade-off (mcq: refine "
              "the latent; vq, vq-static: re-choose indices in pixel space; seconds per "
              "image): better quality per byte, so at the same --quality files come out "
              "larger and better; for smaller files at a given size combine it with "
              "--target-size or --target-bpp. Files decode the same way at any effort.")
@click.option("--alpha", type=click.Choice(POLICIES["alpha"]), default="keep",
              show_default=True,
              help="Transparency: 'keep' codes the alpha plane losslessly in the file (it "
              "decodes to RGBA); 'drop' codes the colour channels only; 'refuse' fails on "
              "images that are not fully opaque.")
@click.option("--depth", type=click.Choice(POLICIES["depth"]),
              help="16-bit and float images: 'reduce' codes them at 8 bits (with a warning); "
              "'refuse' fails on them. Default: reduce, but refuse with --lossless (the file "
              "would not be exact; --depth reduce codes the 8-bit reduction exactly).")
@click.option("--frames", type=click.Choice(POLICIES["frames"]), default="first",
              show_default=True, help="Animations (GIF, APNG, WebP) and multi-page files: "
              "'first' codes the first frame (with a warning); 'refuse' fails on them.")
@click.option("--metadata", type=click.Choice(POLICIES["metadata"]), default="keep",
              show_default=True, help="ICC profile and EXIF: 'keep' stores them in the file "
              "(EXIF orientation reset to 1, as the rotation is applied to the pixels) and "
              "decode writes them back; 'drop' leaves them out.")
@click.option("--target-bpp", type=click.FloatRange(min=0, min_open=True),
              help="Search the quality (and, for mcq, the encoder's rate weight) for the "
              "largest file within B bits per pixel, as cwebp -size does.")
@click.option("--target-size", type=click.IntRange(min=1),
              help="As --target-bpp, with a budget in bytes per file.")
@click.option("--target-psnr", type=click.FloatRange(min=0, min_open=True),
              help="Search for the smallest file whose decoded image reaches this PSNR (dB).")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing output files (never an "
              "input). Without it an existing output stops the command before any coding.")
@click.option("-v", "--verbose", is_flag=True, help="One summary line per file on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report.")
@_jobs_option
@_threads_option
def encode_cmd(inputs, output, model, lossless, quality, packets, effort, alpha, depth, frames,
               metadata, target_bpp, target_size, target_psnr, force, verbose, as_json, jobs,
               threads) -> None:
    """Compress images (files, folders, or '-' for stdin).

    Accepts PNG, JPEG, WebP, GIF, TIFF, BMP and anything else Pillow reads. Palette, CMYK and
    EXIF orientation are converted; transparency, 16-bit samples, animations and the ICC profile
    and EXIF follow --alpha, --depth, --frames and --metadata (changes are reported on stderr).

    A target (--target-bpp, --target-size, --target-psnr) replaces --quality: the encoder runs
    several times (about 10) to find the setting. When the model cannot meet it, the closest
    file is written and a warning says so (exit 0; "met": false with --json).
    """
    goal = {name: value for name, value in (("bpp", target_bpp), ("size", target_size),
                                            ("psnr", target_psnr)) if value is not None}
    if len(goal) > 1 or (goal and quality is not None):
        raise click.UsageError("--target-bpp, --target-size, --target-psnr and --quality "
                               "exclude each other: give one")
    if goal and lossless:
        raise click.UsageError("a target rate or PSNR needs a lossy model, not --lossless")
    try:
        model = resolve_model(model, lossless)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--lossless") from None
    _check_quality(model, quality)
    try:
        check_effort(model, effort)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--effort") from None
    files, outs = _plan(inputs, output, ENCODED_SUFFIX, IMAGE_SUFFIXES)
    if outs[0] != STDIO and Path(outs[0]).suffix.lower() in image_suffixes():
        raise click.BadParameter(f"{outs[0]!r} names an image format; encode writes a nicodec "
                                 f"file: give it the suffix {ENCODED_SUFFIX}",
                                 param_hint="--output")
    coded = nicodec_files(files)
    if coded:
        raise click.UsageError(f"{', '.join(coded)}: {_ALREADY_CODED}")
    _check_outputs(files, outs, force)

    work = partial(_encode_file, model=model, quality=quality, packets=packets, effort=effort,
                   force=force, goal=goal, verbose=verbose,
                   policy=dict(alpha=alpha, depth=depth, frames=frames, metadata=metadata))
    _run_batch(files, outs, partial(_with_threads, work, threads), as_json, "encoding", jobs,
               json_to_stderr=STDIO in outs)


@main.command("decode")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", help="Output image (one input) or folder (an existing "
              "folder, or a name without a file suffix, created); '-' writes PNG to stdout "
              "(then --json reports on stderr). The format follows the suffix. Default: next "
              "to the input, as .png. Never the input itself.")
@click.option("--strict", is_flag=True, help="Fail on any damaged packet instead of concealing it.")
@click.option("--max-pixels", callback=_max_pixels, metavar="N",
              help=f"Refuse files whose header promises more than N pixels, before decoding "
                   f"(a guard against decompression bombs); 0 or 'none': no limit. Default: "
                   f"{MAX_PIXELS} (Pillow's limit).")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing output files (never an "
              "input). Without it an existing output stops the command before any coding.")
@click.option("-v", "--verbose", is_flag=True, help="One summary line per file on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report.")
@_jobs_option
@_threads_option
def decode_cmd(inputs, output, strict, max_pixels, force, verbose, as_json, jobs, threads
               ) -> None:
    """Decompress nicodec files (files, folders of .nic files, or '-' for stdin).

    The ICC profile and EXIF kept in the file are written into the output image (PNG, JPEG,
    WebP, TIFF), and its alpha plane too where the output format holds one. Damaged packets are
    concealed from their surroundings and a damaged metadata block is dropped, both reported on
    stderr; with --strict any damage is an error. Any file that does not decode is reported in
    one line (exit 1).
    """
    from PIL import Image

    files, outs = _plan(inputs, output, ".png", {ENCODED_SUFFIX})
    for target in outs:
        if target != STDIO and Path(target).suffix.lower() == ENCODED_SUFFIX:
            raise click.BadParameter(f"{target!r}: decode writes an image (.png, .webp, ...), "
                                     f"not a {ENCODED_SUFFIX} file", param_hint="--output")
        if target != STDIO and Path(target).suffix.lower() not in Image.registered_extensions():
            raise click.BadParameter(f"cannot tell the image format of {target!r} from its suffix",
                                     param_hint="--output")
    _check_outputs(files, outs, force)

    work = partial(_decode_file, strict=strict, max_pixels=max_pixels, force=force,
                   verbose=verbose)
    _run_batch(files, outs, partial(_with_threads, work, threads), as_json, "decoding", jobs,
               json_to_stderr=STDIO in outs)


@main.command("info")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report.")
def info_cmd(inputs, as_json) -> None:
    """Show a file's header, its metadata records (kind and size), its packets (and whether
    each passes its CRC), bits per pixel, and bytes missing (a file cut short) or trailing after
    the last packet (ignored by decode; from format version 3 on, whose header stores every
    packet's length).

    Reads the header and checks the CRCs; never decodes the payload.
    """
    from nicodec.bitstream.format import extent

    def work(src: str, _dst: str) -> tuple[dict, list[str]]:
        data = _read(src)
        header, payloads = unpack(data)
        offset = parse_header(data)[1]
        header_bytes = offset - header.metadata_length
        missing, trailing = extent(header, offset, len(data))
        try:
            metadata = describe(metadata_records(data))
        except CorruptMetadataError as error:
            metadata = f"damaged: {error}"
        record = {"input": src, "bytes": len(data), "format_version": header.version,
                  "header_bytes": header_bytes, "metadata_bytes": header.metadata_length,
                  "metadata": metadata,
                  "format_family": header.family.name.lower(), "model_id": header.model_id,
                  "model": next((n for n, i in MODELS.items() if i.model_id == header.model_id),
                                None),
                  "weights_digest": f"{header.weights_digest:04x}", "width": header.width,
                  "height": header.height, "channels": header.channels,
                  "bit_depth": header.bit_depth, "quality": header.quality,
                  "bpp": round(8 * len(data) / header.width / header.height, 5),
                  "packets": [{"bytes": n, "ok": p is not None}
                              for n, p in zip(header.packet_lengths, payloads)],
                  # versions 1 and 2 cannot tell: their last packet runs to the end of the file
                  "missing_bytes": missing if header.version >= 3 else None,
                  "trailing_bytes": trailing if header.version >= 3 else None}
        if not as_json:
            damaged = sum(not p["ok"] for p in record["packets"])
            click.echo(f"{src}: {record['model'] or 'unknown model'} ({record['format_family']}, "
                       f"weights {record['weights_digest']}) quality {header.quality}\n"
                       f"  image    {header.width}x{header.height}, {header.channels} channel(s), "
                       f"{header.bit_depth} bit\n"
                       f"  size     {len(data)} bytes, {record['bpp']} bpp, header "
                       f"{header_bytes} bytes (format version {header.version})"
                       + (f", cut short: {missing} bytes missing" if missing else "")
                       + (f", {trailing} trailing byte{'s' * (trailing != 1)} after the "
                          "last packet (ignored)" if trailing else "") + "\n"
                       f"  metadata {_metadata_line(metadata, header.metadata_length)}\n"
                       f"  packets  {len(payloads)} ({damaged} damaged): "
                       + " ".join(str(n) for n in header.packet_lengths))
        return record, []

    files = list(inputs)
    _run_batch(files, files, work, as_json, "reading")


def _metadata_line(metadata: list[dict] | str, size: int) -> str:
    if isinstance(metadata, str):
        return f"{size} bytes, {metadata}"
    if not metadata:
        return "none"
    return f"{size} bytes: " + ", ".join(f"{r['kind']} {r['bytes']} bytes" for r in metadata)


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report.")
def models_cmd(as_json) -> None:
    """List the shipped models and their rate settings."""
    shipped = set(available_models())
    records = [{"name": i.name, "id": i.model_id, "family": i.family.name.lower(),
                "qualities": list(i.qualities), "default_quality": i.default_quality,
                "efforts": list(i.efforts), "default": i.name == DEFAULT_MODEL,
                "installed": i.name in shipped,
                "description": i.description, **_measured(i.name),
                "kodak": [{"quality": q, "bpp": b, "psnr": d} for q, b, d in i.kodak],
                "retired_weights": list(i.retired)}
               for i in MODELS.values()]
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    for r in records:
        flag = " (default)" if r["default"] else ""
        missing = (" [weights damaged: reinstall nicodec]" if r["weights_error"] else
                   "" if r["installed"] else " [weights missing]")
        efforts = f", efforts {r['efforts']}" if len(r["efforts"]) > 1 else ""
        click.echo(f"{r['name']}{flag}{missing}: {r['family']}, qualities {r['qualities']} "
                   f"(default {r['default_quality']}){efforts}\n  {r['description']}")
        if r["kodak"]:  # what a user gets, on public images
            click.echo(f"  Kodak (24 images, effort 1, bpp from file bytes): "
                       f"{_rates(r['kodak'])}")
        elif r["measured"] and "val_bpd" in r["measured"][0]:
            click.echo(f"  held-out data: {r['measured'][0]['val_bpd']:.4f} bits per symbol")
        elif r["measured"]:
            click.echo(f"  held-back training photos (measured at export): "
                       f"{_rates(r['measured'])}")
        if r["retired_weights"]:
            click.echo(f"  still decodes files of earlier weights: {', '.join(r['retired_weights'])}")


def _rates(points: list[dict]) -> str:
    """Measured points as 'q4 0.227 bpp / 27.7 dB, ...'."""
    return ", ".join(f"q{m['quality']} {m['bpp']:.3f} bpp / {m['psnr']:.1f} dB" for m in points)


def _measured(name: str) -> dict:
    """A model's measured rates, or the error its damaged weight file gives."""
    try:
        return {"measured": measured_rates(name), "weights_error": None}
    except WeightsError as error:
        return {"measured": [], "weights_error": str(error)}


DEMO_FOLDER = "nicodec-demo"
DEMO_RECORD = ".nicodec-demo.json"  # in the demo's folder: the files it wrote, with their digests
# 28x28 grayscale models: a photo is not what they code
DEMO_MODELS = sorted(set(MODELS) - {"pc-mnist", "pc-fashion"})


def sample_photo() -> Path:
    """The Grace Hopper portrait that matplotlib (a dependency) ships as sample data."""
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _demo_written(folder: Path) -> dict[str, str]:
    """{file name: SHA-256} of the files an earlier demo wrote into ``folder`` ({} if none)."""
    try:
        record = json.loads((folder / DEMO_RECORD).read_text())
        return dict(record["nicodec demo wrote"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _demo_conflicts(paths: list[Path], folder: Path) -> list[str]:
    """The paths that exist and are not an earlier demo's output, unchanged since it wrote them
    (the record itself too, when it is not one)."""
    written = _demo_written(folder)
    record = folder / DEMO_RECORD
    conflicts = [str(record)] if record.exists() and not written else []
    return conflicts + [str(p) for p in paths
                        if p.exists() and (not p.is_file() or written.get(p.name) != _digest(p))]


@main.command("demo")
@click.option("-o", "--output", default=DEMO_FOLDER, show_default=True,
              help="Folder for the compressed file and the decoded image.")
@click.option("-m", "--model", type=click.Choice(DEMO_MODELS), default=DEFAULT_MODEL,
              show_default=True, help="Model to encode with (the models for photos).")
@click.option("-q", "--quality", type=int, help="Rate setting (default: the model's default).")
@click.option("-f", "--force", is_flag=True, help="Overwrite files of those names that an "
              "earlier demo did not write.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report.")
def demo_cmd(output, model, quality, force, as_json) -> None:
    """Compress and decompress a sample photo, and say what happened.

    The photo is the Grace Hopper portrait shipped with matplotlib, so this runs anywhere the
    package is installed. Writes FOLDER/grace_hopper.nic and the decoded FOLDER/grace_hopper.png.
    Running it again replaces the files an earlier demo wrote (recorded with their digests in
    FOLDER/.nicodec-demo.json); any other file of those names is left alone (exit 2) unless
    --force is given.
    """
    _check_quality(model, quality)
    source = sample_photo()
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise click.BadParameter(f"{output} is a file, not a folder", param_hint="--output")
    nic, png = folder / f"{source.stem}{ENCODED_SUFFIX}", folder / f"{source.stem}.png"
    conflicts = [] if force else _demo_conflicts([nic, png], folder)
    if conflicts:
        raise click.UsageError(f"{', '.join(conflicts)}: not written by an earlier demo "
                               "(use --force to overwrite, or another -o folder)")
    _set_threads(1)  # the default of encode and decode, whose times the demo shows
    from nicodec.codec.image import load_image
    from nicodec.codec.pipeline import decode_detailed, encode
    from nicodec.codec.registry import load_model
    from nicodec.codec.target import psnr

    pixels = load_image(source).pixels
    start = time.perf_counter()
    try:
        load_model(model)  # once per process: not part of the coding times
    except WeightsError as error:
        _broken(error)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    data = encode(source, model=model, quality=quality)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    result = decode_detailed(data)
    decode_s = time.perf_counter() - start
    _write(str(nic), data, True)
    _write(str(png), _image_bytes(result, "PNG", str(source))[0], True)
    _write(str(folder / DEMO_RECORD), json.dumps(
        {"nicodec demo wrote": {p.name: _digest(p) for p in (nic, png)}}, indent=1).encode(), True)
    h, w = pixels.shape[:2]
    record = {"input": str(source), "input_bytes": source.stat().st_size, "width": w,
              "height": h, "model": model, "quality": result.header.quality,
              "bytes": len(data), "bpp": round(8 * len(data) / (w * h), 5),
              "psnr": round(psnr(pixels, result.pixels), 3), "load_s": round(load_s, 3),
              "encode_s": round(encode_s, 3),
              "decode_s": round(decode_s, 3), "compressed": str(nic), "decoded": str(png)}
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    click.echo(
        f"sample photo: {source.name} from matplotlib, {w}x{h} RGB, JPEG of "
        f"{record['input_bytes']} bytes\n"
        f"loaded model {model} in {load_s:.2f} s\n"
        f"encoded with {model} quality {record['quality']} in {encode_s:.2f} s: "
        f"{len(data)} bytes, {record['bpp']:.3f} bits per pixel\n"
        f"decoded in {decode_s:.2f} s: PSNR {record['psnr']:.2f} dB against the photo\n"
        f"wrote {nic} and {png}\n"
        f"your own image: codec encode photo.jpg -o photo.nic && codec decode photo.nic "
        f"-o photo.png")


_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True,
                 "help_option_names": []}


@main.command("eval", context_settings=_PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def eval_cmd(args) -> None:
    """Rate-distortion run against JPEG, WebP, AVIF, JPEG XL (see 'codec eval --help')."""
    from nicodec.eval.rd import main as rd_main

    rd_main(list(args))


@main.command("bench", context_settings=_PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_cmd(args) -> None:
    """Encode/decode timing next to CompressAI's hyperprior (see 'codec bench --help')."""
    from nicodec.eval.bench import main as bench_main

    bench_main(list(args))


@main.command("loss", context_settings=_PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def loss_cmd(args) -> None:
    """Quality under lost packets: restored vs naive fills (see 'codec loss --help')."""
    from nicodec.eval.loss import main as loss_main

    loss_main(list(args))


if __name__ == "__main__":
    main()
