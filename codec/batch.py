"""Coding a collection: the plan, where the files are coded, the manifest and the progress.

The command line (``codec encode`` / ``decode``) and the Python entries
(:func:`encode_collection`, :func:`decode_collection`) both come here.

Plan. Nothing is coded until the plan passes: every input has one output, no output is an
input, no output exists (unless overwriting was asked for), several inputs go to a folder.
Each problem is one :class:`PlanError` that names every offending file at once, so a mistake
costs no coding time and never leaves half a batch written. Inputs are files, folders (their
files with a matching suffix; with ``recursive`` their subfolders too, whose layout the outputs
keep), glob patterns (``photos/**/*.jpg``), ``@list.txt`` (one path or URL a line) and fsspec
URLs; the output is a folder, a file, ``-`` or a URL (``s3://bucket/coded``).

Where. In this process, in ``jobs`` worker processes, or on a Dask cluster (``cluster``: an
address, ``local:N`` for N local worker processes, or a ``distributed.Client``): the same
per-file work (``codec.files``), the same output bytes. A file that fails is reported and the
others go on. A Dask worker that dies (killed, out of memory) has its files rescheduled by the
Dask scheduler on the workers left, up to ``distributed.scheduler.allowed-failures`` times (3
by default); outputs are written atomically, so the killed attempt leaves no output behind.

Manifest. With a manifest path, one JSON line per input as it finishes: input, output, status
(done or failed), bytes (the coded file's), output_bytes, bpp, model, quality, effort,
seconds (coding time), finished (UTC) and error. ``resume`` skips an input whose latest line
says done with the same output, and whose output still exists with the recorded size; the
others are coded again (an existing output of theirs still needs ``force``), and new lines are
appended. Without ``resume`` the manifest is started anew.

Dask, distributed and fsspec are imported only when a cluster or a URL is used.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import json
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator, Sequence

from nicodec.bitstream.errors import BitstreamError
from nicodec.bitstream.format import MAX_PIXELS
from nicodec.codec.files import (ALREADY_CODED, ENCODED_SUFFIX, STDIO, Failure, Work,
                                 decode_file, encode_file, is_url, looks_nicodec,
                                 temporary_name, with_threads)
from nicodec.codec.image import IMAGE_SUFFIXES, UnsupportedImageError

GLOB_CHARS = frozenset("*?[")
MANIFEST_FIELDS = ("input", "output", "status", "bytes", "output_bytes", "bpp", "model",
                   "quality", "effort", "seconds", "finished", "error")


class PlanError(ValueError):
    """The inputs and the output do not make a safe batch; the message says why (one line)."""


# ---- the plan ------------------------------------------------------------------------------

def image_suffixes() -> set[str]:
    """File suffixes that name an image format (nicodec's own ``.nic`` left out)."""
    from PIL import Image

    return (set(Image.registered_extensions()) | IMAGE_SUFFIXES) - {ENCODED_SUFFIX}


def nicodec_files(files: Sequence[str]) -> list[str]:
    """The local files among ``files`` that are nicodec files already, whatever their suffix
    (URLs are checked when coded: reading every object's head would cost a request each)."""
    found = []
    for name in files:
        if name == STDIO or is_url(name):
            continue
        try:
            with open(name, "rb") as f:
                if looks_nicodec(f.read(2)):
                    found.append(name)
        except OSError:  # a missing or unreadable file: reported when it is coded
            pass
    return found


def _local(name: str) -> str:
    """``file://`` URLs as plain paths: the local code path, atomic renames included."""
    return name[len("file://"):] if name.startswith("file://") else name


def expand(inputs: Sequence[str], suffixes: set[str] | None, recursive: bool = False
           ) -> tuple[list[str], list[str]]:
    """The input files, and the name of each that its output keeps in an output folder.

    A folder gives its files whose suffix is in ``suffixes`` (any file for None), sorted, named
    by their path under the folder (with ``recursive``, its subfolders' files too); a glob
    pattern gives the matching files of those suffixes, named by their path under the pattern's
    fixed folder; ``@LIST`` the entries of a text file, one a line (blank lines and lines
    starting with # skipped); a URL the same through fsspec; anything else is one file."""
    files: list[str] = []
    names: list[str] = []
    for item in inputs:
        entries = [item]
        if item.startswith("@") and len(item) > 1:
            entries = _list_file(item[1:])
        for entry in entries:
            for path, name in _expand_one(_local(entry), suffixes, recursive):
                files.append(path)
                names.append(name)
    return files, names


def _list_file(path: str) -> list[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise PlanError(f"@{path}: cannot read the list ({error.strerror or error})") from None
    entries = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not entries:
        raise PlanError(f"@{path}: the list names no file")
    return entries


def _expand_one(item: str, suffixes: set[str] | None, recursive: bool
                ) -> list[tuple[str, str]]:
    """(file, name) pairs of one input argument."""
    if item == STDIO:
        return [(item, item)]
    if is_url(item):
        return _expand_url(item, suffixes, recursive)
    path = Path(item)
    if path.is_dir():
        found = path.rglob("*") if recursive else path.iterdir()
        pairs = sorted((str(p), p.relative_to(path).as_posix()) for p in found
                       if p.is_file() and _wanted(p.name, suffixes))
        if not pairs:
            raise PlanError(f"folder {item} holds no input files")
        return pairs
    if GLOB_CHARS & set(item) and not path.exists():
        root = _fixed_part(item)
        pairs = sorted((p, Path(p).relative_to(root).as_posix() if root else p)
                       for p in glob.glob(item, recursive=True)
                       if os.path.isfile(p) and _wanted(p, suffixes))
        if not pairs:
            raise PlanError(f"{item}: no input file matches")
        return pairs
    return [(item, path.name)]


def _expand_url(url: str, suffixes: set[str] | None, recursive: bool
                ) -> list[tuple[str, str]]:
    """The same for an fsspec URL: a pattern, a folder (prefix) or one object. Listings come
    with each entry's type, so a million objects cost a few list requests, not one each."""
    fs, path = _filesystem(url)
    if GLOB_CHARS & set(path):
        root, found = _fixed_part(path), fs.glob(path, detail=True)
    elif fs.isdir(path):
        root = path
        found = fs.find(path, detail=True) if recursive else {
            entry["name"]: entry for entry in fs.ls(path, detail=True)}
    else:
        return [(url, PurePosixPath(path).name)]
    pairs = sorted((fs.unstrip_protocol(name), PurePosixPath(name).relative_to(root).as_posix())
                   for name, entry in found.items()
                   if entry["type"] == "file" and _wanted(name, suffixes))
    if not pairs:
        raise PlanError(f"{url}: no input file there")
    return pairs


def _wanted(name: str, suffixes: set[str] | None) -> bool:
    return suffixes is None or PurePosixPath(name).suffix.lower() in suffixes


def _fixed_part(pattern: str) -> str:
    """The folder of a glob pattern before its first wildcard ('' for the current one)."""
    parts = PurePosixPath(pattern).parts
    fixed = []
    for part in parts:
        if GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return str(PurePosixPath(*fixed)) if fixed else ""


def _filesystem(url: str):
    """fsspec's filesystem and path for a URL; a usage error when fsspec is missing."""
    try:
        import fsspec
    except ImportError:
        raise PlanError(f"{url}: URLs need fsspec (pip install 'nicodec[cluster]')") from None
    return fsspec.core.url_to_fs(url)


def _with_suffix(name: str, suffix: str) -> str:
    """A name (a path, or a path under a folder) with its suffix replaced; '/' separators."""
    path = PurePosixPath(name)
    return str(path.with_name(path.stem + suffix))


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}" if is_url(folder) else str(Path(folder) / name)


def targets(files: Sequence[str], output: str | None, suffix: str, batch: bool,
            names: Sequence[str] | None = None) -> list[str]:
    """The output path of each input. One input: ``output`` itself (a file, or ``-``), a file
    named after the input in ``output`` when that is a folder, or the input's path with
    ``suffix``. A batch (``batch``: several inputs or a folder): ``output``/<name><suffix>
    (``names``: each input's name under its folder, default its file name), or beside each
    input when ``output`` is None; ``output`` must then be a folder or a name without a file
    suffix (created as a folder), and no two inputs may share an output."""
    names = list(names) if names is not None else [PurePosixPath(f).name for f in files]
    if not batch:
        if output and output != STDIO and _is_folder(output):
            return [_join(output, _with_suffix(names[0], suffix))]
        if output:
            return [output]
        return [STDIO if files[0] == STDIO else _with_suffix_beside(files[0], suffix)]
    if output == STDIO:
        raise PlanError("several inputs need an output folder (-o FOLDER), not -")
    if output and not is_url(output):
        folder = Path(output)
        if folder.exists() and not folder.is_dir():
            raise PlanError(f"-o {output}: several inputs need an output folder, and {output} "
                            "is a file")
        if not folder.exists() and folder.suffix.lower() in image_suffixes() | {ENCODED_SUFFIX}:
            raise PlanError(f"-o {output}: several inputs need an output folder; give an "
                            f"existing folder or a name without a file suffix ({folder.suffix})")
    outs = [_join(output, _with_suffix(name, suffix)) if output
            else _with_suffix_beside(f, suffix) for f, name in zip(files, names)]
    sources = defaultdict(list)
    for src, dst in zip(files, outs):
        sources[dst].append(src)
    clashes = [f"{' and '.join(srcs)} would {'both' if len(srcs) == 2 else 'all'} write {dst}"
               for dst, srcs in sources.items() if len(srcs) > 1]
    if clashes:
        raise PlanError("; ".join(clashes) + " (code them apart, or into different folders)")
    return outs


def _is_folder(output: str) -> bool:
    if is_url(output):
        fs, path = _filesystem(output)
        return output.endswith("/") or fs.isdir(path)
    return Path(output).is_dir()


def _with_suffix_beside(file: str, suffix: str) -> str:
    return _with_suffix(file, suffix) if is_url(file) else str(Path(file).with_suffix(suffix))


def check_outputs(files: Sequence[str], outs: Sequence[str], force: bool,
                  existing: Iterable[str], why: str = "") -> None:
    """Refuse a plan that would write over one of the inputs (even with ``force``: the same
    file, also through a symbolic or hard link) or over an existing file (without ``force``;
    ``existing``: those outputs that exist, from :func:`output_sizes`; ``why``: said after
    them). Only an existing output can be an input's file, so only those are looked up."""
    found, names = set(existing), set(files)
    inputs = {_identity(f) for f in files if f != STDIO} - {None}
    over_input = [o for o in outs if o != STDIO and (o in names
                                                     or (o in found and _identity(o) in inputs))]
    if over_input:
        raise PlanError(f"{', '.join(over_input)}: the output would replace an input "
                        "(refused even with --force); choose another output name")
    present = [o for o in outs if o in found]
    if present and not force:
        raise PlanError(f"{', '.join(present)} {'exists' if len(present) == 1 else 'exist'}"
                        f"{why} (use --force to overwrite); nothing was written")


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the local file a path leads to, None when there is none."""
    if is_url(path):
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def output_sizes(outs: Sequence[str]) -> dict[str, int]:
    """{output: size in bytes} of the outputs that exist (-1: a dangling link). URLs are
    listed one folder at a time: one request per folder, not one per file."""
    sizes = {}
    folders = defaultdict(list)
    for out in outs:
        if out == STDIO:
            continue
        if is_url(out):
            folders[out.rpartition("/")[0]].append(out)
            continue
        try:
            sizes[out] = os.stat(out).st_size
        except OSError:
            if os.path.lexists(out):
                sizes[out] = -1
    for folder, urls in folders.items():
        fs, path = _filesystem(folder)
        try:
            listing = {entry["name"].rstrip("/"): entry.get("size") for entry in
                       fs.ls(path, detail=True)}
        except FileNotFoundError:
            continue
        for url in urls:
            key = _filesystem(url)[1].rstrip("/")
            if key in listing:
                sizes[url] = listing[key]
    return sizes


@dataclass
class Plan:
    """Every input and its output, and the inputs a resumed run skips (index: manifest line)."""

    files: list[str]
    outs: list[str]
    done: dict[int, dict] = field(default_factory=dict)


def plan(inputs: Sequence[str], output: str | None, decoding: bool, *, recursive: bool = False,
         force: bool = False, manifest: str | None = None, resume: bool = False) -> Plan:
    """The checked plan of an encode (``decoding`` False) or decode; raises PlanError."""
    if resume and not manifest:
        raise PlanError("--resume needs the manifest of the earlier run (--manifest PATH)")
    if not inputs:
        raise PlanError("no input given")
    output = _local(output) if output else output
    files, names = expand(inputs, {ENCODED_SUFFIX} if decoding else IMAGE_SUFFIXES, recursive)
    batch = len(files) > 1 or files != [_local(i) for i in inputs]
    outs = targets(files, output, ".png" if decoding else ENCODED_SUFFIX, batch, names)
    _check_suffixes(outs, decoding)
    if not decoding and (coded := nicodec_files(files)):
        raise PlanError(f"{', '.join(coded)}: {ALREADY_CODED}")
    sizes = output_sizes(outs)
    done = finished(read_manifest(manifest), files, outs, sizes) if resume else {}
    pending = [i for i in range(len(files)) if i not in done]
    check_outputs([files[i] for i in pending], [outs[i] for i in pending], force, sizes,
                  " (not recorded as done in the manifest)" if resume else "")
    return Plan(files, outs, done)


def _check_suffixes(outs: Sequence[str], decoding: bool) -> None:
    """An encode writes ``.nic`` files, not images; a decode writes images of a known format."""
    from PIL import Image

    images, known = image_suffixes(), Image.registered_extensions()
    for target in outs:
        if target == STDIO:
            continue
        suffix = PurePosixPath(target).suffix.lower()
        if not decoding and suffix in images:
            raise PlanError(f"-o {target} names an image format; encode writes a nicodec file: "
                            f"give it the suffix {ENCODED_SUFFIX}")
        if decoding and suffix == ENCODED_SUFFIX:
            raise PlanError(f"-o {target}: decode writes an image (.png, .webp, ...), not a "
                            f"{ENCODED_SUFFIX} file")
        if decoding and suffix not in known:
            raise PlanError(f"-o {target}: cannot tell the image format from its suffix")


# ---- reports and the manifest --------------------------------------------------------------

@dataclass
class FileReport:
    """What became of one input: its record (the ``--json`` report) and warnings, or the
    error that stopped it; ``skipped``: done by an earlier run (the record is its manifest
    line)."""

    input: str
    output: str
    record: dict
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    def manifest_line(self, settings: dict) -> dict:
        """The manifest's JSON line (``settings``: what was asked, for a file that failed)."""
        known = {k: self.record[k] for k in MANIFEST_FIELDS if k in self.record}
        return {**dict.fromkeys(MANIFEST_FIELDS), **settings, **known, "input": self.input,
                "output": self.output, "status": "failed" if self.error else "done",
                "error": self.error,
                "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds")}


def _failed(src: str, dst: str, message: str) -> FileReport:
    return FileReport(src, dst, {"input": src, "error": message}, error=message)


def attempt(work: Work, src: str, dst: str) -> FileReport:
    """``work(src, dst)`` as a report: bad data, a missing file, no memory become the file's
    error; anything else (a broken installation, a bug) is raised and stops the batch."""
    try:
        record, notes = work(src, dst)
    except Failure as error:
        return _failed(src, dst, str(error))
    except MemoryError:
        return _failed(src, dst, f"{src}: not enough memory")
    except OSError as error:
        return _failed(src, dst, _os_message(src, error))
    except (BitstreamError, UnsupportedImageError) as error:
        return _failed(src, dst, f"{src}: {error}")
    return FileReport(src, dst, record, notes)


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


def read_manifest(path: str | None) -> dict[str, dict]:
    """{input: its latest line} of a manifest ({} when there is none yet); a line cut short by
    a crash is skipped."""
    if not path or not os.path.exists(path):
        return {}
    lines = {}
    with open(path, encoding="utf-8") as f:
        for text in f:
            try:
                line = json.loads(text)
                lines[line["input"]] = line
            except (ValueError, KeyError, TypeError):
                continue
    return lines


def finished(lines: dict[str, dict], files: Sequence[str], outs: Sequence[str],
             sizes: dict[str, int]) -> dict[int, dict]:
    """{index: line} of the inputs whose latest line says done, with this output, and whose
    output exists with the size the line records."""
    return {i: lines[src] for i, (src, dst) in enumerate(zip(files, outs))
            if src in lines and lines[src].get("status") == "done"
            and lines[src].get("output") == dst
            and sizes.get(dst, -1) == lines[src].get("output_bytes")}


# ---- where the files are coded -------------------------------------------------------------

def local_workers(cluster: str) -> int | None:
    """N of ``local:N`` (None: ``cluster`` is a scheduler's address)."""
    if not cluster.startswith("local:"):
        return None
    count = cluster[len("local:"):]
    if not count.isdigit() or int(count) < 1:
        raise PlanError(f"--cluster {cluster}: expected local:N with N >= 1 worker processes")
    return int(count)


@contextlib.contextmanager
def connect(cluster: Any) -> Iterator[Any]:
    """A ``distributed.Client`` for ``cluster``: the client itself, a local cluster of N
    one-thread worker processes (``local:N``, closed afterwards), or the scheduler at an
    address."""
    try:
        import distributed
    except ImportError:
        raise PlanError("--cluster needs Dask: pip install 'nicodec[cluster]'") from None
    if isinstance(cluster, distributed.Client):
        yield cluster
        return
    workers = local_workers(cluster)
    if workers:
        with _environment_kept(), \
                distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                         processes=True) as local, \
                distributed.Client(local) as client:
            yield client
        return
    try:
        client = distributed.Client(cluster, timeout="10s")
    except (OSError, ValueError) as error:
        raise PlanError(f"--cluster {cluster}: no Dask scheduler answers there ({error})"
                        ) from None
    with client:
        yield client


@contextlib.contextmanager
def _environment_kept() -> Iterator[None]:
    """This process's environment as it was, once the block ends: Dask's nannies write their
    workers' settings (OMP_NUM_THREADS=1, MKL_NUM_THREADS=1, ...) into it before each start,
    and torch in a process started later from here would take them."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _serial(pairs: list[tuple[str, str]], work: Work) -> Iterator[tuple[int, FileReport]]:
    for i, (src, dst) in enumerate(pairs):
        yield i, attempt(work, src, dst)


def _init_worker() -> None:
    """A --jobs worker computes on one thread: N workers share the cores, not N x cores."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def _in_processes(pairs: list[tuple[str, str]], work: Work, jobs: int
                  ) -> Iterator[tuple[int, FileReport]]:
    """``jobs`` worker processes of this machine (``work``: picklable), as files finish."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool
    from multiprocessing import get_context

    with ProcessPoolExecutor(min(jobs, len(pairs)), mp_context=get_context("spawn"),
                             initializer=_init_worker) as pool:
        futures = {pool.submit(attempt, work, src, dst): i for i, (src, dst) in enumerate(pairs)}
        try:
            for future in as_completed(futures):
                i = futures[future]
                try:
                    yield i, future.result()
                except BrokenProcessPool:
                    yield i, _lost(*pairs[i], "the worker process died (out of memory?)")
        finally:
            for future in futures:
                future.cancel()


def _on_cluster(pairs: list[tuple[str, str]], work: Work, client: Any
                ) -> Iterator[tuple[int, FileReport]]:
    """One Dask task per file (``work`` is pickled to the workers), as files finish. The
    scheduler reruns the tasks of a worker that died; a file whose workers kept dying is
    reported failed (``KilledWorker``)."""
    from distributed import KilledWorker, as_completed

    sources, outputs = zip(*pairs)
    futures = client.map(partial(attempt, work), sources, outputs, pure=False)
    index = {future.key: i for i, future in enumerate(futures)}
    try:
        for future in as_completed(futures):
            i = index[future.key]
            try:
                yield i, future.result()
            except KilledWorker:
                yield i, _lost(*pairs[i], "the Dask workers coding it died each time it was "
                               "tried (out of memory?)")
    finally:
        client.cancel(futures)


def _lost(src: str, dst: str, why: str) -> FileReport:
    """The report of a file whose worker died; what the dead worker left is removed (where
    this machine sees it)."""
    with contextlib.suppress(OSError):
        if not is_url(dst):
            os.unlink(temporary_name(dst))
    return _failed(src, dst, f"{src}: {why}")


class _Progress:
    """One bar for the collection: files done of all, bytes read and written, rate, ETA (on a
    terminal only: tqdm hides it elsewhere)."""

    def __init__(self, total: int, what: str, show: bool) -> None:
        from tqdm import tqdm

        # no monitor thread: with one, ctx-photo's coder would not fork its second process
        # (``models/ctx/partner.available``)
        tqdm.monitor_interval = 0
        self.bar = tqdm(total=total, desc=what, unit="file", file=sys.stderr,
                        disable=None if show else True)  # None: hidden off a terminal
        self.read = self.written = 0

    def update(self, report: FileReport) -> None:
        self.read += report.record.get("input_bytes", 0)
        self.written += report.record.get("output_bytes", 0)
        elapsed = self.bar.format_dict["elapsed"] or 1e-9
        self.bar.set_postfix_str(f"{_size(self.read)} read, {_size(self.written)} written, "
                                 f"{_size(self.read / elapsed)}/s", refresh=False)
        self.bar.update()

    def close(self) -> None:
        self.bar.close()


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def run(files: Sequence[str], outs: Sequence[str], work: Work, *, jobs: int = 1,
        cluster: Any = None, done: dict[int, dict] | None = None,
        manifest: str | None = None, resume: bool = False, settings: dict | None = None,
        progress: bool = False, what: str = "coding",
        on_report: Callable[[FileReport], None] | None = None,
        on_cluster: Callable[[Any], None] | None = None) -> list[FileReport]:
    """Apply ``work(input, output) -> (record, warnings)`` to every input not ``done`` (index:
    manifest line of an earlier run), here (``jobs`` 1), in ``jobs`` processes (``work``
    picklable) or on ``cluster``; the reports of all inputs, in input order.

    ``on_report`` sees each report as its file finishes, ``on_cluster`` the Dask client once
    connected; each report's line is appended to ``manifest`` at once (``resume``: to the
    lines already there, else to a new manifest). A broken installation (``WeightsError``)
    or a bug stops the batch: pending files are cancelled and the error is raised."""
    if (cluster is not None or jobs > 1) and any(n.startswith("memory://")
                                                 for n in (*files, *outs)):
        raise PlanError("memory:// is a store inside one process: worker processes could not "
                        "share it; code it here (no --jobs, no --cluster)")
    if cluster is not None and (STDIO in files or STDIO in outs):
        raise PlanError("- (stdin, stdout) is this process's own: give files to a cluster")
    done = done or {}
    reports: list[FileReport | None] = [
        FileReport(src, dst, done[i], skipped=True) if i in done else None
        for i, (src, dst) in enumerate(zip(files, outs))]
    pending = [i for i in range(len(files)) if i not in done]
    pairs = [(files[i], outs[i]) for i in pending]
    bar = _Progress(len(pairs), what, progress and len(files) > 1)
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(manifest, "a" if resume else "w", encoding="utf-8")) \
            if manifest else None
        stack.callback(bar.close)
        if cluster is not None and pairs:
            client = stack.enter_context(connect(cluster))
            if on_cluster:
                on_cluster(client)
            results = _on_cluster(pairs, work, client)
        elif jobs > 1 and len(pairs) > 1 and STDIO not in files:
            results = _in_processes(pairs, work, jobs)  # a worker has no stdin
        else:
            results = _serial(pairs, work)
        for j, report in results:
            reports[pending[j]] = report
            if log:
                log.write(json.dumps(report.manifest_line(settings or {})) + "\n")
                log.flush()
            bar.update(report)
            if on_report:
                on_report(report)
    return reports


# ---- Python entries ------------------------------------------------------------------------

def _is_bag(inputs: Any) -> bool:
    """Whether ``inputs`` is a Dask bag (told without importing dask)."""
    return type(inputs).__module__.startswith("dask.bag")


def _paths(inputs: Any) -> list[str]:
    """A path, a list of paths or URLs, or a Dask bag of them (computed: the names only)."""
    if isinstance(inputs, (str, os.PathLike)):
        return [str(inputs)]
    if _is_bag(inputs):
        return [str(p) for p in inputs.compute()]
    return [str(p) for p in inputs]


def _default_cluster(inputs: Any, cluster: Any) -> Any:
    """``cluster``, or for a Dask bag without one the Dask client in use (if any)."""
    if cluster is not None or not _is_bag(inputs):
        return cluster
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):  # dask without distributed, or no client: here
        return None


def _collection(inputs: Any, output: str, decoding: bool, work: Work, settings: dict, *,
                recursive: bool, force: bool, jobs: int, cluster: Any, manifest: str | None,
                resume: bool, progress: bool) -> list[FileReport]:
    paths = _paths(inputs)
    cluster = _default_cluster(inputs, cluster)
    checked = plan(paths, str(output), decoding, recursive=recursive, force=force,
                   manifest=manifest, resume=resume)
    return run(checked.files, checked.outs, work, jobs=jobs, cluster=cluster,
               done=checked.done, manifest=manifest, resume=resume, settings=settings,
               progress=progress, what="decoding" if decoding else "encoding")


def encode_collection(inputs: Any, output: str, *, model: str | None = None,
                      quality: int | None = None, lossless: bool = False, effort: int = 1,
                      packets: int | None = None, alpha: str = "keep", depth: str | None = None,
                      frames: str = "first", metadata: str = "keep", recursive: bool = False,
                      force: bool = False, jobs: int = 1, cluster: Any = None,
                      manifest: str | None = None, resume: bool = False, threads: int = 1,
                      progress: bool = False) -> list[FileReport]:
    """Encode a collection into ``output`` (a folder or an fsspec URL), as ``codec encode``.

    ``inputs``: a path, folder, glob pattern or URL, a list of them, or a Dask bag of paths.
    ``cluster``: a ``distributed.Client``, a scheduler address or ``local:N``; None codes
    here (or in ``jobs`` processes), or, for a bag, on the Dask client in use if there is one.
    The other arguments are those of :func:`nicodec.codec.encode` and of the command line.
    Returns one :class:`FileReport` per input, in input order (``report.output`` is the
    written file, ``report.error`` why not); raises :class:`PlanError` before coding anything
    when the plan is unsafe, ``ValueError`` for settings the model lacks."""
    from nicodec.codec.registry import check_effort, check_quality, resolve_model

    model = resolve_model(model, lossless)
    check_quality(model, quality)
    check_effort(model, effort)
    work = partial(with_threads, partial(
        encode_file, model=model, quality=quality, packets=packets, effort=effort, force=force,
        policy=dict(alpha=alpha, depth=depth, frames=frames, metadata=metadata), goal={}),
        threads)
    return _collection(inputs, output, False, work,
                       {"model": model, "quality": quality, "effort": effort},
                       recursive=recursive, force=force, jobs=jobs, cluster=cluster,
                       manifest=manifest, resume=resume, progress=progress)


def decode_collection(inputs: Any, output: str, *, strict: bool = False,
                      max_pixels: int | None = MAX_PIXELS, recursive: bool = False,
                      force: bool = False, jobs: int = 1, cluster: Any = None,
                      manifest: str | None = None, resume: bool = False, threads: int = 1,
                      progress: bool = False) -> list[FileReport]:
    """Decode a collection of ``.nic`` files into PNG images in ``output``, as ``codec
    decode``; the arguments and the result as :func:`encode_collection` (``max_pixels``:
    the header's pixel count above which a file is refused, None for no limit)."""
    work = partial(with_threads, partial(decode_file, strict=strict, max_pixels=max_pixels,
                                         force=force), threads)
    return _collection(inputs, output, True, work, {}, recursive=recursive, force=force,
                       jobs=jobs, cluster=cluster, manifest=manifest, resume=resume,
                       progress=progress)
