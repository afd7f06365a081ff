"""The training harness that every family's ``train.py`` shares: run folder, checkpoints,
``--minutes``, curves, report and export.

A family's training command keeps its networks, losses and steps; :class:`Run` does the rest:

* **resumable checkpoints**: :meth:`Run.load` reads the run folder's checkpoint (None on a fresh
  run), :func:`restore` puts it back into the networks, optimizers and crop sampler, and the
  step loop :meth:`Run.steps` writes one (:meth:`Run.save` of :func:`checkpoint`) every
  ``--save-every`` steps, at the last step and when the budget is spent. The same command again
  continues.
* **the budget** (``--minutes``, :class:`Budget`): one command ends inside a fixed time (a lent
  GPU's 10-minute command limit, what is left of a CPU session): at the first step past the
  budget the loop writes its checkpoint and stops. What follows the steps (prior fit, export)
  waits for the command that reaches ``--steps``. The learning-rate schedules depend only on
  ``--steps``, so a run cut into chunks trains exactly as one uncut run would.
* **curves**: :meth:`Run.log` appends one JSON line to a file of the run folder (``curve.jsonl``,
  the held-back figures; ``python -m nicodec.eval.curves`` plots it).
* **the end**: :meth:`Run.report` writes and prints the run's report, :meth:`Run.export` the
  shipped weight file.

Under ``torchrun`` (:func:`init_distributed`) every rank runs the loop, rank 0 writes the files,
and every rank stops at the same step when the budget of any of them is spent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from tqdm import tqdm


class Budget:
    """Minutes of wall clock from the moment it is made (start-up and image loading count too)."""

    def __init__(self, minutes: float = 0.0) -> None:
        self.deadline = time.monotonic() + 60 * minutes if minutes > 0 else math.inf

    def spent(self) -> bool:
        return time.monotonic() >= self.deadline


def add_minutes_argument(parser: argparse.ArgumentParser, unit: str = "step") -> None:
    """``--minutes`` (the :class:`Budget` of a command), checked after every ``unit``."""
    parser.add_argument("--minutes", type=float, default=0,
                        help=f"stop after this many minutes of wall clock (0: no limit), at the "
                             f"end of a {unit} with the checkpoint written; the same command "
                             f"again continues, and what follows the {unit}s (prior fit, "
                             f"report, --export) runs in the command that completes them")


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device): torchrun sets WORLD_SIZE; NCCL on GPUs, gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if world > 1:
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
        return dist.get_rank(), world, device
    return 0, 1, device


def checkpoint(step: int, sampler, **parts) -> dict:
    """A checkpoint's contents: the step, the random state of the sampler (``sampler.rng``) and
    every part by name: a network or optimizer as its ``state_dict()``, anything else as is."""
    return {"step": step, "sampler": json.dumps(sampler.rng.bit_generator.state),
            **{name: part.state_dict() if hasattr(part, "state_dict") else part
               for name, part in parts.items()}}


def restore(ckpt: dict, sampler, **parts) -> int:
    """Load a checkpoint of :func:`checkpoint` into the named networks and optimizers and the
    sampler; returns its step."""
    for name, part in parts.items():
        part.load_state_dict(ckpt[name])
    sampler.rng.bit_generator.state = json.loads(ckpt["sampler"])
    return int(ckpt["step"])


class Run:
    """One training command in its run folder ``out``: the checkpoint file (``checkpoint``), the
    budget, the step loop's progress bar, and the files it writes (by rank 0 only)."""

    def __init__(self, out: Path, budget: Budget, checkpoint: str = "checkpoint.pt",
                 rank: int = 0, world: int = 1, device: torch.device | None = None) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out, self.path, self.budget = out, out / checkpoint, budget
        self.rank, self.world, self.device = rank, world, device
        self.bar: tqdm | None = None
        self.step, self.finished = 0, False  # after a loop: steps done, whether all were

    def load(self, device: torch.device | str = "cpu") -> dict | None:
        """The run folder's checkpoint (tensors only, on ``device``), or None on a fresh run."""
        if not self.path.exists():
            return None
        return torch.load(self.path, weights_only=True, map_location=device)

    def save(self, state: dict) -> None:
        """Write ``state`` (of :func:`checkpoint`) as the run folder's checkpoint."""
        torch.save(state, self.path)

    def out_of_time(self) -> bool:
        """Whether the budget is spent (under torchrun: the budget of any rank)."""
        spent = self.budget.spent()
        if self.world > 1:
            flag = torch.tensor(float(spent), device=self.device)
            dist.all_reduce(flag, dist.ReduceOp.MAX)
            spent = bool(flag)
        return spent

    def steps(self, step: int, total: int, save_every: int, save: Callable[[int], None],
              desc: str = "training", unit: str = "step") -> Iterator[int]:
        """The loop: yields the index of every step still to run, ``step`` (0, or the resumed
        checkpoint's) to ``total`` - 1. After each, it advances the progress bar (``self.bar``,
        for the family's own figures) and calls ``save(steps done)`` (rank 0: the checkpoint,
        usually ``self.save(checkpoint(...))``) every ``save_every`` steps, at the last one and
        when the budget is spent, which ends the loop with a message.
        ``self.step`` is then the number of steps done, ``self.finished`` whether it reached
        ``total``."""
        self.bar = tqdm(total=total, initial=step, desc=desc, dynamic_ncols=True,
                        disable=True if self.rank > 0 else None)  # None: hidden off a terminal
        while step < total:
            yield step
            step += 1
            self.bar.update(1)
            out_of_time = self.out_of_time()
            if self.rank == 0 and (step % save_every == 0 or step == total or out_of_time):
                save(step)
            if out_of_time:
                break
        self.bar.close()
        self.step, self.finished = step, step >= total
        if not self.finished and self.rank == 0:
            print(f"--minutes spent at {unit} {step} of {total}: checkpoint written, run the same "
                  f"command again to continue (nothing exported yet)")

    def log(self, point: dict, name: str = "curve.jsonl") -> None:
        """Append one JSON line to the run folder's file ``name``."""
        if self.rank == 0:
            with (self.out / name).open("a") as f:
                f.write(json.dumps(point) + "\n")

    def report(self, report: dict, name: str = "report.json") -> None:
        """Write the run's report into the run folder and print it."""
        text = json.dumps(report, indent=2)
        (self.out / name).write_text(text)
        print(text)

    def export(self, path: Path | None, write: Callable[[str], None]) -> None:
        """``write(path)`` the shipped weight file, if ``--export`` asked for one."""
        if path is not None:
            write(str(path))
            print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
