"""One tile's samples <-> one range-coded payload (exact integers throughout).

For every pass (``levels.py``) and channel (G first, then R, B and any further channel; each
sees the channels coded before it at the same pixel):

1. **prediction**: a linear predictor over the known neighbours of the channel (and three
   nonlinear features: the mean of the smoother opposite pair, a gradient-weighted mean, the
   median of the nearest four), and over the earlier channels at the pixel and around it. The
   encoder fits it by least squares on the tile and sends it in fixed point; the residual is
   folded into the sample range and zigzagged to u >= 0;
2. **context class**: a linear estimate of |residual| from local gradients, the residuals of the
   neighbours (coded in earlier passes) and of the earlier channels at the pixel, also fitted
   and sent; the class is its place on a log ladder (``edges``, four classes per octave);
3. **table**: each class used in the pass picks one table of the learned bank (its index is
   sent); u is coded as a hybrid token (u < 16 itself, else its exponent and top mantissa
   bit) with that table, in one coder call per class, and the low bits of large u raw.

Side information goes through the same range coder, with uniform tables (r1, r2) or with the
weight file's learned model (r3, ``side.py``). The decoder computes every feature and class
from samples it already has, so it decodes a whole pass per call.

The weight file names the coder revision (:class:`Revision`; a file without one is r1). r2
predicts from the signed residuals of all neighbours and from the earlier channels at all
neighbours, sends weights in as many bits as their precision needs (more for bigger passes),
and uses the prediction's fractional part, which rounding to an integer used to throw away:
the residual's sign is flipped where the exact prediction lay below the rounded one (so the
tables see one skew, not two mirrored ones), and the quiet classes are split by whether it
lay a quarter or more away. It also codes each big pass of the finest level in two halves,
the second seeing the first's samples and residuals next to it (``levels.passes``). Its encoder
weights the fit's rows by the local activity. r3 adds features to the passes that are not
compact: in the second halves, the sum of the middle two of the first half's four samples next
to them; in every such pass, a blend of the sample's two pairs (opposite midpoints, or the
centres' diagonals) weighted by how well each pair's interpolation of the same orientation did
at known samples nearby (``_pair_costs``, after JPEG XL's weighted predictor). It also
entropy-codes the side information with a learned model and rounds each prediction weight
only as finely as its feature's energy needs (``side.py``). r4 gives the later channels
each earlier channel's residual at the pixel times the local ratio of the two channels'
residuals at the neighbours, and its deviation from its nearest four times the local slope
of the two channels' values there (``colour.py``). It also codes each
sample with a table made for it, keeping r3's classes and table indices: the ladder has four
steps per class, and a sample in a class's outer steps is coded with its class's table mixed
with the neighbouring class's (1/8 or 3/8 of it), so the tables follow the activity between
the classes' edges; each table is also blended with the token counts of its classes in the
channel's previous pass, which the decoder already has (``_mix_weights``; how much the table
weighs against them is chosen per pass and sent in 2 bits). The encoder picks the tables
knowing both. r5 codes all of the first channel's (G's) passes before the other channels',
which then see it whole: its values around the sample and their colour difference to it at
their neighbours, weighted by how little it changes on the way (``colour.guided``), and how
far those differences spread as an activity feature. It also codes the top two raw bits
under a large sample's token, and its lowest (the residual's sign), with the weight file's
probability of a 1 for the sample's class and token (the density falls inside a token's
range, the more so the narrower the class; a large residual's sign is skewed too), the bits
between them still uniform; zigzags the residual only while both its signs are possible
from the prediction (``_ranged``); and puts the samples whose prediction was clipped to the
sample range in a class of their own.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np

from nicodec.bitstream.entropy import PRECISION, PacketDecoder, PacketEncoder
from nicodec.models.ctx import colour, partner
from nicodec.models.ctx import side as coded
from nicodec.models.ctx.levels import Pass, passes
from nicodec.models.ctx.rawbits import bit_tables, coded_raw, get_top_raw, top_raw
from nicodec.models.ctx.tokens import NTOK, raw_bits, tokens, untoken, unzigzag, zigzag
from nicodec.models.ctx.tokens import uniform as _uniform

EST_FRAC = 8  # fixed-point bits of the activity weights
LS_ROWS = 100_000  # samples the encoder's last least-squares fit looks at (a regular subsample;
# r1's fits)
LAST_ROWS = 25_000  # r2 on: the predictor's last fit, every 2nd sample of the finest passes
# (49 152 samples in a Kodak tile): Kodak 8.4392 bpp against 8.4334 with all of them, the
# encode 10% faster (``explore.md``, "The planning in the encoder's process")
IRLS_ROWS = 25_000  # the subsample of the reweighting rounds (r1) and of the activity fit
REWEIGHT_ROWS = 12_500  # r2 on: the reweighting rounds' subsample (of the last fit's rows);
# 25 000: Kodak 0.0005 bpp smaller, 6% more encoder CPU; 10 000: 0.0027 bpp larger
IRLS_FLOOR = 3.0  # row weights 1/(|residual| + this): measured 2-4 alike, 1 worse
PRED_BITS = 14  # magnitude bits of the largest prediction weight (10 cost 0.025 bpp)
PRED_BITS_MIN = 8  # r2: the fewest, for the smallest passes
COMPACT_BELOW = 20_000  # r1, r2: passes of fewer samples use the nearest four neighbours only
COMPACT_BELOW_R3 = 5_000  # r3, whose weights cost less to send: Kodak 0.005 bpp smaller (10 000:
# 0.003, 1 000: 0.005)
SPLIT_FROM = 2 * COMPACT_BELOW  # r2: finest passes split in halves that keep all neighbours
SPLIT_FROM_R3 = 20_000  # r3: the passes of the two finest levels from this size split (their
# halves keep all neighbours as compact passes are smaller): Kodak 0.010 bpp smaller; the
# third level too (from 6000 samples) measured worse
HALVES_FROM = 4096  # the two-thread decoder's steps of this many samples or more are made in
# two halves, one in each process (:func:`_decode`); the encoder forks its second process for
# tiles with such a step (:func:`encode_tile`)
EST_SIGNIFICANT = 6  # r2: magnitude bits of the largest activity weight sent (4 measured alike)
EST_SHIFT_MAX = 24  # r2: the largest scale 2**shift of the activity weights
PHASE_CLASSES = 8  # r2: classes below this (expected |residual| under 1.5) split by phase
PAIR_NEAR = 4  # r3: weight of the pair errors at a sample's own distance in its pair costs,
# against 1 for the coarser level's (1, 2, 8, 16 measured 0.0002-0.004 bpp worse)
PAIR_OWN = 2  # r3: weight of the pair's own difference |a - b| there (4, 8, 16 worse)
PAIR_CAP = 1 << 11  # r3: the largest pair cost (in 8-bit units), so that the blend's products
# with its cube stay exact (2**10: +0.005 bpp)
SUB_STEPS = 4  # r4: steps of the activity ladder inside each class (2: +0.002 bpp; 8: -0.0005
# for twice the coder calls)
PRIOR_COUNTS = 4096  # r4: the picked table's weight in samples against the counts of the same
# class in the channel's previous pass (2048: +0.002 bpp, 3072 and 6144: +0.0004)
PRIOR_CHOICES = 4  # r4: table weights the encoder chooses from per pass (2048 to 16384:
# -0.0026 bpp against 4096 alone; 2048 and 4096: -0.001; up to 262144: the same)
PICK_CANDIDATES = 12  # r4: tables the encoder tries per class (the cheapest alone; 40: 0.0006
# bpp less)
RAW_CODED = 2  # r5: raw bits coded with learned tables, the top first (Kodak six images, ideal:
# the top bit -0.0085 bpp, the second -0.0021; the lowest, the sign, -0.0022)
ACTIVITY_FLOOR = 16.0  # r2: rows weighted 1/(mean activity feature + this, in 8-bit units); 8
# and 32 measured worse
_CONTROLLER = None  # threadpoolctl's, made on first use (``_controller``)


def directional(f: list[np.ndarray]) -> list[np.ndarray]:
    """Nonlinear features of the nearest four neighbours (two opposite pairs a-b, c-d): the sum
    of the smoother pair, a gradient-weighted sum, the sum of the middle two."""
    a, b, c, d = f
    g1, g2 = np.abs(a - b), np.abs(c - d)
    return [np.where(g1 <= g2, a + b, c + d), _weighted(f, g1, g2), _middle(f)]


def _weighted(f: list[np.ndarray], g1: np.ndarray, g2: np.ndarray) -> np.ndarray:
    """The sums of the pairs (a, b) and (c, d) weighted by the other pair's cost + 1 (the
    directional features' costs are the pairs' differences, r3's pair blend's those of
    :func:`_pair_costs`), rounded down."""
    a, b, c, d = f
    # the floor of a float quotient of integers: exact here, as the numerator is an integer
    # below 2**53 (sums below 2**17, costs below 2**33.01) and the quotient below 2**17, so
    # its rounding error (under 2**-37) stays under 1/denominator (over 2**-34.01)
    return np.floor(((a + b) * (g2 + 1) + (c + d) * (g1 + 1)) / (g1 + g2 + 2))


def _middle(f: list[np.ndarray]) -> np.ndarray:
    """The sum of the middle two of four values."""
    a, b, c, d = f
    return a + b + c + d - np.minimum(np.minimum(a, b), np.minimum(c, d)) \
        - np.maximum(np.maximum(a, b), np.maximum(c, d))


@dataclass(frozen=True)
class Revision:
    """What the weight revisions' coders do differently (the weight file says which it is)."""

    all_residuals: bool  # the signed residuals of all neighbours are prediction features (r1: the
    # nearest four)
    all_colour: bool  # the earlier channels' values at all neighbours are features (r1: nearest four)
    scaled_weights: bool  # prediction weights with precision growing with the pass's samples and
    # coded in as many bits; activity weights with EST_SIGNIFICANT bits and a shift (r1: all fixed,
    # in whole bytes)
    phase: bool  # the residual's sign flipped to the side the exact prediction was rounded
    # from, and the quiet classes split by how far it was rounded (r1: neither)
    activity_rows: bool  # encoder only: the predictor's rows also weighted by
    # 1/(mean activity feature + ACTIVITY_FLOOR), nearer each sample's share of the code length
    split_finest: bool  # the finest level's passes of at least ``split_from`` samples in two
    # halves (``levels.passes``; in r2, splitting smaller ones, or those of the next level,
    # measured worse: their halves were compact)
    coded_side: bool = False  # r3: the side information entropy-coded with the weight file's
    # learned model (``side.py``; r1, r2: uniform bits)
    same_middle: bool = False  # r3: the odd halves of split passes also see the sum of the middle
    # two of the even half's four samples next to them (their other directional features, and
    # the blend's choice of pair, measured worse)
    compact_below: int = COMPACT_BELOW  # passes of fewer samples are compact (nearest four only)
    split_from: int = SPLIT_FROM  # passes of at least this many samples split (``split_finest``)
    split_top: int = 1  # r3: 2: the level above the finest (h = 2) splits too
    pair_errors: bool = False  # r3: passes that are not compact also blend their sample's two
    # pairs by how well each pair's interpolation did at known samples nearby (``_pair_costs``;
    # A2 passes also their diagonal pairs, ``_diagonal_blend``)
    colour_ratio: bool = False  # r4: the later channels of passes that are not compact also see
    # each earlier channel's residual at the pixel times the local ratio of their residuals at
    # the neighbours (``colour.colour_ratio``)
    colour_slope: bool = False  # r4: and each earlier channel's deviation from its nearest four
    # at the pixel times the local slope of the two channels' values at the neighbours
    # (``colour.colour_slope``)
    sub_steps: int = 1  # r4: the ladder (``edges``) has this many steps per class; a sample
    # in a class's lower (upper) steps is coded with its table mixed with the class's below
    # (above), the more the nearer its edge (``_classes``, ``_mixes``, ``_mix_weights``)
    prior_counts: int = 0  # r4: each class's table is also blended with the token counts of the
    # same class (and mix) in the channel's previous pass, the table weighing this many samples
    prior_choices: int = 1  # r4: the encoder chooses the table's weight per pass among this many
    # (prior_counts times 1/2, 1, 2, 4, ...), sent in as many bits as that needs
    raw_coded: int = 0  # r5: the top bits (this many) of each token's raw bits are coded with
    # the weight file's probability of a 1 for the sample's class and token (``Tables.raw``),
    # not uniform: the density falls inside a token's range (``rawbits.top_raw``)
    raw_sign: bool = False  # r5: and the lowest raw bit (the residual's sign) the same way
    clipped_class: bool = False  # r5: samples whose prediction was clipped to the sample range
    # are a class of their own (``_clipped_class``)
    ranged: bool = False  # r5: the residual is zigzagged only as far as both its signs are
    # possible from the prediction, beyond that it counts on along the possible side
    # (``_ranged``): a prediction near 0 or the top no longer spends codes on values that
    # need a wrap around the range
    first_plane: bool = False  # r5: the first channel's (G's) passes all come before the other
    # channels' (which follow pass by pass as before; ``_steps``), so these see it whole in the
    # passes that are not compact: its values around the sample (``_around``) and their colour
    # difference to it at their neighbours interpolated along it (``colour.guided``), and
    # the spread of those differences as an activity feature (``colour.guided_spread``)

    @property
    def mixed_tables(self) -> bool:
        """r4: the samples are coded in groups sharing a mixed table (:func:`_mixes`), not
        one bank table per class."""
        return self.sub_steps > 1 or self.prior_counts > 0


R1 = Revision(all_residuals=False, all_colour=False, scaled_weights=False, phase=False,
              activity_rows=False, split_finest=False)
R2 = Revision(all_residuals=True, all_colour=True, scaled_weights=True, phase=True,
              activity_rows=True, split_finest=True)
R3 = replace(R2, coded_side=True, same_middle=True, pair_errors=True,
             compact_below=COMPACT_BELOW_R3, split_from=SPLIT_FROM_R3, split_top=2)
R4 = replace(R3, colour_ratio=True, colour_slope=True, sub_steps=SUB_STEPS,
             prior_counts=PRIOR_COUNTS, prior_choices=PRIOR_CHOICES)
R5 = replace(R4, first_plane=True, raw_coded=RAW_CODED, raw_sign=True, ranged=True,
             clipped_class=True)
REVISIONS = {1: R1, 2: R2, 3: R3, 4: R4, 5: R5}
SHIPPED = 5  # the revision of the shipped weights (``train.py``'s default)


@dataclass
class Tables:
    """What the coder needs from the model: the table bank, the class ladder, the revision."""

    bank: np.ndarray  # (M, NTOK) int64 frequencies summing to 2**PRECISION
    edges: np.ndarray  # (classes - 1,) int64 thresholds of the fixed-point activity estimate
    revision: Revision = R1
    collect: list | None = field(default=None)  # training: per-class token histograms
    side: coded.SideModel | None = None  # r3: the side information's model
    collect_side: list | None = field(default=None)  # training: every step's side information
    raw: np.ndarray | None = None  # r5: (coded raw bits, classes, NTOK) int64 frequency (of
    # 2**PRECISION) of a 1 as each of a token's top raw bits, then its lowest, by the
    # sample's class
    collect_raw: list | None = field(default=None)  # training: every step's coded raw bits

    @functools.cached_property
    def bits(self) -> np.ndarray:
        """(M, NTOK) the bits of each token under each table of the bank."""
        return PRECISION - np.log2(self.bank)


class _Own(NamedTuple):
    """A step's features from its own channel (:func:`_own_features`), the rows of the earlier
    channels of its pass still to come (:func:`_colour_features`)."""

    feats: _Rows
    act: _Rows
    nb: list[np.ndarray]  # the neighbours its features use
    compact: bool
    ratios: bool  # r4's colour ratios and slopes
    slopes: bool
    colour_near: int  # how many neighbours of the earlier channels are features
    residuals: colour.Sums | None  # r4: its sums for the colour ratios and slopes
    values: colour.Sums | None


class _Layout(NamedTuple):
    """Which features a step makes (:func:`_own_features`) and how many rows they take at most
    (without the row of ones)."""

    same: bool  # r3: the middle of the even half's four next to an odd half's sample
    pair: bool  # r3: the pair blend
    ratios: bool  # r4: the colour ratios
    slopes: bool  # r4: the colour slopes
    whole: bool  # r5: the first channel around the sample, for the later channels
    rows: int  # prediction features
    act_rows: int  # activity features


def _layout(rev: Revision, p: Pass, c: int, neighbours: int, compact: bool, pair: bool
            ) -> _Layout:
    """The features of a step of channel position ``c`` in pass ``p`` that sees
    ``neighbours`` neighbours; ``pair``: r3's pair misses are recorded."""
    odd = p.parity == 1 and not compact  # an odd half: nb[4:8] are the even half's samples
    same = rev.same_middle and odd
    pair = pair and not compact
    ratios = rev.colour_ratio and rev.all_residuals and not compact and neighbours > 0
    slopes = rev.colour_slope and rev.all_colour and not compact and neighbours > 0
    whole = rev.first_plane and c > 0 and not compact and neighbours > 0
    return _Layout(same, pair, ratios, slopes, whole,
                   2 * neighbours + 3 + c * (neighbours + 5) + (same + 2 * pair) * (c + 1)
                   + (ratios + slopes) * c + whole * (len(_around(p)) + 1),
                   neighbours + 4 + c + whole)


def _own_features(x: np.ndarray, res: np.ndarray, c: int, order: list[int], at: np.ndarray,
                  nb: list[np.ndarray], rev: Revision, p: Pass, err: np.ndarray | None,
                  depth: int, known: dict[int, _Known], spare: _Spare | None = None,
                  width: int = 0, part: slice = slice(None)) -> _Own:
    """The first part of a step's features (:func:`_colour_features` makes the rest): the
    prediction features (k + 1, n) and activity features (m + 1, n) of channel ``order[c]``,
    as float64 rows holding integers (products with the fixed-point weights stay exact; so do
    the features' own sums, products and floor divisions, all far below 2**53), each with a
    last row of ones for the bias (so the fits need not copy them). ``x`` and ``res`` are
    float64 (C, H*W) planes, ``at`` the samples' flat positions, ``nb`` their neighbours' in
    the order of ``p.offsets``; ``err``: r3's pair misses (:func:`_record_pair_errors`);
    ``known``: what each channel coded earlier in this pass left for the later ones (its
    values at the neighbours, its nonlinear features: the later channels see its value minus
    them; r4's sums over its neighbours), to which this channel's is added; ``width``: the
    tile's (r5 finds the first channel's values around the samples). This part makes the rows
    that read only channel ``order[c]`` (its samples and residuals at the neighbours, coded in
    earlier passes; r5: and the first channel, whole by then, around the samples,
    :func:`_surround`), and what it leaves in ``known``. The two-thread encoder makes it as a
    task of its own (:func:`_in_order`), writing the rows into ``spare``'s arrays. ``part``:
    the samples of the step whose rows this call makes (the two-thread decoder's processes
    make one half each, :func:`_decode`; ``known`` then holds that half's)."""
    ch = order[c]
    compact = len(at) < rev.compact_below
    at = at[part]
    nb = [i[part] for i in (nb[:4] if compact else nb)]  # compact: fewer weights to send
    same, pair, ratios, slopes, whole, rows, act_rows = _layout(rev, p, c, len(nb), compact,
                                                                 err is not None)
    later = c < len(order) - 1  # a later channel of the pass will read this one's sums
    feats = _Rows(rows, len(at), spare and spare.features)
    signed_near = len(nb) if rev.all_residuals else 4
    colour_near = len(nb) if rev.all_colour else 4
    act = _Rows(act_rows, len(at), spare and spare.activity)
    own = [feats.take(x[ch], i) for i in nb]
    if own:
        mine = directional(own[:4])
        if same:
            mine.append(_middle(own[4:8]))
        if pair:
            f = [own[i] for i in _pairs(p)[0]]
            mine.append(_weighted(f, *_pair_costs(err[ch], f, nb, p, depth)))
            if p.oy and not p.ox:  # A2: also its diagonal neighbours, the A1 samples nb[-4:]
                mine.append(_diagonal_blend(err[ch], own, nb, depth))
        feats.put(*mine)
        # the later channels' copy of this one's values at the neighbours (one block: the
        # first rows; not views, so that this step's rows can go)
        neighbours = feats.rows[:len(own)].copy() if later and not compact else []
        for i, j in ((0, 1), (2, 3), (0, 2), (1, 3)):
            row = act.next()
            np.abs(np.subtract(own[i], own[j], out=row), out=row)
        first = feats.k
        for i, index in enumerate(nb):  # signed residuals of the nearest (r2: all) are features
            signed = feats.take(res[ch], index) if i < signed_near else \
                res[ch].take(index, mode="clip")
            np.abs(signed, out=act.next())
        residuals = colour.ratio_sums(feats.rows[first:feats.k], depth, later) if ratios else None
        values = colour.slope_sums(feats.rows[:len(nb)], depth, later) if slopes else None
        if whole:
            first = _surround(x, order[0], at, p, depth, known, width, part)
            differences = np.subtract(feats.rows[:len(nb)], first.neighbours)
            difference = colour.guided(first.guide, differences)
            feats.put(*first.around, difference)
            colour.guided_spread(first.guide, differences, difference, act.next())
        known[ch] = _Known(mine, neighbours, residuals, values)
    else:
        residuals = values = None
    return _Own(feats, act, nb, compact, ratios, slopes, colour_near, residuals, values)


def _colour_features(x: np.ndarray, res: np.ndarray, earlier: list[int], at: np.ndarray,
                     o: _Own, known: dict[int, _Known]) -> tuple[np.ndarray, np.ndarray]:
    """The rest of a step's features (:func:`_own_features`): the rows of the ``earlier``
    channels of the pass (their values and residuals at the samples, their values at the
    neighbours, r4's colour ratios and slopes), then the rows of ones."""
    feats, act, nb, compact, ratios, slopes, colour_near, residuals, values = o
    ratio_rows, slope_rows = [], []
    for c2 in earlier:
        here = feats.take(x[c2], at)
        signed_here = feats.take(res[c2], at)
        np.abs(signed_here, out=act.next())
        if nb:
            first = feats.k
            if not compact:  # its values at the neighbours (r2: all of them), as its step
                feats.put(*known[c2].neighbours[:colour_near])  # gathered them (copies: faster)
            if ratios:
                ratio_rows.append(colour.colour_ratio(residuals, known[c2].residuals,
                                                      signed_here))
            if slopes:
                slope_rows.append(colour.colour_slope(values, known[c2].values, here,
                                                      feats.rows[first:first + 4]))
            for d in known[c2].nonlinear:
                np.subtract(here, d, out=feats.next())
    feats.put(*ratio_rows, *slope_rows)
    return feats.done(), act.done()


class _Known(NamedTuple):
    """What a channel's features leave for the later channels of its pass."""

    nonlinear: list[np.ndarray]  # the later channels see this channel's value minus each
    neighbours: np.ndarray | list  # a copy of its values at the neighbours (none if compact)
    residuals: colour.Sums | None = None  # r4: for the colour ratios
    values: colour.Sums | None = None  # r4: for the colour slopes
    around: np.ndarray | None = None  # r5, the first channel: its values around the samples
    guide: np.ndarray | None = None  # r5, the first channel: the guided difference's weights


class _Kept(NamedTuple):
    """r5's decoder: what the first channel's step of a pass leaves for the later channels'
    (:func:`_kept`), in small types for the whole tile (they come after all its passes):
    about 40-65 bytes per sample, where its :class:`_Known` with the energies takes about
    330 and remaking it costs a second :func:`_own_features` (kodim01: 0.14 s of 1.4)."""

    nonlinear: list[np.ndarray]  # float32: integers below 2**18, exact
    residuals: np.ndarray | None  # int8: r4's clipped residuals (+-RATIO_CLIP)
    values: np.ndarray | None  # uint8: r4's values in 8-bit units
    compact: bool


def _kept(mine: _Known, compact: bool) -> _Kept:
    """r5's decoder: the first channel's part of ``known`` (made as the only channel, without
    the energies and the copy of its values at the neighbours) in small types."""
    return _Kept([d.astype(np.float32) for d in mine.nonlinear],
                 None if mine.residuals is None else mine.residuals.rows.astype(np.int8),
                 None if mine.values is None else mine.values.rows.astype(np.uint8), compact)


def _restored(kept: _Kept, plane: np.ndarray, nb: list[np.ndarray], depth: int) -> _Known:
    """r5's decoder: the first channel's :class:`_Known` of a pass as its own step would have
    made it with later channels to come (the same integers: the rows are already clipped and
    in 8-bit units, so :mod:`colour`'s sums of them at depth 8 are theirs), for the first later
    channel's step; ``plane``: the first channel's values, ``nb``: the pass's neighbours."""
    residuals = values = None
    if kept.residuals is not None:
        residuals = colour.ratio_sums(kept.residuals.astype(np.float32), 8, True)
    if kept.values is not None:
        values = colour.slope_sums(kept.values.astype(np.float32), 8, True)
    neighbours: np.ndarray | list = []
    if not kept.compact:
        if depth == 8 and kept.values is not None:  # the values themselves
            neighbours = kept.values.astype(np.float64)
        else:
            neighbours = np.empty((len(nb), len(nb[0])))
            for row, i in zip(neighbours, nb):
                plane.take(i, out=row, mode="clip")
    return _Known(kept.nonlinear, neighbours, residuals, values)


def _around(p: Pass) -> tuple[tuple[int, int], ...]:
    """r5: where the later channels of a pass see the first channel's values besides the pass's
    neighbours: at the level's distance h, those the pass lacks (the centres' (D) nearest four
    on the axes, the horizontal midpoints' (A1) diagonals; the vertical midpoints' (A2) have
    all eight), and from h = 2 on the eight pixels next to the sample (screened on six Kodak
    images: the first alone -0.002 bpp, both -0.011)."""
    h = p.half
    level = ((0, -h), (0, h), (-h, 0), (h, 0)) if p.oy and p.ox else \
        ((-h, -h), (-h, h), (h, -h), (h, h)) if p.ox else ()
    ring = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)
    return level + (ring if h >= 2 else ())


def _surround(x: np.ndarray, g: int, at: np.ndarray, p: Pass, depth: int,
              known: dict[int, _Known], width: int, part: slice = slice(None)) -> _Known:
    """r5: the first channel ``g``'s rows that the later channels of a pass see (made by the
    first of them, kept in ``known[g]`` for the others): its values around the samples
    (:func:`_around`), and the weights of :func:`colour.guided` from its path costs from each
    sample to each neighbour through the pixel halfway (offsets halved, rounded toward 0;
    the neighbours next to the sample are reached directly). Any pixel inside the tile is
    known (the first channel is whole), so the positions are mirrored at the tile's edges
    (``Pass.flat`` with a unit half). ``at``: the ``part`` of the pass's samples made here."""
    mine = known[g]
    if mine.around is None:
        ring = _around(p)
        halves = [(int(dy / 2), int(dx / 2)) for dy, dx in p.offsets]
        far = [k for k, o in enumerate(halves) if o != (0, 0)]
        _, found = Pass(p.oy, p.ox, p.step, 1, ring + tuple(halves[k] for k in far),
                        p.parity).flat(x.shape[1] // width, width)
        found = [i[part] for i in found]
        around = np.empty((len(ring), len(at)))
        for row, i in zip(around, found):
            x[g].take(i, out=row)
        mids = dict(zip(far, (x[g].take(i) for i in found[len(ring):])))
        mine = known[g] = mine._replace(around=around, guide=colour.guide_weights(
            x[g].take(at), mine.neighbours, mids, depth))
    return mine


def _pairs(p: Pass) -> tuple[tuple[int, int, int, int], int, tuple[int, int]]:
    """r3: which of a pass's nearest four form its two pairs for the pair blend, and where
    ``err`` (:func:`_record_pair_errors`) holds the misses of each pair's orientation: kind 0,
    horizontal (0) and vertical (1), for the midpoints' passes, whose pairs are their opposite
    neighbours ((a, b) horizontal in A1, vertical in A2); kind 1, the diagonals (TL, BR) (0)
    and (TR, BL) (1), for the centres' (D)."""
    if p.oy == p.ox:
        return (0, 3, 1, 2), 1, (0, 1)
    return (0, 1, 2, 3), 0, ((1, 0) if p.oy else (0, 1))


def _pair_costs(err: np.ndarray, f: list[np.ndarray], nb: list[np.ndarray], p: Pass,
                depth: int) -> list[np.ndarray]:
    """r3: the costs of a sample's two pairs f = (a, b, c, d) for :func:`_weighted` (weights
    of its pairs as in JPEG XL's weighted predictor): how far the interpolation of each pair's
    orientation missed at known samples next to it (``err``: one channel's misses, (kinds,
    H*W, 2), of :func:`_record_pair_errors`), plus the pair's own difference. The misses at the
    sample's own distance (an odd half's even neighbours nb[4:8], on the same pass; in a
    vertical midpoints' pass (A2), the horizontal midpoints (A1) on its diagonals, nb[-4:])
    weigh PAIR_NEAR, those on the coarser grid (the levels before) 1; the sum goes through
    :func:`_cubed` (weights 1/(cost + 1)**3: the square measured +0.002 bpp, the cost itself
    +0.011)."""
    _, kind, planes = _pairs(p)
    near = (nb[4:8] if p.parity == 1 else []) + (nb[-4:] if p.oy and not p.ox else [])
    grid = [i for (dy, dx), i in zip(p.offsets, nb)
            if (p.oy + dy) % p.step == 0 and (p.ox + dx) % p.step == 0]
    n = len(nb[0])
    sums, scratch = np.zeros((2, n, 2), err.dtype), np.empty((n, 2), err.dtype)
    for total, where in zip(sums, (near, grid)):  # sums of integers below 2**22: exact in float32
        for i in where:  # both orientations' misses at once (side by side in memory)
            np.add(total, err[kind].take(i, 0, out=scratch), out=total)
    costs = []
    for k, plane in enumerate(planes):
        g = np.abs(f[2 * k] - f[2 * k + 1])
        g *= PAIR_OWN
        g += sums[0, :, plane] * PAIR_NEAR
        g += sums[1, :, plane]
        costs.append(_cubed(g, depth))
    return costs


def _diagonal_blend(err: np.ndarray, own: list[np.ndarray], nb: list[np.ndarray], depth: int
                    ) -> np.ndarray:
    """r3: a vertical midpoints' pass's (A2) second pair blend, of its diagonal neighbours (the
    A1 samples (TL, BR) and (TR, BL), nb[-4:]), costed like :func:`_pair_costs` by the
    diagonal misses of the centres (D) left and right of it, nb[2:4], at the same distance
    (x PAIR_NEAR) and the pairs' own differences (x PAIR_OWN)."""
    tl, tr, bl, br = own[-4:]
    f = [tl, br, tr, bl]
    misses = err[1].take(nb[2], 0) + err[1].take(nb[3], 0)  # kind 1: the diagonals
    return _weighted(f, *[_cubed(np.abs(f[2 * k] - f[2 * k + 1]) * PAIR_OWN
                                 + misses[:, k] * PAIR_NEAR, depth) for k in (0, 1)])


def _cubed(g: np.ndarray, depth: int) -> np.ndarray:
    """A pair cost for :func:`_weighted`: ``g`` (an integer sum) in 8-bit units, capped at
    PAIR_CAP, plus 1, cubed, less 1: the blend's weights are then 1/(g + 1)**3."""
    if depth > 8:
        g = np.floor(g / (1 << (depth - 8)))
    g = np.minimum(g, PAIR_CAP) + 1
    return g * g * g - 1  # products of integers below 2**53: exact


def _record_pair_errors(err: np.ndarray, ch: int, at: np.ndarray, values: np.ndarray,
                        nearest: np.ndarray, p: Pass) -> None:
    """r3: |2 x - (a + b)| and |2 x - (c + d)| of the samples just coded (``values``; (a, b),
    (c, d): their pairs of :func:`_pairs` among their ``nearest`` four, the first rows of
    their prediction features), into ``err`` (C, kinds, H*W, 2) at the place of the pairs'
    orientations, for the later passes' :func:`_pair_costs`."""
    order, kind, planes = _pairs(p)
    for k, plane in enumerate(planes):
        err[ch, kind, at, plane] = np.abs(2 * values - nearest[order[2 * k]]
                                          - nearest[order[2 * k + 1]])


class _Spare:
    """Arrays for one step's feature rows (and the encoder's fits' float rows), reused from
    step to step: the two-thread decoder keeps two (the step being decoded and the one made
    ahead), the encoder one per step in flight. Each step allocating its own, tens of MB, costs
    page faults, and on two threads their unmapping interrupts the other CPU too (TLB
    shootdowns): kodim01 took 0.25-0.35 s of system time per decode on two threads, 0.07-0.15 s
    with these (a loaded machine)."""

    class Array:
        """One flat array, grown when a step needs more."""

        def __init__(self) -> None:
            self.flat = np.empty(0, np.uint8)

        def rows(self, count: int, n: int, dtype: type = np.float64) -> np.ndarray:
            """A (count, n) view of ``dtype``, its contents undefined."""
            size = count * n * np.dtype(dtype).itemsize
            if self.flat.size < size:
                self.flat = None  # freed first (no step reads it any more)
                self.flat = np.empty(size, np.uint8)
            return self.flat[:size].view(dtype).reshape(count, n)

    def __init__(self, features: _Spare.Array | _Columns | None = None,
                 activity: _Spare.Array | _Columns | None = None) -> None:
        """``features``, ``activity``: the feature rows' arrays (new ones if None)."""
        self.features, self.activity = features or self.Array(), activity or self.Array()
        # the encoder's fits (:func:`_fit_robust`, :func:`_fit_scale`): their centred rows,
        # the reweighting rounds' subsample of them, the weighted copy
        self.fit, self.small, self.scratch = self.Array(), self.Array(), self.Array()


class _Columns:
    """The decoder's feature rows: one (count, total) float64 array in a flat buffer made
    once per tile, of which a call of :func:`_own_features` makes the columns ``start`` on
    (with two threads, each process makes one half of a step's samples into the same shared
    buffer, :func:`_decode`). ``whole``: the whole array of the last call."""

    def __init__(self, flat: np.ndarray) -> None:
        self.flat, self.total, self.start = flat, 0, 0
        self.whole = flat[:0].view(np.float64).reshape(0, 0)

    def rows(self, count: int, n: int) -> np.ndarray:
        """A (count, n) view of the columns ``start`` on, its contents undefined."""
        size = count * self.total
        self.whole = self.flat[:size * 8].view(np.float64).reshape(count, self.total)
        return self.whole[:, self.start:self.start + n]


class _Rows:
    """Feature rows written in place into one (at most ``bound`` + 1, n) array (a view of
    ``spare``'s array when given)."""

    def __init__(self, bound: int, n: int, spare: _Spare.Array | _Columns | None = None
                 ) -> None:
        self.rows = np.empty((bound + 1, n)) if spare is None else spare.rows(bound + 1, n)
        self.k = 0

    def next(self) -> np.ndarray:
        self.k += 1
        return self.rows[self.k - 1]

    def take(self, plane: np.ndarray, index: np.ndarray) -> np.ndarray:
        return plane.take(index, out=self.next(), mode="clip")  # indices are inside

    def put(self, *columns: np.ndarray) -> None:
        for col in columns:
            self.next()[:] = col

    def done(self) -> np.ndarray:
        """The rows written and a row of ones."""
        self.next()[:] = 1
        return self.rows[:self.k]


def _fit_robust(a: np.ndarray, target: np.ndarray, rows: np.ndarray | None = None,
                rounds: int = 3, rough: type = np.float32, spare: _Spare | None = None
                ) -> np.ndarray:
    """Least squares reweighted towards a log-like cost (row weights 1/(|r| + IRLS_FLOOR), so
    squared errors count about as their log would): a residual's code length grows with its
    log, not its square. ``rows``: further weights of the rows (r2: smaller where the sample's
    class is busier, as its code length grows with |r| / scale). The reweighting rounds run on
    a subsample, the last fit on more, both in ``rough`` precision (float32 for 8-bit photos;
    float64 for deeper samples, where float32 cost 0.02 bits per sample on the 16-bit set), from
    one copy of the rows the last fit sees, centred (:func:`_centred`), whose residuals also
    give the last fit's row weights. ``a`` (k + 1, n) ends with its row of ones. ``spare``:
    where the float rows go (new arrays if None)."""
    if rows is None:  # r1: the weighting as it was, so its encoder keeps its bytes
        step = max(1, -(-a.shape[1] // IRLS_ROWS))
        t = target[::step]
        small = _subsample(a, step)
        # the predictions read the strided rows, not the contiguous copy: a product's
        # summation order follows the layout, and the coefficients (hence the bytes) follow it
        view = a[:-1, ::step]
        coef, scratch = _fit(small, t), np.empty_like(small)
        for _ in range(rounds - 1):
            coef = _fit(small, t, 1 / (np.abs(t - (coef[:-1] @ view + coef[-1])) + IRLS_FLOOR),
                        scratch)
        return _fit(a, target,
                    1 / (np.abs(target - (coef[:-1] @ a[:-1] + coef[-1])) + IRLS_FLOOR))
    step = max(1, -(-a.shape[1] // LAST_ROWS))  # the last fit's rows
    last = -(-a.shape[1] // step)
    every = max(1, -(-last // REWEIGHT_ROWS))  # the reweighting rounds' rows, of those
    stacked, centre = _centred(a, target, step, step * every, rough, spare and spare.fit)
    weight = rows[::step]
    small, few = _subsample(stacked, every, spare and spare.small), weight[::every]
    scratch = _like(small, spare and spare.scratch)
    coef = _fit_stacked(small, few, scratch)
    for _ in range(rounds - 1):
        coef = _fit_stacked(small, few / (np.abs(_miss(small, coef)) + IRLS_FLOOR), scratch)
    weight = weight / (np.abs(_miss(stacked, coef)) + IRLS_FLOOR)
    coef = _fit_stacked(stacked, weight, stacked)  # its last use: scaled in place
    coef[-1] += centre[-1] - coef[:-1] @ centre[:-1]
    return coef


def _centred(a: np.ndarray, target: np.ndarray, step: int, sample: int, dtype: type,
             spare: _Spare.Array | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(every ``step``-th row of the fit: its features less their means, its one and its
    target less its mean, stacked as (k + 2, n / step) in ``dtype``; the means, the target's
    last). In float32 the means are those of every ``sample``-th row, rounded to float32 (any
    centre keeps the float32 sums' precision, and the bias takes it back exactly), so that the
    rows are cast once and centred in float32 (the subtraction with the cast took 1.5x as
    long): centred, the float32 fits code Kodak 0.003 bpp smaller than uncentred float64 ones
    did, as float32 sums of the raw products lost enough of the fit that it had to run in
    float64. Float64 rows stay
    uncentred (means 0): centred, the 16-bit set measured 10.239 bits per sample against
    10.220, as the ridge (a fraction of the Gram matrix's trace) then weighs otherwise.
    ``spare``: where the stacked rows go (a new array if None)."""
    k = len(a) - 1
    centre = np.zeros(k + 1)
    shape = (k + 2, -(-a.shape[1] // step))
    stacked = np.empty(shape, dtype) if spare is None else spare.rows(*shape, dtype)
    stacked[:-2] = a[:-1, ::step]
    stacked[-2] = 1
    stacked[-1] = target[::step]
    if dtype == np.float32:
        centre[:-1] = a[:-1, ::sample].mean(1).astype(dtype)
        centre[-1] = dtype(target[::sample].mean())
        stacked[:-2] -= centre[:-1, None].astype(dtype)
        stacked[-1] -= dtype(centre[-1])
    return stacked, centre


def _miss(stacked: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """The residuals of centred rows (:func:`_centred`) under coefficients (bias last)."""
    return stacked[-1] - (coef[:-1].astype(stacked.dtype) @ stacked[:-2] + coef[-1])


def _fit_stacked(stacked: np.ndarray, weight: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Weighted least squares (like :func:`_fit`, the squared errors weighted by ``weight``
    squared) of the centred rows (:func:`_centred`): they are scaled by ``weight`` into ``out``
    (which may be ``stacked``) in their own precision, so the Gram matrix and the right-hand
    side are one product of that array with its own transpose (BLAS syrk); the solve is in
    float64. The coefficients are those of the centred features, bias last."""
    np.multiply(stacked, weight.astype(stacked.dtype), out=out)
    both = (out @ out.T).astype(np.float64)
    k = len(both) - 1
    gram = both[:-1, :-1]
    gram.flat[::k + 1] += 1e-6 * np.trace(gram) / k + 1e-9  # the ridge
    return _solve(gram, both[:-1, -1])


def _row_weights(act: np.ndarray, rev: Revision, depth: int) -> np.ndarray | None:
    """r2's further row weights of the predictor's fit, from the activity features ``act``
    (m + 1, n) of ``depth``-bit samples (None: r1, or a pass with no activity features)."""
    if not rev.activity_rows or len(act) < 2:
        return None
    return 1 / (act[:-1].mean(0) + ACTIVITY_FLOOR * 2.0 ** (depth - 8))


def _fit_scale(a: np.ndarray, magnitude: np.ndarray, rough: type | None = None,
               spare: _Spare | None = None) -> np.ndarray:
    """The activity estimate of |residual|: least squares weighted by 1/(estimate + 1), since
    the spread of |residual| grows with its scale (on a subsample: it only sorts samples into
    classes). ``a`` (m + 1, n) ends with its row of ones. ``rough``: the precision of the fits,
    on centred rows as in :func:`_fit_robust` (None: r1's float64 fits of the raw rows, so that
    its encoder keeps its bytes); ``spare``: where their rows go."""
    step = max(1, -(-a.shape[1] // IRLS_ROWS))
    if rough is None:
        small, magnitude = _subsample(a, step), magnitude[::step]
        coef = _fit(small, magnitude)
        est = np.maximum(coef[:-1] @ a[:-1, ::step] + coef[-1], 0)
        return _fit(small, magnitude, 1 / (est + 1))
    stacked, centre = _centred(a, magnitude, step, step, rough, spare and spare.fit)
    scratch = _like(stacked, spare and spare.scratch)
    coef = _fit_stacked(stacked, np.ones(stacked.shape[1]), scratch)
    est = np.maximum(magnitude[::step] - _miss(stacked, coef), 0)
    coef = _fit_stacked(stacked, 1 / (est + 1), stacked)
    coef[-1] += centre[-1] - coef[:-1] @ centre[:-1]
    return coef


def _subsample(a: np.ndarray, step: int, spare: _Spare.Array | None = None) -> np.ndarray:
    """Every ``step``-th column of ``a``, contiguous (a view when ``step`` is 1; a copy into
    ``spare``'s array when given)."""
    if step == 1:
        return a
    if spare is None:
        return np.ascontiguousarray(a[:, ::step])
    out = spare.rows(len(a), -(-a.shape[1] // step), a.dtype)
    out[:] = a[:, ::step]
    return out


def _like(a: np.ndarray, spare: _Spare.Array | None) -> np.ndarray:
    """An array shaped as ``a`` (a view of ``spare``'s when given), its contents undefined."""
    return np.empty_like(a) if spare is None else spare.rows(*a.shape, a.dtype)


def _fit(m: np.ndarray, target: np.ndarray, weight: np.ndarray | None = None,
         scratch: np.ndarray | None = None) -> np.ndarray:
    """Least squares (normal equations, a little ridge) of ``target`` on the rows of ``m``
    (k + 1, n), whose last row is the bias's ones: float coefficients, bias last. A weighted
    fit may write its weighted rows into ``scratch`` (shaped as ``m``) rather than anew."""
    step = max(1, -(-m.shape[1] // LS_ROWS))
    m = _subsample(m, step)
    t = target[::step].astype(np.float64)
    if weight is not None:
        t = t * weight[::step]
        m = np.multiply(m, weight[::step], out=scratch if step == 1 else None)
    gram = m @ m.T
    gram += np.eye(len(gram)) * (1e-6 * np.trace(gram) / len(gram) + 1e-9)
    return _solve(gram, m @ t)


def _solve(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """The normal equations' solution (NaN to 0; ``np.nan_to_num`` only when it is needed: it
    costs more than the solve of a small system)."""
    coef = np.linalg.solve(gram, rhs)
    return coef if np.isfinite(coef).all() else np.nan_to_num(coef)


def _controller():
    """threadpoolctl's controller of the process's thread pools, made on first use."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """BLAS limited to one thread while the context lasts: the encoder's fits run in it, as
    OpenBLAS's LU and matrix-vector products on two threads round differently, and the
    reweighting rounds can carry that difference into a sent weight (a file's bytes would
    then depend on ``--threads``); the decoder too, whose lanes are its threads
    (:func:`decode_tile`)."""
    return _controller().limit(limits=1, user_api="blas")


def _fixed(coef: np.ndarray, bits: int = PRED_BITS) -> tuple[int, np.ndarray, int]:
    """(fraction bits, weights of at most ``bits`` magnitude bits, int32-range bias) of float
    coefficients."""
    top = float(np.abs(coef[:-1]).max()) if len(coef) > 1 else 0.0
    frac = int(np.clip(bits - np.ceil(np.log2(top + 1e-9)), 0, 14)) if top > 0 else bits
    limit = _weight_limit(bits)
    w = np.clip(np.rint(coef[:-1] * (1 << frac)), -limit, limit).astype(np.int64)
    bias = int(np.clip(np.rint(coef[-1] * (1 << frac)), -(1 << 31) + 1, (1 << 31) - 1))
    return frac, w, bias


def _weight_limit(bits: int) -> int:
    """The largest magnitude of a prediction weight of ``bits`` magnitude bits: what its
    ``bits`` + 2 sent bits hold, within int16."""
    return min(32767, (1 << (bits + 1)) - 1)


def _weight_bits(samples: int, rev: Revision) -> int:
    """Magnitude bits of a pass's largest prediction weight. r2: about half the bits of the
    sample count (the cost of a weight's rounding error grows with the samples it predicts),
    from PRED_BITS_MIN to PRED_BITS."""
    if not rev.scaled_weights:
        return PRED_BITS
    return min(PRED_BITS, max(PRED_BITS_MIN, samples.bit_length() // 2 + 5))


def _predict(feats: np.ndarray, frac: int, w: np.ndarray, bias: int, top: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(prediction clipped to 0..top, whether the exact prediction lies below it, whether it
    lies at least a quarter away, whether it was clipped): the second and third are r2's
    phase, the last r5's ``clipped_class``. ``feats`` (k + 1, n) ends with its row of ones."""
    n = feats.shape[1]
    total = _dot(w, feats[:-1]) + bias
    rounded = (total + (1 << frac >> 1)) >> frac
    pred = np.clip(rounded, 0, top)
    gap = total - (pred << frac)
    far = np.abs(gap) >= (1 << frac >> 2) if frac >= 2 else np.zeros(n, bool)
    return pred, gap < 0, far, rounded != pred


def _flip(r: np.ndarray, below: np.ndarray, half: int) -> np.ndarray:
    """r2: the residual negated (in the folded range -half..half-1, so -half stays) where the
    exact prediction lay below the rounded one: the likelier sign is then always the same, and
    the tables learn the skew. Its own inverse."""
    return np.where(below, (half - r) % (2 * half) - half, r)


def _rooms(pred: np.ndarray, below: np.ndarray, depth: int) -> np.ndarray:
    """r5: how far the (flipped, :func:`_flip`) residual can reach above 0 from the prediction
    within the sample range (below 0 it reaches 2**depth - 1 less that)."""
    return np.where(below, pred, (1 << depth) - 1 - pred)


def _ranged(r: np.ndarray, pred: np.ndarray, below: np.ndarray, depth: int) -> np.ndarray:
    """r5: the folded, flipped residual ``r`` as u >= 0: zigzagged (0, -1, 1, -2, ...) while
    both signs are possible, then counting on along the side that still is (a prediction at
    the top: 0, -1, -2, ... get 0, 1, 2, ... where zigzag gave 0, 1, 3, 5). One to one onto
    0 .. 2**depth - 1, like zigzag, and its inverse is :func:`_unranged`. Only the samples
    beyond the nearer reach (few) take the second rule."""
    near = np.minimum(pred, (1 << depth) - 1 - pred)  # the nearer reach, whichever side
    u = zigzag(r)
    far = np.flatnonzero(np.abs(r) > near)
    r, up, near = r[far], _rooms(pred[far], below[far], depth), near[far]
    span = 1 << depth
    true = np.where(r > up, r - span, np.where(r < up - span + 1, r + span, r))  # unfolded
    u[far] = np.where(np.abs(true) <= near, zigzag(true), near + np.abs(true))
    return u


def _unranged(u: np.ndarray, pred: np.ndarray, below: np.ndarray, depth: int) -> np.ndarray:
    """r5: the inverse of :func:`_ranged`, folded into -2**(depth-1) .. 2**(depth-1) - 1 (the
    flipped residual); u beyond 2**depth - 1 (a damaged payload) folds too."""
    near = np.minimum(pred, (1 << depth) - 1 - pred)
    r = unzigzag(u)
    far = np.flatnonzero(u > 2 * near)
    u, up, near = u[far], _rooms(pred[far], below[far], depth), near[far]
    half = 1 << (depth - 1)
    true = np.where(up > near, u - near, near - u)  # up > near: the side above is the longer
    r[far] = (true + half) % (2 * half) - half
    return r


class _Ladder(NamedTuple):
    """Each sample's context class, and r4's mix: the class whose table is mixed into its own
    (``toward``: the class below or above, whichever edge it lies nearer; -1 for none) and
    that table's weight in units of 1/(2 sub_steps) (None below r4)."""

    cls: np.ndarray
    toward: np.ndarray | None = None
    weight: np.ndarray | None = None


def _classes(act: np.ndarray, shift: int, ew: np.ndarray, ebias: int, far: np.ndarray,
             tables: Tables) -> _Ladder:
    """The context class of each sample: its activity estimate's place on the ladder; r2 splits
    the quiet classes (below PHASE_CLASSES) in two by the prediction's phase. r4's ladder has
    ``sub_steps`` steps per class: the step inside the class says how much of the
    neighbouring class's table its own is mixed with (a quarter step from the class's centre:
    1/8 of the table below or above it, three quarters: 3/8)."""
    rev = tables.revision
    place = np.searchsorted(tables.edges, _estimate(act, shift, ew, ebias), side="right")
    if not rev.phase:
        return _Ladder(place)
    sub = rev.sub_steps
    cls, step = (place, None) if sub == 1 else np.divmod(place, sub)
    ids = 2 * cls + (far & (cls < PHASE_CLASSES))
    if sub == 1:
        return _Ladder(ids)
    offset = 2 * step + 1 - sub  # from the class's centre, in 1/(2 sub) of a class
    near = np.where(offset > 0, cls + 1, cls - 1)  # (an odd sub's middle step: weight 0)
    toward = np.where(near >= 0, 2 * near + (far & (near < PHASE_CLASSES)), -1)
    return _Ladder(ids, toward, np.abs(offset))


def _clipped_class(lad: _Ladder, clipped: np.ndarray, tables: Tables) -> _Ladder:
    """r5: the samples whose prediction was clipped to the sample range (their residual is
    nearly always 0: a blown highlight, a black) in a class of their own beyond the ladder,
    which picks its table and counts as the others do, and mixes with none."""
    if not tables.revision.clipped_class or not clipped.any():
        return lad
    at = np.flatnonzero(clipped)
    cls = lad.cls.copy()
    cls[at] = _class_rows(tables) - 2  # past the ladder's ids and the pair beyond them (which
    # its top class's mix points at, never used)
    if lad.toward is None:  # a ladder without steps mixes nothing
        return _Ladder(cls)
    toward, weight = lad.toward.copy(), lad.weight.copy()
    toward[at], weight[at] = -1, 0
    return _Ladder(cls, toward, weight)


class _Mixes(NamedTuple):
    """r4: the groups of a pass's samples that share one table, and each sample's group.
    ``own``, ``other``: the two classes (indices into the pass's used classes) whose tables
    mix, ``weight``: the other's weight in 1/(2 sub_steps) (0: the own table alone)."""

    own: np.ndarray
    other: np.ndarray
    weight: np.ndarray
    member: np.ndarray


def _grouped(lad: _Ladder, sub: int) -> tuple[np.ndarray, _Mixes]:
    """The classes used in a pass (ascending) and r4's groups of its samples that share one
    table: by their class and mix (:class:`_Ladder`), a class not used in the pass having no
    table to mix in (its neighbours' samples keep their own). Groups are ordered by (own
    class, other class, weight). The samples are counted once by their (class, mix) code and
    the rest is worked out on the few codes present."""
    if lad.toward is None:
        used, inverse = _unique(lad.cls)
        return used, _Mixes(np.arange(len(used)), np.arange(len(used)),
                            np.zeros(len(used), np.int64), inverse)
    ids = int(max(lad.cls.max(), lad.toward.max())) + 1
    codes, member = _unique((lad.cls * (ids + 1) + lad.toward + 1) * (sub + 1) + lad.weight)
    cls, rest = np.divmod(codes, (ids + 1) * (sub + 1))
    toward, weight = np.divmod(rest, sub + 1)
    toward -= 1
    used = np.unique(cls)
    index = np.full(ids, -1)
    index[used] = np.arange(len(used))
    own = index[cls]
    other = np.where((toward >= 0) & (weight > 0), index[np.maximum(toward, 0)], -1)
    weight = np.where(other < 0, 0, weight)
    other = np.where(other < 0, own, other)
    groups, group = np.unique((own * len(used) + other) * (sub + 1) + weight,
                              return_inverse=True)
    pair, weight = np.divmod(groups, sub + 1)
    return used, _Mixes(pair // len(used), pair % len(used), weight, group[member])


def _by_class(groups: np.ndarray, mixes: _Mixes, used: int) -> np.ndarray:
    """r4: the token counts (used, NTOK) of each used class, from its groups' (``groups``)."""
    hist = np.zeros((used, NTOK), np.int64)
    np.add.at(hist, mixes.own, groups)
    return hist


def _class_counts(hist: np.ndarray, used: np.ndarray, tables: Tables) -> np.ndarray:
    """r4: the token counts of every class of a pass (rows: class ids), for the channel's
    next pass, from those of its ``used`` classes (``hist``)."""
    counts = np.zeros((_class_rows(tables), NTOK), np.int64)
    counts[used] = hist
    return counts


def _class_rows(tables: Tables) -> int:
    """r4: how many class ids the ladder has (with the phase halves), and one beyond (r5:
    and r5's class of the clipped predictions, :func:`_clipped_class`)."""
    rev = tables.revision
    return 2 * ((len(tables.edges) + 1) // rev.sub_steps + 1 + rev.clipped_class)


def _mix_weights(mixes: _Mixes, picks: np.ndarray, used: np.ndarray, prior: np.ndarray,
                 tables: Tables, scale: int | np.ndarray) -> np.ndarray:
    """r4: each group's table as integer weights (groups, NTOK): the picked tables of its two
    classes mixed, times ``scale`` (:func:`_prior_scale`; an array (choices, 1, 1) of them
    gives (choices, groups, NTOK)), plus the two classes' counts of the
    channel's previous pass mixed alike (``prior``, rows: class ids) in the tables' units
    (2**PRECISION). Integers below 2**40 in tiles of up to 2**20 pixels: exact."""
    rev = tables.revision
    weights = _mixed(mixes, tables.bank[picks[mixes.own]], tables.bank[picks[mixes.other]], rev)
    if rev.prior_counts:
        weights = weights * scale + (_mixed_counts(mixes, used, prior, rev) << PRECISION)
    return weights


def _prior_scale(rev: Revision, choice: int) -> int:
    """r4: the picked tables' weight in samples against the previous pass's counts: with one
    choice ``prior_counts``, with more ``prior_counts`` times 2**(choice - 1)."""
    return rev.prior_counts if rev.prior_choices == 1 else rev.prior_counts << choice >> 1


def _choice_bits(rev: Revision) -> int:
    """r4: the bits of the per-pass choice of :func:`_prior_scale`."""
    return (rev.prior_choices - 1).bit_length()


def _mixed_counts(mixes: _Mixes, used: np.ndarray, prior: np.ndarray, rev: Revision
                  ) -> np.ndarray:
    """r4: each group's counts of the previous pass: its two classes' mixed as their tables."""
    return _mixed(mixes, prior[used[mixes.own]], prior[used[mixes.other]], rev)


def _mixed(mixes: _Mixes, own: np.ndarray, other: np.ndarray, rev: Revision) -> np.ndarray:
    """r4: rows (groups, NTOK) of each group's own class and its neighbour class mixed by the
    group's weight, in units of 1/(2 sub_steps) (integers stay integers)."""
    span = 2 * rev.sub_steps
    return (span - mixes.weight)[:, None] * own + mixes.weight[:, None] * other


def _prior(previous: dict[int, np.ndarray], c: int, tables: Tables) -> np.ndarray:
    """r4: the class counts of channel position ``c``'s last pass (zeros before its first)."""
    return previous.get(c, np.zeros((_class_rows(tables), NTOK), np.int64))


def _normalised(weights: np.ndarray) -> np.ndarray:
    """Integer weights (n, NTOK), each row's sum below 2**46, to frequency rows summing to
    2**PRECISION, none below 1 (floor division; the remainder to the row's largest)."""
    total = 1 << PRECISION
    freqs = weights * (total - NTOK) // weights.sum(1, keepdims=True) + 1
    freqs[np.arange(len(freqs)), freqs.argmax(1)] += total - freqs.sum(1)
    return freqs


def _choose_mixed(groups: np.ndarray, mixes: _Mixes, cost: np.ndarray, picks: np.ndarray,
                  prior_weights: np.ndarray, tables: Tables, scale: int) -> np.ndarray:
    """r4's encoder: each used class's table, knowing how it mixes: of each class's
    PICK_CANDIDATES cheapest tables alone (``cost`` (used, M): each table's bits for each
    class), the bits of each for the groups the class takes part in (``groups`` (n, NTOK):
    their token histograms; ``prior_weights``: the previous pass's counts' part of their
    weights, float; ``scale``: the tables' weight, :func:`_prior_scale`), its neighbour
    classes' tables as picked alone (``picks``), then the candidates whose bits and index bits
    sum to the fewest along the classes (:func:`_cheapest_chain`). All classes are costed at
    once: a round along the classes, each knowing the picks before it, took 1.4x the time
    (its Python calls per class) for Kodak 8.4333 bpp against 8.4334; a second round of the
    whole, the neighbours at the first's picks, 8.4330 at 1.75x (``explore.md``, "The
    planning in the encoder's process")."""
    rev = tables.revision
    span = 2 * rev.sub_steps
    m = cost.shape[1]
    first, steps = tables.side.pick_bits(m)
    # the tokens no group has add nothing to any code length: left out
    present = np.flatnonzero(groups.any(0))
    bank = tables.bank[:, present].astype(np.float64) * max(scale, 1)
    top = min(PICK_CANDIDATES, m)
    candidates = np.argpartition(cost, top - 1, 1)[:, :top] if top < m else \
        np.broadcast_to(np.arange(m), cost.shape)
    # each class's groups (ascending), its tables' weight there (times ``keep`` as the own
    # class, ``mix`` as the other, both when it mixes with itself), the other class (``peer``)
    # and its table's weight there (0 when it is the class itself)
    keep, mix = span - mixes.weight, mixes.weight
    is_own = mixes.own[None] == np.arange(len(picks))[:, None]
    is_other = mixes.other[None] == np.arange(len(picks))[:, None]
    cls, part = np.nonzero(is_own | is_other)
    mine, theirs = is_own[cls, part], is_other[cls, part]
    weight = (keep[part] * mine + mix[part] * theirs)[:, None, None]
    peer = np.where(mine, mixes.other[part], mixes.own[part])
    peer_weight = np.where(mine, mix[part] * ~theirs, keep[part])[:, None]
    counts, prior_weights = groups[part][:, present], prior_weights[part][:, present]
    starts = np.searchsorted(cls, np.arange(len(picks)))
    tried = bank[candidates][cls]  # (entries, candidates, present tokens)
    # each entry's weights: the tried tables' times ``weight``, its other class's table's (as
    # picked alone) and the previous pass's counts: integers below 2**53, exact in any order.
    # A group's code length is sum_t count_t (log2 sum(w) - log2 w_t); every bank table sums
    # to the same, so sum(w) is the same for all tables tried: only -log2 w_t tells them apart
    w = weight * tried + (peer_weight * bank[picks[peer]] + prior_weights)[:, None]
    bits = np.add.reduceat(-np.einsum("et,ekt->ek", counts, np.log2(w)), starts)
    return _cheapest_chain(bits, candidates, first, steps)


def _cheapest_chain(bits: np.ndarray, candidates: np.ndarray, first: np.ndarray,
                    steps: np.ndarray) -> np.ndarray:
    """r4's encoder: the table of each used class, of its ``candidates`` (used, K), whose
    ``bits`` (used, K) and index bits (``first``: of the first class's index, ``steps``: of
    each difference to the class before, from -M + 1) sum to the fewest: a shortest path along
    the classes (Viterbi)."""
    m = len(first)
    total = bits[0] + first[candidates[0]]
    back = []
    for i in range(1, len(candidates)):
        paths = total[:, None] + steps[m - 1 + candidates[i][None] - candidates[i - 1][:, None]]
        best = paths.argmin(0)
        back.append(best)
        total = paths[best, np.arange(len(best))] + bits[i]
    k = int(total.argmin())
    chosen = [k]
    for best in reversed(back):
        k = int(best[k])
        chosen.append(k)
    return candidates[np.arange(len(candidates)), chosen[::-1]]

def _dot(w: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """Integer weights times integer feature rows (k, n), summed per sample. The float64
    products and sums are of integers below 2**53, hence exact in any order. Not through BLAS
    (about as fast on one thread): the decoder's second process is forked, and a BLAS lock
    another thread of the caller held then would stay held in it."""
    if not len(w):
        return np.zeros(feats.shape[1], np.int64)
    return np.einsum("k,kn->n", w.astype(np.float64), feats).astype(np.int64)


class _Side:
    """Integers through the range coder with uniform byte tables."""

    def __init__(self, enc: PacketEncoder | None = None, dec: PacketDecoder | None = None):
        self.enc, self.dec = enc, dec

    def put(self, values, nbytes: int, signed: bool = True) -> None:
        v = np.asarray(values, np.int64).ravel() + (signed << (8 * nbytes - 1))
        parts = [(v >> (8 * i)) & 255 for i in range(nbytes)]
        self.enc.encode(np.stack(parts, 1).ravel(), _uniform(8))

    def get(self, count: int, nbytes: int, signed: bool = True) -> np.ndarray:
        if not count:
            return np.zeros(0, np.int64)
        parts = self.dec.decode(_uniform(8), count * nbytes).reshape(count, nbytes)
        v = sum(parts[:, i] << (8 * i) for i in range(nbytes))
        return v - (signed << (8 * nbytes - 1))

    def put_bits(self, values, bits: int) -> None:
        """Signed integers of ``bits`` bits (two's complement range), offset by 2**(bits-1):
        the low byte of each, then their high bits (r2's side information)."""
        v = np.asarray(values, np.int64) + (1 << (bits - 1))
        low = min(bits, 8)
        self.enc.encode(v & ((1 << low) - 1), _uniform(low))
        if bits > low:
            self.enc.encode(v >> low, _uniform(bits - low))

    def get_bits(self, count: int, bits: int) -> np.ndarray:
        """Inverse of :meth:`put_bits`."""
        if not count:
            return np.zeros(0, np.int64)
        low = min(bits, 8)
        v = self.dec.decode(_uniform(low), count).astype(np.int64)
        if bits > low:
            v |= self.dec.decode(_uniform(bits - low), count).astype(np.int64) << low
        return v - (1 << (bits - 1))


def _order(channels: int) -> list[int]:
    return [1, 0, 2] + list(range(3, channels)) if channels >= 3 else list(range(channels))


class _Step(NamedTuple):
    """One coding step: a pass of one channel."""

    p: Pass
    at: np.ndarray  # the flat positions of its samples
    nb: list[np.ndarray]  # their neighbours' flat positions, in the order of ``p.offsets``
    c: int  # index in the channel order
    ch: int  # channel
    kind: int  # the pass's kind, for r3's side information


class _Visit(NamedTuple):
    """The steps of one pass in a row: its channels (position in the order, channel)."""

    p: Pass
    samples: int
    kind: int  # the pass's kind, for r3's side information
    channels: list[tuple[int, int]]


def _visits(height: int, width: int, order: list[int], rev: Revision, written: bool = False
            ) -> list[_Visit]:
    """The coding steps of a tile, pass by pass, each pass's channels in ``order`` (the
    encoder's fits); ``written``: in the payload's order (the decoder's), where r5 has all the
    first channel's passes first, then the other channels' pass by pass."""
    plan = passes(height, width, rev.split_from if rev.split_finest else None, rev.split_top)
    channels = list(enumerate(order))
    sweeps = [channels]
    if written and rev.first_plane and len(order) > 1:
        sweeps = [channels[:1], channels[1:]]
    return [_Visit(p, n, coded.kind(p, n < rev.compact_below), sweep)
            for sweep in sweeps for p in plan if (n := p.samples(height, width))]


def _steps(height: int, width: int, order: list[int], rev: Revision) -> Iterator[_Step]:
    """The encoder's steps (:func:`_visits`), with their positions."""
    for p, _, kind, channels in _visits(height, width, order, rev):
        at, nb = p.flat(height, width)
        for c, ch in channels:
            yield _Step(p, at, nb, c, ch, kind)


@dataclass
class _Fitted:
    """One step of the encoder, fitted and classified, waiting to be written."""

    side: coded.StepSide  # the pass and channel's shifts and coefficients
    hist: np.ndarray  # (used classes, NTOK) token counts
    choice: int | None  # r4: the tables' weight against the previous pass's counts (or None)
    pick: np.ndarray  # the table of each used class
    tokens: list[tuple[np.ndarray, np.ndarray]]  # (frequency table, its tokens in sample order)
    # of each coder call
    raw: list[tuple[int, np.ndarray]]  # the raw values of each raw bit count above 0
    top: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # r5: (context,
    # bits) of each coded raw bit (``rawbits.top_raw``)

    def small(self) -> _Fitted:
        """The same step held in small integers (tokens below NTOK, raw values of at most 15
        bits), for one written later."""
        return replace(self, tokens=[(f, t.astype(np.uint8, copy=False)) for f, t in self.tokens],
                       raw=[(k, v.astype(np.uint16, copy=False)) for k, v in self.raw])


class _Writer:
    """Writes fitted steps into the payload in its order (:func:`_visits` with ``written``),
    holding (:meth:`_Fitted.small`) those that come before their turn."""

    def __init__(self, coder: PacketEncoder, side: _Side, tables: Tables, order: list[int]
                 ) -> None:
        """``order``: the steps' indices (in the order the encoder fits them) in the order
        they are written."""
        self.coder, self.side, self.tables, self.order = coder, side, tables, order
        self.held: dict[int, _Fitted] = {}
        self.next = 0  # how many are written

    def put(self, index: int, fitted: _Fitted) -> None:
        """Step ``index``, fitted: written now if it is its turn (and any held ones it lets
        through), else held."""
        if self.order[self.next] != index:
            self.held[index] = fitted.small()
            return
        while True:
            _write_step(self.coder, self.side, fitted, self.tables)
            self.next += 1
            if self.next == len(self.order) or self.order[self.next] not in self.held:
                return
            fitted = self.held.pop(self.order[self.next])


def _written(visits: list[_Visit], channels: int, rev: Revision) -> list[int]:
    """The encoder's steps (visit j's channel position c is step j * channels + c, the order
    the encoder fits them in) in the order they are written: that order, but r5 writes the
    first channel's steps first (:func:`_visits`)."""
    steps = np.arange(len(visits) * channels).reshape(-1, channels)
    if rev.first_plane and channels > 1:
        return steps[:, 0].tolist() + steps[:, 1:].ravel().tolist()
    return steps.ravel().tolist()


def encode_tile(tile: np.ndarray, depth: int, tables: Tables, threads: int | None = None
                ) -> bytes:
    """Code a (H, W, C) tile of ``depth``-bit samples (uint8 or uint16) into one payload.

    A step needs only its own channel's previous pass and the earlier channels of its pass
    (its features from its own channel only the former), so with ``threads`` > 1 (None: as
    many as BLAS may use) and several channels, two workers fit the steps, the channels as far
    ahead of one another as that allows. On Linux, with a pass of HALVES_FROM samples or more,
    the workers are two processes: a second process, forked from the process's only Python
    thread and kept from tile to tile (:func:`partner.kept`), fits every odd pass, this one the
    even passes, each step once its channel's step of the pass before is done
    (:func:`_fit_in_two`); elsewhere (another thread holds the second process, or none can be
    forked) they are two threads of this process (:func:`_in_order`). This process writes the
    steps in the payload's order (:class:`_Writer`; r5 writes the first channel's steps first:
    what the later channels read of it beyond their pass's steps are its samples, which the
    encoder has, so only the writing waits). BLAS runs on one thread throughout, so the bytes
    are the same for any ``threads``."""
    rev = tables.revision
    height, width, channels = tile.shape
    visits = _visits(height, width, _order(channels), rev)
    lanes = _lanes(channels, threads)  # before BLAS is held at one thread
    two = lanes > 1 and any(v.samples >= HALVES_FROM for v in visits)
    coder = PacketEncoder()
    writer = _Writer(coder, _Side(enc=coder), tables, _written(visits, channels, rev))
    previous: dict[int, np.ndarray] = {}  # r4: each channel's class counts in its last pass

    def write(index: int, step: _Classified | _Sorted) -> None:
        if isinstance(step, _Classified):
            step = _sorted(step, tables)
        writer.put(index, _finished(step, tables, previous))

    with _one_blas_thread(), (partner.kept(tables, _arena(tile.shape, tables), _second) if two
                              else contextlib.nullcontext()) as kept:
        make = np.zeros if kept is None else _Carve(kept[1], zeroed=True)
        mine = _Tile(*_planes(make, tile.shape, rev), tile.shape, depth, tables)
        mine.x.reshape(channels, height, width)[:] = tile.transpose(2, 0, 1)
        if kept is not None:
            other = kept[0]
            other.ask(_BEGIN, partner.pack([np.array([*tile.shape, depth], np.int64)]))
            other.wait()
            _fit_in_two(mine, other, write)
            return coder.finish()

        def fit(step: _Step, prepared: tuple[_Own, _Spare]) -> _Fitted:
            return _planned(mine.classify(step, prepared), tables, previous)

        steps = _steps(height, width, mine.order, rev)
        for index, fitted in enumerate(_in_order(steps, fit, lanes, mine.prepare)):
            writer.put(index, fitted)
    return coder.finish()


class _Tile:
    """A tile being fitted, as a process fitting its steps holds it: its planes of samples,
    residuals and r3's pair misses (``x``, ``res``, ``err``), what each pass's channels leave
    for its later ones (``known``), the feature rows of the steps no longer in flight."""

    def __init__(self, x: np.ndarray, res: np.ndarray, err: np.ndarray | None,
                 shape: tuple[int, int, int], depth: int, tables: Tables) -> None:
        self.x, self.res, self.err = x, res, err
        self.height, self.width, channels = shape
        self.depth, self.tables = depth, tables
        self.order = _order(channels)
        self.visits = _visits(self.height, self.width, self.order, tables.revision)
        self.known: dict[Pass, dict[int, _Known]] = {}
        self.spares: queue.SimpleQueue = queue.SimpleQueue()
        self.found: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {}  # the positions of
        # the visit being fitted (:meth:`classified`)

    def prepare(self, s: _Step) -> tuple[_Own, _Spare]:
        """A step's features from its own channel (:func:`_own_features`), in reused rows."""
        try:
            spare = self.spares.get_nowait()
        except queue.Empty:
            spare = _Spare()
        return _own_features(self.x, self.res, s.c, self.order, s.at, s.nb,
                             self.tables.revision, s.p, self.err, self.depth,
                             self.known.setdefault(s.p, {}), spare, self.width), spare

    def classify(self, step: _Step, prepared: tuple[_Own, _Spare] | None = None
                 ) -> _Classified:
        """A step fitted and classified (:func:`_fit_step`), its residuals recorded."""
        own, spare = prepared or self.prepare(step)
        classified = _fit_step(self.x, self.res, self.err, self.known, step, self.order,
                               self.depth, self.tables, own, spare)
        self.spares.put(spare)
        return classified

    def classified(self, index: int) -> _Classified:
        """Step ``index`` (visit ``index // channels``, channel position ``index % channels``)
        fitted and classified, the positions of its visit found once."""
        j, c = divmod(index, len(self.order))
        p, _, kind, steps = self.visits[j]
        if j not in self.found:
            self.found.clear()
            self.found[j] = p.flat(self.height, self.width)
        return self.classify(_Step(p, *self.found[j], c, steps[c][1], kind))


_BEGIN, _BEGIN_DECODE = -2, -3  # the kept second process's tasks that start a tile
_SECOND: list[_Tile | _DecodeTile] = []  # the tile the kept second process works on


def _planes(make: Callable[..., np.ndarray], shape: tuple[int, int, int], rev: Revision
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The encoder's planes of a tile: samples (float64, (C, H*W), to be filled), residuals
    (float64, (C, H*W)) and r3's pair misses (float32, (C, 2, H*W, 2), or None), from
    ``make`` (:class:`_Carve`: the samples not zeroed)."""
    height, width, channels = shape
    return getattr(make, "scratch", make)((channels, height * width)), \
        make((channels, height * width)), \
        make((channels, 2, height * width, 2), np.float32) if rev.pair_errors else None


def _arena(shape: tuple[int, int, int], tables: Tables) -> int:
    """The bytes of the arena shared with the kept second process for a tile of ``shape``:
    enough to encode it or decode it (so that neither forks it anew for the other)."""
    planes = _Carve(None)
    _planes(planes, shape, tables.revision)
    return max(planes.size, _DecodeTile(shape, 8, tables, _Carve(None)).size)


def _second(tables: Tables, arena, task: int, data: bytes) -> bytes | None:
    """The kept second process's work (:func:`partner.kept`, forked with ``tables``):
    :data:`_BEGIN` and :data:`_BEGIN_DECODE` start a tile to encode or decode (``data``: its
    shape and depth; its arrays carved from the arena, :class:`_Carve`, as the asking process
    carved them); any other task is the tile's (:meth:`_Tile.classified`, packed;
    :meth:`_DecodeTile.task`)."""
    if task in (_BEGIN, _BEGIN_DECODE):
        if not _SECOND:  # its first tile: BLAS on one thread for good, as in the encoder's
            _one_blas_thread()  # fits (it may have been forked while the decoder ran on more)
        height, width, channels, depth = partner.unpack(data)[0].tolist()
        shape = (height, width, channels)
        _SECOND[:] = [_Tile(*_planes(_Carve(arena), shape, tables.revision), shape, depth,
                            tables) if task == _BEGIN
                      else _DecodeTile(shape, depth, tables, _Carve(arena))]
        return None
    if isinstance(_SECOND[0], _Tile):
        return _sorted(_SECOND[0].classified(task), tables).packed()
    return _SECOND[0].task(task, data)


def _fit_in_two(mine: _Tile, other: partner.Partner,
                done: Callable[[int, _Classified | _Sorted], None]) -> None:
    """Fit and classify the steps of tile ``mine`` in two processes, passing each to ``done``
    (its index, the visit times the channels plus its channel position) here, each channel's
    in pass order. The second process (``other``, sent the tile) fits the odd visits, this
    one the even ones, each step once its channel's step of the visit before is done (the
    earlier channels of its visit are done before it in its own process). What the steps read
    of one another's is in memory shared with it (the residual and pair-miss planes); each
    process keeps what a visit's channels leave for its later ones (``known``). The second
    process answers its steps with their tokens sorted for coding (:func:`_sorted`, which
    needs no other step); the caller plans the tables of every step (:func:`_finished`, with
    r4's class counts of each channel's last pass) and writes it. The odd visits cost more
    (their halves see the even halves' samples); planned wholly in the second process (the
    counts crossing with the tasks and answers), its steps took longer in all (``explore.md``,
    "A kept second process"); sorted there, the encode took 3.5% less ("The planning in the
    encoder's process")."""
    channels, visits = len(mine.order), mine.visits
    for j in range(0, len(visits), 2):
        before, own = [], []  # the second process's steps of the visit before, this one's
        for c in range(channels):
            index = j * channels + c
            if j:
                before.append(other.wait())
            own.append(mine.classified(index))
            if j + 1 < len(visits):  # asked at once, planned and written later
                other.ask(index + channels)
        for c, answer in enumerate(before):
            done((j - 1) * channels + c, _Sorted.unpacked(answer))
        for c, step in enumerate(own):
            done(j * channels + c, step)
    if len(visits) % 2 == 0:  # the last visit is the second process's
        for c in range(channels):
            done((len(visits) - 1) * channels + c, _Sorted.unpacked(other.wait()))


class _Classified(NamedTuple):
    """One step of the encoder, fitted and classified (:func:`_fit_step`), before its tokens
    are sorted for coding (:func:`_sorted`) and its tables planned (:func:`_finished`)."""

    side: coded.StepSide  # the pass and channel's shifts and coefficients
    lad: _Ladder  # each sample's class (and r4's mix)
    u: np.ndarray  # each sample's residual as a non-negative integer (zigzag, r5 ranged)


class _Sorted(NamedTuple):
    """One step of the encoder with its tokens and raw bits sorted for coding: all of its
    planning that needs no other step (:func:`_sorted`), which the encoder's second process
    does for its own steps before answering (:meth:`packed`); the tables are planned from it
    with the previous pass's counts (:func:`_finished`)."""

    side: coded.StepSide
    used: np.ndarray  # the used classes' ids (r4 on; before r4, empty)
    mixes: _Mixes | None  # r4: the groups' classes and weights (without each sample's group)
    counts: np.ndarray  # token counts (groups, NTOK): r4's groups, or (before r4) the classes
    members: list[np.ndarray]  # the tokens of each group (class), in sample order
    top: list[tuple[np.ndarray, np.ndarray]]  # r5: (context, bits) of each coded raw bit
    raw: list[tuple[int, np.ndarray]]  # the raw values of each raw bit count above 0

    def packed(self) -> bytes:
        """The step as bytes (:func:`partner.pack`), tokens in one byte, raw values and bits in
        two (below 2**16) and one: what the encoder's second process answers."""
        s, mixes = self.side, self.mixes
        head = [s.kind, s.c, s.depth, s.bits, s.frac, s.bias, s.shift, s.ebias,
                mixes is not None, len(self.top)]
        groups = [] if mixes is None else [mixes.own, mixes.other, mixes.weight]
        sizes = np.array([len(t) for t in self.members], np.int64)
        top = [a for context, bits in self.top for a in (context.astype(np.int32),
                                                         bits.astype(np.uint8))]
        raw = [np.array([k for k, _ in self.raw], np.int64),
               np.array([len(v) for _, v in self.raw], np.int64),
               np.concatenate([v for _, v in self.raw] or [np.zeros(0)]).astype(np.uint16)]
        return partner.pack([np.array(head, np.int64), s.w, s.ew, s.coarse, self.used,
                             self.counts, sizes,
                             np.concatenate(self.members or [np.zeros(0)]).astype(np.uint8),
                             *raw, *top, *groups])

    @classmethod
    def unpacked(cls, data: bytes) -> _Sorted:
        """The step :meth:`packed` made ``data`` of."""
        head, w, ew, coarse, used, counts, sizes, tok, bits_of, lengths, raw, *rest = \
            partner.unpack(data)
        kind, c, depth, bits, frac, bias, shift, ebias, mixed, top = head.tolist()
        cut = np.cumsum(sizes)[:-1]
        top_bits = [(rest[2 * j], rest[2 * j + 1]) for j in range(top)]
        mixes = _Mixes(*rest[2 * top:], np.zeros(0, np.int64)) if mixed else None
        return cls(coded.StepSide(kind, c, depth, bits, frac, w, bias, shift, ew, ebias, coarse),
                   used, mixes, counts, np.split(tok, cut),
                   top_bits, list(zip(bits_of.tolist(), np.split(raw, np.cumsum(lengths)[:-1]))))


def _fit_step(x: np.ndarray, res: np.ndarray, err: np.ndarray | None,
              known: dict[Pass, dict[int, _Known]], step: _Step, order: list[int], depth: int,
              tables: Tables, own: _Own, spare: _Spare) -> _Classified:
    """Fit one step's predictor and activity estimate, and record its residuals in ``res``
    (and r3's pair misses in ``err``). ``own``: its features from its own channel
    (:func:`_own_features`, made beforehand, its rows in ``spare``, which the fits use too);
    ``known``: what each channel of each pass leaves for the later channels of the pass
    (dropped after its last)."""
    p, at, nb, c, ch, kind = step
    rev = tables.revision
    half = 1 << (depth - 1)
    feats, act = _colour_features(x, res, order[:c], at, own, known[p])
    if c == len(order) - 1:
        del known[p]
    target = x[ch, at].astype(np.int64)
    bits = _weight_bits(len(at), rev)
    rough = np.float32 if depth <= 8 else np.float64
    frac, w, bias = _fixed(_fit_robust(feats, target, _row_weights(act, rev, depth), rough=rough,
                                       spare=spare), bits)
    coarse = np.zeros(len(w) + 1, np.int64)
    if rev.coded_side:  # r3: each coefficient only as precise as its feature needs
        coarse = coded.coarseness(feats)
        w = coded.coarsen(w, coarse[:-1], _weight_limit(bits))
        bias = int(coded.coarsen(np.array([bias]), coarse[-1:], (1 << 31) - 1)[0])
    pred, below, far, clipped = _predict(feats, frac, w, bias, 2 * half - 1)
    r = (target - pred + half) % (2 * half) - half
    res[ch, at] = r
    if err is not None and len(nb) >= 4:
        _record_pair_errors(err, ch, at, target, feats[:4], p)
    if rev.phase:
        r = _flip(r, below, half)
    u = _ranged(r, pred, below, depth) if rev.ranged else zigzag(r)
    shift, ew, ebias = _fixed_est(_fit_scale(act, np.abs(r), rough if rev.activity_rows else None,
                                            spare), rev)
    lad = _clipped_class(_classes(act, shift, ew, ebias, far, tables), clipped, tables)
    return _Classified(coded.StepSide(kind, c, depth, bits, frac, w, bias, shift, ew, ebias,
                                      coarse), lad, u)


def _planned(step: _Classified, tables: Tables, previous: dict[int, np.ndarray]) -> _Fitted:
    """A classified step's tokens, its tables and raw bits, ready to be written
    (:func:`_sorted`, then :func:`_finished`)."""
    return _finished(_sorted(step, tables), tables, previous)


def _sorted(step: _Classified, tables: Tables) -> _Sorted:
    """A classified step's tokens and raw bits sorted for coding (:class:`_Sorted`): its tokens
    by r4's groups (:func:`_grouped`; before r4, by class) and their counts there, r5's coded
    raw bits (``rawbits.top_raw``), the other raw bits by their count."""
    lad = step.lad
    tok, nraw, raw = tokens(step.u)
    if tables.revision.mixed_tables:
        used, mixes = _grouped(lad, tables.revision.sub_steps)
        _, members = _groups(mixes.member, tok)
        counts = np.bincount(mixes.member * NTOK + tok,
                             minlength=len(members) * NTOK).reshape(-1, NTOK)
        mixes = mixes._replace(member=np.zeros(0, np.int64))
    else:
        used, mixes = np.zeros(0, np.int64), None
        _, members = _groups(lad.cls, tok)
        counts = np.stack([np.bincount(t, minlength=NTOK) for t in members])
    top, nraw, raw = top_raw(lad.cls, tok, nraw, raw, tables.revision)
    bits_of, by_bits = _groups(nraw, raw)
    return _Sorted(step.side, used, mixes, counts, members, top,
                   [(int(k), v) for k, v in zip(bits_of, by_bits) if k > 0])


def _finished(step: _Sorted, tables: Tables, previous: dict[int, np.ndarray]) -> _Fitted:
    """A sorted step's tables planned (:func:`_plan`), ready to be written. ``previous``: r4's
    class counts of each channel position's last pass, read and replaced here (each channel's
    steps are planned in pass order)."""
    hist, choice, pick, freqs = _plan(step, tables, previous)
    return _Fitted(step.side, hist, choice, pick, list(zip(freqs, step.members)), step.raw,
                   step.top)


def raw_rows(tables: Tables) -> int:
    """r5: the classes of ``Tables.raw`` (the ladder's, without the phase halves)."""
    return _class_rows(tables) // 2


def _plan(step: _Sorted, tables: Tables, previous: dict[int, np.ndarray]
          ) -> tuple[np.ndarray, int | None, np.ndarray, list[np.ndarray]]:
    """How a step's tokens are coded: (the token counts of each used class, r4's tables' weight
    choice (None before r4), each used class's table, the frequency table of each coder call).
    Before r4, one call per used class with its bank table; r4 (:func:`_grouped`): one call per
    group of samples sharing a mixed table, the tables picked knowing the mix, and
    ``previous[c]`` (the class counts of channel position ``c``'s last pass) replaced by
    this step's."""
    rev, c, mixes, used, groups = tables.revision, step.side.c, step.mixes, step.used, \
        step.counts
    if mixes is None:
        pick = _choose(groups, tables)
        return groups, None, pick, list(tables.bank[pick])
    hist = _by_class(groups, mixes, len(used))
    cost = hist @ tables.bits.T  # (used, M) bits
    prior = _prior(previous, c, tables)
    counts = _mixed_counts(mixes, used, prior, rev) if rev.prior_counts else \
        np.zeros_like(groups)
    counts = counts.astype(np.float64) * (1 << PRECISION)
    alone = coded.choose_picks(cost, tables.side)  # each class's own cheapest table
    choice = 1  # prior_counts itself (:func:`_prior_scale`)
    if rev.prior_choices > 1:
        choice = _best_scale(groups, mixes, alone, used, prior, tables)
    pick = _choose_mixed(groups, mixes, cost, alone, counts, tables, _prior_scale(rev, choice))
    freqs = _normalised(_mix_weights(mixes, pick, used, prior, tables, _prior_scale(rev, choice)))
    previous[c] = _class_counts(hist, used, tables)
    return hist, choice if rev.prior_choices > 1 else None, pick, list(freqs)


def _groups(key: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The distinct keys (non-negative integers), ascending, and the values of each, in their
    order: one stable sort (a radix sort, for keys below 2**16 as the classes and the raw bit
    counts are), not one pass over all values per key."""
    if key.max(initial=0) < 1 << 16:
        key = key.astype(np.uint16)
    order = np.argsort(key, kind="stable")
    key, values = key[order], values[order]
    starts = [0, *(np.flatnonzero(key[1:] != key[:-1]) + 1).tolist(), len(key)]
    return key[starts[:-1]], [values[a:b] for a, b in zip(starts[:-1], starts[1:])]


def _choose(hist: np.ndarray, tables: Tables) -> np.ndarray:
    """The table of each used class, from its token counts ``hist`` (used, NTOK)."""
    cost = hist @ tables.bits.T  # (used, M) bits
    if tables.revision.coded_side:
        return coded.choose_picks(cost, tables.side)
    return cost.argmin(1)


def _write_step(coder: PacketEncoder, side: _Side, f: _Fitted, tables: Tables) -> None:
    """A fitted step's side information, its used classes' tables (r4: after its tables'
    weight), then its tokens in one coder call per table, and the raw bits (everything else
    is done in :func:`_fit_step` and :func:`_planned`, on the fitting threads, so that this
    thread lags little behind)."""
    if tables.collect_side is not None:
        tables.collect_side.append(f.side)
    if tables.collect is not None:
        tables.collect.append(f.hist)
    rev = tables.revision
    if rev.coded_side:
        coded.put_step(coder, tables.side, f.side)
    else:
        _put_uniform(side, rev, f.side)
    if f.choice is not None:
        coder.encode(np.array([f.choice]), _uniform(_choice_bits(rev)))
    if rev.coded_side:
        coded.put_picks(coder, tables.side, f.pick)
    else:
        side.put(f.pick, 1, signed=False)
    for table, t in f.tokens:
        coder.encode(t, table)
    for j, (context, bits) in enumerate(f.top):
        coder.encode(bits, bit_tables(tables.raw, j, context))
        if tables.collect_raw is not None:
            tables.collect_raw.append((j, context, bits))
    for k, v in f.raw:
        coder.encode(v, _uniform(k))


def _threads(threads: int | None) -> int:
    """``threads``, or if None BLAS's current limit (what ``--threads`` sets)."""
    if threads is None:
        return max((info["num_threads"] for info in _controller().select(user_api="blas").info()),
                   default=1)
    return threads


def _lanes(channels: int, threads: int | None) -> int:
    """How many threads fit the steps: two when there are several channels and ``threads``
    (None: BLAS's current limit) allows it."""
    return 2 if _threads(threads) > 1 and channels > 1 else 1


_TAKEN = Future()  # a prepared task's place in ``_in_order`` once its fit has its result
_TAKEN.set_result(None)


def _in_order(steps: Iterable[_Step], fit, lanes: int, prepare=None) -> Iterator:
    """``fit(step)`` of every step (with ``prepare``: ``fit(step, prepare(step))``), yielded in
    order. With two lanes, two threads each take the earliest task whose needs are done: a
    step's fit needs the earlier channels of its pass (the steps just before it: their
    residuals at its samples, their neighbour values and nonlinear features) and its own
    channel's previous pass (its residuals and pair misses at the neighbours; the passes before
    that come first through it); the input samples are all known to the encoder. So the
    channels run as far ahead of one another as their inputs allow (two fixed lanes, the last
    channel on its own thread, measured about 5% slower: its steps are the longest). With
    ``prepare`` (the step's features from its own channel), that part is a task of its own
    needing only the channel's previous pass (and the first channel's preparation of the
    pass), so a thread makes it while the earlier channels of the pass are still being fitted
    (the fit then needs it too). This thread lists the steps
    as ``steps`` makes them, while the first are fitted, then yields the results. A task's
    error reaches the caller and stops both threads."""
    if lanes == 1:
        for step in steps:
            yield fit(step) if prepare is None else fit(step, prepare(step))
        return
    per = 1 if prepare is None else 2  # tasks per step: (prepare,) fit
    listed: list[_Step] = []
    needs: list[list[int]] = []
    done: list[Future] = []
    waiting: list[int] = []  # listed, not yet taken, in order
    more = True  # steps may still be listed
    changed = threading.Condition()

    def ready() -> int | None:
        """The earliest waiting task whose needs are done (taken off the list), or None."""
        for k in waiting:
            if all(done[j].done() for j in needs[k]):
                waiting.remove(k)
                return k
        return None

    def stop() -> None:
        """No further step is listed or taken (call holding ``changed``)."""
        nonlocal more
        more = False
        waiting.clear()
        changed.notify_all()

    def run(task: int):
        """Task ``task``: a step's fit, or (with ``prepare``) the preparation of its fit."""
        step = listed[task // per]
        if prepare is None:
            return fit(step)
        if task % 2 == 0:
            return prepare(step)
        prepared = done[task - 1].result()
        done[task - 1] = _TAKEN  # let the prepared rows go once the fit has them
        return fit(step, prepared)

    def work() -> None:
        while True:
            with changed:
                k = ready()
                while k is None and (waiting or more):
                    changed.wait()
                    k = ready()
                if k is None:  # all taken, or stopped
                    return
            try:
                result = run(k)
            except BaseException as error:  # every task not done fails with it
                with changed:
                    for future in done:
                        if not future.done():
                            future.set_exception(error)
                    stop()
                return
            with changed:
                if not done[k].done():
                    done[k].set_result(result)
                changed.notify_all()

    with ThreadPoolExecutor(2) as pool:
        for _ in range(2):
            pool.submit(work)
        try:
            last: dict[int, int] = {}  # each channel's last step listed
            for step in steps:
                with changed:
                    if not more:  # a step failed
                        break
                    k = len(listed)
                    listed.append(step)
                    own = [per * last[step.c] + per - 1] if step.c in last else []
                    earlier = [per * j + per - 1 for j in range(k - step.c, k)]
                    if prepare is not None:  # r5's later channels read what the first
                        # channel's preparation of their pass left (:func:`_surround`)
                        needs.append(own + ([per * (k - step.c)] if step.c else []))
                        own = [per * k]
                    needs.append(earlier + own)
                    for _ in range(per):
                        waiting.append(len(done))
                        done.append(Future())
                    last[step.c] = k
                    changed.notify_all()
            with changed:
                more = False
                changed.notify_all()
            for future in done[per - 1::per]:
                yield future.result()
        finally:  # the caller stopped early (or failed): no further steps start
            with changed:
                stop()


def _put_uniform(side: _Side, rev: Revision, s: coded.StepSide) -> None:
    """r1's and r2's side information: a pass and channel's shifts and coefficients in
    uniform bits."""
    side.put([s.frac], 1)
    if rev.scaled_weights:
        side.put_bits(s.w, s.bits + 2)
    else:
        side.put(s.w, 2)
    side.put([s.bias], 4)
    if rev.scaled_weights:
        side.put([s.shift], 1, signed=False)
        side.put_bits(s.ew, EST_SIGNIFICANT + 2)
    else:
        side.put(s.ew, 2)
    side.put([s.ebias], 4)


def _fixed_est(coef: np.ndarray, rev: Revision) -> tuple[int, np.ndarray, int]:
    """(shift, weights, bias) of the activity estimate, in units of 2**-EST_FRAC (the estimate
    is compared with ``edges``, which are in the same units). r1: int16 weights, shift 0; r2:
    weights of at most EST_SIGNIFICANT magnitude bits, scaled by 2**shift (they only sort
    samples into classes: more precision measured no gain)."""
    scaled = coef[:-1] * (1 << EST_FRAC)
    bias = int(np.clip(np.rint(coef[-1] * (1 << EST_FRAC)), -(1 << 31) + 1, (1 << 31) - 1))
    if not rev.scaled_weights:
        return 0, np.clip(np.rint(scaled), -32767, 32767).astype(np.int64), bias
    top = float(np.abs(scaled).max()) if len(scaled) else 0.0
    shift = int(np.clip(np.ceil(np.log2(top + 1)) - EST_SIGNIFICANT, 0, EST_SHIFT_MAX))
    limit = 1 << EST_SIGNIFICANT
    return shift, np.clip(np.rint(scaled / (1 << shift)), -limit, limit).astype(np.int64), bias


def _estimate(act: np.ndarray, shift: int, w: np.ndarray, bias: int) -> np.ndarray:
    """The activity estimate (w . features) * 2**shift + bias, in units of 2**-EST_FRAC."""
    return (_dot(w, act[:-1]) << shift) + bias


def _best_scale(groups: np.ndarray, mixes: _Mixes, pick: np.ndarray, used: np.ndarray,
                prior: np.ndarray, tables: Tables) -> int:
    """r4's encoder: which of the tables' weights (:func:`_prior_scale`) codes a pass's groups
    (``groups``: their token histograms) in the fewest bits with the tables ``pick``, all
    choices' weights (:func:`_mix_weights`) at once."""
    rev = tables.revision
    scales = np.array([_prior_scale(rev, choice) for choice in range(rev.prior_choices)])
    w = _mix_weights(mixes, pick, used, prior, tables, scales[:, None, None]).astype(np.float64)
    bits = np.einsum("gt,...gt->...", groups, np.log2(w.sum(-1, keepdims=True)) - np.log2(w))
    return int(np.argmin(bits))


def _unique(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` of small non-negative integers, by counting
    (linear in the samples, where ``np.unique`` sorts them)."""
    counts = np.bincount(values)
    present = np.flatnonzero(counts)
    index = np.zeros(len(counts), np.int64)
    index[present] = np.arange(len(present))
    return present, index[values]


def decode_tile(payload: bytes, shape: tuple[int, int, int], depth: int, tables: Tables,
                threads: int | None = None) -> np.ndarray:
    """Decode a payload of :func:`encode_tile` into (H, W, C) samples.

    With ``threads`` > 1 (None: as many as BLAS may use) on Linux, the second process kept
    from tile to tile (:func:`partner.kept`: forked from the process's only Python thread)
    works the second half of each big step's samples (features, predictions, classes, and
    once this process has range-decoded the step's tokens, samples) while this one works the
    first, and finds each pass's positions ahead (:func:`_decode`); the samples are the same
    for any ``threads``."""
    return _decode(payload, shape, depth, tables, _threads(threads) > 1)


def _decode(payload: bytes, shape: tuple[int, int, int], depth: int, tables: Tables,
            two: bool) -> np.ndarray:
    """:func:`decode_tile`'s work; ``two``: with the kept second process
    (:func:`partner.kept`), which makes each pass's positions while this process decodes the
    pass before, and the second half of the samples of each step of HALVES_FROM samples or
    more: their features, predictions and classes, and once this process has decoded the
    step's tokens, their samples. The tile's planes of samples, residuals and pair misses and
    the buffers of the features, positions and per-sample values are in the memory shared
    with it (:class:`_DecodeTile`): a step's features read only steps decoded before it, and
    the work of either half is per sample. Each process keeps its half of what a step's
    features leave for the later steps (``known``, r5's ``kept``)."""
    two = two and any(v.samples >= HALVES_FROM
                      for v in _visits(*shape[:2], _order(shape[2]), tables.revision))
    with (partner.kept(tables, _arena(shape, tables), _second) if two
          else contextlib.nullcontext()) as kept:
        other, make = None, np.zeros
        if kept is not None:
            other, make = kept[0], _Carve(kept[1], zeroed=True)
            other.ask(_BEGIN_DECODE, partner.pack([np.array([*shape, depth], np.int64)]))
            other.wait()
        t = _DecodeTile(shape, depth, tables, make, PacketDecoder(payload))
        d = t.d
        if other is not None:
            other.ask(0)
            other.wait()
        for index, (j, _, _) in enumerate(t.steps):
            if other is None and (index == 0 or t.steps[index - 1][0] != j):
                t.positions(j, find=True)
            s = t.step(index)
            n = len(s.at)
            mine = slice(0, n // 2 if other is not None and n >= HALVES_FROM else n)
            halves = mine.stop < n  # else all here
            if halves:
                other.ask(4 * index + 1)
            t.features(s, mine)
            if halves:
                other.wait()
            feats, act = t.made()
            side = d.side(s, feats, act)
            if halves:
                other.ask(4 * index + 2, side.packed())
            d.classes(s, feats, act, side, mine)
            if halves:
                other.wait()
            ahead = other is not None and j + 1 < len(t.visits) and (
                index + 1 == len(t.steps) or t.steps[index + 1][0] != j)
            if ahead:  # the next visit's positions, while this step's tokens are decoded
                other.ask(4 * (j + 1))
            d.tokens(s)
            if ahead:
                other.wait()
            if halves:
                other.ask(4 * index + 3)
            d.samples(s, feats, mine)
            if halves:
                other.wait()
        height, width, channels = shape
        return d.x.astype(np.int64).reshape(channels, height, width).transpose(1, 2, 0)


class _Carve:
    """Arrays carved one after the other from an arena (the memory shared with the kept
    second process), each at a 64-byte boundary; with no arena, only their size is counted
    (:attr:`size`). The two processes carve a tile's arrays in the same order, so they get the
    same places. ``zeroed``: each array is zeroed as it is carved (the one process that makes
    the tile's arrays does it), but those of :meth:`scratch`."""

    def __init__(self, arena, zeroed: bool = False) -> None:
        self.arena, self.zeroed, self.size = arena, zeroed, 0

    def __call__(self, shape: tuple[int, ...] | int, dtype: type = np.float64,
                 zero: bool = True) -> np.ndarray:
        count, kind = int(np.prod(shape)), np.dtype(dtype)
        at, self.size = self.size, -(-(self.size + count * kind.itemsize) // 64) * 64
        if self.arena is None:
            return np.empty(0, kind)
        out = np.frombuffer(self.arena, kind, count, at).reshape(shape)
        if self.zeroed and zero:
            out.fill(0)
        return out

    def scratch(self, shape: tuple[int, ...] | int, dtype: type = np.float64) -> np.ndarray:
        """An array whose contents are written before they are read (the decoder's feature
        rows and positions: zeroing them cost 60 MB of writes per Kodak tile)."""
        return self(shape, dtype, zero=False)


class _DecodeTile:
    """A tile being decoded, as a process decoding its steps holds it: its visits and steps,
    the buffers of its steps' features (``spare``, ``rows``) and of two passes' positions
    (``slots``), what each pass's channels leave for the later ones, and the rest of the
    decoder (``d``, :class:`_Decoding`). ``make`` gives its arrays (zeros, or carved from the
    arena shared with the kept second process: :class:`_Carve`, whose ``size`` is then what
    the tile needs); ``coder``: the payload's (None in the second process)."""

    def __init__(self, shape: tuple[int, int, int], depth: int, tables: Tables,
                 make: Callable[..., np.ndarray], coder: PacketDecoder | None = None) -> None:
        rev = self.rev = tables.revision
        self.height, self.width, channels = shape
        self.depth = depth
        self.order = order = _order(channels)
        visits = self.visits = _visits(self.height, self.width, order, rev, written=True)
        self.d = _Decoding(coder, shape, depth, tables, make, max(v.samples for v in visits))
        # the feature rows of the biggest step (the last channel's, every feature), and two
        # passes' positions
        most = [(v.samples, _layout(rev, v.p, len(order) - 1, len(v.p.offsets), False,
                                    self.d.err is not None)) for v in visits]
        scratch = getattr(make, "scratch", make)
        self.spare = _Spare(
            _Columns(scratch(max(n * (f.rows + 1) for n, f in most) * 8, np.uint8)),
            _Columns(scratch(max(n * (f.act_rows + 1) for n, f in most) * 8, np.uint8)))
        self.rows = [0, 0]  # how many of them the step being decoded has
        self.slots = scratch((2, max(v.samples * (len(v.p.offsets) + 1) for v in visits)),
                             np.int64)
        self.size = getattr(make, "size", 0)
        self.steps = [(j, c, ch) for j, v in enumerate(visits) for c, ch in v.channels]
        # what each pass's channels leave for the later ones (dropped after its last)
        self.known: dict[Pass, dict[int, _Known]] = {}
        self.whole = rev.first_plane and channels > 1
        self.kept: dict[Pass, _Kept] = {}  # r5: what the first channel's steps leave for
        # the later channels

    def positions(self, j: int, find: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
        """Visit ``j``'s positions in its slot; ``find``: computed there first."""
        p, n = self.visits[j].p, self.visits[j].samples
        out = self.slots[j % 2, :n * (len(p.offsets) + 1)].reshape(-1, n)
        return p.flat(self.height, self.width, out) if find else (out[0], list(out[1:]))

    def step(self, index: int) -> _Step:
        j, c, ch = self.steps[index]
        return _Step(self.visits[j].p, *self.positions(j), c, ch, self.visits[j].kind)

    def features(self, s: _Step, part: slice) -> None:
        """Make ``part`` of the columns of a step's prediction and activity features into
        ``spare`` (:func:`_own_features`, :func:`_colour_features`). r5: the first channel's
        passes come first, made as if it were the only channel; what they leave for the later
        channels is kept in small types (:func:`_kept`) and restored for the later channels'
        first step of the pass (:func:`_restored`)."""
        x, order, whole = self.d.x, self.order, self.whole
        for columns in self.spare.features, self.spare.activity:
            columns.total, columns.start = len(s.at), part.start
        mine = self.known.setdefault(s.p, {})
        if whole and s.c == 1 and s.p in self.kept:
            mine[order[0]] = _restored(self.kept.pop(s.p), x[order[0]],
                                       [i[part] for i in s.nb], self.depth)
        own = _own_features(x, self.d.res, s.c, order[:1] if whole and not s.c else order,
                            s.at, s.nb, self.rev, s.p, self.d.err, self.depth, mine,
                            self.spare, self.width, part)
        if whole and s.c == 0 and order[0] in mine:
            self.kept[s.p] = _kept(mine[order[0]], own.compact)
        feats, act = _colour_features(x, self.d.res, order[:s.c], s.at[part], own, mine)
        self.rows[:] = len(feats), len(act)
        if s.c == len(order) - 1 or (whole and s.c == 0):
            del self.known[s.p]

    def made(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole step's feature rows, once both halves are made."""
        return self.spare.features.whole[:self.rows[0]], self.spare.activity.whole[:self.rows[1]]

    def task(self, t: int, data: bytes) -> None:
        """The second process's tasks: ``t % 4`` 0: visit t // 4's positions; 1, 2, 3: the
        second half of step t // 4's features, classes (``data``: its side information) and
        samples."""
        index, kind = divmod(t, 4)
        if kind == 0:
            self.positions(index, find=True)
            return
        s = self.step(index)
        part = slice(len(s.at) // 2, None)
        if kind == 1:
            self.features(s, part)
        elif kind == 2:
            self.d.classes(s, *self.made(), _Decoding.Side.unpacked(data), part)
        else:
            self.d.samples(s, self.made()[0], part)


class _Decoding:
    """What the decoder's steps keep besides their features (:func:`_decode`), and their
    parts after the features: the payload's coder, the planes of samples, residuals and r3's
    pair misses, per-sample buffers of the step being decoded (in memory ``make`` gives:
    shared, with two processes), r4's class counts of each channel's last pass."""

    class Side(NamedTuple):
        """A step's side information."""

        frac: int
        w: np.ndarray
        bias: int
        shift: int
        ew: np.ndarray
        ebias: int

        def packed(self) -> bytes:
            """As bytes for the second process (:func:`partner.pack`): the four integers,
            the weights, the activity weights."""
            head = np.array([self.frac, self.bias, self.shift, self.ebias], np.int64)
            return partner.pack([head, self.w, self.ew])

        @classmethod
        def unpacked(cls, data: bytes) -> _Decoding.Side:
            """Inverse of :meth:`packed`."""
            head, w, ew = partner.unpack(data)
            frac, bias, shift, ebias = head.tolist()
            return cls(frac, w, bias, shift, ew, ebias)

    def __init__(self, coder: PacketDecoder | None, shape: tuple[int, int, int], depth: int,
                 tables: Tables, make: Callable[..., np.ndarray], most: int) -> None:
        """``shape``: the tile's, ``most``: the biggest step's samples."""
        self.coder, self.side_coder = coder, _Side(dec=coder)
        self.depth, self.tables, self.rev = depth, tables, tables.revision
        height, width, channels = shape
        self.x = make((channels, height * width))
        self.res = make((channels, height * width))
        self.err = make((channels, 2, height * width, 2), np.float32) \
            if self.rev.pair_errors else None
        self.values = make((6, most), np.int64)  # prediction, class, mixed class and its
        # weight, token, raw value
        self.below = make(most, bool)
        self.mixed = self.rev.phase and self.rev.sub_steps > 1  # r4: whether the classes mix
        # (:func:`_classes` gives each sample's mixed class and weight)
        self.previous: dict[int, np.ndarray] = {}  # r4: each channel's class counts in its
        # last pass

    def side(self, s: _Step, feats: np.ndarray, act: np.ndarray) -> Side:
        """Decode a step's side information."""
        rev, depth, n = self.rev, self.depth, len(s.at)
        if rev.coded_side:
            return self.Side(*_get_coded(self.coder, self.tables.side, s.kind, s.c, depth,
                                         _weight_bits(n, rev), coded.coarseness(feats),
                                         len(act) - 1))
        return self.Side(*_get_uniform(self.side_coder, rev, n, len(feats) - 1, len(act) - 1))

    def classes(self, s: _Step, feats: np.ndarray, act: np.ndarray, side: Side,
                part: slice) -> None:
        """The predictions and classes of ``part`` of a step's samples, into ``values``."""
        pred, cls, toward, weight = self.values[:4, :len(s.at)][:, part]
        p, below, far, clipped = _predict(feats[:, part], side.frac, side.w, side.bias,
                                          (1 << self.depth) - 1)
        lad = _clipped_class(_classes(act[:, part], side.shift, side.ew, side.ebias, far,
                                      self.tables), clipped, self.tables)
        pred[:], cls[:], self.below[:len(s.at)][part] = p, lad.cls, below
        if self.mixed:
            toward[:], weight[:] = lad.toward, lad.weight

    def tokens(self, s: _Step) -> None:
        """Decode a step's tokens and raw values (into ``values``), its classes made."""
        coder, tables, rev, previous, c = self.coder, self.tables, self.rev, self.previous, s.c
        n = len(s.at)
        _, cls, toward, weight, tok, raw = self.values[:, :n]
        lad = _Ladder(cls, toward, weight) if self.mixed else _Ladder(cls)
        choice = 1  # prior_counts itself, unless r4 chooses another (:func:`_prior_scale`)
        if rev.prior_choices > 1:
            choice = int(coder.decode(_uniform(_choice_bits(rev)), 1)[0])
            if choice >= rev.prior_choices:
                raise ValueError("bad table weight")
        if rev.mixed_tables:
            used, mixes = _grouped(lad, rev.sub_steps)
            count = len(used)
        else:
            _, by_class = _groups(lad.cls, np.arange(n))
            count = len(by_class)
        if rev.coded_side:
            pick = coded.get_picks(coder, tables.side, count)
        else:
            pick = self.side_coder.get(count, 1, signed=False)
        if ((pick < 0) | (pick >= len(tables.bank))).any():
            raise ValueError("table index out of range")
        tok[:] = 0
        if rev.mixed_tables:
            prior = _prior(previous, c, tables)
            freqs = _normalised(_mix_weights(mixes, pick, used, prior, tables,
                                             _prior_scale(rev, choice)))
            for f, where in zip(freqs, _groups(mixes.member, np.arange(n))[1]):
                tok[where] = coder.decode(f, len(where))
            groups = np.bincount(mixes.member * NTOK + tok,
                                 minlength=len(mixes.own) * NTOK).reshape(-1, NTOK)
            previous[c] = _class_counts(_by_class(groups, mixes, len(used)), used, tables)
        else:
            for j, where in zip(pick, by_class):
                tok[where] = coder.decode(tables.bank[j], len(where))
        nraw = raw_bits(tok)
        if coded_raw(rev):
            nraw, coded_bits = get_top_raw(coder, lad.cls, tok, nraw, rev, tables.raw)
        raw[:] = 0
        for k, where in zip(*_groups(nraw, np.arange(n))):
            if k > 0:
                raw[where] = coder.decode(_uniform(int(k)), len(where))
        if coded_raw(rev):
            raw[:] = coded_bits(raw)

    def samples(self, s: _Step, feats: np.ndarray, part: slice) -> None:
        """``part`` of a step's samples and residuals (and r3's pair misses) from its tokens
        and raw values, into the planes."""
        p, at, nb, c, ch, kind = s
        depth, half = self.depth, 1 << (self.depth - 1)
        pred, _, _, _, tok, raw = self.values[:, :len(at)][:, part]
        below, at = self.below[:len(s.at)][part], at[part]
        u = untoken(tok, raw)
        r = _unranged(u, pred, below, depth) if self.rev.ranged else unzigzag(u)
        if self.rev.phase:
            r = _flip(r, below, half)
        values = (pred + r) % (2 * half)
        self.x[ch, at] = values
        self.res[ch, at] = r
        if self.err is not None and len(nb) >= 4:
            _record_pair_errors(self.err, ch, at, values, feats[:4, part], p)


def _get_uniform(side: _Side, rev: Revision, samples: int, nw: int, ne: int
                 ) -> tuple[int, np.ndarray, int, int, np.ndarray, int]:
    """Inverse of :func:`_put_uniform`: (frac, weights, bias, shift, activity weights, activity
    bias) of a pass of ``samples`` samples with ``nw`` and ``ne`` weights."""
    frac = int(side.get(1, 1)[0])
    if not 0 <= frac <= 14:
        raise ValueError("bad fixed-point shift")
    if rev.scaled_weights:
        w = side.get_bits(nw, _weight_bits(samples, rev) + 2)
    else:
        w = side.get(nw, 2)
    bias = int(side.get(1, 4)[0])
    shift = 0
    if rev.scaled_weights:
        shift = int(side.get(1, 1, signed=False)[0])
        if shift > EST_SHIFT_MAX:
            raise ValueError("bad activity scale")
        ew = side.get_bits(ne, EST_SIGNIFICANT + 2)
    else:
        ew = side.get(ne, 2)
    ebias = int(side.get(1, 4)[0])
    return frac, w, bias, shift, ew, ebias


def _get_coded(coder: PacketDecoder, model: coded.SideModel, kind: int, c: int, depth: int,
               bits: int, coarse: np.ndarray, ne: int
               ) -> tuple[int, np.ndarray, int, int, np.ndarray, int]:
    """r3: a pass and channel's side information (``side.get_step``), checked against the
    ranges the encoder keeps them in (a damaged payload raises ValueError)."""
    s = coded.get_step(coder, model, kind, c, depth, bits, coarse, ne)
    if not 0 <= s.frac <= 14 or not 0 <= s.shift <= EST_SHIFT_MAX \
            or np.abs(s.w).max(initial=0) > _weight_limit(bits) \
            or np.abs(s.ew).max(initial=0) > 1 << EST_SIGNIFICANT \
            or max(abs(s.bias), abs(s.ebias)) >= 1 << 31:
        raise ValueError("bad side information")
    return s.frac, s.w, s.bias, s.shift, s.ew, s.ebias
