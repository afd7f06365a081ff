"""Coding one file into another: what ``codec encode`` and ``decode`` do per input, wherever
it runs (this process, a ``--jobs`` worker, a Dask worker; ``codec.batch`` decides).

An input is a path, ``-`` (stdin) or an fsspec URL (``s3://bucket/x.png``); so is an output
(``-``: stdout). Outputs are written atomically: the bytes go to a temporary file beside the
output, ``.<name>.nicodec.tmp``, renamed to the output when complete, so a reader, a crash or a
killed worker never leaves a half-written output under its own name. The temporary name is
fixed per output, so a retry of a killed worker's file replaces what the killed attempt left,
and an output that already holds the bytes to be written counts as written (a retried task
that had finished once).
Each function returns the file's record (the ``--json`` report, the manifest's source) and
its warnings; a file that cannot be coded raises (``codec.batch`` turns that into a report).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from nicodec.bitstream.format import MAGIC, Family, check_pixels, parse_header
from nicodec.codec import bigtiff
from nicodec.codec.registry import info_by_id

STDIO = "-"  # stdin as an input, stdout as an output
ENCODED_SUFFIX = ".nic"
ALREADY_CODED = ("already a nicodec file: decode it with 'codec decode' (coding it again "
                 "would only lose more)")

Work = Callable[[str, str], "tuple[dict, list[str]]"]  # (input, output) -> (record, warnings)


class Failure(Exception):
    """One input could not be processed; the message says why."""


def is_url(name: str) -> bool:
    """Whether a name is an fsspec URL (``codec.batch`` turns ``file://`` ones into paths)."""
    return "://" in name


def looks_nicodec(head: bytes) -> bool:
    """Whether bytes start like a nicodec file: the magic byte, a format version, a known
    family (by content: a ``.nic`` file renamed to ``.png`` is still recognised)."""
    return (len(head) >= 2 and head[0] == MAGIC and head[1] >> 4 >= 1
            and (head[1] & 0x0F) in {int(f) for f in Family})


def model_name(model_id: int) -> str | None:
    """The name of the model a header's id stands for (None: not a shipped model)."""
    info = info_by_id(model_id)
    return info.name if info else None


def read(source: str) -> bytes:
    """The bytes of a path, an fsspec URL, or stdin (``-``)."""
    if source == STDIO:
        return sys.stdin.buffer.read()
    if is_url(source):
        import fsspec

        with fsspec.open(source, "rb") as f:
            return f.read()
    return Path(source).read_bytes()


def write(target: str, data: bytes, force: bool) -> None:
    """Write ``data`` atomically to a path or an fsspec URL, or to stdout for ``-``. An
    output that holds these very bytes already counts as written, even without ``force``: a
    task run again (Dask recomputes a finished task whose worker died before its result was
    collected) must not fail on what its first run wrote."""
    if target == STDIO:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    elif not force and _holds(target, data):
        return
    elif is_url(target):
        _write_url(target, data, force)
    else:
        with atomic(target, force) as tmp:
            Path(tmp).write_bytes(data)


def _holds(target: str, data: bytes) -> bool:
    """Whether ``target`` exists with exactly ``data`` in it."""
    try:
        if is_url(target):
            import fsspec

            fs, path = fsspec.core.url_to_fs(target)
            return fs.size(path) == len(data) and fs.cat_file(path) == data
        return os.path.getsize(target) == len(data) and Path(target).read_bytes() == data
    except OSError:
        return False


def temporary_name(target: str) -> str:
    """Where an output is written before it is renamed into place: beside it, hidden."""
    head, sep, name = target.rpartition("/")
    return f"{head}{sep}.{name}.nicodec.tmp"


@contextlib.contextmanager
def atomic(target: str, force: bool) -> Iterator[str]:
    """The temporary name of a local ``target``, renamed to it when the block succeeds and
    removed when it fails: a reader never sees a half-written output."""
    path = Path(target)
    if path.exists() and not force:
        raise Failure(f"{target} exists (use --force to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(str(path))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write_url(target: str, data: bytes, force: bool) -> None:
    """The same for an object store: the temporary object, then a move (an object appears
    whole on S3-like stores anyway; the move keeps a half-uploaded one off the output name)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(target)
    if not force and fs.exists(path):
        raise Failure(f"{target} exists (use --force to overwrite)")
    tmp = temporary_name(path)
    try:
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.rm(tmp)
        raise


def set_threads(threads: int) -> None:
    """Use ``threads`` threads: torch's, set now if torch is loaded, else through
    OMP_NUM_THREADS, which torch reads when it is imported (a file refused from its header
    never loads torch); and numpy's BLAS (the least-squares fits of ``ctx-photo``), which read
    OMP_NUM_THREADS when numpy was imported, before this runs."""
    from threadpoolctl import threadpool_limits

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    else:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    threadpool_limits(threads, user_api="blas")


def with_threads(work: Work, threads: int, src: str, dst: str) -> tuple[dict, list[str]]:
    """``work(src, dst)`` on ``threads`` torch threads."""
    set_threads(threads)
    return work(src, dst)


def encode_file(src: str, dst: str, model: str, quality: int | None, packets: int | None,
                effort: int, force: bool, policy: dict, goal: dict) -> tuple[dict, list[str]]:
    """Encode one file (``goal``: a target kind and value, or empty for ``quality``)."""
    from nicodec.codec.pipeline import encode
    from nicodec.codec.target import metadata_note

    start = time.perf_counter()
    found = None
    local = src != STDIO and not is_url(src)
    source = src if local else read(src)  # a path as it is: a big TIFF is read piece by piece
    if not local and looks_nicodec(source[:2]):
        raise Failure(f"{src}: {ALREADY_CODED}")
    input_bytes = os.path.getsize(source) if local else len(source)
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
    write(dst, data, force)
    record = {"input": src, "output": dst, "input_bytes": input_bytes, "bytes": len(data),
              "output_bytes": len(data), "width": header.width, "height": header.height,
              "bpp": round(8 * len(data) / header.width / header.height, 5),
              "model": model, "quality": header.quality, "effort": effort,
              "packets": len(header.packet_lengths), "metadata_bytes": header.metadata_length,
              "warnings": notes, "seconds": round(time.perf_counter() - start, 3)}
    if found:
        record.update(target={"kind": found.kind, "value": found.target},
                      achieved=round(found.achieved, 5), met=found.met,
                      rate_weight=found.rate_weight, encoder_runs=found.trials)
    return record, [f"{src}: {note}" for note in notes]


def encode_line(record: dict) -> str:
    """An encode record in one line (``--verbose``)."""
    searched = ""
    if "target" in record:
        searched = (f" (target {record['target']['kind']} {record['target']['value']:g} "
                    f"{'met' if record['met'] else 'not met'}"
                    + ("" if record["rate_weight"] is None
                       else f", rate weight {record['rate_weight']:.3g}") + ")")
    return (f"{record['input']} -> {record['output']}: {record['bytes']} bytes, "
            f"{record['bpp']:.4f} bpp, {record['model']} q{record['quality']}{searched}, "
            f"{record['width']}x{record['height']}, metadata {record['metadata_bytes']} bytes, "
            f"{record['seconds']:.2f} s")


DEEP_FORMATS = ("PNG", "TIFF")  # formats that hold 16-bit samples


def _save_deep(pixels, metadata, fmt: str) -> bytes:
    """16-bit samples (and the 16-bit alpha plane, if any) as a 16-bit PNG (``codec/png16.py``)
    or TIFF (tifffile), with the ICC profile and EXIF (a PNG's; a TIFF keeps the profile only).
    Any other format is refused: it would lose the low byte of every sample."""
    if fmt not in DEEP_FORMATS:
        raise Failure(f"{fmt} cannot hold 16-bit samples: decode to .png or .tiff (the file "
                      "would lose the low byte of every sample)")
    colour = pixels.shape[2]
    if metadata.alpha is not None:
        pixels = np.dstack([pixels, metadata.alpha])
    if fmt == "PNG":
        from nicodec.codec import png16

        return png16.write(pixels, metadata.icc_profile, metadata.exif)
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels[:, :, 0] if pixels.shape[2] == 1 else pixels,
                     photometric="minisblack" if colour == 1 else "rgb",
                     extrasamples=("unassalpha",) if metadata.alpha is not None else None,
                     compression="zlib", iccprofile=metadata.icc_profile)
    return buffer.getvalue()


def _save(pixels, metadata, fmt: str) -> bytes:
    from nicodec.codec.image import to_pil

    if pixels.dtype != np.uint8:
        return _save_deep(pixels, metadata, fmt)
    buffer = io.BytesIO()
    to_pil(pixels, metadata).save(buffer, format=fmt, **metadata.pil_info())
    return buffer.getvalue()


def image_bytes(result, fmt: str, src: str) -> tuple[bytes, list[str]]:
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


def decode_file(src: str, dst: str, strict: bool, max_pixels: int | None, force: bool
                ) -> tuple[dict, list[str]]:
    """Decode one file into an image whose format follows ``dst``'s suffix (PNG for ``-``)."""
    start = time.perf_counter()
    data = read(src)
    header = parse_header(data)[0]
    check_pixels(header, max_pixels)  # a bad header is refused without torch
    from PIL import Image

    from nicodec.codec.pipeline import decode_detailed

    if dst != STDIO and not is_url(dst) and Path(dst).suffix.lower() in bigtiff.TIFF_SUFFIXES \
            and bigtiff.is_big(header.width, header.height):
        return _decode_streamed(src, dst, data, strict, max_pixels, force, start)
    result = decode_detailed(data, strict=strict, max_pixels=max_pixels)
    notes = _decode_notes(src, result)
    fmt = "PNG" if dst == STDIO else Image.registered_extensions()[Path(dst).suffix.lower()]
    image, dropped = image_bytes(result, fmt, src)
    write(dst, image, force)
    return _decode_record(src, dst, data, result, len(image), start), notes + dropped


def _decode_streamed(src: str, dst: str, data: bytes, strict: bool, max_pixels: int | None,
                     force: bool, start: float) -> tuple[dict, list[str]]:
    """Decode a big image straight into a new TIFF file mapped into memory (``codec.bigtiff``)
    under a temporary name, renamed when complete."""
    from nicodec.codec.pipeline import decode_detailed

    with atomic(dst, force) as tmp:
        result = decode_detailed(data, strict=strict, max_pixels=max_pixels,
                                 out=lambda header, metadata: bigtiff.create(
                                     tmp, header.height, header.width, header.channels, metadata,
                                     np.uint16 if header.bit_depth > 8 else np.uint8))
        bigtiff.finish(result.pixels)
    notes = _decode_notes(src, result)
    if result.metadata.exif:
        notes.append(f"{src}: EXIF is not written to a streamed TIFF")
    size = os.path.getsize(dst)
    return _decode_record(src, dst, data, result, size, start), notes


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


def _decode_record(src: str, dst: str, data: bytes, result, output_bytes: int,
                   start: float) -> dict:
    """The JSON record of a decode."""
    header = result.header
    return {"input": src, "output": dst, "input_bytes": len(data), "bytes": len(data),
            "output_bytes": output_bytes, "width": header.width, "height": header.height,
            "bpp": round(8 * len(data) / header.width / header.height, 5),
            "model": model_name(header.model_id), "quality": header.quality,
            "packets": len(header.packet_lengths), "lost_packets": result.lost_packets,
            "concealed_fraction": round(result.concealed_fraction, 5),
            "seconds": round(time.perf_counter() - start, 3)}


def decode_line(record: dict) -> str:
    """A decode record in one line (``--verbose``)."""
    return (f"{record['input']} -> {record['output']}: {record['width']}x{record['height']}, "
            f"{record['lost_packets']} of {record['packets']} packets lost, "
            f"{record['seconds']:.2f} s")
