"""Start-up and wall time of the ``codec`` command, each run a fresh interpreter.

``python -m nicodec.eval.startup``: median wall and CPU time of ``codec --help``, ``codec info FILE``,
``codec models`` and ``codec decode`` of a file whose header was forged to 60000x40000 pixels
(refused by the size limit), over several runs. None of these may import torch (issue 27); this
prints the times and whether torch was imported.

``python -m nicodec.eval.startup --coding [--out FILE]``: the coding commands as a user times them, start-up
included (issue 35): ``codec encode`` and ``decode`` of a Kodak image at the default settings,
with ``--threads 2``, of a 1x1 image, and ``encode --target-bpp 0.2``, each as a ratio to
``python -c "import torch"`` timed in the same round (times on a shared machine are noisy; the
ratios much less), on an idle machine and with one core kept busy by another process (a Python
busy loop). Then the coding alone (model loaded, in this process) at one and two threads, idle
and loaded. Medians over ``--runs`` rounds; ``--out`` writes the tables as Markdown.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent

_PROBE = ("import sys, runpy; sys.argv = ['codec'] + sys.argv[1:]\n"
          "try:\n    runpy.run_module('nicodec.cli', run_name='__main__')\n"
          "except SystemExit:\n    pass\n"
          "sys.stderr.write('TORCH=%d' % ('torch' in sys.modules))\n")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time(args: list[str], runs: int, code: int) -> tuple[float, float, bool]:
    """Median wall and CPU seconds of ``python -m nicodec.cli ARGS``, which must exit with ``code`` (CPU
    time does not count waiting for a busy machine's cores), and whether torch was imported."""
    walls, cpus = [], []
    for _ in range(runs):
        start, cpu = time.perf_counter(), _cpu()
        done = subprocess.run([sys.executable, "-m", "nicodec.cli", *args], cwd=ROOT, capture_output=True)
        if done.returncode != code:
            raise SystemExit(f"codec {' '.join(args)} exited {done.returncode}: {done.stderr}")
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu() - cpu)
    probe = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=ROOT,
                           capture_output=True, text=True)
    return statistics.median(walls), statistics.median(cpus), "TORCH=1" in probe.stderr


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each command (the median is kept)")
    parser.add_argument("--coding", action="store_true",
                        help="time the coding commands instead (start-up included), idle and "
                             "with one core busy")
    parser.add_argument("--image", type=Path,
                        default=ROOT.parent / "shared" / "data" / "kodak" / "kodim23.png",
                        help="the photo of --coding (default: kodim23 of ../shared/data/kodak)")
    parser.add_argument("--out", type=Path, help="--coding: also write the tables here")
    args = parser.parse_args(argv)
    if args.coding:
        _coding(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "sample.nic"
        subprocess.run([sys.executable, "-c",
                        "import sys, numpy as np, nicodec.codec as codec; "
                        "open(sys.argv[1], 'wb').write(codec.encode("
                        "np.full((32, 48, 3), 128, np.uint8)))", str(sample)],
                       cwd=ROOT, check=True)
        forged = Path(tmp) / "forged.nic"
        subprocess.run([sys.executable, "-c",
                        "import dataclasses, sys; from nicodec.bitstream.format import parse_header; "
                        "data = open(sys.argv[1], 'rb').read(); h, n = parse_header(data); "
                        "open(sys.argv[2], 'wb').write(dataclasses.replace("
                        "h, width=60000, height=40000).to_bytes() + data[n:])",
                        str(sample), str(forged)], cwd=ROOT, check=True)
        for label, cmd, code in [("codec --help", ["--help"], 0),
                                 ("codec info FILE", ["info", str(sample)], 0),
                                 ("codec models", ["models"], 0),
                                 ("decode forged", ["decode", str(forged), "-o", "-"], 1)]:
            wall, cpu, torch = _time(cmd, args.runs, code)
            print(f"{label:18s} wall {wall:6.3f} s, CPU {cpu:6.3f} s (medians of {args.runs}), "
                  f"torch imported: {'yes' if torch else 'no'}")


REFERENCE = 'python -c "import torch"'
# label, codec arguments ({image}, {tiny}: the inputs; {tmp}: a scratch folder), target ratio
CODING = [
    ("codec encode IMAGE", ["encode", "{image}", "-o", "{tmp}/out.nic"], 2.0),
    ("codec decode FILE", ["decode", "{tmp}/ref.nic", "-o", "{tmp}/out.png"], 2.0),
    ("codec encode 1x1.png", ["encode", "{tiny}", "-o", "{tmp}/tiny.nic"], 1.5),
    ("codec decode 1x1.nic", ["decode", "{tmp}/tiny-ref.nic", "-o", "{tmp}/tiny.png"], None),
    ("codec encode IMAGE --target-bpp 0.2",
     ["encode", "{image}", "-o", "{tmp}/target.nic", "--target-bpp", "0.2"], 5.0),
    ("codec encode IMAGE --threads 2", ["encode", "{image}", "-o", "{tmp}/out2.nic",
                                        "--threads", "2"], None),
    ("codec decode FILE --threads 2", ["decode", "{tmp}/ref.nic", "-o", "{tmp}/out2.png",
                                       "--threads", "2"], None),
]


def _env() -> dict[str, str]:
    """The environment of the timed commands: no thread settings, as a user starts them."""
    return {k: v for k, v in os.environ.items()
            if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def _wall(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of a command, which must succeed."""
    start, cpu = time.perf_counter(), _cpu()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, env=_env())
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()}")
    return time.perf_counter() - start, _cpu() - cpu


def _rounds(commands: list[list[str]], runs: int) -> list[list[tuple[float, float]]]:
    """Wall and CPU seconds of each command (the reference first) in each of ``runs`` rounds;
    the commands of a round run one after another, so that they meet the same load."""
    return [[_wall(argv) for argv in commands] for _ in range(runs)]


def _inner(image: Path, runs: int) -> dict[tuple[int, str], float]:
    """Median seconds of the coding alone (model loaded, this process), (threads, what)."""
    import torch

    from nicodec.codec.pipeline import decode_detailed, encode
    from nicodec.codec.registry import load_model

    load_model("mcq")
    data = encode(str(image))
    times: dict[tuple[int, str], list[float]] = {}
    for _ in range(runs):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for what, work in (("encode", lambda: encode(str(image))),
                               ("decode", lambda: decode_detailed(data))):
                start = time.perf_counter()
                work()
                times.setdefault((threads, what), []).append(time.perf_counter() - start)
    return {key: statistics.median(value) for key, value in times.items()}


class _BusyCore:
    """Another process keeping one core busy while the block runs (None: nothing)."""

    def __init__(self, busy: bool) -> None:
        self.busy, self.process = busy, None

    def __enter__(self) -> "_BusyCore":
        if self.busy:
            self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        return self

    def __exit__(self, *exc) -> None:
        if self.process:
            self.process.kill()
            self.process.wait()


def _coding(args: argparse.Namespace) -> None:
    """The coding commands against ``import torch``, idle and with one core busy."""
    from PIL import Image

    if not args.image.is_file():
        raise SystemExit(f"error: {args.image} not found (give a photo with --image)")
    with tempfile.TemporaryDirectory() as tmp:
        Image.new("RGB", (1, 1), (200, 30, 40)).save(f"{tmp}/tiny.png")
        cli = [sys.executable, "-m", "nicodec.cli"]
        for src, dst in ((args.image, "ref.nic"), (f"{tmp}/tiny.png", "tiny-ref.nic")):
            _wall(cli + ["encode", str(src), "-o", f"{tmp}/{dst}"])
        commands = [[sys.executable, "-c", "import torch"]] + [
            cli + [a.format(image=args.image, tiny=f"{tmp}/tiny.png", tmp=tmp) for a in argv]
            + (["--force"] if argv[0] in ("encode", "decode") else [])
            for _, argv, _ in CODING]
        results, load = {}, {}
        for busy in (False, True):
            load[busy] = os.getloadavg()[0]
            with _BusyCore(busy):
                rounds = _rounds(commands, args.runs)
                inner = _inner(args.image, args.runs)
            results[busy] = rounds, inner
    lines = [f"`python -m nicodec.eval.startup --coding --runs {args.runs}` "
             f"({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores; image "
             f"{args.image.name}; loaded: one `python -c \"while True: pass\"` beside the "
             f"commands; the 1-minute load average was {load[False]:.1f} when the idle rounds "
             f"began and {load[True]:.1f} when the loaded ones began: near 0 means the machine "
             f"was really idle). Whole commands, fresh processes, "
             f"start-up included; median of {args.runs} rounds; ratio: the command's time over "
             f"`{REFERENCE}` in the same round (median of the rounds' ratios); CPU ratio: "
             f"the same for CPU time (user + system), which waiting for a busy core does not "
             f"count.", "",
             "| command | idle s | idle ratio | idle CPU ratio | loaded s | loaded ratio | "
             "loaded CPU ratio | target ratio |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    labels = [REFERENCE] + [label for label, _, _ in CODING]
    goals = [None] + [goal for _, _, goal in CODING]
    for i, (label, goal) in enumerate(zip(labels, goals)):
        cells = []
        for busy in (False, True):
            rounds = results[busy][0]
            seconds = statistics.median(r[i][0] for r in rounds)
            ratio = statistics.median(r[i][0] / r[0][0] for r in rounds)
            cpu = statistics.median(r[i][1] / r[0][1] for r in rounds)
            cells += [f"{seconds:.2f}", f"{ratio:.2f}x", f"{cpu:.2f}x"]
        lines.append(f"| `{label}` | " + " | ".join(cells)
                     + f" | {'' if goal is None else f'<= {goal:g}x'} |")
    lines += ["", "Coding alone (`codec.pipeline.encode` / `decode_detailed` of the image, model "
              "loaded, start-up excluded), median seconds:", "",
              "| torch threads | encode idle | decode idle | encode loaded | decode loaded |",
              "| --- | --- | --- | --- | --- |"]
    for threads in (1, 2):
        lines.append(f"| {threads} | " + " | ".join(
            f"{results[busy][1][threads, what]:.3f}" for busy in (False, True)
            for what in ("encode", "decode")) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
