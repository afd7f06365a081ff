"""The masked index transformer: exact integer inference, coding stages, training, and the
shipped `vq` model through the codec (round trips, one-packet staged coding, restoration)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from nicodec import codec
from nicodec.bitstream.entropy import TOTAL, cost_bits
from nicodec.bitstream.format import parse_header
from nicodec.codec.pipeline import decode_detailed, encode_detailed
from nicodec.codec.registry import WEIGHTS_DIR, load_model, model_info
from nicodec.eval.loss import damage
from nicodec.models.vq.exact import IntIndexTransformer, isqrt
from nicodec.models.vq.transformer import (SCHEDULES, IndexTransformer, PriorConfig, num_stages,
                                           stage_map, training_masks)

TINY = PriorConfig(dim=32, layers=2, heads=2, radius=2, mlp=2, code_dim=4, qualities=2)
SHIPPED = WEIGHTS_DIR / model_info("vq").weights


def _tiny(perturb: float = 0.3) -> IndexTransformer:
    torch.manual_seed(0)
    books = [torch.nn.functional.normalize(torch.randn(k, 4), dim=-1) for k in (8, 16)]
    static = [torch.log2(torch.softmax(torch.randn(k), 0)) for k in (8, 16)]
    model = IndexTransformer(TINY, books, static).eval()
    with torch.no_grad():  # an untrained network is nearly the static table: make it non-trivial
        for p in model.parameters():
            p.add_(torch.randn_like(p) * perturb)
    return model


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedules_partition_the_grid(name):
    stages = stage_map(9, 13, name)
    n = num_stages(name)
    assert stages.shape == (9, 13) and set(np.unique(stages)) == set(range(n))
    tile = np.asarray(SCHEDULES[name])
    assert (tile == 0).sum() >= 1 and np.bincount(tile.ravel()).sum() == 16


def test_training_masks_cover_both_kinds():
    gen = torch.Generator().manual_seed(0)
    masks = training_masks((64, 8, 8), "s6", gen)
    shown = masks.float().mean((1, 2))
    assert masks.dtype == torch.bool and shown.min() == 0 and shown.max() > 0.5


def test_isqrt_is_exact():
    values = torch.tensor([0, 1, 2, 3, 4, 15, 16, 17, (1 << 50) - 1, 1 << 50, 99980001],
                          dtype=torch.float64)
    expected = [int(np.floor(np.sqrt(int(v)))) for v in values]
    expected[8] = (1 << 25) - 1
    assert isqrt(values).long().tolist() == expected
    with pytest.raises(OverflowError):
        isqrt(torch.tensor([2.0**53]))


def test_integer_network_follows_the_float_one():
    model = _tiny()
    exact = IntIndexTransformer.from_float(model, "s6")
    gen = torch.Generator().manual_seed(1)
    for q, k in ((1, 8), (2, 16)):
        idx = torch.randint(0, k, (3, 7, 11), generator=gen)
        visible = torch.rand(3, 7, 11, generator=gen) > 0.4
        with torch.no_grad():
            logp = torch.log_softmax(model(idx, visible, q), -1).flatten(0, 2) / np.log(2)
        features = exact.features(idx.numpy(), visible.numpy(), q)
        freqs = exact.freqs(features.reshape(-1, TINY.dim), q)
        assert freqs.shape == (3 * 7 * 11, k) and (freqs.sum(1) == TOTAL).all()
        target = idx.flatten().numpy()
        float_bits = -logp[np.arange(len(target)), target].sum().item()
        assert abs(cost_bits(target, freqs) - float_bits) < 0.02 * float_bits
        assert len(np.unique(freqs, axis=0)) > 50  # tables depend on the context


def test_warm_start_rebuilds_the_float_network_from_an_export():
    from nicodec.models.vq.prior_train import warm_start

    model = _tiny()
    exact = IntIndexTransformer.from_float(model, "s6")
    torch.manual_seed(5)
    rebuilt = IndexTransformer(TINY, [model.codebook(q) for q in (1, 2)],
                               [getattr(model, f"static{q}") for q in (1, 2)]).eval()
    assert warm_start(rebuilt, exact, iterations=500) < 1e-3
    gen = torch.Generator().manual_seed(2)
    for q, k in ((1, 8), (2, 16)):
        idx = torch.randint(0, k, (2, 6, 9), generator=gen)
        visible = torch.rand(2, 6, 9, generator=gen) > 0.5
        with torch.no_grad():
            p = torch.softmax(model(idx, visible, q), -1)
            kl = (p * (p.log() - torch.log_softmax(rebuilt(idx, visible, q), -1))).sum(-1)
        assert kl.mean() / np.log(2) < 0.01  # bits per index lost by the round trip


def test_integer_network_is_batch_and_order_free():
    exact = IntIndexTransformer.from_float(_tiny(), "s6")
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 16, (4, 6, 9))
    visible = rng.random((4, 6, 9)) > 0.5
    together = exact.features(idx, visible, 2)
    for v in range(4):
        alone = exact.features(idx[v:v + 1], visible[v:v + 1], 2)
        assert torch.equal(alone[0], together[v])
    assert torch.equal(together, together.round())  # integers all the way


def test_features_of_chosen_rows_equal_the_full_grid_rows():
    """The coder asks for one stage's positions only (the last block runs for those rows): the
    integers must be those of the whole-grid pass, at the grid's edges and corners too."""
    exact = IntIndexTransformer.from_float(_tiny(), "s6")
    rng = np.random.default_rng(1)
    for h, w in ((6, 9), (1, 1), (2, 3)):
        idx, visible = rng.integers(0, 16, (2, h, w)), rng.random((2, h, w)) > 0.5
        full = exact.features(idx, visible, 2)
        for n in (0, 1, (h * w + 1) // 2, h * w):
            rows = np.sort(rng.choice(h * w, n, replace=False))
            assert torch.equal(exact.features(idx, visible, 2, rows), full[:, rows])


_THREADS_SCRIPT = """
import hashlib, sys, numpy as np, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(int(sys.argv[1]))
from tests.test_vq_prior import _tiny
from nicodec.models.vq.exact import IntIndexTransformer
exact = IntIndexTransformer.from_float(_tiny(), "s6")
rng = np.random.default_rng(0)
idx, visible = rng.integers(0, 16, (2, 24, 40)), rng.random((2, 24, 40)) > 0.3
f = exact.features(idx, visible, 2)
print(hashlib.sha256(exact.freqs(f.reshape(-1, f.shape[-1]), 2).tobytes()).hexdigest())
"""


def test_tables_do_not_depend_on_thread_count():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = _THREADS_SCRIPT.format(root=root)
    digests = {subprocess.run([sys.executable, "-c", script, str(t)], check=True,
                              capture_output=True, text=True, cwd=root).stdout for t in (1, 2)}
    assert len(digests) == 1


def test_prior_training_resumes_and_exports(tmp_path):
    from nicodec.bitstream.entropy import freqs_from_counts
    from nicodec.models.data import is_held_out
    from nicodec.models.vq import codec as vqcodec
    from nicodec.models.vq.exact import load_prior
    from nicodec.models.vq.train import main
    from nicodec.models.vq.vqgan import VQGAN, VQGANConfig

    torch.manual_seed(0)
    vqgan = VQGAN(VQGANConfig(widths=(8, 8, 8, 8), codebook_size=64, code_dim=4, disc_width=4))
    full = torch.nn.functional.normalize(vqgan.quantizer.codebooks.detach()[0], dim=-1)
    books = [full[:8].clone(), full[:16].clone(), full]
    ladder = tmp_path / "ladder.safetensors"
    vqcodec.save_weights(vqgan, books, [freqs_from_counts(np.ones(len(b))) for b in books],
                         str(ladder), {})
    data = tmp_path / "photos"
    data.mkdir()
    names = [f"p{i}.png" for i in range(400)]
    held = [n for n in names if is_held_out(data / n)][:1]
    rng = np.random.default_rng(0)
    for name in [n for n in names if n not in held][:5] + held:
        Image.fromarray(rng.integers(0, 256, (80, 112, 3), dtype=np.uint8)).save(data / name)
    run = tmp_path / "run"
    common = ["--out", str(run), "--data", str(data), "--ladder", str(ladder), "--dim", "16",
              "--layers", "1", "--heads", "2", "--radius", "1", "--grid", "4", "--batch", "4",
              "--eval-every", "2", "--eval-qualities", "1,3", "--save-every", "1"]
    export = ["--export", str(tmp_path / "prior.safetensors")]
    main(["prior", "--steps", "3", "--minutes", "1e-9", *common, *export])  # one step, no export
    assert torch.load(run / "prior.pt", weights_only=True)["step"] == 1
    assert not (tmp_path / "prior.safetensors").exists()
    main(["prior", "--steps", "2", *common])
    main(["prior", "--steps", "3", *common, *export])
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val" in r] == [2, 3]  # resumed at 2, not from 0
    assert {v["K"] for v in rows[-1]["val"]} == {8, 64}
    exact, meta = load_prior(str(tmp_path / "prior.safetensors"))
    assert exact.sizes == [8, 16, 64] and exact.config.dim == 16 and meta["ladder"] == ladder.name


# --- the shipped model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vq():
    return load_model("vq")


def test_staged_round_trip_is_exact_and_smaller(vq, kodak_pixels):
    crop = kodak_pixels[:200, :300]
    for q in (2, 8):
        enc = encode_detailed(crop, model="vq", quality=q)
        static = encode_detailed(crop, model="vq-static", quality=q)
        assert np.array_equal(enc.indices, static.indices)  # same ladder, other coding
        assert len(enc.data) < len(static.data)
        dec = decode_detailed(enc.data)
        assert dec.lost_packets == 0 and np.array_equal(dec.indices, enc.indices)
        assert np.array_equal(dec.pixels, decode_detailed(static.data).pixels)
        assert encode_detailed(crop, model="vq", quality=q).data == enc.data
        framing = 8 * parse_header(enc.data)[1] + 16  # header and the packet's CRC
        assert abs(len(enc.data) * 8 - framing - enc.model_bits) < 40  # coder flush


def test_stage_zero_table_is_the_full_grid_one(vq):
    staged = vq.staged(5)
    grid = np.random.default_rng(0).integers(0, 128, 7 * 10)
    features = vq.prior.model.features(grid.reshape(1, 7, 10), np.zeros((1, 7, 10), bool), 5)[0]
    full = vq.prior.model.freqs(features, 5)
    assert (full == staged.stage_tables(grid, 0, 7, 10)).all()


def test_shipped_prior_file(vq):
    info = model_info("vq")
    assert info.qualities == tuple(range(1, 11)) and SHIPPED.stat().st_size <= 20e6
    assert vq.net.sizes == vq.prior.model.sizes
    staged = vq.staged(8)
    assert staged.stages == num_stages(vq.prior.model.schedule)


def test_multi_packet_files_restore_lost_indices(vq, kodak_path):
    data = codec.encode(kodak_path, model="vq", quality=8, packets=10)
    clean = decode_detailed(data)
    assert len(clean.header.packet_lengths) == 10
    bad = damage(data, [3, 7])
    result = decode_detailed(bad)
    assert result.lost_packets == 2 and 0.15 < result.concealed_fraction < 0.25
    kept = ~result.lost
    assert np.array_equal(result.indices[0][kept], clean.indices[0][kept]) and result.restored
    truth = clean.indices[0][result.lost]
    static = vq.staged(8).freqs(truth[None], 0)[truth] / TOTAL
    for passes in (1, 3):  # each lost index is the most likely one of the distribution kept
        filled, probs = vq.staged(8).restore(clean.indices[0], result.lost, passes)
        assert np.array_equal(filled[result.lost], probs.argmax(1))
        assert np.allclose(probs.sum(1), 1, atol=0.01)
        # the prediction knows far more about the lost index than its frequency does
        predicted = probs[np.arange(len(truth)), truth]
        assert np.log2(predicted + 1e-9).mean() > np.log2(static).mean() + 0.5
    with pytest.warns(codec.ConcealedWarning, match="concealed"):
        codec.decode(bad)
    with pytest.raises(codec.PacketLossError):
        codec.decode(bad, strict=True)
    with pytest.raises(codec.PacketLossError, match="every packet"):
        decode_detailed(damage(data, list(range(10))))


def test_cli_reports_restoration(vq, kodak_path, tmp_path):
    from nicodec.cli import main

    data = codec.encode(kodak_path, model="vq", quality=6, packets=8)
    src = tmp_path / "bad.nic"
    src.write_bytes(damage(data, [1]))
    result = CliRunner().invoke(main, ["decode", str(src), "-o", str(tmp_path / "out.png")])
    assert result.exit_code == 0 and "concealed" in result.output
    strict = CliRunner().invoke(main, ["decode", str(src), "-o", str(tmp_path / "s.png"),
                                       "--strict"])
    assert strict.exit_code == 1 and not (tmp_path / "s.png").exists()


def test_loss_evaluation(vq, kodak_pixels, tmp_path):
    from nicodec.eval.loss import main

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(kodak_pixels[:192, :256]).save(folder / "crop.png")
    summary = main(["--images", str(folder), "--packets", "5", "--losses", "0,20,40",
                    "--trials", "1", "--quality", "6", "--out", str(tmp_path / "out")])
    clean, lossy = summary["levels"][0], summary["levels"][-1]
    assert clean["lost_fraction"] == 0 and clean["restored_drop_db"] == 0
    assert 0.3 < lossy["lost_fraction"] < 0.5
    assert lossy["restored_psnr"] > lossy["frequent_psnr"]
    assert summary["bytes_one_packet"] < summary["bytes_packets"]
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"summary.json", "summary.txt",
                                                             "loss_psnr.png"}
