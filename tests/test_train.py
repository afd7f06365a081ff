"""The training entry point on a few generated images: runs, resumes, exports loadable weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nicodec.models.mcq.tiny import load_weights

ROOT = Path(__file__).resolve().parent.parent


def _train(data: Path, out: Path, steps: int, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nicodec.models.mcq.train", "tiny", "--data", str(data), "--out",
           str(out), "--steps", str(steps), "--batch", "2", "--crop", "64", "--prior-steps", "3",
           "--save-every", "2", "--eval-every", "2", "--export", str(out / "w.safetensors"),
           *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)


def test_train_resume_and_export(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "photos"
    data.mkdir()
    for i in range(40):  # enough names that the hash split holds some back for validation
        Image.fromarray(rng.integers(0, 256, (72, 80, 3), dtype=np.uint8)).save(data / f"{i}.png")
    out = tmp_path / "run"
    # a spent --minutes budget: one step, the checkpoint written, nothing exported
    res = _train(data, out, 4, "--minutes", "1e-9")
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 1
    assert "--minutes spent at step 1 of 4" in res.stdout
    assert not (out / "w.safetensors").exists() and not (out / "report.json").exists()
    _train(data, out, 2)  # continues from step 1
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 2
    _train(data, out, 4)  # continues from step 2
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 4
    curve = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [point["step"] for point in curve] == [2, 4]  # one point per 2 steps, across resumes
    assert set(curve[0]["held_out_psnr"]) == {"0", "1", "2", "3", "4"}
    report = json.loads((out / "report.json").read_text())
    assert report["val_images"] > 0 and len(report["validation"]) == 4
    model, prior = load_weights(str(out / "w.safetensors"))
    x = torch.rand(1, 3, 32, 48)
    indices = model.analyze(x, 2)
    assert indices.shape == (2, 4, 6)
    assert prior.freqs(indices.reshape(2, -1)[:1], 1).shape == (24, 256)
    assert model.synthesize(indices).shape == (1, 3, 32, 48)


def test_training_refuses_kodak(tmp_path):
    kodak = tmp_path / "kodak"
    kodak.mkdir()
    res = subprocess.run([sys.executable, "-m", "nicodec.models.mcq.train", "tiny", "--data", str(kodak),
                          "--out", str(tmp_path / "r"), "--steps", "1"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode != 0 and "Kodak" in res.stderr


def test_torchrun_data_parallel(tmp_path):
    """Two processes under torchrun (gloo on the CPU): training (two autoencoder pretraining
    steps, whose unused quantizers DistributedDataParallel must accept, then nested steps),
    checkpoint, curve (the autoencoder's PSNR while pretraining, every quality's after the
    hand-over) and export work."""
    rng = np.random.default_rng(1)
    data = tmp_path / "photos"
    data.mkdir()
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (72, 80, 3), dtype=np.uint8)).save(data / f"{i}.png")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29517", "-m", "nicodec.models.mcq.train", "mcq", "--data", str(data),
           "--out", str(out), "--steps", "4", "--pretrain-steps", "2", "--batch", "2", "--crop",
           "64", "--threads", "1", "--set", "quantizer=rvq", "--set", "sibling_groups=1",
           "--prior-steps", "3", "--save-every", "1", "--eval-every", "1",
           "--rate-weights", ",".join(["0"] + ["0.2"] * 8),
           "--export", str(out / "w.safetensors")]
    subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, timeout=300)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 4
    curve = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [list(p["held_out_psnr"]) for p in curve] == [["autoencoder"]] * 2 + [
        [str(q) for q in range(9)]] * 2
    report = json.loads((out / "report.json").read_text())
    assert report["processes"] == 2 and report["rate_weights"] == [0] + [0.2] * 8
    from nicodec.models.mcq.codec import load_weights as load_mcq
    model, prior = load_mcq(str(out / "w.safetensors"))
    assert model.config.sibling_groups == 1 == prior.sibling_groups


def test_rate_weights_need_one_per_quality(tmp_path):
    res = subprocess.run([sys.executable, "-m", "nicodec.models.mcq.train", "mcq", "--out", str(tmp_path),
                          "--steps", "1", "--rate-weights", "0,0.1"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode != 0 and "one weight per quality" in res.stderr


def test_warm_start_keeps_the_shipped_codebooks():
    """Codebooks taken from a shipped weight file (which keeps no EMA state) are the starting
    point of training: the first training batch must not re-seed them from its own latents."""
    from nicodec.models.mcq.codec import load_weights as load_mcq
    from nicodec.models.mcq.network import MCQ
    from nicodec.models.mcq.train import warm_start

    path = ROOT / "models" / "weights" / "mcq.safetensors"
    shipped, _ = load_mcq(str(path))
    model = MCQ(shipped.config)
    warm_start(model, path)
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 3, 64, 64), torch.tensor([8, 8]))
    for name in ("coarse_vq", "fine_vq.stages.0", "fine_vq.stages.7"):
        after = model.get_submodule(name).codebooks
        before = shipped.get_submodule(name).codebooks
        assert (after - before).abs().amax() < 0.2 * before.abs().amax(), name


def test_autoencoder_pass_leaves_the_quantizers_alone():
    """The pretraining pass (``active=None``) trains analysis and synthesis only: no codebook
    moves or gets initialised, and gradients reach the transforms."""
    from nicodec.models.mcq.network import MCQ, MCQConfig

    torch.manual_seed(0)
    model = MCQ(MCQConfig(quantizer="rvq", group_dim=64)).train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "_vq." in k}
    x = torch.rand(2, 3, 64, 64)
    out = model(x, None)
    torch.nn.functional.mse_loss(out["x_hat"], x).backward()
    assert out["x_hat"].shape == x.shape
    assert all((model.state_dict()[k] == v).all() for k, v in before.items())
    assert model.g_a[0].weight.grad is not None and model.g_s[0].weight.grad is not None
    assert model.h_a[0].weight.grad is None


def test_autoencoder_pass_normalises_the_latent():
    """Pretraining decodes the fine latent at unit RMS plus noise, so the encoder cannot grow
    it past the quantization error it will meet."""
    from nicodec.models.mcq.network import MCQ

    torch.manual_seed(0)
    y = 50 * torch.randn(4, 8, 6, 6)
    clean = MCQ.pretrain_latent(y, max_noise=0.0)
    assert clean.pow(2).mean().item() == pytest.approx(1.0, rel=1e-4)
    assert torch.allclose(clean, y / y.pow(2).mean().sqrt(), atol=1e-5)
    noisy = MCQ.pretrain_latent(y, max_noise=0.3)
    assert 0 < (noisy - clean).pow(2).mean().sqrt() < 0.3


def test_handover_fits_and_freezes_the_codebooks():
    """End of pretraining: the fine latent is rescaled to unit RMS, every codebook is fitted by
    k-means (each residual stage lowers the error), and training moves no codeword after it."""
    from nicodec.models.data import CropSampler
    from nicodec.models.mcq.network import MCQ, MCQConfig
    from nicodec.models.mcq.train import handover

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(8)]
    config = MCQConfig(quantizer="rvq", groups=3, group_dim=8, codebook_size=16,
                           coarse_codebook_size=16, channels=16)
    model = MCQ(config).train()
    handover(model, CropSampler(images, 32), crops=16)
    assert model.training
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255)
    with torch.no_grad():
        f = model.g_a(x)
        y = model.fine_head(f)
        coarse = model.coarse_vq.indices(model.h_a(f))
        residual = y - model.h_s(model.coarse_vq.embed(coarse))
        errors = [(residual - model.fine_vq.embed_prefix(model.fine_vq.indices(residual, q))
                   ).pow(2).mean().item() for q in range(4)]
    assert y.pow(2).mean().item() == pytest.approx(1.0, rel=0.3)
    assert errors == sorted(errors, reverse=True) and errors[3] < 0.5 * errors[0]
    assert len(coarse.unique()) > 4  # codewords from the data, not one lonely winner
    before = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("codebooks")}
    model(x[:2], torch.tensor([3, 1]))
    assert all((model.state_dict()[k] == v).all() for k, v in before.items())


def test_refit_codebooks_entropy_constrained():
    """``--refit-codebooks``: only the residual stages change (the transforms and the coarse
    level keep their values), each stage lowers the error, a rate weight gives the first stage
    indices of lower entropy than plain k-means, and the codebooks stay frozen afterwards."""
    from nicodec.models.data import CropSampler
    from nicodec.models.mcq.network import MCQ, MCQConfig
    from nicodec.models.mcq.train import refit_codebooks

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(8)]
    config = MCQConfig(quantizer="rvq", groups=3, group_dim=8, codebook_size=16,
                           coarse_codebook_size=16, channels=16)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255)
    entropies = []
    for weight in (0.0, 0.002):  # the residual here: 0.01 per channel
        torch.manual_seed(0)
        model = MCQ(config).train()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        refit_codebooks(model, CropSampler(images, 32), (weight,) * 3, crops=16)
        assert model.training
        after = model.state_dict()
        changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
        assert {k for k in changed if k.endswith("codebooks")} == {
            f"fine_vq.stages.{s}.codebooks" for s in range(3)}
        assert all(k.startswith("fine_vq.stages.") for k in changed)  # codewords, EMA state
        with torch.no_grad():
            f = model.g_a(x)
            coarse = model.coarse_vq.indices(model.h_a(f))
            residual = model.fine_head(f) - model.h_s(model.coarse_vq.embed(coarse))
            idx = model.fine_vq.indices(residual, 3)
            errors = [(residual - model.fine_vq.embed_prefix(idx[:, :q])).pow(2).mean().item()
                      for q in range(4)]
        assert errors == sorted(errors, reverse=True)
        share = torch.bincount(idx[:, 0].flatten(), minlength=16).float() / idx[:, 0].numel()
        entropies.append(-(share[share > 0] * share[share > 0].log2()).sum().item())
        frozen = {k: v.clone() for k, v in after.items() if k.endswith("codebooks")}
        model(x[:2], torch.tensor([3, 1]))
        assert all(torch.equal(model.state_dict()[k], v) for k, v in frozen.items())
    assert entropies[1] < entropies[0] - 0.2


def test_refit_codebooks_flag_conflicts(tmp_path):
    rvq = ["--set", "quantizer=rvq"]
    for extra, message in (([], "quantizer=rvq"), (rvq + ["--pretrain-steps", "2"], "combined"),
                           (rvq + ["--freeze-codebooks"], "combined"),
                           (rvq + ["--refit-codebooks", "0.1,0.2"], "one per residual stage"),
                           (rvq + ["--refit-codebooks", "x"], "comma-separated numbers"),
                           (rvq + ["--refit-codebooks", "-1"], "non-negative")):
        res = subprocess.run([sys.executable, "-m", "nicodec.models.mcq.train", "mcq", "--data",
                              str(tmp_path), "--out", str(tmp_path / "r"), "--steps", "1",
                              "--refit-codebooks", "0.1", *extra], cwd=ROOT,
                             capture_output=True, text=True)
        assert res.returncode != 0 and message in res.stderr, (extra, res.stderr)


def test_frozen_codebooks_stay_put_in_training():
    """``--freeze-codebooks``: a training pass moves no codeword of the EMA quantizers (the
    coarse codebooks and every residual stage); Gumbel quantizers are refused."""
    from nicodec.models.mcq.network import MCQ, MCQConfig
    from nicodec.models.mcq.train import freeze_codebooks

    torch.manual_seed(0)
    model = MCQ(MCQConfig(quantizer="rvq", group_dim=64)).train()
    freeze_codebooks(model, pretrain_steps=0)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("codebooks")}
    model(torch.rand(2, 3, 64, 64), torch.tensor([8, 3]))
    assert all((model.state_dict()[k] == v).all() for k, v in before.items())
    with pytest.raises(SystemExit):
        freeze_codebooks(MCQ(MCQConfig(quantizer="gumbel")), pretrain_steps=0)
    with pytest.raises(SystemExit):
        freeze_codebooks(MCQ(MCQConfig(quantizer="rvq", group_dim=64)), pretrain_steps=5)
