"""VQ mode: the VQGAN's /16 grid, the codebook ladder, training resume, the shipped model through
the codec (round trip, determinism, tiny headers, damage)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from nicodec import codec
from nicodec.bitstream.entropy import TOTAL
from nicodec.bitstream.format import parse_header
from nicodec.codec.pipeline import decode_detailed, encode_detailed
from nicodec.codec.registry import WEIGHTS_DIR, load_model, model_info
from nicodec.models.codebooks import kmeans
from nicodec.models.mcq.quantizers import ec_assign, ec_kmeans
from nicodec.models.vq import codec as vqcodec
from nicodec.models.vq.vqgan import nearest
from nicodec.models.vq.vqgan import VQGAN, VQGANConfig

TINY = VQGANConfig(widths=(8, 8, 8, 8), codebook_size=64, code_dim=4, disc_width=4)
SHIPPED = WEIGHTS_DIR / model_info("vq-static").weights
needs_weights = pytest.mark.skipif(not SHIPPED.exists(), reason="vq-cpu weights not built")


def _tiny_net() -> vqcodec.VQNet:
    torch.manual_seed(0)
    model = VQGAN(TINY)
    full = torch.nn.functional.normalize(model.quantizer.codebooks.detach()[0], dim=-1)
    return vqcodec.VQNet(model, [full[:8], full[:16], full])


def test_grid_is_one_sixteenth():
    net = _tiny_net()
    x = torch.rand(1, 3, 64, 96)
    for q, k in [(1, 8), (2, 16), (3, 64)]:
        idx = net.analyze(x, q)
        assert idx.shape == (1, 4, 6) and idx.dtype == np.int64
        assert 0 <= idx.min() and idx.max() < k and net.columns(q) == 1
        assert net.synthesize(idx, quality=q).shape == (1, 3, 64, 96)
    with pytest.raises(ValueError, match="multiples of 16"):
        net.analyze(torch.rand(1, 3, 40, 48), 1)
    with pytest.raises(ValueError, match="qualities are 1..3"):
        net.analyze(x, 4)
    with pytest.raises(ValueError, match="0..7"):
        net.synthesize(np.full((1, 2, 2), 9), quality=1)


def test_training_pass_and_reseeding():
    torch.manual_seed(0)
    model = VQGAN(TINY).train()
    out = model(torch.rand(2, 3, 32, 32))
    assert out["x_hat"].shape == (2, 3, 32, 32) and out["indices"].shape == (2, 2, 2)
    out["vq_loss"].backward()  # codebook and encoder both get gradients
    assert model.quantizer.codebooks.grad.abs().sum() > 0
    assert model.encoder.layers[0].weight.grad.abs().sum() > 0
    model.quantizer.usage.zero_()  # every codeword dead: re-seeded from the batch, K/64 a step
    before = model.quantizer.codebooks.detach().clone()
    model(torch.rand(2, 3, 32, 32))
    changed = ((model.quantizer.codebooks.detach() - before).abs() > 1e-4).any(-1).sum()
    assert changed == max(1, TINY.codebook_size // 64)


def test_kmeans_on_toy_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]])
    points = centres.repeat_interleave(50, 0) + 0.1 * torch.randn(200, 2, generator=gen)
    found = kmeans(points, 4, seed=1)
    assert torch.cdist(centres, found).min(1).values.max() < 0.1
    # weights: a heavily weighted point pulls its centroid onto itself
    weights = torch.ones(200)
    weights[0] = 1e6
    pulled = kmeans(points, 4, weights=weights, seed=1)
    assert torch.cdist(points[:1], pulled).min() < 1e-2
    # duplicated points: clusters never come out empty, k = n works
    same = torch.zeros(6, 2)
    same[3:] = 1.0
    assert kmeans(same, 2).unique(dim=0).shape == (2, 2)
    assert kmeans(points[:5], 5).shape == (5, 2)
    with pytest.raises(ValueError, match="k must be"):
        kmeans(points[:3], 4)
    # nearest: (B, d, h, w) against (K, d)
    z = found.T.reshape(1, 2, 2, 2)
    assert nearest(z, found).flatten().tolist() == [0, 1, 2, 3]


def test_ec_kmeans_trades_error_for_bits():
    """Entropy-constrained k-means: weight 0 is plain k-means; a positive weight gives
    assignments of lower entropy (the code lengths it returns are theirs) for a little more
    squared error, and a large weight empties the least used codewords."""
    points = torch.randn(2000, 4, generator=torch.Generator().manual_seed(0))

    def entropy_and_error(words, lengths, weight):
        idx = ec_assign(points, words, lengths, weight)
        share = torch.bincount(idx, minlength=len(words)).float() / len(points)
        entropy = -(share[share > 0] * share[share > 0].log2()).sum().item()
        return entropy, (points - words[idx]).pow(2).sum(1).mean().item(), idx

    words, lengths = ec_kmeans(points, 16, 0.0)
    assert torch.equal(words, kmeans(points, 16, iters=20))
    assert torch.equal(lengths, torch.full((16,), 4.0))
    plain = entropy_and_error(words, lengths, 0.0)
    words, lengths = ec_kmeans(points, 16, 0.4)
    constrained = entropy_and_error(words, lengths, 0.4)
    assert constrained[0] < plain[0] - 0.2 and plain[1] < constrained[1] < 1.5 * plain[1]
    counts = torch.bincount(constrained[2], minlength=16).float()
    assert torch.allclose(lengths, -torch.log2((counts + 0.5) / (counts.sum() + 8)), atol=0.2)
    words, lengths = ec_kmeans(points, 16, 3.0)
    assert len(entropy_and_error(words, lengths, 3.0)[2].unique()) < 16


def _photos(folder, n: int = 24) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir()
    y, x = np.mgrid[0:80, 0:96]
    for i in range(n):  # smooth random gradients: learnable at a tiny width
        img = np.stack([(x * rng.uniform(0, 3) + y * rng.uniform(0, 3) + rng.uniform(0, 255))
                        % 256 for _ in range(3)], -1)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"{i}.png")


def test_train_resume_ladder_and_export(tmp_path):
    """Tiny widths: train 1 step (--minutes spent), resume to 2 and 4, build a 2-step ladder,
    export, load, code."""
    from nicodec.models.vq.train import main

    data, out = tmp_path / "photos", tmp_path / "run"
    _photos(data)
    common = ["--data", str(data), "--out", str(out), "--batch", "2", "--crop", "32",
              "--widths", "8,8,8,8", "--codebook-size", "64", "--code-dim", "4",
              "--disc-width", "4", "--threads", "1", "--save-every", "2", "--gan-start", "3"]
    main(["vqgan", "--steps", "4", "--minutes", "1e-9", *common])  # budget spent: one step
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 1
    main(["vqgan", "--steps", "2", *common])
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 2
    main(["vqgan", "--steps", "4", *common])  # continues from step 2, discriminator from 3
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 4 and any(v.abs().sum() > 0 for v in ckpt["disc"].values())
    main(["ladder", *common, "--sizes", "4,16", "--finetune-steps", "2", "--pool", "8",
          "--count-images", "4", "--export", str(out / "w.safetensors")])
    report = json.loads((out / "ladder.json").read_text())
    assert report["sizes"] == [4, 16, 64] and report["val_images"] > 0
    net, prior = vqcodec.load_weights(str(out / "w.safetensors"))
    assert net.sizes == [4, 16, 64]
    for q, k in enumerate(net.sizes, start=1):
        table = prior.at(q).freqs(np.zeros((0, 5), np.int64), 0)
        assert table.shape == (k,) and table.sum() == TOTAL and table.min() >= 1
    idx = net.analyze(torch.rand(1, 3, 32, 48), 2)
    assert idx.shape == (1, 2, 3) and idx.max() < 16
    # a new run from the exported file: same transforms and full codebook, a held-back curve
    from nicodec.models.vq.train import init_from_file

    start = init_from_file(out / "w.safetensors")
    assert torch.equal(start.quantizer.codebooks[0], net.codebooks[-1])
    assert torch.equal(start.decoder.layers[-1].weight, net.model.decoder.layers[-1].weight)
    again = tmp_path / "again"
    main(["vqgan", "--steps", "2", *common[:2], "--out", str(again), *common[4:],
          "--init", str(out / "w.safetensors"), "--warmup", "2", "--eval-every", "1"])
    curve = [json.loads(line) for line in (again / "curve.jsonl").read_text().splitlines()]
    assert [p["step"] for p in curve] == [0, 1, 2]
    assert all(math.isfinite(p["held_out_psnr"]["full"]) for p in curve)


@pytest.fixture(scope="module")
def vq():
    if not SHIPPED.exists():
        pytest.skip("vq-cpu weights not built")
    return load_model("vq-static")


@needs_weights
def test_shipped_ladder_sizes_and_tables(vq):
    info = model_info("vq-static")
    assert info.qualities == tuple(range(1, 11)) and info.default_quality in info.qualities
    full = vq.net.model.config.codebook_size
    assert vq.net.sizes == [8 << (q - 1) for q in range(1, 10)] + [full] and full >= 4096
    for q, k in zip(info.qualities, vq.net.sizes):
        table = vq.prior.at(q).freqs(np.zeros((0, 1), np.int64), 0)
        assert table.shape == (k,) and table.sum() == TOTAL
    assert SHIPPED.stat().st_size <= 20e6


@needs_weights
def test_round_trip_matches_the_network(vq, kodak_pixels):
    crop = kodak_pixels[:200, :300]  # padded to 208 x 304 by the pipeline
    for q in (1, 10):
        enc = encode_detailed(crop, model="vq-static", quality=q)
        dec = decode_detailed(enc.data)
        assert dec.lost_packets == 0 and dec.pixels.shape == crop.shape
        assert np.array_equal(dec.indices, enc.indices) and enc.indices.shape == (1, 13, 19)
        x = np.pad(crop, ((0, 8), (0, 4), (0, 0)), mode="edge")
        x = torch.from_numpy(x).permute(2, 0, 1)[None].float() / 255
        level = vq.net.at(q)
        ref = level.synthesize(level.analyze(x))[0, :, :200, :300]
        ref = (ref.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        assert np.array_equal(dec.pixels, ref)
        assert np.array_equal(codec.decode_array(enc.data), ref)
        assert encode_detailed(crop, model="vq-static", quality=q).data == enc.data  # deterministic


@needs_weights
def test_kodak_header_and_payload_stay_tiny(vq, kodak_path):
    data = codec.encode(kodak_path, model="vq-static", quality=1)
    header, offset = parse_header(data)
    assert header.quality == 1 and offset == 14  # one packet, 14-byte header
    assert len(data) - offset - 2 <= 48 * 32 * 3 / 8  # at most 3 bits per 16x16 unit
    rates = [len(codec.encode(kodak_path, model="vq-static", quality=q)) * 8 / (768 * 512)
             for q in (1, 5, 10)]
    assert rates == sorted(rates) and rates[-1] <= 0.05


@needs_weights
def test_damage_is_concealed_or_refused(vq, kodak_path):
    data = codec.encode(kodak_path, model="vq-static", quality=10, packets=4)
    clean = decode_detailed(data)
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    result = decode_detailed(bytes(bad))
    assert result.lost_packets == 1 and 0.2 < result.concealed_fraction < 0.3
    err = np.mean((clean.pixels.astype(float) - result.pixels.astype(float)) ** 2)
    assert 10 * np.log10(255**2 / err) > 15
    with pytest.raises(codec.PacketLossError):
        codec.decode(bytes(bad), strict=True)
    header, offset = parse_header(data)
    wrong = dataclasses.replace(header, quality=11).to_bytes() + data[offset:]
    with pytest.raises(codec.CorruptHeaderError, match="quality"):
        decode_detailed(wrong)
    with pytest.raises(codec.BitstreamError):
        decode_detailed(data[:offset - 1])


def test_effort_search_lowers_the_pixel_error(kodak_pixels, monkeypatch):
    """Effort 2 re-chooses VQ indices in pixel space: on a Kodak crop, with tiles smaller than
    the crop (so that tile margins are exercised), the decoded pixels are closer to the image
    than at effort 1; both files decode with the same decoder to the symbols the encoder chose
    (staged transformer coding and several packets)."""
    from nicodec.models.vq import search

    monkeypatch.setattr(search, "TILE", 4)
    pixels = np.array(kodak_pixels[:96, :160])
    errors = {}
    for effort in (1, 2):
        for model, packets in (("vq", None), ("vq-static", 3)):
            enc = encode_detailed(pixels, model=model, quality=4, packets=packets, effort=effort)
            dec = decode_detailed(enc.data)
            assert (dec.indices == enc.indices).all() and dec.lost_packets == 0
            errors[effort, model] = float(((dec.pixels.astype(float) - pixels) ** 2).mean())
    assert errors[2, "vq"] < errors[1, "vq"] and errors[2, "vq-static"] < errors[1, "vq-static"]
    with pytest.raises(ValueError, match="effort"):
        search.effort_search(4)
