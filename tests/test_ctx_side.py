"""ctx-photo coder revision r3: the side information entropy-coded with a learned model
(``models/ctx/side.py``), exact for every tile shape and depth, and damaged payloads refused."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from nicodec.bitstream.entropy import PRECISION, PacketDecoder, PacketEncoder
from nicodec.codec import registry
from nicodec.codec.columns import UNDECODABLE
from nicodec.models.ctx.codec import ContextNet, load_weights
from nicodec.models.ctx.coder import NTOK, R2, R3, R4, Tables, decode_tile, encode_tile
from nicodec.models.ctx.side import (KINDS, SideModel, StepSide, coarseness, coarsen, get_step,
                                     learn, put_step)
from nicodec.models.ctx.train import class_edges


def _image(h: int, w: int, c: int, depth: int = 8, seed: int = 0) -> np.ndarray:
    """Gradients, an edge and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    top = (1 << depth) - 1
    base = np.stack([(x * 3 + y + 9 * k) * top / (4 * (w + h + 9 * c)) for k in range(c)], -1)
    base[h // 3: h // 2, w // 4: w // 2] = top * 0.8
    noisy = base + rng.normal(0, top / 60, base.shape)
    return np.clip(np.rint(noisy), 0, top).astype(np.uint8 if depth == 8 else np.uint16)


def _bank() -> tuple[np.ndarray, np.ndarray]:
    """r3's bank sorted narrow to broad (as ``train.py`` sorts it), and its ladder."""
    tensors = load_file(str(registry.WEIGHTS_DIR / "ctx-photo-r3.safetensors"))
    bank = tensors["bank"].astype(np.int64)
    return bank[np.argsort((bank * np.arange(NTOK)).sum(1), kind="stable")], tensors["edges"]


@pytest.fixture(scope="module")
def r3_tables() -> Tables:
    """r3 with a side model learned as ``train.py`` learns it, on a few synthetic images."""
    bank, edges = _bank()
    collecting = Tables(bank, edges, R3, side=SideModel.neutral(), collect=[], collect_side=[])
    for seed in range(3):
        encode_tile(_image(48, 64, 3, seed=seed), 8, collecting)
    cost = PRECISION - np.log2(bank)
    picks = [(h @ cost.T).argmin(1) for h in collecting.collect]
    return Tables(bank, edges, R3, side=learn(collecting.collect_side, picks))


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 7, 3), (5, 1, 3), (2, 3, 2), (37, 53, 3),
                                   (33, 65, 4), (70, 41, 1)])
@pytest.mark.parametrize("depth", [8, 16])
@pytest.mark.parametrize("revision", ["r3", "r4"])
def test_r3_and_r4_tiles_round_trip_exactly(r3_tables, revision, shape, depth):
    """Every tile shape from one pixel, both depths; r4 (on r3's bank, its own ladder) adds
    the colour features and the mixed tables (``test_ctx_r4.py``, ``test_ctx_mix.py``)."""
    tables = r3_tables if revision == "r3" else \
        replace(r3_tables, revision=R4, edges=class_edges(sub=R4.sub_steps))
    image = _image(*shape, depth=depth, seed=7)
    data = encode_tile(image, depth, tables)
    assert (decode_tile(data, shape, depth, tables) == image).all()


@pytest.mark.parametrize("depth", [8, 16])
def test_r3_extremes_and_split_passes_round_trip(r3_tables, depth):
    """Noise, flat and checkered tiles (features of zero energy, the largest weights), and
    the finest passes split in halves (lowered from 40 000 samples so small tiles split)."""
    rng = np.random.default_rng(3)
    top = (1 << depth) - 1
    for image in (rng.integers(0, top + 1, (40, 37, 3)), np.full((20, 30, 3), top),
                  np.zeros((9, 9, 1)), (np.indices((31, 31)).sum(0) % 2 * top)[..., None]):
        data = encode_tile(image, depth, r3_tables)
        assert (decode_tile(data, image.shape, depth, r3_tables) == image).all()
    splitting = replace(r3_tables, revision=replace(r3_tables.revision, split_from=40))
    image = _image(70, 129, 3, depth=depth, seed=5)
    data = encode_tile(image, depth, splitting)
    assert (decode_tile(data, image.shape, depth, splitting) == image).all()


def test_a_side_model_that_knows_nothing_still_codes_exactly():
    """The training collects with the neutral model: flat tables, every exponent 0."""
    bank, edges = _bank()
    tables = Tables(bank, edges, R3, side=SideModel.neutral())
    for depth in (8, 16):
        image = _image(30, 41, 3, depth=depth, seed=2)
        data = encode_tile(image, depth, tables)
        assert (decode_tile(data, image.shape, depth, tables) == image).all()


def test_r3_codes_smaller_than_r2_with_the_same_bank(r3_tables):
    """The side information is most of a small tile's payload: r3 saves on it (measured on
    Kodak: 0.116 -> 0.072 bits per pixel)."""
    image = _image(64, 96, 3, seed=11)
    r2 = encode_tile(image, 8, Tables(r3_tables.bank, r3_tables.edges, R2))
    r3 = encode_tile(image, 8, r3_tables)
    assert len(r3) < 0.95 * len(r2)


def test_damaged_r3_payloads_are_refused_cleanly(r3_tables):
    """Side information out of its ranges is a ValueError, which the codec reports as a lost
    tile; any other damage (bit flips, truncation) either decodes to some tile or raises what
    the pipeline counts as a lost packet, never anything else."""
    enc = PacketEncoder()  # a 1x1 gray tile's first pass: no weights, a shift of 40 bits
    put_step(enc, r3_tables.side, StepSide(0, 0, 8, 8, 40, np.zeros(0, np.int64), 0, 0,
                                           np.zeros(0, np.int64), 0, np.zeros(1, np.int64)))
    bad = enc.finish()
    with pytest.raises(ValueError, match="bad side information"):
        decode_tile(bad, (1, 1, 1), 8, r3_tables)
    out = np.zeros((1, 1, 1), np.uint8)
    assert ContextNet(r3_tables).decode_payloads([bad], out) == [True] and out[0, 0, 0] == 128
    shape = (24, 40, 3)
    data = encode_tile(_image(*shape, seed=4), 8, r3_tables)
    assert _refused_when_damaged(data, shape, r3_tables, flips_before=24) > 10


def _refused_when_damaged(data: bytes, shape: tuple[int, int, int], tables: Tables,
                          flips_before: int) -> int:
    """How many of 60 damaged copies of an 8-bit payload (cut short, or a bit flipped among
    its first ``flips_before`` bytes) the decoder refuses; the others must decode to samples
    of the right shape and range."""
    rng = np.random.default_rng(0)
    refused = 0
    for trial in range(60):
        damaged = bytearray(data[: int(rng.integers(0, len(data)))] if trial % 2 else data)
        if trial % 2 == 0:
            damaged[int(rng.integers(0, flips_before))] ^= 1 << int(rng.integers(0, 8))
        try:
            out = decode_tile(bytes(damaged), shape, 8, tables)
        except UNDECODABLE:
            refused += 1
        else:
            assert out.shape == shape and 0 <= out.min() and out.max() <= 255
    return refused


@pytest.mark.parametrize("depth", [8, 16])
def test_coefficients_at_their_limits_round_trip(r3_tables, depth):
    """The largest weights, biases and shifts the encoder can send, with the exponents of a
    real pass kind and of one beyond the model's arrays (a fourth channel)."""
    model = r3_tables.side
    rng = np.random.default_rng(1)
    steps = []
    for kind, c in ((KINDS - 1, 0), (5, 2), (12, 3)):
        coarse = rng.integers(0, 6, 12)
        w = coarsen(rng.integers(-32767, 32768, 11), coarse[:-1], 32767)
        w[0], w[1] = 32767 >> coarse[0] << coarse[0], -(32767 >> coarse[1] << coarse[1])
        bias = -((1 << 31) - 1) >> coarse[-1] << coarse[-1]
        steps.append(StepSide(kind, c, depth, 14, int(rng.integers(0, 15)), w, bias,
                              int(rng.integers(0, 25)), rng.integers(-64, 65, 9),
                              (1 << 31) - 1, coarse))
    enc = PacketEncoder()
    for s in steps:
        put_step(enc, model, s)
    dec = PacketDecoder(enc.finish())
    for s in steps:
        got = get_step(dec, model, s.kind, s.c, depth, s.bits, s.coarse, len(s.ew))
        assert (got.frac, got.bias, got.shift, got.ebias) == (s.frac, s.bias, s.shift, s.ebias)
        assert (got.w == s.w).all() and (got.ew == s.ew).all()


def test_coarseness_follows_the_features_energy():
    """The feature of the largest energy keeps every bit; one 2**(2m) times weaker may lose
    m - 1 (COARSE_OFFSET = 1); 16-bit features stay exact; coarsened weights are multiples."""
    n = 10_000
    feats = np.ones((5, n))
    feats[0] = 60000  # 16-bit samples
    feats[1] = 60000 / 2 ** 4
    feats[2] = 60000 / 2 ** 10
    feats[3] = 0  # no energy: its weight does not matter
    c = coarseness(feats)
    assert c[0] == 0 and c[1] == 3 and c[2] == 9 and c[3] >= c[4] > c[2]
    w = coarsen(np.array([1001, -999, 31, 5]), c[:4], 32767)
    assert (w % (1 << c[:4]) == 0).all() and abs(w[1] + 999) <= 4


def test_the_side_model_is_learned_from_the_magnitudes():
    """Exponents are log2 of the mean magnitude in 8-bit sample units (weights scale-free,
    biases by the depth); kinds never seen get the default."""
    steps = [StepSide(3, 1, depth, 10, frac, np.full(4, 2 ** (frac - 3)),
                      2 ** (frac + 1) << (depth - 8), 0, np.full(2, 2 ** 6), 2 ** depth,
                      np.zeros(5, np.int64))
             for depth in (8, 16) for frac in (9, 12)]
    model = learn(steps, [np.array([3, 4, 4])])
    assert (model.pred[3, 1, :4] == -3).all() and model.pred[3, 1, 4] == 1
    assert (model.act[3, 1, :2] == -2).all() and model.act[3, 1, 2] == 0
    assert (model.pred[4] == model.default[0]).all()


def test_an_r3_weight_file_holds_its_side_model(r3_tables, tmp_path):
    bank, edges = _bank()
    tensors = {"bank": bank.astype(np.int32), "edges": edges,
               "revision": np.array([3], np.int32)} | r3_tables.side.to_tensors()
    save_file(tensors, str(tmp_path / "r3.safetensors"))
    loaded = load_weights(str(tmp_path / "r3.safetensors"))[0].tables
    assert loaded.revision == R3 and (loaded.side.tables == r3_tables.side.tables).all()
    image = _image(20, 30, 3, seed=9)
    assert encode_tile(image, 8, loaded) == encode_tile(image, 8, r3_tables)
    for broken in ({k: v for k, v in tensors.items() if k != "side_tables"},
                   tensors | {"side_tables": tensors["side_tables"] * 2}):
        save_file(broken, str(tmp_path / "broken.safetensors"))
        with pytest.raises(ValueError, match="side-information model"):
            load_weights(str(tmp_path / "broken.safetensors"))


@pytest.mark.parametrize("keep_bank", [False, True])
def test_training_an_r3_file_learns_its_side_model(tmp_path, monkeypatch, keep_bank):
    """``train.py --revision 3`` on a few photos (a small bank, or the shipped one kept with
    ``--bank-from``): a bank sorted narrow to broad and a side model that codes exactly."""
    from PIL import Image

    from nicodec.models.ctx import train

    for seed in range(2):
        Image.fromarray(_image(40, 56, 3, seed=seed)).save(tmp_path / f"{seed}.png")
    out = tmp_path / "r3.safetensors"
    args = ["--images", str(tmp_path), "--revision", "3", "--tables", "6", "--stretched", "1",
            "--out", str(out)]
    if keep_bank:
        args += ["--bank-from", str(registry.WEIGHTS_DIR / "ctx-photo.safetensors")]
    monkeypatch.setattr("sys.argv", ["train", *args])
    train.main()
    tables = load_weights(str(out))[0].tables
    assert tables.revision == R3 and len(tables.bank) == (256 if keep_bank else 14)
    spread = (tables.bank * np.arange(NTOK)).sum(1)
    assert (np.diff(spread) >= 0).all()
    image = _image(33, 47, 3, seed=5)
    assert (decode_tile(encode_tile(image, 8, tables), image.shape, 8, tables) == image).all()
