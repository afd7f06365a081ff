"""Encoding to a target rate or PSNR: codec.encode_to_target and codec encode --target-*."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from nicodec import codec
from nicodec.cli import main
from nicodec.codec.target import RATE_TOLERANCE, metadata_note, psnr

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 96x128 RGB image with texture and noise: its rate grows over every quality step."""
    y, x = np.mgrid[0:96, 0:128]
    img = np.stack([128 + 60 * np.sin(x / 5.0) * np.cos(y / 7.0), x * 1.5 + 30 * np.sin(y / 3.0),
                    x + y], -1)
    img = img + np.random.default_rng(0).normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def bpp(data: bytes, pixels: np.ndarray) -> float:
    return 8 * len(data) / (pixels.shape[0] * pixels.shape[1])


def test_target_bpp_between_quality_steps(photo):
    q2, q3 = (bpp(codec.encode(photo, quality=q), photo) for q in (2, 3))
    target = (q2 + q3) / 2
    result = codec.encode_to_target(photo, target_bpp=target)
    achieved = bpp(result.data, photo)
    assert result.met and result.kind == "bpp" and result.achieved == pytest.approx(achieved)
    assert (1 - RATE_TOLERANCE) * target <= achieved <= target
    # closer than either quality step: the rate weight placed it between them
    assert target - achieved < min(target - q2, q3 - target)
    assert result.quality == 3 and result.rate_weight > codec.model_info("mcq").rate_weights[3]
    # an ordinary file: the unchanged decoder reads it
    decoded = codec.decode_array(result.data)
    assert decoded.shape == photo.shape and psnr(photo, decoded) > 20


def test_target_size_and_psnr(photo):
    budget = len(codec.encode(photo, quality=5)) - 40
    sized = codec.encode_to_target(photo, target_size=budget)
    assert sized.met and (1 - RATE_TOLERANCE) * budget <= len(sized.data) <= budget
    floor = psnr(photo, codec.decode_array(codec.encode(photo, quality=4))) - 0.3
    found = codec.encode_to_target(photo, target_psnr=floor)
    assert found.met and psnr(photo, codec.decode_array(found.data)) >= floor
    assert found.achieved == pytest.approx(psnr(photo, codec.decode_array(found.data)))
    assert len(found.data) < len(codec.encode(photo, quality=4)), "smaller than the step above"


def test_unreachable_targets_give_the_closest_file(photo):
    low = codec.encode_to_target(photo, target_bpp=0.001)
    assert not low.met and low.quality == 0
    assert low.data == codec.encode(photo, quality=0) and "cannot be met" in low.describe()
    high = codec.encode_to_target(photo, target_psnr=80)
    assert not high.met and high.quality == 8
    assert high.achieved >= psnr(photo, codec.decode_array(codec.encode(photo, quality=8)))
    with pytest.raises(ValueError, match="exactly one"):
        codec.encode_to_target(photo, target_bpp=0.2, target_psnr=30)
    with pytest.raises(ValueError, match="positive"):
        codec.encode_to_target(photo, target_size=0)


def test_target_keeps_alpha_like_encode(photo):
    rgba = np.dstack([photo, np.full(photo.shape[:2], 128, np.uint8)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = codec.encode_to_target(rgba.astype(np.uint16) * 257, target_size=900)
    assert [w.category for w in caught] == [codec.ConversionWarning], \
        "16 bits reduced to 8: warned once, not at every encoder run"
    decoded = codec.decode_array(result.data)
    assert decoded.shape == rgba.shape and (decoded[:, :, 3] == 128).all()
    assert result.met and len(result.data) <= 900


def test_models_without_rate_weight_pick_a_quality_step(photo):
    steps = {q: bpp(codec.encode(photo, model="mcq-tiny", quality=q), photo) for q in (1, 2, 3, 4)}
    result = codec.encode_to_target(photo, model="mcq-tiny", target_bpp=steps[3] + 1e-6)
    assert result.quality == 3 and result.rate_weight is None and result.met
    between = steps[2] / (1 - RATE_TOLERANCE) + 1e-3  # q2 is too far below, q3 above
    assert between < steps[3]
    result = codec.encode_to_target(photo, model="mcq-tiny", target_bpp=between)
    assert result.quality == 2 and not result.met and "largest file within" in result.describe()


def test_cli_target_json_and_warning(tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / "p.png")
    runner = CliRunner()
    res = runner.invoke(main, ["encode", str(tmp_path / "p.png"), "-o", str(tmp_path / "p.nic"),
                               "--target-bpp", "0.3", "--json"])
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    size = (tmp_path / "p.nic").stat().st_size
    assert record["target"] == {"kind": "bpp", "value": 0.3} and record["met"] is True
    assert record["achieved"] == pytest.approx(bpp(b"x" * size, photo), abs=1e-5)
    assert 0.27 <= record["achieved"] <= 0.3 and record["rate_weight"] > 0
    res = runner.invoke(main, ["encode", str(tmp_path / "p.png"), "-o", str(tmp_path / "low.nic"),
                               "--target-bpp", "0.001", "--json"])
    assert res.exit_code == 0 and "cannot be met" in res.stderr
    assert json.loads(res.stdout)["met"] is False
    assert (tmp_path / "low.nic").read_bytes() == codec.encode(photo, quality=0)


@pytest.mark.parametrize("args", [
    ["--target-bpp", "0.2", "--quality", "3"],
    ["--target-bpp", "0.2", "--target-size", "1000"],
    ["--target-size", "1000", "--target-psnr", "30"],
    ["--target-psnr", "30", "--lossless"],
    ["--target-bpp", "0"],
])
def test_cli_target_usage_errors(tmp_path, photo, args):
    Image.fromarray(photo).save(tmp_path / "p.png")
    res = CliRunner().invoke(main, ["encode", str(tmp_path / "p.png"), "-o",
                                    str(tmp_path / "p.nic"), *args])
    assert res.exit_code == 2, res.output
    assert not (tmp_path / "p.nic").exists()


def _jpeg_with_exif(pixels: np.ndarray, size: int) -> bytes:
    """A JPEG carrying ``size`` bytes of maker note in its EXIF, as a phone's photo does."""
    exif = Image.Exif()
    exif[0x010F] = "nicodec test phone"
    exif[0x927C] = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


def test_metadata_counts_toward_a_target_and_is_named(photo):
    jpeg = _jpeg_with_exif(photo, 30000)
    result = codec.encode_to_target(jpeg, target_size=10000)
    assert len(result.data) > 30000 and not result.met  # the EXIF alone is over the budget
    assert "30" in result.describe() and "--metadata drop" in result.describe()
    dropped = codec.encode_to_target(jpeg, target_size=10000, metadata="drop")
    assert len(dropped.data) <= 10000 and "metadata" not in dropped.describe()
    assert metadata_note(codec.encode(jpeg)).startswith("the ICC profile and EXIF take 300")
    assert metadata_note(codec.encode(jpeg, metadata="drop")) == ""


def test_cli_metadata_warning_and_verbose_bytes(tmp_path, photo):
    (tmp_path / "phone.jpg").write_bytes(_jpeg_with_exif(photo, 30000))
    res = CliRunner().invoke(main, ["encode", str(tmp_path / "phone.jpg"), "-o",
                                    str(tmp_path / "p.nic"), "-v"])
    assert res.exit_code == 0 and "--metadata drop" in res.stderr
    assert re.search(r"metadata 300\d\d bytes", res.stderr)
    res = subprocess.run([sys.executable, "-m", "nicodec.cli", "encode", str(tmp_path / "phone.jpg"), "-o",
                          str(tmp_path / "t.nic"), "--target-size", "10000"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0 and "warning:" in res.stderr and "--metadata drop" in res.stderr
    assert (tmp_path / "t.nic").stat().st_size > 30000
    res = CliRunner().invoke(main, ["encode", str(tmp_path / "phone.jpg"), "-o",
                                    str(tmp_path / "d.nic"), "--metadata", "drop", "-v"])
    assert res.exit_code == 0 and "metadata 0 bytes" in res.stderr and "warning:" not in res.stderr


def test_effort_with_a_target(tmp_path, photo):
    one = codec.encode_to_target(photo, target_bpp=0.3)
    two = codec.encode_to_target(photo, target_bpp=0.3, effort=2)
    assert two.met and two.data != one.data  # the effort reaches the encoder, the target holds
    Image.fromarray(photo).save(tmp_path / "p.png")
    res = CliRunner().invoke(main, ["encode", str(tmp_path / "p.png"), "-o",
                                    str(tmp_path / "p.nic"), "--target-bpp", "0.3",
                                    "--effort", "2", "--json"])
    record = json.loads(res.stdout)
    assert res.exit_code == 0 and record["met"] and record["effort"] == 2
    assert (tmp_path / "p.nic").read_bytes() == two.data
