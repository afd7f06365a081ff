"""The command line, through click's CliRunner and as a real subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from nicodec import codec
from nicodec.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def workdir(tmp_path, small_rgb):
    Image.fromarray(small_rgb).save(tmp_path / "a.png")
    Image.fromarray(small_rgb[::-1]).save(tmp_path / "b.png")
    return tmp_path


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)


def test_encode_decode_info(workdir):
    res = run("encode", workdir / "a.png", "-o", workdir / "a.nic", "--json")
    assert res.exit_code == 0, res.output
    record = json.loads(res.output)
    assert record["bytes"] == (workdir / "a.nic").stat().st_size and record["width"] == 53
    res = run("decode", workdir / "a.nic", "-o", workdir / "out.png")
    assert res.exit_code == 0 and Image.open(workdir / "out.png").size == (53, 37)
    res = run("info", workdir / "a.nic", "--json")
    info = json.loads(res.output)
    assert info["model"] == codec.DEFAULT_MODEL and info["header_bytes"] <= 12
    assert all(p["ok"] for p in info["packets"])
    assert "header" in run("info", workdir / "a.nic").output


def test_default_output_names_and_no_overwrite(workdir):
    assert run("encode", workdir / "a.png").exit_code == 0
    assert (workdir / "a.nic").exists()
    before = (workdir / "a.nic").read_bytes()
    res = run("encode", workdir / "b.png", "-o", workdir / "a.nic")
    assert res.exit_code == 2 and "--force" in res.output
    assert (workdir / "a.nic").read_bytes() == before
    assert run("encode", workdir / "b.png", "-o", workdir / "a.nic", "--force").exit_code == 0
    assert (workdir / "a.nic").read_bytes() != before
    res = run("decode", workdir / "a.nic", "-o", workdir / "a.png")
    assert res.exit_code == 2, "the input image must not be overwritten without --force"
    assert not list(workdir.glob(".*tmp")), "no temporary files left behind"


def test_folders_and_batches(workdir):
    out = workdir / "enc"
    res = run("encode", workdir, "-o", out, "--json")
    assert res.exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.nic", "b.nic"]
    assert len(json.loads(res.output)) == 2
    res = run("decode", out, "-o", workdir / "dec")
    assert res.exit_code == 0
    assert sorted(p.name for p in (workdir / "dec").iterdir()) == ["a.png", "b.png"]


def test_stdin_stdout(workdir):
    png = (workdir / "a.png").read_bytes()
    res = CliRunner().invoke(main, ["encode", "-", "-o", "-"], input=png)
    assert res.exit_code == 0
    encoded = res.stdout_bytes
    res = CliRunner().invoke(main, ["decode", "-", "-o", "-"], input=encoded)
    assert res.exit_code == 0 and res.stdout_bytes.startswith(b"\x89PNG")


def test_bad_data_exit_codes(workdir):
    (workdir / "junk.nic").write_bytes(b"this is not a nicodec file")
    res = run("decode", workdir / "junk.nic", "-o", workdir / "junk.png")
    assert res.exit_code == 1 and "not a nicodec file" in res.output
    assert not (workdir / "junk.png").exists()
    (workdir / "notimage.png").write_bytes(b"garbage")
    res = run("encode", workdir / "notimage.png", "-o", workdir / "x.nic")
    assert res.exit_code == 1 and "cannot read image: not a format Pillow knows" in res.output
    assert not (workdir / "x.nic").exists()
    assert run("info", workdir / "junk.nic").exit_code == 1


def test_damaged_file_is_concealed_or_refused(workdir):
    run("encode", workdir / "a.png", "-o", workdir / "a.nic", "--packets", "4")
    data = bytearray((workdir / "a.nic").read_bytes())
    data[-1] ^= 0xFF
    (workdir / "bad.nic").write_bytes(bytes(data))
    res = run("decode", workdir / "bad.nic", "-o", workdir / "bad.png")
    assert res.exit_code == 0 and "concealed" in res.output
    res = run("decode", workdir / "bad.nic", "-o", workdir / "strict.png", "--strict")
    assert res.exit_code == 1 and not (workdir / "strict.png").exists()


def test_usage_errors(workdir):
    assert run("encode").exit_code == 2
    assert run("encode", workdir / "missing.png").exit_code == 1
    assert run("encode", workdir / "a.png", "--quality", "99").exit_code == 2
    assert run("encode", workdir / "a.png", "--model", "nope").exit_code == 2
    assert run("decode", workdir / "a.png", "-o", workdir / "x.unknownext").exit_code == 2
    assert run("bogus").exit_code == 2


def test_models_listing():
    res = run("models", "--json")
    models = json.loads(res.output)
    assert any(m["default"] and m["installed"] for m in models)
    assert "default" in run("models").output


def test_console_script_as_subprocess(workdir):
    exe = shutil.which("codec", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "nicodec.cli"]
    enc = subprocess.run(cmd + ["encode", str(workdir / "a.png"), "-o", str(workdir / "s.nic")],
                         capture_output=True, text=True)
    assert enc.returncode == 0, enc.stderr
    dec = subprocess.run(cmd + ["decode", str(workdir / "s.nic"), "-o", str(workdir / "s.png")],
                         capture_output=True, text=True)
    assert dec.returncode == 0 and dec.stderr == ""
    bad = subprocess.run(cmd + ["decode", str(workdir / "a.png"), "-o", str(workdir / "x.png")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert np.asarray(Image.open(workdir / "s.png")).shape == (37, 53, 3)


def test_lossless_flag(workdir):
    res = run("encode", workdir / "a.png", "--lossless", "-o", workdir / "l.nic", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["model"] == "ctx-photo"
    assert run("decode", workdir / "l.nic", "-o", workdir / "l.png").exit_code == 0
    assert (np.asarray(Image.open(workdir / "l.png")) ==
            np.asarray(Image.open(workdir / "a.png"))).all()
    res = run("encode", workdir / "a.png", "--lossless", "--model", "mcq-tiny", "-o",
              workdir / "x.nic")
    assert res.exit_code == 2 and "lossy" in res.output and not (workdir / "x.nic").exists()
    res = run("encode", workdir / "a.png", "--model", "pc-mnist", "-o", workdir / "x.nic")
    assert res.exit_code == 1 and "grayscale" in res.output and not (workdir / "x.nic").exists()


def test_effort(workdir):
    """--effort: mcq and vq search at encode time (same decoder); a level out of range or a
    model without search is a usage error that names what is allowed, and writes nothing."""
    res = run("encode", workdir / "a.png", "-o", workdir / "e2.nic", "--effort", "2", "--json")
    assert res.exit_code == 0 and json.loads(res.output)["effort"] == 2
    assert run("decode", workdir / "e2.nic", "-o", workdir / "e2.png").exit_code == 0
    res = run("encode", workdir / "a.png", "-o", workdir / "e9.nic", "--effort", "9")
    assert res.exit_code == 2 and "1<=x<=3" in res.output
    res = run("encode", workdir / "a.png", "-o", workdir / "t.nic", "-m", "mcq-tiny",
              "--effort", "2")
    assert res.exit_code == 2 and "effort levels 1..1" in res.output and "vq" in res.output
    assert not (workdir / "e9.nic").exists() and not (workdir / "t.nic").exists()
    with pytest.raises(ValueError, match="effort"):
        codec.encode(workdir / "a.png", effort=0)


def test_demo_codes_the_sample_photo(tmp_path):
    folder = tmp_path / "demo"
    res = CliRunner().invoke(main, ["demo", "-o", str(folder), "--json"])
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    nic, png = folder / "grace_hopper.nic", folder / "grace_hopper.png"
    assert record["bytes"] == nic.stat().st_size and (record["width"], record["height"]) == (512, 600)
    assert record["bpp"] == pytest.approx(8 * nic.stat().st_size / (512 * 600), abs=1e-5)
    decoded = codec.decode_array(nic.read_bytes())
    assert np.array_equal(np.asarray(Image.open(png)), decoded)
    assert 20 < record["psnr"] < 60
    before = nic.read_bytes()
    again = CliRunner().invoke(main, ["demo", "-o", str(folder), "--quality", "1"])
    assert again.exit_code == 0, "running the demo again replaces its own files"
    assert "bits per pixel" in again.output and "PSNR" in again.output
    assert nic.read_bytes() != before and len(nic.read_bytes()) < len(before)


def test_demo_never_overwrites_what_it_did_not_write(tmp_path):
    """Files of the demo's names that it did not write (or that changed since) are left alone
    unless --force; the refusal comes before any coding."""
    folder = tmp_path / "demo"
    folder.mkdir()
    (folder / "grace_hopper.png").write_bytes(b"my own picture")
    res = run("demo", "-o", folder)
    assert res.exit_code == 2 and "grace_hopper.png" in res.output and "--force" in res.output
    assert (folder / "grace_hopper.png").read_bytes() == b"my own picture"
    assert not (folder / "grace_hopper.nic").exists()
    (tmp_path / "file").write_text("x")
    assert run("demo", "-o", tmp_path / "file").exit_code == 2


def test_demo_usage_errors():
    res = run("demo", "--quality", "12")
    assert res.exit_code == 2 and "qualities [0, 1, 2, 3, 4, 5, 6, 7, 8]" in res.output
    res = run("demo", "--model", "pc-mnist")
    assert res.exit_code == 2 and "pc-mnist" in res.output and "mcq" in res.output
    assert run("demo", "--model", "pc-photo", "--quality", "3").exit_code == 2


def test_verbose_summaries(workdir):
    res = CliRunner().invoke(main, ["encode", str(workdir / "a.png"), "-o",
                                    str(workdir / "a.nic"), "-v"])
    size = (workdir / "a.nic").stat().st_size
    assert res.exit_code == 0 and res.stdout == ""
    assert f"a.nic: {size} bytes" in res.stderr and "bpp" in res.stderr and "q4" in res.stderr
    res = CliRunner().invoke(main, ["decode", str(workdir / "a.nic"), "-o",
                                    str(workdir / "a.out.png"), "--verbose"])
    assert res.exit_code == 0 and "53x37, 0 of 1 packets lost" in res.stderr


def test_decode_refuses_a_nic_output(workdir):
    run("encode", workdir / "a.png", "-o", workdir / "a.nic")
    assert run("decode", workdir / "a.nic", "-o", workdir / "b.nic").exit_code == 2
    assert not (workdir / "b.nic").exists()


@pytest.fixture()
def sizes(tmp_path):
    """A 1x1 image, a 40x24 one (6 coded blocks of mcq) and an 80x80 one (25 blocks)."""
    rng = np.random.default_rng(0)
    for name, (h, w) in {"one": (1, 1), "small": (24, 40), "big": (80, 80)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path /
                                                                                 f"{name}.png")
    return tmp_path


def test_packets_above_what_the_image_holds_are_lowered_and_the_batch_goes_on(sizes):
    res = run("encode", sizes / "one.png", "--packets", "2", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["packets"] == 1
    assert "warning: " in res.stderr and "2 packets asked for" in res.stderr
    res = run("encode", sizes / "one.png", sizes / "small.png", sizes / "big.png",
              "--packets", "16", "-o", sizes / "out", "--json")
    assert res.exit_code == 0, res.output
    assert [r["packets"] for r in json.loads(res.stdout)] == [1, 6, 16]
    assert res.stderr.count("warning: ") == 2
    res = run("encode", sizes / "small.png", "--packets", "4096", "-o", sizes / "s.nic")
    assert res.exit_code == 0 and "using 6" in res.stderr
    assert run("decode", sizes / "s.nic", "-o", sizes / "s.png").exit_code == 0


def test_existing_outputs_stop_the_batch_before_any_coding(workdir, monkeypatch):
    """Every existing output is named in one usage error (exit 2) before the model is loaded
    or anything is coded; the other inputs' outputs are not written either."""
    import nicodec.codec.pipeline, nicodec.codec as codec

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(workdir / "c.png")
    out = workdir / "out"
    out.mkdir()
    (out / "a.nic").write_bytes(b"mine")
    (out / "b.nic").write_bytes(b"mine too")

    def no_work(*_args, **_kwargs):
        raise AssertionError("coded before checking the outputs")

    monkeypatch.setattr(codec.pipeline, "encode", no_work)
    monkeypatch.setattr(codec.pipeline, "load_model", no_work)
    res = run("encode", workdir, "-o", out)
    assert res.exit_code == 2
    assert str(out / "a.nic") in res.output and str(out / "b.nic") in res.output
    assert "--force" in res.output and "nothing was written" in res.output
    assert (out / "a.nic").read_bytes() == b"mine" and not (out / "c.nic").exists()
    monkeypatch.undo()
    run("encode", workdir / "a.png", "-o", workdir / "a.nic")
    monkeypatch.setattr(codec.pipeline, "decode_detailed", no_work)
    res = run("decode", workdir / "a.nic")  # a.png exists beside it
    assert res.exit_code == 2 and "a.png exists" in res.output


def test_outputs_that_would_put_files_at_risk_are_refused(workdir):
    """An image suffix on encode's output, a nicodec file as encode's input (by suffix or by
    content), an output that is the input (also through a link, also with --force)."""
    a_png = (workdir / "a.png").read_bytes()
    res = run("encode", workdir / "a.png", "-o", workdir / "out.png")
    assert res.exit_code == 2 and "names an image format" in res.output
    assert not (workdir / "out.png").exists()
    run("encode", workdir / "a.png", "-o", workdir / "a.nic")
    coded = (workdir / "a.nic").read_bytes()
    (workdir / "renamed.png").write_bytes(coded)
    for name in ("a.nic", "renamed.png"):
        res = run("encode", workdir / name, "-o", workdir / "again.nic", "--force")
        assert res.exit_code == 2 and "already a nicodec file" in res.output, name
    res = CliRunner().invoke(main, ["encode", "-", "-o", str(workdir / "again.nic")], input=coded)
    assert res.exit_code == 1 and "already a nicodec file" in res.stderr
    assert not (workdir / "again.nic").exists()
    (workdir / "photo").write_bytes(a_png)  # no suffix: -o photo would name the input
    res = run("encode", workdir / "photo", "-o", workdir / "photo", "--force")
    assert res.exit_code == 2 and "would replace an input" in res.output
    (workdir / "link.nic").symlink_to(workdir / "a.png")
    res = run("encode", workdir / "a.png", "-o", workdir / "link.nic", "--force")
    assert res.exit_code == 2 and "would replace an input" in res.output
    res = run("decode", workdir / "renamed.png", "-o", workdir / "renamed.png", "--force")
    assert res.exit_code == 2 and "would replace an input" in res.output
    assert (workdir / "a.png").read_bytes() == a_png
    assert (workdir / "photo").read_bytes() == a_png
    assert (workdir / "renamed.png").read_bytes() == coded


def test_several_inputs_need_an_output_folder(workdir):
    res = run("encode", workdir / "a.png", workdir / "b.png", "-o", workdir / "two.nic")
    assert res.exit_code == 2 and "folder" in res.output and not (workdir / "two.nic").exists()
    (workdir / "afile").write_text("x")
    res = run("encode", workdir / "a.png", workdir / "b.png", "-o", workdir / "afile")
    assert res.exit_code == 2 and "is a file" in res.output
    res = run("encode", workdir / "a.png", workdir / "b.png", "-o", workdir / "new")
    assert res.exit_code == 0 and sorted(p.name for p in (workdir / "new").iterdir()) == [
        "a.nic", "b.nic"]
    (workdir / "sub").mkdir()
    shutil.copy(workdir / "a.png", workdir / "sub" / "a.png")
    res = run("encode", workdir / "a.png", workdir / "sub" / "a.png", "-o", workdir / "enc")
    assert res.exit_code == 2 and not (workdir / "enc").exists()
    assert f"{workdir / 'a.png'} and {workdir / 'sub' / 'a.png'} would both write" in res.output


def test_plain_messages_for_missing_files(workdir):
    res = run("encode", workdir / "missing.png", workdir / "a.png", "-o", workdir / "out")
    assert res.exit_code == 1 and "Errno" not in res.output
    assert f"error: {workdir / 'missing.png'}: no such file" in res.stderr
    assert (workdir / "out" / "a.nic").exists(), "the other inputs are still coded"
    res = run("decode", workdir / "missing.nic")
    assert res.exit_code == 1
    assert res.stderr.strip() == f"error: {workdir / 'missing.nic'}: no such file"


def test_json_report_goes_to_stderr_when_stdout_carries_the_file(workdir):
    res = run("encode", workdir / "a.png", "-o", "-", "--json")
    assert res.exit_code == 0
    assert codec.decode_array(res.stdout_bytes).shape == (37, 53, 3)
    assert json.loads(res.stderr)["output"] == "-"
    res = CliRunner().invoke(main, ["decode", "-", "-o", "-", "--json"], input=res.stdout_bytes)
    assert res.exit_code == 0 and res.stdout_bytes.startswith(b"\x89PNG")
    assert json.loads(res.stderr)["width"] == 53


def _codec_command() -> list[str]:
    exe = shutil.which("codec", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "nicodec.cli"]


def test_files_at_risk_as_a_subprocess(workdir, sizes):
    """Exit codes, messages and files of a real process: no traceback, nothing half done."""
    def codec_run(*args):
        return subprocess.run(_codec_command() + [str(a) for a in args], capture_output=True)

    res = codec_run("encode", sizes / "one.png", sizes / "small.png", workdir / "a.png",
                    "--packets", "4096", "-o", workdir / "batch")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (workdir / "batch").iterdir()) == ["a.nic", "one.nic",
                                                                     "small.nic"]
    before = (workdir / "batch" / "a.nic").read_bytes()
    res = codec_run("encode", sizes / "one.png", workdir / "a.png", "-o", workdir / "batch")
    assert res.returncode == 2 and b"one.nic, " in res.stderr and b"Traceback" not in res.stderr
    assert (workdir / "batch" / "a.nic").read_bytes() == before
    res = codec_run("encode", workdir / "a.png", "-o", workdir / "out.png")
    assert res.returncode == 2 and not (workdir / "out.png").exists()
    res = codec_run("encode", workdir / "batch" / "a.nic", "--force")
    assert res.returncode == 2 and b"already a nicodec file" in res.stderr
    assert (workdir / "batch" / "a.nic").read_bytes() == before
    res = codec_run("encode", workdir / "a.png", "-o", "-", "--json")
    assert res.returncode == 0 and codec.decode_array(res.stdout).shape == (37, 53, 3)
    assert json.loads(res.stderr)["bytes"] == len(res.stdout)
    res = codec_run("decode", workdir / "missing.nic")
    assert res.returncode == 1
    assert res.stderr.decode().strip() == f"error: {workdir / 'missing.nic'}: no such file"
    res = codec_run("demo", "--quality", "12")
    assert res.returncode == 2 and b"Traceback" not in res.stderr
    assert not (workdir / "nicodec-demo").exists()


def test_models_shows_the_kodak_figures_a_user_gets():
    text = " ".join(run("models").output.split())
    assert "Kodak (24 images, effort 1, bpp from file bytes): q0 0.057 bpp / 23.2 dB" in text
    assert "q3 0.185 bpp / 27.0 dB, q4 0.227 bpp / 27.7 dB" in text  # evenly spaced steps
    mcq = next(m for m in json.loads(run("models", "--json").output) if m["name"] == "mcq")
    summary = ROOT / "eval" / "results" / "mcq" / "summary.json"
    measured = json.loads(summary.read_text())["curves"]["nicodec mcq"]
    listed = {k["quality"]: k for k in mcq["kodak"]}
    for point in measured:  # the registry's figures are the committed Kodak run's
        assert listed[point["setting"]]["bpp"] == pytest.approx(point["bpp"], abs=6e-5)
        assert listed[point["setting"]]["psnr"] == pytest.approx(point["psnr"], abs=6e-3)
