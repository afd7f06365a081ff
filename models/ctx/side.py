"""Coder revision r3's side information: each pass's fixed-point shifts, predictor and
activity coefficients and table indices, entropy-coded with small learned models (r2 sent
them in uniform bits).

**Coefficients.** Across photos, one coefficient of one pass and channel keeps about the same
magnitude in real units (a weight near 0.3 or near 0.01), but the fixed-point scale it is sent
in changes from pass to pass. The weight file holds, for every (pass kind, channel position,
coefficient), the base-2 logarithm of the coefficient's mean magnitude on the training photos
(in 8-bit sample units; ``SideModel.pred``, ``act``). A coefficient ``v`` is sent as its
zigzag ``u`` shifted down by ``k`` (that logarithm moved into the coefficient's fixed-point
units, less ``OFFSET``): the hybrid token of ``u >> k`` (``tokens.py``, 72 tokens reach 2**32) with its
category's learned table, then the token's raw bits and the ``k`` bits below, uniform. The
decoder knows every ``k`` before it reads the coefficients (they follow from the pass, the
channel and the two shifts, which come first), so a pass's side information is two coder calls
plus the raw bits.

**Table indices.** The bank is sorted from the narrowest table to the broadest (``train.py``),
and the classes of a pass are in the order of their activity, so neighbouring classes pick
nearby tables: the first index is sent as is, the others as differences from the one before,
each with a learned table. The encoder picks every class's table with that cost counted.

**Coarseness.** A prediction weight's rounding error costs in proportion to its feature's
energy, so each weight (and the bias) is rounded to a multiple of a power of 2 that grows as
the feature's energy falls below the pass's largest (``coarseness``, from the pass's features,
which the decoder has before it reads the weights), and sent without those zero bits.

Everything the decoder computes here is integer arithmetic (the energies are sums of integers,
exact in float64).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nicodec.bitstream.entropy import PRECISION, PacketDecoder, PacketEncoder, freqs_from_counts
from nicodec.models.ctx.levels import TOP, Pass
from nicodec.models.ctx.tokens import raw_bits, tokens, uniform, untoken, unzigzag, zigzag

NTOK = 72  # tokens of values below 2**32
OFFSET = 2  # k is the magnitude's exponent less this: the token then resolves it in ~4 steps
K_MAX = 24  # the largest shift (keeps a damaged payload's values inside int64)
LEVELS = TOP.bit_length() - 1  # levels of passes after the base grid (steps TOP .. 2)
KINDS = 1 + LEVELS * 3 * 3 * 2  # the base pass; (level, D/A1/A2, parity, compact)
EST_UNITS = 8  # fixed-point bits of the activity estimate (``coder.EST_FRAC``)
COARSE_OFFSET = 1  # a coefficient's coarseness: half the octaves its feature's energy lies below
# the largest, less this (measured: 0 and 2 worse)
ENERGY_ROWS = 1024  # the samples (a regular subsample) a pass's feature energies are taken on
# the categories, one learned token table each
FRAC, SHIFT, WEIGHT, BIAS, ACTIVITY, ACTIVITY_BIAS, FIRST_PICK, PICK = range(8)
CATEGORIES = 8


def kind(p: Pass, compact: bool) -> int:
    """The index of a pass's kind: the base pass, or its level, its place in the level (centres,
    horizontal or vertical midpoints), its half (both, even, odd) and whether it is compact
    (few samples, nearest four neighbours only): what its coefficients' magnitudes depend on."""
    if not p.offsets:
        return 0
    level = TOP.bit_length() - p.step.bit_length()
    place = 0 if p.oy and p.ox else 1 if p.ox else 2
    return 1 + ((level * 3 + place) * 3 + p.parity + 1) * 2 + int(compact)


@dataclass
class StepSide:
    """One pass and channel's side information, as the coder sends it."""

    kind: int
    c: int  # the channel's position in the coding order
    depth: int  # bits per sample
    bits: int  # magnitude bits of the largest prediction weight (``coder._weight_bits``)
    frac: int  # fixed-point bits of the prediction weights
    w: np.ndarray  # prediction weights
    bias: int
    shift: int  # the activity weights' scale 2**shift
    ew: np.ndarray  # activity weights
    ebias: int
    coarse: np.ndarray  # low bits of each prediction weight and of the bias that are zero


@dataclass
class SideModel:
    """The learned part: magnitude exponents of the coefficients and the token tables."""

    pred: np.ndarray  # (KINDS, channels, slots) int64: log2 mean |coefficient|, bias last
    act: np.ndarray  # the same for the activity coefficients
    default: np.ndarray  # (2,) exponents of coefficients beyond the arrays (pred, act)
    tables: np.ndarray  # (CATEGORIES, NTOK) int64 frequencies summing to 2**PRECISION
    _pick_bits: dict = field(default_factory=dict, repr=False)  # encoder: index costs by bank size

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray]) -> SideModel:
        """The model in a weight file's tensors (``to_tensors``); ValueError if damaged."""
        try:
            pred, act = tensors["side_pred"].astype(np.int64), tensors["side_act"].astype(np.int64)
            default = tensors["side_default"].astype(np.int64)
            tables = tensors["side_tables"].astype(np.int64)
        except KeyError as missing:
            raise ValueError(f"the side-information model lacks {missing}") from None
        if pred.ndim != 3 or act.ndim != 3 or len(pred) != KINDS or len(act) != KINDS \
                or default.shape != (2,) or tables.shape != (CATEGORIES, NTOK) \
                or (tables < 1).any() or (tables.sum(1) != 1 << PRECISION).any():
            raise ValueError("the side-information model is damaged")
        return cls(pred, act, default, tables)

    @classmethod
    def neutral(cls) -> SideModel:
        """A model that knows nothing (every exponent 0, flat tables): what the coder runs
        with while the training collects the side information to learn one from."""
        empty = np.zeros((KINDS, 0, 0), np.int64)
        flat = freqs_from_counts(np.ones(NTOK))
        return cls(empty, empty, np.zeros(2, np.int64), np.tile(flat, (CATEGORIES, 1)))

    def to_tensors(self) -> dict[str, np.ndarray]:
        return {"side_pred": self.pred.astype(np.int8), "side_act": self.act.astype(np.int8),
                "side_default": self.default.astype(np.int8),
                "side_tables": self.tables.astype(np.int32)}

    def layout(self, kind_: int, c: int, depth: int, frac: int, shift: int, coarse: np.ndarray,
               ne: int) -> tuple[np.ndarray, np.ndarray]:
        """(shift k, category) of each coefficient of a pass and channel: its prediction
        weights and their bias (sent without their ``coarse`` zero bits), its ``ne`` activity
        weights and their bias."""
        nw = len(coarse) - 1
        ep = _exponents(self.pred, self.default[0], kind_, c, nw + 1)
        ea = _exponents(self.act, self.default[1], kind_, c, ne + 1)
        ep[-1] += depth - 8  # the biases are in sample units, the weights scale-free
        ea[-1] += depth - 8 + shift  # the activity bias is not scaled by 2**shift
        k = np.concatenate([ep + frac - coarse, ea + EST_UNITS - shift]) - OFFSET
        cat = np.repeat([WEIGHT, BIAS, ACTIVITY, ACTIVITY_BIAS], [nw, 1, ne, 1])
        return np.clip(k, 0, K_MAX), cat

    def pick_bits(self, banks: int) -> tuple[np.ndarray, np.ndarray]:
        """(bits of each first index, bits of each difference -banks+1 .. banks-1): what the
        encoder weighs its table choices with."""
        if banks not in self._pick_bits:
            first = np.arange(banks)
            steps = np.arange(-banks + 1, banks)
            self._pick_bits[banks] = (_bits(first, self.tables[FIRST_PICK]),
                                      _bits(steps, self.tables[PICK]))
        return self._pick_bits[banks]


def _exponents(table: np.ndarray, default: int, kind_: int, c: int, n: int) -> np.ndarray:
    out = np.full(n, default, np.int64)
    if c < table.shape[1]:
        m = min(n, table.shape[2])
        out[:m] = table[kind_, c, :m]
    return out


def _bits(v: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Code lengths of values sent with shift 0 and ``table`` (float: the encoder's choice)."""
    tok, nraw, _ = tokens(zigzag(v))
    return PRECISION - np.log2(table[tok]) + nraw


def _put(coder: PacketEncoder, values: np.ndarray, k: np.ndarray, tables: np.ndarray) -> None:
    """Send signed ``values`` below 2**31 in magnitude, each with its shift ``k`` and its
    token table (a row of ``tables``)."""
    u = zigzag(values)
    tok, nraw, raw = tokens(u >> k)
    coder.encode(tok, tables)
    _put_raw(coder, (raw << k) | (u & ((1 << k) - 1)), nraw + k)


def _get(coder: PacketDecoder, k: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_put` (one value per row of ``tables``)."""
    if not len(tables):
        return np.zeros(0, np.int64)
    tok = coder.decode(tables)
    width = raw_bits(tok)
    v = _get_raw(coder, width + k)
    return unzigzag((untoken(tok, v >> k) << k) | (v & ((1 << k) - 1)))


def _chunks(width: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """(byte position, bit count, which values) of the raw bits of values ``width`` bits wide,
    sent a byte at a time, grouped by bit count: the same order for both sides."""
    out = []
    for i in range(-(-int(width.max(initial=0)) // 8)):
        part = np.clip(width - 8 * i, 0, 8)
        out += [(i, int(b), part == b) for b in np.unique(part[part > 0])]
    return out


def _put_raw(coder: PacketEncoder, v: np.ndarray, width: np.ndarray) -> None:
    for i, b, which in _chunks(width):
        coder.encode((v[which] >> (8 * i)) & ((1 << b) - 1), uniform(b))


def _get_raw(coder: PacketDecoder, width: np.ndarray) -> np.ndarray:
    v = np.zeros(len(width), np.int64)
    for i, b, which in _chunks(width):
        v[which] |= coder.decode(uniform(b), int(which.sum())) << (8 * i)
    return v


def _shifts(s: StepSide) -> np.ndarray:
    """The two shifts a pass and channel's side information starts with (``FRAC``, ``SHIFT``)."""
    return np.array([s.frac - s.bits, s.shift])


def _coefficients(s: StepSide) -> np.ndarray:
    """The coefficients as sent, in the order of :meth:`SideModel.layout`: the prediction
    weights and bias without their ``coarse`` zero bits, the activity weights and bias."""
    return np.concatenate([np.append(s.w, s.bias) >> s.coarse, s.ew, [s.ebias]])


def put_step(coder: PacketEncoder, model: SideModel, s: StepSide) -> None:
    """Send a pass and channel's shifts and coefficients."""
    _put(coder, _shifts(s), np.zeros(2, np.int64), model.tables[[FRAC, SHIFT]])
    k, cat = model.layout(s.kind, s.c, s.depth, s.frac, s.shift, s.coarse, len(s.ew))
    _put(coder, _coefficients(s), k, model.tables[cat])


def get_step(coder: PacketDecoder, model: SideModel, kind_: int, c: int, depth: int, bits: int,
             coarse: np.ndarray, ne: int) -> StepSide:
    """Inverse of :func:`put_step` given what the decoder knows: the pass's kind, the channel,
    the depth, the weights' bit count, their coarseness and how many activity weights there
    are. The values are not checked here (the coder knows their ranges)."""
    frac, shift = _get(coder, np.zeros(2, np.int64), model.tables[[FRAC, SHIFT]])
    frac, shift = int(frac) + bits, int(shift)
    k, cat = model.layout(kind_, c, depth, frac, shift, coarse, ne)
    v = _get(coder, k, model.tables[cat])
    nw = len(coarse) - 1
    pred = v[:nw + 1] << coarse
    return StepSide(kind_, c, depth, bits, frac, pred[:nw], int(pred[nw]), shift, v[nw + 1:-1],
                    int(v[-1]), coarse)


def coarseness(feats: np.ndarray) -> np.ndarray:
    """How many low bits of each prediction weight and of the bias are left zero (each is
    sent as its multiple of 2**coarse): a coefficient's rounding error costs in proportion to
    its feature's energy (sum of squares), so its rounding step may grow as the square root of
    the largest energy over its own. ``feats`` (k + 1, n): the pass's features (integers), the
    bias's ones last. On a regular subsample, the same for both sides."""
    f = feats[:, :: max(1, feats.shape[1] // ENERGY_ROWS)]
    # squares below 2**36 (features of 16-bit samples are below 2**18), fewer than 2**13 of
    # them: every partial sum is an integer below 2**53, exact in float64 in any order
    energy = np.einsum("kn,kn->k", f, f)
    octaves = np.frexp(energy)[1]
    return np.maximum(0, (octaves.max(initial=0) - octaves) // 2 - COARSE_OFFSET)


def coarsen(w: np.ndarray, coarse: np.ndarray, limit: int) -> np.ndarray:
    """Coefficients rounded to multiples of 2**coarse, inside -limit..limit."""
    step = 1 << coarse
    top = limit // step * step
    return np.clip(np.rint(w / step) * step, -top, top).astype(np.int64)


def choose_picks(cost: np.ndarray, model: SideModel) -> np.ndarray:
    """The table of each used class, in order: the cheapest counting the bits of its index
    (greedy along the classes). ``cost`` (used, M): the bits each table would code each class's
    tokens in."""
    first, steps = model.pick_bits(cost.shape[1])
    picks = np.zeros(len(cost), np.int64)
    prev = -1
    for i, row in enumerate(cost):
        picks[i] = prev = int(np.argmin(row + (first if prev < 0 else
                                               steps[cost.shape[1] - 1 - prev:][:len(row)])))
    return picks


def put_picks(coder: PacketEncoder, model: SideModel, picks: np.ndarray) -> None:
    """Send the table indices of a pass's used classes: the first, then the differences."""
    _put(coder, np.diff(picks, prepend=0), np.zeros(len(picks), np.int64),
         model.tables[[FIRST_PICK] + [PICK] * (len(picks) - 1)])


def get_picks(coder: PacketDecoder, model: SideModel, count: int) -> np.ndarray:
    """Inverse of :func:`put_picks` (not range-checked)."""
    rows = model.tables[[FIRST_PICK] + [PICK] * (count - 1)] if count else model.tables[:0]
    return np.cumsum(_get(coder, np.zeros(count, np.int64), rows))


def learn(steps: list[StepSide], picks: list[np.ndarray]) -> SideModel:
    """The model of the side information the coder sent for the training photos: ``steps``,
    and the table indices of every pass and channel in ``picks`` (with a bank sorted from
    narrow to broad)."""
    channels = 1 + max(s.c for s in steps)
    slots = 2 + max(max(len(s.w), len(s.ew)) for s in steps)
    sums = np.zeros((2, KINDS, channels, slots))
    counts = np.zeros((2, KINDS, channels, slots))
    for s in steps:  # real magnitudes, in 8-bit sample units
        low = 2.0 ** (s.depth - 8)
        for j, real in enumerate((
                np.abs(np.append(s.w, s.bias / low)) / 2.0 ** s.frac,
                np.abs(np.append(s.ew * 2.0 ** s.shift, s.ebias / low)) / 2.0 ** EST_UNITS)):
            sums[j, s.kind, s.c, :len(real)] += real
            counts[j, s.kind, s.c, :len(real)] += 1
    seen = counts > 0
    exps = np.round(np.log2(sums / np.maximum(counts, 1) + 2.0 ** -20)).astype(np.int64)
    default = np.array([int(np.median(exps[j][seen[j]])) for j in range(2)])
    exps = np.where(seen, exps, default[:, None, None, None])
    model = SideModel(exps[0], exps[1], default, np.zeros((CATEGORIES, NTOK), np.int64))
    hist = np.zeros((CATEGORIES, NTOK))
    for s in steps:
        k, cat = model.layout(s.kind, s.c, s.depth, s.frac, s.shift, s.coarse, len(s.ew))
        values = np.concatenate([_shifts(s), _coefficients(s)])
        np.add.at(hist, (np.concatenate([[FRAC, SHIFT], cat]),
                         tokens(zigzag(values) >> np.concatenate([[0, 0], k]))[0]), 1)
    for p in picks:
        tok = tokens(zigzag(np.diff(p, prepend=0)))[0]
        np.add.at(hist, (np.where(np.arange(len(p)) == 0, FIRST_PICK, PICK), tok), 1)
    model.tables = np.array([freqs_from_counts(h) for h in hist], np.int64)
    return model
