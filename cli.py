"""The ``codec`` command line: encode, decode, info, models.

Exit codes: 0 success, 1 bad data (unreadable image, damaged or foreign file) or a broken
installation (a missing or damaged weight file: one line, and the batch stops), 2 usage error.
Outputs are written atomically (``codec.files``). Every output is checked before anything is
coded (``codec.batch``): an existing file without ``--force``, an input, an image suffix on a
nicodec output are usage errors, reported for all inputs at once. Commands that only read
headers or the registry (``--help``, ``info``, ``models``) never import torch: the coding
commands import the pipeline when they run. With ``--jobs N`` (N worker processes) or
``--cluster`` (a Dask cluster) the inputs are coded with the same outputs, messages and exit
codes as one by one (``codec.batch``).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable

import click

from nicodec.bitstream.errors import CorruptMetadataError
from nicodec.bitstream.format import MAX_PIXELS, metadata_records, parse_header, unpack
from nicodec.bitstream.metadata import describe
from nicodec.codec import batch
from nicodec.codec.files import (ENCODED_SUFFIX, STDIO, Work, decode_file,
                                 decode_line, encode_file, encode_line, image_bytes, model_name,
                                 read, set_threads, with_threads, write)
from nicodec.codec.image import POLICIES
from nicodec.codec.registry import (DEFAULT_MODEL, LOSSLESS_MODEL, MODELS, WeightsError,
                                    available_models, check_effort, check_quality, measured_rates,
                                    resolve_model)

BAD_DATA = 1


@contextlib.contextmanager
def _usage_errors():
    """A batch plan that fails (``codec.batch.PlanError``) is a usage error: exit 2."""
    try:
        yield
    except batch.PlanError as error:
        raise click.UsageError(str(error)) from None


def _plan(inputs: tuple[str, ...], output: str | None, decoding: bool, options: dict
          ) -> batch.Plan:
    """The checked plan: inputs (folders, patterns, lists expanded), the output of each, and
    what an earlier run did (--resume)."""
    with _usage_errors():
        return batch.plan(inputs, output, decoding, recursive=options["recursive"],
                          force=options["force"], manifest=options["manifest"],
                          resume=options["resume"])


def _say(line: Callable[[dict], str] | None, report: batch.FileReport) -> None:
    """What became of one file, on stderr: its error, or its warnings (and ``line``)."""
    if report.error:
        click.echo(f"error: {report.error}", err=True)
        return
    for note in report.warnings:
        click.echo(f"warning: {note}", err=True)
    if line:
        click.echo(line(report.record), err=True)


def _say_dashboard(client) -> None:
    link = getattr(client, "dashboard_link", None)
    click.echo(f"Dask dashboard: {link}" if link else
               "Dask dashboard: none (the scheduler runs without bokeh)", err=True)


def _run_batch(plan: batch.Plan, work: Work, as_json: bool, what: str,
               line: Callable[[dict], str] | None = None, **run_args) -> None:
    """Code every file of the plan (``run_args``: where, the manifest; ``codec.batch.run``),
    report (the JSON report on stderr when stdout carries an output); exit 1 if any failed."""
    try:
        with _usage_errors():
            reports = batch.run(plan.files, plan.outs, work, done=plan.done,
                                progress=not as_json, what=what, on_report=partial(_say, line),
                                on_cluster=_say_dashboard, **run_args)
    except WeightsError as error:  # every other input would fail the same way
        _broken(error)
    records = [r.record for r in reports if not r.skipped]
    if plan.done:
        click.echo(f"{len(plan.done)} of {len(reports)} files done by an earlier run (manifest "
                   f"{run_args['manifest']}): skipped", err=True)
    if as_json:
        click.echo(json.dumps(records if len(records) != 1 else records[0], indent=2),
                   err=STDIO in plan.outs)
    if not all(r.ok for r in reports):
        sys.exit(BAD_DATA)


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


def _cluster(_ctx, _param, value: str | None) -> str | None:
    """--cluster: a scheduler address, or local:N with N >= 1."""
    if value is not None:
        try:
            batch.local_workers(value)
        except batch.PlanError as error:
            raise click.BadParameter(str(error)) from None
    return value


def _check_quality(model: str, quality: int | None) -> None:
    """--quality must be one of the model's rate settings (None: its default)."""
    try:
        check_quality(model, quality)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--quality") from None


_BATCH_OPTIONS = [
    click.option("-f", "--force", is_flag=True, help="Overwrite existing output files (never "
                 "an input). Without it an existing output stops the command before any "
                 "coding."),
    click.option("-v", "--verbose", is_flag=True, help="One summary line per file on stderr."),
    click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report."),
    click.option("-r", "--recursive", is_flag=True, help="Folders: the files of their "
                 "subfolders too (an output folder keeps their layout)."),
    click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Worker processes for several inputs (--threads threads each); the "
                 "outputs are the same as with one."),
    click.option("--cluster", metavar="ADDRESS|local:N", callback=_cluster,
                 help="Code on a Dask cluster: a scheduler's address (tcp://host:8786), or "
                 "local:N for N worker processes here (needs nicodec[cluster]). Same outputs "
                 "as --jobs; a dead worker's files are coded again elsewhere; the dashboard's "
                 "address is printed."),
    click.option("--manifest", metavar="PATH", help="Write one JSON line per input as it "
                 "finishes: input, output, status, bytes, bpp, model, quality, effort, "
                 "seconds, error."),
    click.option("--resume", is_flag=True, help="With --manifest of an earlier run: skip the "
                 "inputs it records as done whose output is still there with the recorded "
                 "size; code the others and append their lines."),
    click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Torch and numpy (BLAS) threads per process (--lossless, two or more: "
                 "on Linux the encoder and the decoder work each tile in two processes, the "
                 "second kept from file to file; the same bytes and pixels). More can be "
                 "faster on an idle "
                 "machine, but when another program keeps a core busy, two threads ran "
                 "several times slower than one."),
]


def _batch_options(command):
    """The options of encode and decode that say how a collection is coded (``options``)."""
    for option in reversed(_BATCH_OPTIONS):
        command = option(command)
    return command


def _runner(options: dict) -> dict:
    """``codec.batch.run``'s arguments from the batch options."""
    if options["jobs"] > 1 and options["cluster"]:
        raise click.UsageError("--jobs and --cluster exclude each other: give one")
    return {"jobs": options["jobs"], "cluster": options["cluster"],
            "manifest": options["manifest"], "resume": options["resume"]}


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
              "'refuse' fails on them; 'keep' codes 16-bit samples exactly (lossless models "
              "that can: ctx-photo; the file decodes to a 16-bit PNG or TIFF). Default: reduce; "
              "with --lossless keep where the model can, else refuse (--depth reduce codes the "
              "8-bit reduction exactly).")
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
@_batch_options
def encode_cmd(inputs, output, model, lossless, quality, packets, effort, alpha, depth, frames,
               metadata, target_bpp, target_size, target_psnr, **options) -> None:
    """Compress images: files, folders (-r: with their subfolders), glob patterns
    ('photos/**/*.jpg', quoted), @LIST (a text file naming one path or URL a line), fsspec URLs
    (s3://bucket/photos), or '-' for stdin.

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
    runner = _runner(options)
    plan = _plan(inputs, output, False, options)
    work = partial(encode_file, model=model, quality=quality, packets=packets, effort=effort,
                   force=options["force"], goal=goal,
                   policy=dict(alpha=alpha, depth=depth, frames=frames, metadata=metadata))
    _run_batch(plan, partial(with_threads, work, options["threads"]), options["as_json"],
               "encoding", encode_line if options["verbose"] else None,
               settings={"model": model, "quality": quality, "effort": effort}, **runner)


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
@_batch_options
def decode_cmd(inputs, output, strict, max_pixels, **options) -> None:
    """Decompress nicodec files: files, folders of .nic files (-r: with their subfolders),
    glob patterns, @LIST (a text file naming one path or URL a line), fsspec URLs, or '-' for
    stdin.

    The ICC profile and EXIF kept in the file are written into the output image (PNG, JPEG,
    WebP, TIFF), and its alpha plane too where the output format holds one. Damaged packets are
    concealed from their surroundings and a damaged metadata block is dropped, both reported on
    stderr; with --strict any damage is an error. Any file that does not decode is reported in
    one line (exit 1).
    """
    runner = _runner(options)
    plan = _plan(inputs, output, True, options)
    work = partial(decode_file, strict=strict, max_pixels=max_pixels, force=options["force"])
    _run_batch(plan, partial(with_threads, work, options["threads"]), options["as_json"],
               "decoding", decode_line if options["verbose"] else None, **runner)


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
        data = read(src)
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
                  "model": model_name(header.model_id),
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
    _run_batch(batch.Plan(files, files), work, as_json, "reading")


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
    set_threads(1)  # the default of encode and decode, whose times the demo shows
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
    write(str(nic), data, True)
    write(str(png), image_bytes(result, "PNG", str(source))[0], True)
    write(str(folder / DEMO_RECORD), json.dumps(
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
