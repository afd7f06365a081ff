"""The model families (``mcq/``, ``vq/``, ``pc/``), what they share, and the shipped weights."""

from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "weights"  # the shipped weight files and cards
