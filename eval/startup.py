"""Start-up time of the command line: median wall time of ``codec --help``, ``codec info FILE``
and ``codec models`` over several runs, each a fresh interpreter (``python -m eval.startup``).

The commands that only read headers or the registry must not import torch (issue 27); this
prints the times and whether torch was imported.
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


def _time(args: list[str], runs: int) -> tuple[float, float, bool]:
    """Median wall and CPU seconds of ``python cli.py ARGS`` (CPU time does not count waiting
    for a busy machine's cores), and whether torch was imported."""
    walls, cpus = [], []
    for _ in range(runs):
        start, cpu = time.perf_counter(), _cpu()
        subprocess.run([sys.executable, "cli.py", *args], cwd=ROOT, check=True,
                       capture_output=True)
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
        for label, cmd in [("codec --help", ["--help"]), ("codec info FILE", ["info", str(sample)]),
                           ("codec models", ["models"])]:
            wall, cpu, torch = _time(cmd, args.runs)
            print(f"{label:18s} wall {wall:6.3f} s, CPU {cpu:6.3f} s (medians of {args.runs}), "
                  f"torch imported: {'yes' if torch else 'no'}")


if __name__ == "__main__":
    main()
