"""A wall-clock budget for one training command (``--minutes``).

Every training run is resumable from its run folder. The budget cuts one command short so that it
ends inside a fixed time (a lent GPU's 10-minute command limit, what is left of a CPU session):
at the first step past the budget the loop writes its checkpoint and stops, and the same command
again continues from there. What follows the steps (the prior fit, the export) waits for the
command that reaches ``--steps``. The learning-rate schedule depends only on ``--steps``, so a run
cut into chunks trains exactly as one uncut run would.
"""

from __future__ import annotations

import argparse
import math
import time


class Budget:
    """Minutes of wall clock from the moment it is made (start-up and image loading count too)."""

    def __init__(self, minutes: float = 0.0) -> None:
        self.deadline = time.monotonic() + 60 * minutes if minutes > 0 else math.inf

    def spent(self) -> bool:
        return time.monotonic() >= self.deadline


def add_minutes_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=0,
                        help="stop after this many minutes of wall clock (0: no limit), at a "
                             "step boundary with the checkpoint written; the same command again "
                             "continues, and the prior fit and --export run once --steps is "
                             "reached")


def stopped(step: int, steps: int) -> None:
    """Tell the user that the budget, not ``--steps``, ended this command."""
    print(f"--minutes spent at step {step} of {steps}: checkpoint written, run the same command "
          f"again to continue (nothing exported yet)")
