"""MCQ: unit layout, cascaded integer prior, training entry point and a codec round trip."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nicodec import codec
from nicodec.bitstream.entropy import TOTAL, cost_bits
from nicodec.bitstream.format import Family
from nicodec.codec import registry
from nicodec.codec.pipeline import decode_detailed, encode_detailed
from nicodec.models import weightfile
from nicodec.models.data import load_images, split_paths
from nicodec.models.mcq.codec import load_weights, save_weights, shipped_float
from nicodec.models.mcq.network import MCQ, MCQConfig
from nicodec.models.mcq.quantizers import ResidualVQ
from nicodec.models.mcq.train import evaluate

ROOT = Path(__file__).resolve().parent.parent
SMALL = MCQConfig(channels=16, groups=3, group_dim=4, codebook_size=32, coarse_groups=2,
                  coarse_dim=4, coarse_codebook_size=16, prior_hidden=8)


@pytest.mark.parametrize("quantizer", ["gumbel", "ema", "rvq"])
def test_unit_layout_round_trips(quantizer):
    torch.manual_seed(0)
    model = MCQ(replace(SMALL, quantizer=quantizer))
    x = torch.rand(1, 3, 48, 64)
    model.train()(torch.rand(2, 3, 48, 64), torch.tensor([SMALL.groups, 1]))  # data init
    model.eval()
    for q in range(SMALL.groups + 1):
        symbols = model.analyze(x, q)
        assert symbols.shape == (model.columns(q), 3, 4)
        # synthesize(analyze(x)) is the model's own eval-mode reconstruction at that quality
        expected = model(x, torch.tensor([q]))["x_hat"].clamp(0, 1)
        assert torch.allclose(model.synthesize(symbols), expected, atol=1e-5)
    # the fine indices of column (g, child) are those of the 1/8 grid at (2uy + dy, 2ux + dx)
    fine = model.fine_vq.indices(model.fine_head(model.g_a(x)) - model.h_s(
        model.coarse_vq.embed(model.coarse_vq.indices(model.h_a(model.g_a(x))))))[0]
    symbols = model.analyze(x, SMALL.groups)
    g, dy, dx, uy, ux = 2, 1, 0, 2, 3
    assert symbols[SMALL.coarse_groups + 4 * g + 2 * dy + dx, uy, ux] == fine[g, 2 * uy + dy, 2 * ux + dx]


def test_sibling_context(tmp_path):
    """With ``sibling_groups`` the first fine groups are also predicted from the same group at
    the unit's children coded before: every table comes from earlier columns only, the context
    changes the tables of those groups and of no other, and the weight file keeps it."""
    torch.manual_seed(0)
    model = MCQ(replace(SMALL, quantizer="rvq", sibling_groups=2))
    model.train()(torch.rand(2, 3, 48, 64), torch.tensor([SMALL.groups, 1]))  # data init
    model.eval()
    mc, k = SMALL.coarse_groups, SMALL.codebook_size
    units = model.analyze(torch.rand(1, 3, 64, 96), SMALL.groups).reshape(model.columns(3), -1)
    loss = model.unit_prior_loss(torch.from_numpy(units))
    loss.backward()
    # (g, slot) gradient on the sibling slots' embeddings of real indices (not the empty token)
    sibling_grad = model.fine_prior.embed.grad[:, mc : mc + 4, :k].abs().sum((2, 3))
    assert (sibling_grad[:2].sum(1) > 0).all() and (sibling_grad[2] == 0).all()
    prior = model.export_prior(units[0])
    save_weights(model, prior, str(tmp_path / "w.safetensors"), {})
    _, loaded = load_weights(str(tmp_path / "w.safetensors"))
    for j in range(len(units)):  # columns < j are all a table may use
        assert np.array_equal(prior.freqs(units[:j], j), loaded.freqs(units[:j], j))
    changed = units.copy()
    changed[mc] = (changed[mc] + 1) % k  # group 0, child 0
    changed[mc + 8] = (changed[mc + 8] + 1) % k  # group 2, child 0
    group0_child1, group2_child1 = mc + 1, mc + 9
    assert not np.array_equal(prior.freqs(units[:group0_child1], group0_child1),
                              prior.freqs(changed[:group0_child1], group0_child1))
    assert np.array_equal(prior.freqs(units[:group2_child1], group2_child1),
                          prior.freqs(changed[:group2_child1], group2_child1))


def test_residual_vq_stages_refine_the_whole_latent():
    torch.manual_seed(0)
    vq = ResidualVQ(stages=4, codebook_size=16, dim=6).train()
    z = torch.randn(3, 6, 8, 8, requires_grad=True)
    for _ in range(5):  # a few EMA steps on the same latents
        vq(z)
    zq, idx, commitment = vq(z, torch.tensor([4, 2, 0]))
    assert idx.shape == (3, 4, 8, 8)
    vq.eval()
    errors = [(z - vq.embed_prefix(idx[:, :q])).pow(2).mean().item() for q in range(5)]
    assert all(a > b for a, b in zip(errors, errors[1:]))  # every stage lowers the error
    assert errors[4] < 0.5 * errors[1]
    # training output: each image's partial sum; gradient only where something is sent
    for b, q in enumerate([4, 2, 0]):
        assert torch.allclose(zq[b], vq.embed_prefix(idx[b : b + 1, :q])[0], atol=1e-5)
    zq.sum().backward()
    assert z.grad[0].abs().min() > 0 and z.grad[2].abs().max() == 0
    assert commitment.item() == pytest.approx(errors[4], rel=1e-4)


def _generated_photos(folder: Path, n: int = 40) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (72, 80, 3), dtype=np.uint8)).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two training steps of the default MCQ configuration, exported (prior and all)."""
    tmp = tmp_path_factory.mktemp("mcq")
    _generated_photos(tmp / "photos")
    cmd = [sys.executable, "-m", "nicodec.models.mcq.train", "mcq", "--data", str(tmp / "photos"),
           "--out", str(tmp / "run"), "--steps", "2", "--batch", "2", "--crop", "64",
           "--prior-steps", "3", "--export", str(tmp / "mcq.safetensors")]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return tmp / "mcq.safetensors"


def test_exported_prior_tables(trained):
    model, prior = load_weights(str(trained))
    symbols = model.analyze(torch.rand(1, 3, 64, 96), model.config.groups)
    flat = symbols.reshape(len(symbols), -1)
    for j in range(len(flat)):
        freqs = prior.freqs(flat[:j], j)
        assert freqs.min() >= 1 and (freqs.sum(-1) == TOTAL).all()
        assert freqs.ndim == (1 if j == 0 else 2)


def _fine_grid(symbols: np.ndarray, coarse_groups: int) -> torch.Tensor:
    """The fine indices of unit-layout symbols on the 1/8 grid, (1, q, 2 uh, 2 uw)."""
    s = torch.from_numpy(symbols[coarse_groups:])
    q, uh, uw = len(s) // 4, s.shape[1], s.shape[2]
    return s.view(q, 2, 2, uh, uw).permute(0, 3, 1, 4, 2).reshape(1, q, 2 * uh, 2 * uw)


def test_rate_weighted_indices(trained):
    """analyze_coded: weight 0 picks the nearest codewords; a positive weight gives up latent
    error for bits; either way its tables are those the decoder computes from the symbols."""
    model, prior = load_weights(str(trained))
    x, q, mc = torch.rand(1, 3, 64, 96), model.config.groups, model.config.coarse_groups
    _, residual = model.latents(x)
    results = {}
    for weight in (0.0, 0.5, 50.0):
        symbols, tables, bits = model.analyze_coded(x, q, prior, weight)
        flat = symbols.reshape(len(symbols), -1)
        assert len(tables) == len(flat) == model.columns(q)
        for j, table in enumerate(tables):
            assert np.array_equal(table, prior.freqs(flat[:j], j))
        latent = model.fine_vq.embed_prefix(_fine_grid(symbols, mc))
        assert bits == sum(cost_bits(f, t) for f, t in zip(flat, tables))
        _, none, same_bits = model.analyze_coded(x, q, prior, weight, keep=False)
        assert none is None and same_bits == bits
        results[weight] = (bits, (residual - latent).pow(2).sum().item(), symbols)
    assert (results[0.0][2] == model.analyze(x, q)).all()
    bits, errors = zip(*[(b, e) for b, e, _ in results.values()])
    assert bits[0] > bits[1] > bits[2] and errors[0] < errors[1] < errors[2]
    assert (results[50.0][2][:mc] == results[0.0][2][:mc]).all()  # coarse indices: nearest


def test_rate_weight_tuning(trained):
    """eval.rate_weights: weight 0 measures exactly what the export's evaluation measures (the
    stages of quality q are the first columns of the full choice), and the choice per quality
    is the weight furthest above the weight-0 curve, or 0 when none is above it."""
    from nicodec.eval.rate_weights import choose, measure

    model, prior = load_weights(str(trained))
    _, val_paths = split_paths(trained.parent / "photos")
    images = load_images(val_paths, 64)[:2]
    points = measure(str(trained), images, [0.0, 0.5])
    assert len(points) == 2 * (model.config.groups + 1)
    nearest = evaluate(model, prior, images, range(model.config.groups + 1))
    measured = [p for p in points if p["weight"] == 0]
    for key in ("quality", "bpp", "psnr"):
        assert [p[key] for p in measured] == pytest.approx([row[key] for row in nearest])
    curve = [{"quality": q, "weight": 0.0, "bpp": b, "psnr": d}
             for q, b, d in [(1, 0.1, 24.0), (2, 0.2, 26.0), (3, 0.4, 28.0)]]
    better = {"quality": 2, "weight": 0.1, "bpp": 0.18, "psnr": 25.9}  # above the curve
    worse = {"quality": 3, "weight": 0.1, "bpp": 0.3, "psnr": 26.5}  # below it
    assert choose(curve + [better, worse]) == {1: 0.0, 2: 0.1, 3: 0.0}
    assert better["gain_db"] > 0 > worse["gain_db"]


def test_export_is_float16_and_its_report_measures_the_shipped_file(trained):
    """The transforms and codebooks ship as float16; the prior was fitted and the held-back
    figures measured on exactly those rounded weights, so the file reproduces the report."""
    _, tensors = weightfile.read(str(trained))
    floats = {k: t.dtype for k, t in tensors.items() if t.is_floating_point()}
    assert floats and set(floats.values()) == {torch.float16}
    assert all(shipped_float(k) for k in floats)
    model, prior = load_weights(str(trained))
    report = json.loads((trained.parent / "run" / "report.json").read_text())
    _, val_paths = split_paths(trained.parent / "photos")
    rows = evaluate(model, prior, load_images(val_paths, 64), range(model.config.groups + 1))
    assert rows == report["validation"]


def test_codec_round_trip_and_concealment(trained, monkeypatch, small_rgb):
    info = registry.ModelInfo(name="mcq-test", model_id=99, family=Family.MCQ,
                              weights=trained.name, module="nicodec.models.mcq.codec",
                              qualities=tuple(range(9)), default_quality=8, description="test",
                              rate_weights=(0.0,) + (0.5,) * 8)  # the rate-optimised encoder
    monkeypatch.setattr(registry, "WEIGHTS_DIR", trained.parent)
    monkeypatch.setitem(registry.MODELS, "mcq-test", info)
    registry.load_model.cache_clear()
    try:
        image = np.array(Image.fromarray(small_rgb).resize((100, 70)))
        for quality in (0, 3, 8):
            encoded = encode_detailed(image, model="mcq-test", quality=quality, packets=3)
            decoded = decode_detailed(encoded.data)
            assert (decoded.indices == encoded.indices).all()
            assert decoded.pixels.shape == image.shape
        bad = bytearray(encoded.data)
        bad[-1] ^= 0xFF
        damaged = decode_detailed(bytes(bad))
        assert damaged.lost_packets == 1 and 0 < damaged.concealed_fraction < 0.5
        with pytest.raises(codec.PacketLossError):
            decode_detailed(bytes(bad), strict=True)
    finally:
        registry.load_model.cache_clear()


def test_unit_layout_of_the_search_round_trips():
    from nicodec.models.mcq.search import from_units, to_units

    latent = torch.randn(1, 5, 6, 8)
    units = to_units(latent)
    assert units.shape == (4, 12, 5)
    assert torch.equal(units[1, 0], latent[0, :, 0, 1])  # child 1 = dx 1 of the first unit
    assert torch.equal(from_units(units, 6, 8), latent)


def test_effort_search_lowers_the_rate_distortion_cost(kodak_pixels, monkeypatch):
    """At effort 2 the shipped mcq codes a Kodak crop at a lower D + lambda R (pixel MSE, bits
    per pixel, lambda as the search sets it) than at effort 1, with tiles smaller than the crop
    (so that tile margins are exercised); the decoder reads the file as any other."""
    from nicodec.models.mcq import search

    monkeypatch.setattr(search, "TILE", 8)
    pixels = np.array(kodak_pixels[:128, :192])
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float().div(255)
    costs = []
    for effort in (1, 2):
        enc = encode_detailed(pixels, model="mcq", quality=4, effort=effort)
        dec = decode_detailed(enc.data)
        assert (dec.indices == enc.indices).all()
        mse = float(((torch.from_numpy(dec.pixels).permute(2, 0, 1)[None] / 255 - x) ** 2).mean())
        bpp = 8 * len(enc.data) / pixels.shape[0] / pixels.shape[1]
        costs.append((mse, bpp))
    lam = search.RD_SLOPE * costs[0][0]
    assert costs[1][0] + lam * costs[1][1] < costs[0][0] + lam * costs[0][1]


@pytest.mark.parametrize("side", [1, 2, 8])
def test_tiny_images_keep_their_colour(side):
    """A 1x1 (200, 30, 40) came back as (179, 72, 50): the padding to the 16-pixel unit was most
    of what the encoder matched (these three were 22, 37 and 13 levels off in a channel). The
    pixel-space choice of small images brings each channel's mean within a few levels."""
    pixels = np.empty((side, side, 3), np.uint8)
    pixels[:] = (200, 30, 40)
    pixels[side // 2:, :, 1] = 60  # not flat, beyond one pixel
    decoded = codec.decode_array(codec.encode(pixels)).astype(int)
    error = np.abs(decoded.mean((0, 1)) - pixels.mean((0, 1)))
    assert error.max() <= 5, decoded.reshape(-1, 3)[:4]
