"""Evaluation: Bjøntegaard deltas on hand-computed cases, and a small end-to-end RD run."""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nicodec import codec
from nicodec.eval import bench, rd
from nicodec.eval.baselines import available_baselines
from nicodec.eval.bd import bd_psnr, bd_rate

RATE = [0.1, 0.2, 0.4, 0.8]
PSNR = [28.0, 31.0, 34.0, 37.0]


def test_bd_rate_of_a_constant_rate_factor():
    # the test codec needs 80% of the bits for the same PSNR everywhere: exactly -20%
    assert bd_rate(RATE, PSNR, [r * 0.8 for r in RATE], PSNR) == pytest.approx(-20.0, abs=1e-9)
    assert bd_rate(RATE, PSNR, [r * 1.5 for r in RATE], PSNR) == pytest.approx(50.0, abs=1e-9)


def test_bd_psnr_of_a_constant_quality_shift():
    assert bd_psnr(RATE, PSNR, RATE, [p + 1.0 for p in PSNR]) == pytest.approx(1.0, abs=1e-9)


def test_bd_rate_by_hand_for_a_linear_curve():
    # PSNR linear in log2(rate): 3 dB per doubling. Shifting by +1 dB equals 2**(-1/3) the rate.
    expected = 100 * (2 ** (-1 / 3) - 1)
    assert bd_rate(RATE, PSNR, RATE, [p + 1.0 for p in PSNR]) == pytest.approx(expected, abs=1e-6)


def test_bd_without_overlap_is_nan_and_outliers_are_dropped():
    assert math.isnan(bd_rate(RATE, PSNR, RATE, [p + 20 for p in PSNR]))
    noisy_rate, noisy_psnr = RATE + [0.3], PSNR + [30.0]  # a dominated point
    assert bd_rate(noisy_rate, noisy_psnr, [r * 0.8 for r in RATE], PSNR) == pytest.approx(-20.0)


def mean_abs_error(reference: np.ndarray, distorted: np.ndarray) -> float:
    """A user metric plugged in through --metric."""
    return float(np.abs(reference.astype(int) - distorted.astype(int)).mean())


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, small_rgb):
    folder = tmp_path_factory.mktemp("images")
    big = np.array(Image.fromarray(small_rgb).resize((200, 176), Image.BICUBIC))
    Image.fromarray(big).save(folder / "a.png")
    Image.fromarray(big[::-1, ::-1].copy()).save(folder / "b.png")
    return folder


def test_rd_run_end_to_end(image_folder, tmp_path):
    out = tmp_path / "rd"
    summary = rd.main(["--images", str(image_folder), "--models", "mcq-tiny@1/4",
                       "--baselines", "jpeg,webp", "--out", str(out),
                       "--metric", "tests.test_eval:mean_abs_error"])
    assert set(summary["curves"]) == {"nicodec mcq-tiny", "jpeg", "webp"}
    assert summary["bd"]["webp"]["bd_rate_psnr_pct"] == pytest.approx(0.0, abs=1e-9)
    for name in ("per_image.csv", "per_image.json", "summary.json", "summary.txt",
                 "rd_psnr.png", "rd_ms_ssim.png"):
        assert (out / name).stat().st_size > 0
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    nic = [r for r in rows if r["codec"] == "nicodec mcq-tiny" and r["image"] == "a.png"
           and r["setting"] == "4"][0]
    pixels = np.asarray(Image.open(image_folder / "a.png"))
    assert int(nic["bytes"]) == len(codec.encode(pixels, model="mcq-tiny", quality=4)), "bpp from real file bytes"
    assert float(nic["bpp"]) == pytest.approx(8 * int(nic["bytes"]) / (200 * 176))
    assert "mean_abs_error" in rows[0]
    assert json.loads((out / "summary.json").read_text())["count"] == 2


def test_missing_baselines_are_reported_not_fatal(image_folder, tmp_path, monkeypatch, capsys):
    found, missing = available_baselines()
    monkeypatch.setattr(rd, "available_baselines",
                        lambda: ({"jpeg": found["jpeg"]}, {"jxl": "not installed here"}))
    summary = rd.main(["--images", str(image_folder), "--models", "mcq-tiny@4",
                       "--baselines", "jpeg,jxl", "--out", str(tmp_path), "--limit", "1"])
    assert summary["skipped_baselines"] == {"jxl": "not installed here"}
    assert "jxl skipped" in capsys.readouterr().err


def test_bench_runs(image_folder):
    rows = bench.main(["--images", str(image_folder), "--limit", "1", "--runs", "1"])
    assert rows[-1]["codec"].startswith("compressai bmshj2018-hyperprior")
    assert all(r["encode_s"] > 0 and r["decode_s"] > 0 for r in rows)


def test_bench_times_each_quality(image_folder, capsys):
    rows = bench.main(["--images", str(image_folder), "--limit", "1", "--runs", "1",
                       "--models", "mcq", "--qualities", "0,8"])
    assert [r["codec"] for r in rows[:2]] == ["nicodec mcq q0", "nicodec mcq q8"]
    assert rows[0]["bpp"] < rows[1]["bpp"]
    with pytest.raises(SystemExit):
        bench.main(["--images", str(image_folder), "--qualities", "high"])
    assert "comma-separated integers" in capsys.readouterr().err


def test_effort_levels_in_rd_and_bench(image_folder, tmp_path):
    """--efforts: a curve per effort level for the models that have it (mcq-tiny has none)."""
    summary = rd.main(["--images", str(image_folder), "--models", "mcq@2,mcq-tiny@2",
                       "--efforts", "1,2", "--baselines", "none", "--out", str(tmp_path),
                       "--limit", "1"])
    assert set(summary["curves"]) == {"nicodec mcq", "nicodec mcq e2", "nicodec mcq-tiny"}
    rows = bench.main(["--images", str(image_folder), "--limit", "1", "--runs", "1",
                       "--models", "mcq", "--qualities", "2", "--efforts", "1,2"])
    assert [r["codec"] for r in rows[:2]] == ["nicodec mcq q2", "nicodec mcq q2 e2"]


def test_training_curve_plot(tmp_path):
    from nicodec.eval.curves import plot, read_curve

    curve = tmp_path / "run" / "curve.jsonl"
    curve.parent.mkdir()
    points = [{"step": s, "loss": 1 / s, "train_psnr": 20 + s / 100,
               "held_out_psnr": {"0": 18.0, "1": 20 + s / 200}} for s in (500, 1000)]
    curve.write_text("".join(json.dumps(p) + "\n" for p in reversed(points)))
    assert [p["step"] for p in read_curve(curve)] == [500, 1000]
    plot({"run": read_curve(curve)}, tmp_path / "curve.png")
    with Image.open(tmp_path / "curve.png") as img:
        assert img.size[0] > 500


def test_target_table(image_folder, tmp_path):
    """eval.target: one row per image, bpp read back from the file it encodes, a summary."""
    from nicodec.eval import target

    out = tmp_path / "target.md"
    target.main(["--bpp", "0.3", "--images", str(image_folder), "--out", str(out)])
    text = out.read_text()
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ")
            and ".png |" in line]
    assert [r[0] for r in rows] == ["| a.png", "| b.png"]
    for r in rows:
        assert 0.27 <= float(r[4]) <= 0.3 and r[-1] == "yes |"
    assert "within 10% of 0.3 bpp: 2 of 2" in text


def test_side_by_side_figure(image_folder, tmp_path):
    from nicodec.eval import figure

    out = tmp_path / "sheet.png"
    figure.main(["--image", str(image_folder / "a.png"), "--bpp", "0.4", "--box", "0,0,64,48",
                 "--out", str(out)])
    with Image.open(out) as sheet:
        panels = 3 if "webp" in available_baselines()[0] else 2
        assert sheet.size == (64 * panels, 48 + 30)


def test_ssimulacra2_scores_arrays():
    """SSIMULACRA2 (the optional metric of --ssimulacra2) takes the arrays eval/rd.py holds:
    100 for identical images, lower for a damaged one."""
    from nicodec.eval.metrics import _ssimulacra2

    metric = _ssimulacra2()
    if metric is None:
        pytest.skip("ssimulacra2 is not installed (the eval extra)")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    damaged = image.copy()
    damaged[16:32] = 0
    assert metric(image, image) == pytest.approx(100.0)
    assert metric(image, damaged) < 50


def test_mcq_ceiling_figures():
    """eval.mcq_ceiling: more stages cost more bits and decode closer; optimizing the latent
    through the synthesis lowers its error."""
    import torch

    from nicodec.eval.mcq_ceiling import ceiling
    from nicodec.models.mcq.codec import load_weights
    from nicodec.models.weightfile import WEIGHTS

    net, prior = load_weights(str(WEIGHTS / "mcq.safetensors"))
    for p in net.parameters():
        p.requires_grad_(False)
    ramp = torch.linspace(0, 1, 64)
    x = torch.stack([ramp[None].expand(64, 64), ramp[:, None].expand(64, 64),
                     0.5 + 0.1 * torch.sin(20 * ramp)[None].expand(64, 64)])[None]
    row = ceiling(net, prior, x, steps=5)
    assert row["q8"][1] > row["q4"][1] > 0
    assert row["q8"][0] > row["q4"][0]
    assert row["optimized"][0] > row["unquantized"][0]
    assert len(row["optimized q8"]) == 2


EVAL_COMMANDS = {"eval": "rd", "bench": "bench", "loss": "loss"}


@pytest.mark.parametrize("module", EVAL_COMMANDS.values())
def test_eval_commands_without_images_say_what_they_need(module, tmp_path, monkeypatch, capsys):
    """As in a fresh clone, where the default ../shared/data/kodak does not exist: one line
    saying what data is needed and how to pass it, exit 2."""
    evaluation = importlib.import_module(f"eval.{module}")
    monkeypatch.setattr(evaluation, "DEFAULT_IMAGES", tmp_path / "kodak")
    with pytest.raises(SystemExit) as stop:
        evaluation.main([])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: ") and "--images FOLDER" in err and "Kodak" in err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as stop:
        evaluation.main(["--images", str(tmp_path / "empty")])
    assert stop.value.code == 2 and "none in" in capsys.readouterr().err


@pytest.mark.parametrize("module", EVAL_COMMANDS.values())
def test_eval_help_gives_every_option_a_text_and_its_default(module, monkeypatch):
    """Every option has help text, --help shows the defaults, and the default output folder
    is not the committed results in eval/results/."""
    parsers = []

    def capture(self, args=None, namespace=None):
        parsers.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        importlib.import_module(f"eval.{module}").main([])
    parser = parsers[0]
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        assert action.help, action.option_strings
        if action.default not in (None, False, [], argparse.SUPPRESS):
            assert f"default: {action.default}" in text or "(default" in action.help, action.dest
    out = parser.get_default("out")
    assert out is None or "eval/results" not in Path(out).resolve().as_posix()


def test_a_subset_is_not_plotted_against_full_kodak_without_a_note():
    kodak = Path("data/kodak")
    assert "not the same set" in rd.plot_title(1, kodak, published=True)
    assert "not the same set" in rd.plot_title(24, Path("mine"), published=True)
    assert "not the same set" not in rd.plot_title(24, kodak, published=True)
    assert "not the same set" not in rd.plot_title(1, kodak, published=False)
    assert "1 image of kodak/" in rd.plot_title(1, kodak, published=False)


def test_eval_without_images_as_a_subprocess(tmp_path):
    cli = Path(__file__).resolve().parent.parent / "cli.py"
    res = subprocess.run([sys.executable, str(cli), "eval", "--images", str(tmp_path / "none")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--images" in res.stderr


def test_combine_compares_curves_of_several_runs(tmp_path):
    from nicodec.eval import combine

    def points(rates, offset=0.0):
        return [{"setting": i, "bpp": r, "psnr": p + offset, "ms_ssim": 0.9 + i / 100}
                for i, (r, p) in enumerate(zip(rates, PSNR))]

    runs = [{"images": "/a/kodak", "count": 24,
             "curves": {"nicodec m": points([r * 0.8 for r in RATE]), "webp": points(RATE)}},
            {"images": "../data/kodak", "count": 24,
             "curves": {"webp": points(RATE, 1e-6), "jpeg": points([r * 2 for r in RATE])}}]
    paths = []
    for i, run in enumerate(runs):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(run))
    curves, _ = combine.merge(paths)
    table = combine.compare(curves)
    assert "| nicodec m | webp | -20.0% |" in table and "| nicodec m | jpeg | -60.0% |" in table
    combine.main([*map(str, paths), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "rd_psnr.png").exists()
    runs[1]["curves"]["webp"] = points(RATE, 0.5)  # another encoder: refused
    paths[1].write_text(json.dumps(runs[1]))
    with pytest.raises(SystemExit, match="differs"):
        combine.merge(paths)
    runs[1]["count"] = 8
    paths[1].write_text(json.dumps(runs[1]))
    with pytest.raises(SystemExit, match="8 images"):
        combine.merge(paths)


@pytest.mark.parametrize("variant", [
    [], ["--out-conv"],
    ["--levels", "4", "--first", "0", "--upsample", "learned", "--syn-ch", "8", "--syn-convs",
     "2", "--window", "5", "--passes", "4", "--schedule", "soft"],
    ["--schedule", "cosine"], ["--schedule", "soft", "--anneal-steps", "50"]])
def test_fit_explore_fits_an_image_and_lowers_its_loss(tmp_path, capsys, variant):
    """The overfitting prototype (issue 36) runs on an odd-sized image and improves on its
    zero start within three seconds of fitting (first prototype's decoder, its hidden layer to
    RGB by a 3x3 convolution, the larger decoder with the soft-rounding schedule, a cosine
    learning rate, soft rounding whose temperature falls over at least 50 steps)."""
    from nicodec.eval import fit_explore

    y, x = np.mgrid[0:100, 0:130]
    img = np.stack([x * 2, y * 2, (x + y)], -1).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "g.png")
    args = ["fit", "--image", str(tmp_path / "g.png"), "--seconds", "3", "--crop", "64",
            "--lr", "0.025", "--lat-lr", "0.05", *variant]
    fit_explore.main(args)
    lines = capsys.readouterr().out.strip().splitlines()
    start_psnr = float(lines[0].split()[3])
    result = json.loads(lines[-1])
    assert result["steps"] > 5 and result["psnr"] > start_psnr


@pytest.mark.parametrize("passes", [2, 4])
def test_fit_explore_arm_sees_only_earlier_passes(passes):
    """The prototype's ARM is decodable pass by pass: changing one latent changes no prediction
    of its own or an earlier pass, and changes some of a later one."""
    import torch

    from nicodec.eval import fit_explore

    torch.manual_seed(0)
    arm = fit_explore.ARM(levels=1, window=5, passes=passes)
    for p in arm.parameters():
        torch.nn.init.normal_(p)
    order = fit_explore.pass_order(passes).repeat(5, 5)[:9, :10]
    y = torch.randn(1, 9, 10).round()
    base = torch.stack(arm(y, None, 0))
    for i, j in [(4, 4), (4, 5), (5, 4), (5, 5)]:
        moved = y.clone()
        moved[0, i, j] += 3
        changed = (torch.stack(arm(moved, None, 0)) - base).abs().amax(0)[0] > 1e-6
        assert not changed[order <= order[i, j]].any()
        assert changed.any() == bool(order[i, j] < passes - 1)


def test_fit_explore_learned_upsampling_starts_bilinear():
    """The learned upsampler starts as bilinear interpolation (odd sizes, cropped)."""
    import torch
    import torch.nn.functional as F

    from nicodec.eval import fit_explore

    x = torch.randn(1, 2, 5, 7)
    ours = fit_explore.Upsampler(1).up2(x, 0, 9, 13)
    ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)[:, :, :9, :13]
    assert torch.allclose(ours, ref, atol=1e-6)


def test_fit_explore_compare_against_webp(tmp_path, capsys):
    """``compare`` reads fit logs and puts them against WebP: a curve at twice WebP's rate for
    the same PSNR is +100% in each row and in BD-rate, and 2 dB below it in BD-PSNR."""
    from nicodec.eval import fit_explore

    webp = tmp_path / "per_image.csv"
    with open(webp, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["codec", "setting", "image", "bytes", "bpp", "seconds", "psnr", "ms_ssim"])
        for bpp in (0.25, 0.5, 1, 2, 4):  # PSNR = 34 + 2 log2(bpp)
            out.writerow(["webp", 0, "g.png", 0, bpp, 0, 34 + 2 * math.log2(bpp), 0])
    logs = []
    for lam, bpp in [(0.002, 0.5), (0.0005, 2.0)]:
        result = {"image": "g.png", "seconds": 60, "steps": 10, "bpp": bpp,
                  "psnr": 32 + 2 * math.log2(bpp), "init": None, "schedule": "cosine",
                  "lr": 0.01, "lat_lr": 0.05, "lam": lam}
        logs.append(tmp_path / f"{lam}.log")
        logs[-1].write_text(f"start: ...\n{json.dumps(result)}\n")
    fit_explore.main(["compare", *map(str, logs), "--webp", str(webp)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == ("| g | cosine, zero start, lr 0.01, latents 0.05, lam 0.002 | 60 | 10 | "
                        "0.500 | 30.00 | 32.00 | -2.00 | +100% |")
    assert "BD-rate against WebP +100.0%, BD-PSNR -2.00 dB" in lines[2]
