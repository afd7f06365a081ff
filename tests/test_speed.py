"""What a user waits for: the coding commands' start-up, their thread count, the target search.

* ``codec encode`` / ``decode`` and the Python API import nothing heavy that they do not use:
  compressai alone took 3-5 s to import (torch_geometric, pandas); the model layers it gave
  (GDN) are ours now, checked here against compressai's, the layer the shipped weights were
  trained with.
* ``--threads N`` (default 1): with another program busy on one core, two torch threads made a
  Kodak decode about 10x slower than one (``eval/results/bench/startup.md``).
* ``--target-*`` runs the analysis transform once, not once per trial, with the same file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from threadpoolctl import threadpool_info, threadpool_limits

from nicodec.cli import main
from nicodec.codec import registry
from nicodec.codec.image import load_image
from nicodec.codec.pipeline import decode_detailed, encode_detailed
from nicodec.codec.target import encode_to_target
from nicodec.models.layers import GDN

ROOT = Path(__file__).resolve().parent.parent
# dask, distributed, fsspec: only --cluster and URLs need them (codec/batch.py)
HEAVY = ("compressai", "torch_geometric", "pandas", "scipy", "matplotlib", "torchmetrics",
         "torchvision", "dask", "distributed", "fsspec")
_CLI_PROBE = ("import json, sys, nicodec.cli as cli\n"
              "try:\n    cli.main(sys.argv[1:])\n"
              "except SystemExit as exit:\n"
              "    import torch\n"
              "    print(json.dumps({'exit': exit.code, 'threads': torch.get_num_threads(),\n"
              "                      'heavy': [m for m in %r if m in sys.modules]}))\n" % (HEAVY,))


def _probe_cli(*args) -> dict:
    """Run the codec command in a fresh interpreter; its exit code, torch's thread count after
    it, and which heavy packages it imported."""
    res = subprocess.run([sys.executable, "-c", _CLI_PROBE, *map(str, args)], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


@pytest.fixture
def small_png(tmp_path, small_rgb) -> Path:
    path = tmp_path / "small.png"
    Image.fromarray(small_rgb).save(path)
    return path


def test_coding_commands_import_nothing_heavy(tmp_path, small_png):
    """A real encode and decode, each in its own process, at the default settings."""
    encoded = _probe_cli("encode", small_png, "-o", tmp_path / "a.nic")
    assert encoded == {"exit": 0, "threads": 1, "heavy": []}
    decoded = _probe_cli("decode", tmp_path / "a.nic", "-o", tmp_path / "a.png")
    assert decoded == {"exit": 0, "threads": 1, "heavy": []}
    assert Image.open(tmp_path / "a.png").size == Image.open(small_png).size


def test_python_api_imports_nothing_heavy(small_png):
    probe = ("import sys, nicodec.codec as codec\n"
             "image = codec.decode(codec.encode(sys.argv[1]))\n"
             "print(image.size, [m for m in %r if m in sys.modules])\n" % (HEAVY,))
    res = subprocess.run([sys.executable, "-c", probe, str(small_png)], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "(53, 37) []"


def _blas_threads() -> int | None:
    """numpy's BLAS threads (None: no BLAS library loaded)."""
    return next((pool["num_threads"] for pool in threadpool_info()
                 if pool["user_api"] == "blas"), None)


def test_threads_option(tmp_path, small_png):
    """--threads sets torch's thread count for the coding (default 1), in a real process and
    in-process (where torch is already loaded); 0 is a usage error."""
    assert _probe_cli("encode", small_png, "-o", tmp_path / "a.nic", "--threads", "2") == \
        {"exit": 0, "threads": 2, "heavy": []}
    assert _probe_cli("decode", tmp_path / "a.nic", "-o", tmp_path / "a.png",
                      "--threads", "2")["threads"] == 2
    before, blas_before = torch.get_num_threads(), _blas_threads()
    runner = CliRunner()
    try:
        for threads in ("2", "1"):
            res = runner.invoke(main, ["decode", str(tmp_path / "a.nic"), "-o",
                                       str(tmp_path / f"t{threads}.png"), "--threads", threads])
            assert res.exit_code == 0, res.output
            assert torch.get_num_threads() == int(threads)
            assert _blas_threads() == min(int(threads), os.cpu_count())  # numpy's BLAS too
        torch.set_num_threads(2)
        res = runner.invoke(main, ["encode", str(small_png), "-o", str(tmp_path / "b.nic")])
        assert res.exit_code == 0, res.output
        assert torch.get_num_threads() == 1  # the default
    finally:
        torch.set_num_threads(before)
        threadpool_limits(blas_before, user_api="blas")
    for command, target in (("encode", small_png), ("decode", tmp_path / "a.nic")):
        res = runner.invoke(main, [command, str(target), "--threads", "0"])
        assert res.exit_code == 2 and "--threads" in res.output
    assert "--threads" in runner.invoke(main, ["encode", "--help"]).output


@pytest.mark.parametrize("inverse", [False, True])
def test_gdn_matches_compressai(inverse):
    """Same state-dict keys, outputs and training gradients as compressai's GDN (so weights
    trained with either load into the other), also with parameters below their bounds, where
    the lower bound's gradient differs from max's."""
    compressai_layers = pytest.importorskip("compressai.layers")
    torch.manual_seed(0)
    ours, theirs = GDN(6, inverse=inverse), compressai_layers.GDN(6, inverse=inverse)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    state = {k: v + 0.05 * torch.randn_like(v) if k in ("beta", "gamma") else v
             for k, v in theirs.state_dict().items()}
    state["beta"][:2] = 0.0  # below beta's bound
    ours.load_state_dict(state)
    theirs.load_state_dict(state)
    x = torch.randn(2, 6, 5, 7)
    with torch.no_grad():
        assert torch.equal(ours(x.clone()), theirs(x))
    weight = torch.randn(2, 6, 5, 7)
    grads = []
    for layer in (ours, theirs):
        layer.zero_grad()
        xg = x.clone().requires_grad_(True)
        out = layer(xg)
        (out * weight).sum().backward()
        grads.append([out.detach(), xg.grad, layer.beta.grad, layer.gamma.grad])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("effort", [1, 2])
def test_target_search_analyses_once(monkeypatch, small_rgb, effort):
    """The trials of a target search share one run of the analysis transform, and each file is
    the one a plain encode at the chosen setting gives."""
    net = registry.load_model("mcq").net
    calls = []
    latents = net.latents

    def counted(x):
        calls.append(1)
        return latents(x)

    monkeypatch.setattr(net, "latents", counted)
    found = encode_to_target(small_rgb, target_bpp=0.5, effort=effort)
    assert found.trials > 3 and len(calls) == 1
    picture = load_image(small_rgb)
    plain = encode_detailed(picture, "mcq", found.quality, effort=effort,
                            rate_weight=found.rate_weight)
    assert plain.data == found.data and len(calls) == 2
    shared = registry.load_model("mcq").analysis(picture.pixels)
    again = encode_detailed(picture, "mcq", found.quality, effort=effort,
                            rate_weight=found.rate_weight, analysis=shared)
    assert again.data == found.data
    assert decode_detailed(found.data).header.quality == found.quality
