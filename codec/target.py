"""Encode to a target rate or quality, as ``cwebp -size`` / ``-psnr`` do.

``codec encode --target-bpp B | --target-size BYTES | --target-psnr DB`` and
:func:`encode_to_target`. The encoder runs several times on the same pixels:

1. **Quality step**: bisection over the model's qualities (rate and PSNR grow with the quality)
   finds the two neighbouring steps that bracket the target.
2. **Rate weight** (models whose encoder has one, ``Model.tunable``: ``mcq``): at the upper step,
   the weight of bits against latent error in the encoder's codeword choice is raised from its
   tuned value (``rate_weights`` in the registry) by bisection in log scale. A larger weight
   picks cheaper codewords, so the rate falls smoothly from that step's rate towards the one
   below it, and the target is hit between quality steps. Above the top step, weight 0 (the
   nearest codewords) is tried too. The weight is an encoder choice only: the file holds the
   indices it picked and decodes with the unchanged decoder.

A rate target (bpp, bytes) is a budget: the result is the largest file not above it. A PSNR
target is a floor: the result is the smallest file that reaches it. When no setting meets the
target (a budget below the model's lowest rate, a PSNR above its best), the result is the
closest file and ``met`` is False.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from nicodec.bitstream.format import metadata_records, parse_header
from nicodec.bitstream.metadata import Kind
from nicodec.codec.image import ImageInput, Picture, Policy, load_image, option_text
from nicodec.codec.pipeline import decode_detailed, encode_detailed
from nicodec.codec.registry import load_model, model_info, resolve_model

KINDS = ("bpp", "size", "psnr")
RATE_TOLERANCE = 0.1  # a rate target is met when the file is within 10% below it
MAX_RATE_WEIGHT = 10.0  # near the cheapest codewords: at 30 the rate falls by under 2% more
MIN_RATE_WEIGHT = 0.01  # lower end of the log-scale search when a step's tuned weight is 0
WEIGHT_STEPS = 7  # bisection steps on the weight: the last bracket spans a few % of rate
METADATA_SHARE = 0.5  # ICC profile and EXIF above this share of a file or budget are pointed out
METADATA_FLOOR = 4096  # ... in a file (no budget) only from this size on


@dataclass(frozen=True)
class Trial:
    """One encoder run of the search."""

    data: bytes
    quality: int
    rate_weight: float | None  # None: the model's encoder has no rate weight
    value: float  # the figure the target is about: bpp, bytes or PSNR (dB)


@dataclass(frozen=True)
class TargetResult:
    """The chosen file and how it compares with the target."""

    data: bytes = field(repr=False)
    kind: str  # "bpp", "size" or "psnr"
    target: float
    achieved: float  # bpp, bytes or PSNR (dB) of ``data``
    met: bool
    quality: int
    rate_weight: float | None
    trials: int  # encoder runs the search took

    def describe(self) -> str:
        """One line saying why the target was not met (empty when it was)."""
        if self.met:
            return ""
        unit = {"bpp": "bpp", "size": "bytes", "psnr": "dB"}[self.kind]
        if self.kind != "psnr" and self.achieved <= self.target:
            line = (f"no setting of this model lands within {RATE_TOLERANCE:.0%} below the "
                    f"target {self.target:g} {unit}; the largest file within it: "
                    f"{self.achieved:g} {unit} (quality {self.quality})")
        else:
            line = (f"target {self.target:g} {unit} cannot be met with this model; "
                    f"closest: {self.achieved:g} {unit} (quality {self.quality})")
        if self.kind == "psnr":
            return line
        header = parse_header(self.data)[0]
        budget = self.target if self.kind == "size" else \
            self.target * header.width * header.height / 8
        note = metadata_note(self.data, budget)
        return f"{line}; {note}" if note else line


def metadata_note(data: bytes, budget: float | None = None) -> str:
    """One line when the ICC profile and EXIF of a file take more than METADATA_SHARE of a
    ``budget`` in bytes, or of the file itself (then only from METADATA_FLOOR bytes on: an
    icon's sRGB profile is no news), naming ``--metadata drop``; empty otherwise. The metadata
    counts toward a rate target as the pixels do: a 30 KB EXIF block does not fit in 10 KB."""
    if not parse_header(data)[0].metadata_length:
        return ""
    size = sum(len(record) for kind, record in metadata_records(data)
               if kind in (Kind.ICC_PROFILE, Kind.EXIF))
    whole = len(data) if budget is None else budget
    if size <= METADATA_SHARE * whole or (budget is None and size < METADATA_FLOOR):
        return ""
    of = f"of the file's {len(data)}" if budget is None else f"against a budget of {budget:.0f}"
    return (f"the ICC profile and EXIF take {size} bytes {of} ({size / whole:.0%}); pass "
            f"{option_text('metadata', 'drop')} to leave them out")


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """PSNR in dB over all samples, peak 255 (100 for identical images)."""
    mse = np.mean((reference.astype(np.float64) - decoded.astype(np.float64)) ** 2)
    return 100.0 if mse == 0 else 10 * math.log10(255 ** 2 / mse)


class _Search:
    """Runs the encoder on fixed pixels and judges each file against the target."""

    def __init__(self, picture: Picture, kind: str, target: float, model: str,
                 effort: int, packets: int | None) -> None:
        self.picture, self.pixels = picture, picture.pixels
        self.kind, self.target = kind, target
        self.model, self.effort, self.packets = model, effort, packets
        self.trials: list[Trial] = []
        # the analysis transform runs once, not once per trial (the trials differ in coding)
        self.analysis = load_model(model).analysis(picture.pixels)

    def run(self, quality: int, rate_weight: float | None = None) -> Trial:
        data = encode_detailed(self.picture, self.model, quality, self.packets, self.effort,
                               rate_weight=rate_weight, analysis=self.analysis).data
        if self.kind == "psnr":
            value = psnr(self.pixels, decode_detailed(data).pixels)
        else:
            h, w = self.pixels.shape[:2]
            value = len(data) if self.kind == "size" else 8 * len(data) / (h * w)
        trial = Trial(data, quality, rate_weight, value)
        self.trials.append(trial)
        return trial

    def feasible(self, trial: Trial) -> bool:
        """Within the budget (rate) or at or above the floor (PSNR)."""
        return trial.value <= self.target if self.kind != "psnr" else trial.value >= self.target

    def low(self, trial: Trial) -> bool:
        """On the low-rate side of the target (what a higher quality or a smaller rate weight
        moves away from)."""
        return self.feasible(trial) if self.kind != "psnr" else not self.feasible(trial)

    def best(self) -> Trial:
        """The largest feasible file for a budget, the smallest for a floor; else the closest."""
        feasible = [t for t in self.trials if self.feasible(t)]
        if feasible:
            pick = max if self.kind != "psnr" else min
            return pick(feasible, key=lambda t: len(t.data))
        if self.kind != "psnr":
            return min(self.trials, key=lambda t: len(t.data))
        return max(self.trials, key=lambda t: t.value)


def encode_to_target(image: ImageInput, target_bpp: float | None = None,
                     target_size: int | None = None, target_psnr: float | None = None,
                     model: str | None = None, effort: int = 1,
                     packets: int | None = None, *, alpha: str = "keep",
                     depth: str | None = None, frames: str = "first",
                     metadata: str = "keep") -> TargetResult:
    """Encode ``image`` with the quality (and, for ``mcq``, encoder rate weight) that meets one
    target: ``target_bpp`` (bits per pixel of the whole file) or ``target_size`` (bytes), the
    largest file within it; or ``target_psnr`` (dB of the coded colour against the input's), the
    smallest file that reaches it. Exactly one target must be given. When none can be met, the
    closest file comes back with ``met=False`` (see :meth:`TargetResult.describe`). The other
    arguments are those of ``codec.encode``; the image is loaded (and warned about) once."""
    given = {k: v for k, v in zip(KINDS, (target_bpp, target_size, target_psnr)) if v is not None}
    if len(given) != 1:
        raise ValueError(f"give exactly one target (target_bpp, target_size or target_psnr), "
                         f"got {len(given)}")
    (kind, target), = given.items()
    if not target > 0:
        raise ValueError(f"target {kind} must be positive, got {target}")
    name = resolve_model(model)
    picture = load_image(image, Policy(alpha=alpha, depth=depth or "reduce", frames=frames,
                                       metadata=metadata))
    search = _Search(picture, kind, float(target), name, effort, packets)
    qualities = sorted(model_info(name).qualities)
    below, above = 0, len(qualities)  # qualities[:below] are low, qualities[above:] are not
    while below < above:
        middle = (below + above) // 2
        if search.low(search.run(qualities[middle])):
            below = middle + 1
        else:
            above = middle
    if load_model(name).tunable:
        if below < len(qualities):
            _search_weight(search, qualities[below])
        else:  # above the top step's tuned weight: the nearest codewords give the most
            search.run(qualities[-1], 0.0)
    chosen = search.best()
    if kind == "psnr":
        met = search.feasible(chosen)
    else:
        met = search.feasible(chosen) and chosen.value >= (1 - RATE_TOLERANCE) * target
    return TargetResult(chosen.data, kind, float(target), chosen.value, met, chosen.quality,
                        _weight_used(name, chosen), len(search.trials))


def _search_weight(search: _Search, quality: int) -> None:
    """Bisect the rate weight at ``quality`` (whose tuned weight is on the high-rate side of
    the target) towards the target, in log scale."""
    high = search.run(quality, MAX_RATE_WEIGHT)
    if not search.low(high):
        return  # even the cheapest codewords stay above the target at this step
    lo = math.log(max(load_model(search.model).rate_weight(quality), MIN_RATE_WEIGHT))
    hi = math.log(MAX_RATE_WEIGHT)
    for _ in range(WEIGHT_STEPS):
        middle = (lo + hi) / 2
        if search.low(search.run(quality, math.exp(middle))):
            hi = middle
        else:
            lo = middle


def _weight_used(name: str, trial: Trial) -> float | None:
    """The rate weight the chosen file was encoded with (None for models without one)."""
    m = load_model(name)
    if not m.tunable:
        return None
    return m.rate_weight(trial.quality) if trial.rate_weight is None else trial.rate_weight
