"""Start-up time of the command line: median wall and CPU time of ``codec --help``, ``codec info
FILE``, ``codec models`` and ``codec decode`` of a file whose header was forged to 60000x40000
pixels (refused by the size limit), over several runs, each a fresh interpreter
(``python -m eval.startup``).

None of these may import torch (issue 27); this prints the times and whether torch was imported.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent

_PROBE = ("import sys, runpy; sys.argv = ['codec'] + sys.argv[1:]\n"
          "try:\n    runpy.run_path('cli.py', run_name='__main__')\n"
          "except SystemExit:\n    pass\n"
          "sys.stderr.write('TORCH=%d' % ('torch' in sys.modules))\n")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time(args: list[str], runs: int, code: int) -> tuple[float, float, bool]:
    """Median wall and CPU seconds of ``python cli.py ARGS``, which must exit with ``code`` (CPU
    time does not count waiting for a busy machine's cores), and whether torch was imported."""
    walls, cpus = [], []
    for _ in range(runs):
        start, cpu = time.perf_counter(), _cpu()
        done = subprocess.run([sys.executable, "cli.py", *args], cwd=ROOT, capture_output=True)
        if done.returncode != code:
            raise SystemExit(f"codec {' '.join(args)} exited {done.returncode}: {done.stderr}")
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu() - cpu)
    probe = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=ROOT,
                           capture_output=True, text=True)
    return statistics.median(walls), statistics.median(cpus), "TORCH=1" in probe.stderr


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "sample.nic"
        subprocess.run([sys.executable, "-c",
                        "import sys, numpy as np, codec; "
                        "open(sys.argv[1], 'wb').write(codec.encode("
                        "np.full((32, 48, 3), 128, np.uint8)))", str(sample)],
                       cwd=ROOT, check=True)
        forged = Path(tmp) / "forged.nic"
        subprocess.run([sys.executable, "-c",
                        "import dataclasses, sys; from bitstream.format import parse_header; "
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


if __name__ == "__main__":
    main()
