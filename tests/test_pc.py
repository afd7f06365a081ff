"""Lossless PC mode: HCLT structure, EM, exact integer coding, codec round trips."""

from __future__ import annotations

import gzip
import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nicodec.bitstream.entropy import TOTAL
from nicodec.bitstream.format import Family
from nicodec.codec import registry
from nicodec.codec.pipeline import decode_detailed, encode_detailed
from nicodec.models.data import load_idx
from nicodec.models.pc.coder import IntHCLT
from nicodec.models.pc.hclt import HCLT, HCLTConfig, TreeOrder, chow_liu_tree, mutual_information

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT.parent / "shared" / "data" / "mnist"


def _needs_mnist(folder: Path = MNIST) -> None:
    """Skip when the data folder beside the repository (../shared/data) is not there."""
    if not (folder / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"{folder.name} not found beside the repository ({folder})")


def _chain_data(n: int = 4000, d: int = 6, seed: int = 0) -> np.ndarray:
    """Values 0..255 where each column copies its left neighbour with noise: a chain."""
    rng = np.random.default_rng(seed)
    data = np.empty((n, d), np.int64)
    data[:, 0] = rng.integers(0, 256, n)
    for j in range(1, d):
        flip = rng.random(n) < 0.1
        data[:, j] = np.where(flip, rng.integers(0, 256, n), data[:, j - 1])
    return data


def test_chow_liu_recovers_a_chain_and_roots_it_in_the_middle():
    parent = chow_liu_tree(mutual_information(_chain_data()))
    edges = {tuple(sorted((i, int(p)))) for i, p in enumerate(parent) if p >= 0}
    assert edges == {(j, j + 1) for j in range(5)}
    order = TreeOrder.of(parent)
    assert order.root in (2, 3) and order.depth.max() == 3


def test_tree_order_is_a_preorder():
    rng = np.random.default_rng(1)
    parent = np.array([-1] + [int(rng.integers(0, i)) for i in range(1, 40)])
    order = TreeOrder.of(parent)
    position = np.argsort(order.preorder)
    for node, p in enumerate(parent):
        if p >= 0:
            assert position[p] < position[node]
            assert position[node] <= order.subtree_end[p]  # subtrees are contiguous
    assert sorted(order.preorder) == list(range(40))


def test_likelihood_is_a_normalized_distribution():
    parent = np.array([1, -1, 1, 2])
    model = HCLT(HCLTConfig(variables=4, values=3, hidden=2), parent, seed=3)
    x = torch.tensor(list(itertools.product(range(3), repeat=4)))
    assert torch.exp(model.log_likelihood(x)).sum().item() == pytest.approx(1.0, abs=1e-5)


def test_em_increases_the_likelihood():
    data = _chain_data(2000)
    model = HCLT(HCLTConfig(variables=6, values=256, hidden=4), chow_liu_tree(
        mutual_information(data)))
    model.init_emissions(data)
    x = torch.from_numpy(data)
    history = []
    for _ in range(5):
        ll, counts = model.expected_counts(x)
        history.append(ll)
        model.em_update(counts, step=1.0, pseudocount=0.01)
    assert all(b > a for a, b in zip(history, history[1:]))


@pytest.fixture(scope="module")
def small_int_model():
    data = _chain_data(3000, d=10)
    model = HCLT(HCLTConfig(variables=10, values=256, hidden=8), chow_liu_tree(
        mutual_information(data)))
    model.init_emissions(data)
    for _ in range(3):
        model.em_update(model.expected_counts(torch.from_numpy(data))[1], 1.0, 0.01)
    return model, IntHCLT.from_float(model), _chain_data(50, d=10, seed=5)


def test_efficient_tables_equal_naive_ones_and_float_bits(small_int_model):
    model, int_model, data = small_int_model
    bits = 0.0
    for k, (freqs, node) in enumerate(zip(int_model.tables(data), int_model.order.preorder)):
        assert freqs.min() >= 1 and (freqs.sum(-1) == TOTAL).all()
        assert (freqs == int_model.naive_freqs(data, k)).all()
        bits -= np.log2(freqs[np.arange(len(data)), data[:, node]] / TOTAL).sum()
    float_bits = -model.log_likelihood(torch.from_numpy(data)).sum().item() / np.log(2)
    assert abs(bits - float_bits) / float_bits < 0.01  # fixed point costs < 1%


def test_tables_do_not_depend_on_batch_split(small_int_model):
    _, int_model, data = small_int_model

    def tables(rows):
        return np.stack(list(int_model.tables(rows)), 1)

    whole = tables(data)
    assert (np.concatenate([tables(data[:7]), tables(data[7:])]) == whole).all()


def _write_idx(path: Path, images: np.ndarray) -> None:
    header = bytes([0, 0, 8, 3]) + b"".join(int(s).to_bytes(4, "big") for s in images.shape)
    path.write_bytes(gzip.compress(header + images.astype(np.uint8).tobytes()))


@pytest.fixture(scope="module")
def trained_pc(tmp_path_factory):
    """One EM epoch of a small HCLT on 1 100 MNIST digits, exported like a shipped model: the
    first command's budget is spent after one epoch of two (checkpoint, nothing exported), the
    second ends the run there and exports."""
    _needs_mnist()
    tmp = tmp_path_factory.mktemp("pc")
    train = load_idx(MNIST / "train-images-idx3-ubyte.gz")[:1100]
    test = load_idx(MNIST / "t10k-images-idx3-ubyte.gz")[:40]
    (tmp / "data").mkdir()
    _write_idx(tmp / "data" / "train-images-idx3-ubyte.gz", train)
    _write_idx(tmp / "data" / "t10k-images-idx3-ubyte.gz", test)
    cmd = [sys.executable, "-m", "nicodec.models.pc.train", "mnist", "--data", str(tmp / "data"),
           "--out", str(tmp / "run"), "--hidden", "4", "--batch", "200",
           "--export", str(tmp / "pc.safetensors")]
    res = subprocess.run(cmd + ["--epochs", "2", "--minutes", "1e-9"], cwd=ROOT, check=True,
                         capture_output=True, text=True)
    assert "--minutes spent at epoch 1 of 2" in res.stdout
    assert not (tmp / "pc.safetensors").exists()
    subprocess.run(cmd + ["--epochs", "1"], cwd=ROOT, check=True, capture_output=True)
    return tmp / "pc.safetensors", test


@pytest.fixture
def pc_model(trained_pc, monkeypatch):
    path, test = trained_pc
    info = registry.ModelInfo(name="pc-test", model_id=98, family=Family.LOSSLESS,
                              weights=path.name, module="nicodec.models.pc.codec", qualities=(0,),
                              default_quality=0, description="test")
    monkeypatch.setattr(registry, "WEIGHTS_DIR", path.parent)
    monkeypatch.setitem(registry.MODELS, "pc-test", info)
    registry.load_model.cache_clear()
    yield test
    registry.load_model.cache_clear()


def test_strip_of_digits_round_trips_losslessly(pc_model):
    strip = np.concatenate(list(pc_model[:20]), axis=1)  # 28 x 560: twenty units
    enc = encode_detailed(strip[:, :, None], model="pc-test", packets=3)
    dec = decode_detailed(enc.data)
    assert dec.pixels.shape == (28, 560, 1)
    assert (dec.pixels[:, :, 0] == strip).all()
    assert len(enc.data) * 8 < enc.model_bits + 8 * 40  # file = ideal bits + a small header
    single = encode_detailed(pc_model[0][:, :, None], model="pc-test")
    assert (decode_detailed(single.data).pixels[:, :, 0] == pc_model[0]).all()


def test_odd_sizes_and_colour_input(pc_model):
    image = np.concatenate([pc_model[0], pc_model[1]], axis=1)[:25, :50]
    dec = decode_detailed(encode_detailed(image[:, :, None], model="pc-test").data)
    assert (dec.pixels[:, :, 0] == image).all()
    with pytest.raises(ValueError, match="grayscale"):
        encode_detailed(np.full((28, 28, 3), [1, 2, 3], np.uint8), model="pc-test")


def test_lost_packet_blanks_only_its_tiles(pc_model):
    strip = np.concatenate(list(pc_model[:12]), axis=1)
    data = bytearray(encode_detailed(strip[:, :, None], model="pc-test", packets=4).data)
    data[-3] ^= 0xFF  # inside the last packet's payload or CRC
    dec = decode_detailed(bytes(data))
    assert dec.lost_packets == 1
    tiles = dec.pixels[:, :, 0].reshape(28, 12, 28).transpose(1, 0, 2)
    truth = strip.reshape(28, 12, 28).transpose(1, 0, 2)
    intact = [(tiles[i] == truth[i]).all() for i in range(12)]
    assert sum(intact) >= 9 and all(intact[i] or (tiles[i] == 128).all() for i in range(12))


def test_tables_identical_across_thread_counts(trained_pc):
    path, _ = trained_pc
    script = ("import numpy as np, sys; from nicodec.models.pc.codec import load_weights; "
              "from nicodec.models.data import load_idx; "
              f"_, p = load_weights({str(path)!r}); "
              f"x = load_idx({str(MNIST / 't10k-images-idx3-ubyte.gz')!r})[:30].reshape(30, -1)"
              ".astype(np.int64); s = p.session(30); h = 0\n"
              "for k, node in enumerate(p.model.order.preorder):\n"
              "    f = s.freqs(x[:, p.model.order.preorder[:k]].T, k); h = hash((h, f.tobytes()))\n"
              "print(h)")
    outs = set()
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
               "PYTHONHASHSEED": "0"}
        outs.add(subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True,
                                capture_output=True, text=True).stdout)
    assert len(outs) == 1


def test_residual_transform_round_trips():
    from nicodec.models.pc.residuals import SYMBOLS, from_symbols, to_symbols

    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    tiles[:5] = 0
    tiles[5:10] = 255
    tiles[10, :, :, 0] = 255  # extreme colour differences
    symbols = to_symbols(tiles)
    assert symbols.min() >= 0 and symbols.max() < SYMBOLS
    assert (from_symbols(symbols) == tiles).all()


@pytest.fixture(scope="module")
def trained_photo(tmp_path_factory):
    """One EM epoch of a small photo HCLT on generated smooth pictures."""
    from PIL import Image

    tmp = tmp_path_factory.mktemp("pcphoto")
    rng = np.random.default_rng(0)
    (tmp / "photos").mkdir()
    yy, xx = np.mgrid[:64, :80]
    for i in range(30):
        base = np.stack([(yy * rng.uniform(0, 4) + xx * rng.uniform(0, 3) + rng.uniform(0, 99))
                         for _ in range(3)], -1)
        noisy = np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(tmp / "photos" / f"{i}.png")
    cmd = [sys.executable, "-m", "nicodec.models.pc.train", "photos", "--data", str(tmp / "photos"),
           "--out", str(tmp / "run"), "--hidden", "4", "--epochs", "1", "--samples", "4000",
           "--export", str(tmp / "photo.safetensors")]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return tmp / "photo.safetensors"


def test_photo_lossless_round_trip(trained_photo, monkeypatch):
    info = registry.ModelInfo(name="pc-photo-test", model_id=97, family=Family.LOSSLESS,
                              weights=trained_photo.name, module="nicodec.models.pc.codec",
                              qualities=(0,), default_quality=0, description="test")
    monkeypatch.setattr(registry, "WEIGHTS_DIR", trained_photo.parent)
    monkeypatch.setitem(registry.MODELS, "pc-photo-test", info)
    registry.load_model.cache_clear()
    try:
        rng = np.random.default_rng(1)
        image = rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)  # odd size, two tile rows
        image[:20] = 90  # and a flat part
        enc = encode_detailed(image, model="pc-photo-test", packets=2)
        dec = decode_detailed(enc.data)
        assert dec.pixels.shape == image.shape and (dec.pixels == image).all()
        assert len(enc.data) * 8 < enc.model_bits + 8 * 40
        gray = image[:, :, :1]
        assert (decode_detailed(encode_detailed(gray, model="pc-photo-test").data).pixels
                == gray).all()
    finally:
        registry.load_model.cache_clear()


def test_shipped_digit_models_code_test_digits_exactly():
    """The shipped models on 200 test images of their datasets, as one stream: exact, and at
    the rate measured at export (a regression guard, not the benchmark: eval/lossless.py)."""
    from nicodec import codec

    for name, folder, bound in (("pc-mnist", MNIST, 1.32), ("pc-fashion", MNIST.parent /
                                                             "fashion-mnist", 3.6)):
        _needs_mnist(folder)
        images = load_idx(folder / "t10k-images-idx3-ubyte.gz")[:200]
        strip = np.concatenate(list(images), axis=1)
        data = codec.encode(strip[:, :, None], model=name)
        assert (codec.decode_array(data) == strip).all()
        assert 8 * len(data) / strip.size < bound
