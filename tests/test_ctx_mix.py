"""ctx-photo coder revision r4: each class's table mixed with its neighbour's along a finer
activity ladder and blended with the class's counts in the channel's previous pass, exact for
every tile shape and depth, and damaged payloads refused."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from nicodec.bitstream.entropy import PRECISION
from nicodec.codec import registry
from nicodec.models.ctx import coder
from nicodec.models.ctx.codec import ContextNet, load_weights
from nicodec.models.ctx.coder import (NTOK, R3, R4, Tables, _class_rows, _grouped, _Ladder,
                                     _mix_weights, _normalised, _unique, decode_tile,
                                     encode_tile)
from nicodec.models.ctx.train import class_edges
from tests.test_ctx_side import _image, _refused_when_damaged


@pytest.fixture(scope="module")
def r3_tables() -> Tables:
    return registry.load_model("ctx-photo", "ctx-photo-r3.safetensors").net.tables


@pytest.fixture(scope="module")
def r4_tables(r3_tables) -> Tables:
    """r4 with the shipped r3 bank and side model on r4's ladder (four steps per class)."""
    return replace(r3_tables, revision=R4, edges=class_edges(sub=R4.sub_steps))


def _small(tables: Tables) -> Tables:
    """Passes split and not compact from a few dozen samples, so small tiles take every path."""
    return replace(tables, revision=replace(tables.revision, compact_below=12, split_from=40))


def test_r4_ladder_refines_r3s():
    """Every fourth step of r4's ladder is an r3 class edge: the classes (and so the table
    indices sent) are r3's, the steps only choose the mix."""
    edges = class_edges(sub=4)
    assert (edges[3::4] == class_edges()).all() and (np.diff(edges) > 0).all()


@pytest.mark.parametrize("depth", [8, 16])
def test_r4_split_passes_and_extremes_round_trip(r4_tables, r3_tables, depth):
    """Split and full passes in small tiles, noise over the whole range, flat and checkered
    tiles; the mixing changes the bytes (so it is used)."""
    tables = _small(r4_tables)
    rng = np.random.default_rng(3)
    top = (1 << depth) - 1
    for image in (_image(70, 129, 3, depth=depth, seed=5), _image(23, 18, 1, depth=depth),
                  rng.integers(0, top + 1, (40, 37, 3)), np.full((20, 30, 3), top),
                  (np.indices((31, 31)).sum(0) % 2 * top)[..., None]):
        data = encode_tile(image, depth, tables)
        assert (decode_tile(data, image.shape, depth, tables) == image).all()
    image = _image(70, 129, 3, depth=depth, seed=5)
    assert encode_tile(image, depth, tables) != encode_tile(image, depth, _small(r3_tables))


@pytest.mark.parametrize("sub, prior, choices", [(1, 3072, 1), (4, 0, 1), (3, 100, 4),
                                                 (4, 4096, 1), (2, 512, 2)])
def test_each_part_of_r4_round_trips_alone(r4_tables, sub, prior, choices):
    """The steps without the counts, the counts without the steps (and with or without the
    encoder's choice of their weight), and an odd number of steps (the middle step keeps its
    class's table alone)."""
    rev = replace(_small(r4_tables).revision, sub_steps=sub, prior_counts=prior,
                  prior_choices=choices)
    tables = replace(r4_tables, revision=rev, edges=class_edges(sub=sub))
    for depth in (8, 16):
        image = _image(41, 60, 3, depth=depth, seed=2)
        data = encode_tile(image, depth, tables)
        assert (decode_tile(data, image.shape, depth, tables) == image).all()


def test_the_bytes_do_not_depend_on_the_thread_count(r4_tables):
    """The classes' counts pass from step to step in the writing order, so the second lane
    (the last channel a pass behind) sees the same counts."""
    image = _image(70, 90, 3, seed=9)
    tables = _small(r4_tables)
    assert encode_tile(image, 8, tables, threads=1) == encode_tile(image, 8, tables, threads=2)


def test_mixed_tables_are_exact_at_their_largest_inputs(r4_tables):
    """Every mixed table sums to 2**PRECISION with no token below 1, with the largest counts a
    tile can hold (a pass of 2**20 samples all in one class and token) and the narrowest and
    broadest tables; a class whose neighbour is unused keeps its own table."""
    tables = r4_tables
    rows = _class_rows(tables)
    prior = np.zeros((rows, NTOK), np.int64)
    prior[4, 0] = prior[6, NTOK - 1] = 1 << 20
    lad = _Ladder(np.array([4, 4, 6, 6, 4]), np.array([6, 2, 4, 8, -1]), np.array([3, 1, 3, 1, 1]))
    used, mixes = _grouped(lad, R4.sub_steps)
    assert (used == [4, 6]).all()
    assert len(mixes.own) == 4  # (4 alone), (4 with 6, 3/8), (6 with 4, 3/8), (6 alone)
    picks = np.array([0, len(tables.bank) - 1])
    weights = _mix_weights(mixes, picks, used, prior, tables, 4 * R4.prior_counts)
    assert weights.sum(1).max() < 1 << 46
    freqs = _normalised(weights)
    assert (freqs.sum(1) == 1 << PRECISION).all() and (freqs >= 1).all()
    assert (mixes.member == [1, 0, 2, 3, 0]).all()  # samples 1 and 4: toward none used
    assert (mixes.own == [0, 0, 1, 1]).all() and (mixes.other == [0, 1, 0, 1]).all()
    assert (mixes.weight == [0, 3, 3, 0]).all()
    mixed = weights[1] - ((5 * prior[4] + 3 * prior[6]) << PRECISION)  # 5/8 own, 3/8 other
    assert (mixed == 4 * R4.prior_counts * (5 * tables.bank[0] + 3 * tables.bank[-1])).all()


def _reference_groups(lad: _Ladder, sub: int) -> tuple[np.ndarray, tuple]:
    """The groups as r4 defined them, worked out per sample (the code before
    :func:`coder._grouped`, which the decoder must match)."""
    used, inverse = _unique(lad.cls)
    index = np.full(int(max(used.max(), lad.toward.max())) + 1, -1)
    index[used] = np.arange(len(used))
    other = np.where((lad.toward >= 0) & (lad.weight > 0), index[np.maximum(lad.toward, 0)], -1)
    weight = np.where(other < 0, 0, lad.weight)
    other = np.where(other < 0, inverse, other)
    groups, member = _unique((inverse * len(used) + other) * (sub + 1) + weight)
    pair, weight = np.divmod(groups, sub + 1)
    return used, (pair // len(used), pair % len(used), weight, member)


@pytest.mark.parametrize("seed", range(6))
def test_groups_are_those_worked_out_per_sample(seed):
    """The groups counted by (class, mix) code are those of r4's definition, worked out per
    sample: the same used classes, groups, order and members, unused neighbours and weight 0
    included."""
    rng = np.random.default_rng(seed)
    n, ids = int(rng.integers(1, 3000)), int(rng.integers(1, 40))
    cls = rng.integers(0, ids, n) if seed % 2 else rng.choice(rng.integers(0, ids, 4), n)
    lad = _Ladder(cls, rng.integers(-1, ids + 2, n), rng.integers(0, R4.sub_steps + 1, n))
    used, mixes = _grouped(lad, R4.sub_steps)
    want_used, want = _reference_groups(lad, R4.sub_steps)
    assert (used == want_used).all()
    for got, expected in zip(mixes, want):
        assert (got == expected).all()


def test_damaged_r4_payloads_are_refused_cleanly(r4_tables):
    """Bit flips and truncation either decode to some tile or raise what the pipeline counts as
    a lost packet (reported, the tile left grey), never anything else."""
    shape = (24, 40, 3)
    tables = _small(r4_tables)
    data = encode_tile(_image(*shape, seed=4), 8, tables)
    assert _refused_when_damaged(data, shape, tables, flips_before=len(data)) > 10
    out = np.zeros(shape, np.uint8)
    assert ContextNet(tables).decode_payloads([data[:3]], out) == [True]
    assert (out == 128).all()


def trained(tmp_path, monkeypatch, revision: int) -> Tables:
    """The tables ``train.py --revision N`` learns from two small synthetic photos (a bank of
    6 + 1 tables)."""
    from PIL import Image

    from nicodec.models.ctx import train

    for seed in range(2):
        Image.fromarray(_image(40, 56, 3, seed=seed)).save(tmp_path / f"{seed}.png")
    out = tmp_path / f"r{revision}.safetensors"
    monkeypatch.setattr("sys.argv", ["train", "--images", str(tmp_path), "--revision",
                                     str(revision), "--tables", "6", "--stretched", "1",
                                     "--out", str(out)])
    train.main()
    return load_weights(str(out))[0].tables


def test_training_an_r4_file(tmp_path, monkeypatch):
    """``train.py --revision 4`` writes r4's ladder and a bank that codes exactly."""
    tables = trained(tmp_path, monkeypatch, 4)
    assert tables.revision == R4 and len(tables.edges) == 72 * R4.sub_steps - 1
    image = _image(33, 47, 3, seed=5)
    assert (decode_tile(encode_tile(image, 8, tables), image.shape, 8, tables) == image).all()


def test_training_seed_picks_the_first_centres():
    """``train.py --seed``: the k-means is a function of its seed (the default, 0, made the
    shipped bank), and another seed starts from other centres."""
    from nicodec.models.ctx import train

    rng = np.random.default_rng(3)
    scales = rng.uniform(0.5, 20, 60)[:, None]
    hists = rng.poisson(200 * np.exp(-np.arange(NTOK)[None, :] / scales)).astype(np.float64)
    first = train.cluster(hists, 5)
    assert np.array_equal(first, train.cluster(hists, 5, seed=0))
    assert not np.array_equal(first, train.cluster(hists, 5, seed=1))
    assert np.allclose(first.sum(1), 1)


def test_r4_codes_a_kodak_crop_smaller_than_r3(kodak_pixels, r3_tables, r4_tables):
    """With the same bank, r4 saves about 0.03 bpp on Kodak (0.3%): on a 256x256 crop it must
    at least not cost more."""
    crop = np.ascontiguousarray(kodak_pixels[:256, :256])
    assert len(encode_tile(crop, 8, r4_tables)) < len(encode_tile(crop, 8, r3_tables))


def _picks_plainly(groups, mixes, cost, picks, prior_weights, tables, scale):
    """:func:`coder._choose_mixed` written plainly: each class's groups found, their weights
    formed table by table and their whole code lengths summed, the other classes at their
    picks alone; then every path through the classes' candidates tried in turn, class by
    class keeping the cheapest way to each candidate (the reference for its faster form)."""
    span = 2 * tables.revision.sub_steps
    m = cost.shape[1]
    first, steps = tables.side.pick_bits(m)
    bank = tables.bank.astype(np.float64) * max(scale, 1)
    top = min(coder.PICK_CANDIDATES, m)
    candidates = np.argpartition(cost, top - 1, 1)[:, :top] if top < m else \
        np.broadcast_to(np.arange(m), cost.shape)
    keep, mix = (span - mixes.weight)[:, None, None], mixes.weight[:, None, None]
    bits = []
    for i, tried in enumerate(candidates):
        part = np.flatnonzero((mixes.own == i) | (mixes.other == i))
        own = np.where((mixes.own[part] == i)[:, None, None], bank[tried][None],
                       bank[picks[mixes.own[part]]][:, None])
        other = np.where((mixes.other[part] == i)[:, None, None], bank[tried][None],
                         bank[picks[mixes.other[part]]][:, None])
        w = keep[part] * own + mix[part] * other + prior_weights[part][:, None]
        bits.append(np.einsum("gt,gkt->k", groups[part],
                              np.log2(w.sum(2, keepdims=True)) - np.log2(w)))
    # (bits so far, the path's candidates by place): ties go to the earlier place
    best = [(bits[0][k] + first[t], [k]) for k, t in enumerate(candidates[0])]
    for i in range(1, len(candidates)):
        best = [min((total + steps[m - 1 + t - candidates[i - 1][path[-1]]], path)
                    for total, path in best) for t in candidates[i]]
        best = [(total + bits[i][k], path + [k]) for k, (total, path) in enumerate(best)]
    return candidates[np.arange(len(candidates)), min(best)[1]]


def test_the_picks_knowing_the_mix_are_those_of_a_plain_search(kodak_pixels, monkeypatch):
    """The encoder's table picks knowing the mix (all classes' candidates costed at once, the
    constant part of the code lengths left out, the cheapest path found class by class) pick
    what the plain search picks, on every step of a Kodak crop with the shipped tables."""
    tables = registry.load_model("ctx-photo").net.tables
    calls = []
    fast = coder._choose_mixed

    def recorded(*args):
        calls.append((args, fast(*args)))
        return calls[-1][1]
    monkeypatch.setattr(coder, "_choose_mixed", recorded)
    encode_tile(kodak_pixels[:96, :128], 8, tables, threads=1)
    assert len(calls) > 20 and sum(len(picks) for _, picks in calls) > 200
    for args, picks in calls:
        assert (picks == _picks_plainly(*args)).all()


@pytest.mark.parametrize("seed", range(4))
def test_the_cheapest_chain_is_the_cheapest_of_all_paths(seed):
    """:func:`coder._cheapest_chain` finds the path of least bits and index bits among all the
    classes' candidates (every path tried)."""
    rng = np.random.default_rng(seed)
    m, classes, k = 16, 4, 3
    first, steps = rng.random(m) * 8, rng.random(2 * m - 1) * 8
    candidates = np.stack([rng.choice(m, k, replace=False) for _ in range(classes)])
    bits = rng.random((classes, k)) * 20
    picks = coder._cheapest_chain(bits, candidates, first, steps)

    def total(path):
        chosen = candidates[np.arange(classes), path]
        return bits[np.arange(classes), path].sum() + first[chosen[0]] \
            + steps[m - 1 + np.diff(chosen)].sum()
    best = min(itertools.product(range(k), repeat=classes), key=total)
    assert (picks == candidates[np.arange(classes), best]).all()
