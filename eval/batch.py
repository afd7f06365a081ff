"""Files per second of a collection: --jobs 1 and 2 against a local Dask cluster of 1 and 2
workers, and what the engine costs per file.

    python -m nicodec.eval.batch [--images ../shared/data/kodak] [--count 48] [--model mcq]
                                 [--out eval/results/bench/batch.md]

The folder's images are repeated until there are ``--count`` of them (48 Kodak-size images from
the 24 Kodak ones), copied into a scratch folder, then encoded with ``encode_collection`` as
``codec encode`` does: in this process (``jobs 1``), in 2 worker processes, and on a local Dask
cluster of 1 and 2 one-thread workers. Each row's wall time includes starting the workers (and
the cluster) and each worker's model load, as a user waits for them. The engine's own cost per
file is measured apart, with 1000 tasks that code nothing (each returns its file's name): the
time per task of handing out tasks and returning results. Every row must write the same bytes
(checked: the table says so).
Needs the ``cluster`` extra (dask, distributed). Measure on an idle machine, or say it was not.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from nicodec.codec import batch
from nicodec.eval.rd import DEFAULT_IMAGES, HelpFormatter

MODES = [("--jobs 1", {"jobs": 1}), ("--jobs 2", {"jobs": 2}),
         ("--cluster local:1", {"cluster": "local:1"}),
         ("--cluster local:2", {"cluster": "local:2"})]


def nothing(src: str, _dst: str) -> tuple[dict, list[str]]:
    """A task that codes nothing: what is left of a file's time is the engine's."""
    return {"input": src}, []


def collection(images: Path, count: int, folder: Path) -> list[Path]:
    """``count`` images copied from ``images`` (repeated in turn) into ``folder``."""
    sources = sorted(p for p in images.iterdir() if p.suffix.lower() == ".png")
    if not sources:
        raise SystemExit(f"error: no PNG images in {images}")
    paths = []
    for i in range(count):
        src = sources[i % len(sources)]
        paths.append(folder / f"{src.stem}-{i // len(sources)}.png")
        shutil.copyfile(src, paths[-1])
    return paths


def measure(paths: list[Path], out: Path, model: str, options: dict) -> dict:
    """Wall time and coding time (the sum of the files' own seconds) of one encode run."""
    start = time.perf_counter()
    reports = batch.encode_collection([str(p) for p in paths], str(out), model=model,
                                      **options)
    wall = time.perf_counter() - start
    failed = [r.error for r in reports if not r.ok]
    if failed:
        raise SystemExit(f"error: {failed[0]}")
    return {"wall": wall, "coding": sum(r.record["seconds"] for r in reports),
            "bytes": sum(r.record["bytes"] for r in reports),
            "outputs": {Path(r.output).name: Path(r.output).read_bytes() for r in reports}}


def engine_cost(options: dict, tasks: int = 1000) -> float:
    """Seconds per file of the engine alone: ``tasks`` tasks that code nothing against 2, the
    difference over the difference in count (the workers' start is in both and drops out)."""
    def run(count: int, where: dict) -> float:
        names = [f"file{i}" for i in range(count)]
        start = time.perf_counter()
        batch.run(names, [f"{n}.out" for n in names], nothing, **where)
        return time.perf_counter() - start

    with contextlib.ExitStack() as stack:
        where = dict(options)
        if "cluster" in options:
            where["cluster"] = stack.enter_context(batch.connect(options["cluster"]))
        return (run(tasks, where) - run(2, where)) / (tasks - 2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nicodec.eval.batch",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES,
                        help="folder of PNG images (repeated up to --count)")
    parser.add_argument("--count", type=int, default=48, help="images in the collection")
    parser.add_argument("--model", default="mcq", help="model to encode with")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="nicodec-batch-") as scratch:
        paths = collection(args.images, args.count, Path(scratch))
        for i, (name, options) in enumerate(MODES):
            load = os.getloadavg()[0]  # other programs' share of the cores, as the row starts
            run = measure(paths, Path(scratch) / f"out{i}", args.model, options)
            rows.append((name, run, engine_cost(options), load))
    base = rows[0][1]["wall"]
    lines = [f"{args.count} images from {args.images.name} (Kodak size: 768x512), "
             f"`{args.model}` at its default quality, effort 1; one torch thread per worker.",
             "",
             "| how | wall s | files/s | vs --jobs 1 | coding s per file (in the workers) "
             "| engine per file (tasks that code nothing) | load average at start |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, run, cost, load in rows:
        lines.append(f"| `{name}` | {run['wall']:.1f} | {args.count / run['wall']:.2f} | "
                     f"{base / run['wall']:.2f}x | {run['coding'] / args.count:.2f} | "
                     f"{cost * 1000:.1f} ms | {load:.1f} |")
    same = all(run["outputs"] == rows[0][1]["outputs"] for _, run, _, _ in rows)
    lines += ["", f"Bytes written: {rows[0][1]['bytes']}; the files of all four rows are "
              f"{'identical' if same else 'NOT identical'}."]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
