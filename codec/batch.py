"""A batch planned whole before anything is coded: the output of every input, and what it risks.

The command line codes nothing until the plan passes: every input has one output, no output is
an input, no output exists (unless overwriting was asked for), several inputs go to a folder.
Each problem is one :class:`PlanError` that names every offending file at once, so a mistake
costs no coding time and never leaves half a batch written.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from nicodec.bitstream.format import MAGIC, Family
from nicodec.codec.image import IMAGE_SUFFIXES

STDIO = "-"  # stdin as an input, stdout as an output
ENCODED_SUFFIX = ".nic"


class PlanError(ValueError):
    """The inputs and the output do not make a safe batch; the message says why (one line)."""


def image_suffixes() -> set[str]:
    """File suffixes that name an image format (nicodec's own ``.nic`` left out)."""
    from PIL import Image

    return (set(Image.registered_extensions()) | IMAGE_SUFFIXES) - {ENCODED_SUFFIX}


def looks_nicodec(head: bytes) -> bool:
    """Whether bytes start like a nicodec file: the magic byte, a format version, a known
    family (by content: a ``.nic`` file renamed to ``.png`` is still recognised)."""
    return (len(head) >= 2 and head[0] == MAGIC and head[1] >> 4 >= 1
            and (head[1] & 0x0F) in {int(f) for f in Family})


def nicodec_files(files: Sequence[str]) -> list[str]:
    """The files among ``files`` that are nicodec files already, whatever their suffix."""
    found = []
    for name in files:
        if name == STDIO:
            continue
        try:
            with open(name, "rb") as f:
                if looks_nicodec(f.read(2)):
                    found.append(name)
        except OSError:  # a missing or unreadable file: reported when it is coded
            pass
    return found


def expand(inputs: Sequence[str], suffixes: set[str] | None) -> list[str]:
    """Input arguments with folders replaced by the files in them whose suffix is in
    ``suffixes`` (any file for None), sorted."""
    files: list[str] = []
    for item in inputs:
        path = Path(item)
        if item != STDIO and path.is_dir():
            found = sorted(str(p) for p in path.iterdir()
                           if p.is_file() and (suffixes is None or p.suffix.lower() in suffixes))
            if not found:
                raise PlanError(f"folder {item} holds no input files")
            files += found
        else:
            files.append(item)
    return files


def targets(files: Sequence[str], output: str | None, suffix: str, batch: bool) -> list[str]:
    """The output path of each input. One input: ``output`` itself (a file, or ``-``), a file
    named after the input in ``output`` when that is a folder, or the input's path with
    ``suffix``. A batch (``batch``: several inputs or a folder): ``output``/<stem><suffix>, or
    beside each input when ``output`` is None; ``output`` must then be a folder or a name
    without a file suffix (created as a folder), and no two inputs may share an output."""
    if not batch:
        if output and output != STDIO and Path(output).is_dir():
            return [str(Path(output) / (Path(files[0]).stem + suffix))]
        if output:
            return [output]
        return [STDIO if files[0] == STDIO else str(Path(files[0]).with_suffix(suffix))]
    folder = Path(output) if output else None
    if output == STDIO:
        raise PlanError("several inputs need an output folder (-o FOLDER), not -")
    if folder and folder.exists() and not folder.is_dir():
        raise PlanError(f"-o {output}: several inputs need an output folder, and {output} is "
                        "a file")
    if folder and not folder.exists() and \
            folder.suffix.lower() in image_suffixes() | {ENCODED_SUFFIX}:
        raise PlanError(f"-o {output}: several inputs need an output folder; give an existing "
                        f"folder or a name without a file suffix ({folder.suffix})")
    outs = [str((folder or Path(f).parent) / (Path(f).stem + suffix)) for f in files]
    sources = defaultdict(list)
    for src, dst in zip(files, outs):
        sources[dst].append(src)
    clashes = [f"{' and '.join(srcs)} would {'both' if len(srcs) == 2 else 'all'} write {dst}"
               for dst, srcs in sources.items() if len(srcs) > 1]
    if clashes:
        raise PlanError("; ".join(clashes) + " (code them apart, or into different folders)")
    return outs


def check_outputs(files: Sequence[str], outs: Sequence[str], force: bool) -> None:
    """Refuse a plan that would write over one of the inputs (even with ``force``: the same
    file, also through a symbolic or hard link) or over an existing file (without ``force``)."""
    inputs = {_identity(f) for f in files if f != STDIO} - {None}
    over_input = [o for o in outs if o != STDIO and _identity(o) in inputs]
    if over_input:
        raise PlanError(f"{', '.join(over_input)}: the output would replace an input "
                        "(refused even with --force); choose another output name")
    existing = [o for o in outs if o != STDIO and os.path.lexists(o)]
    if existing and not force:
        raise PlanError(f"{', '.join(existing)} {'exists' if len(existing) == 1 else 'exist'} "
                        "(use --force to overwrite); nothing was written")


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file a path leads to, None when there is none."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino
