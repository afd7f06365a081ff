"""Collections without a cluster (issue 38): inputs from folders, patterns and lists, outputs to
fsspec URLs, the manifest, --resume, a failing file among good ones, and the dataset of .nic
files in a DataLoader. The same machinery on a Dask cluster: tests/test_cluster.py."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from nicodec import codec
from nicodec.cli import main
from nicodec.codec import batch, files

ROOT = Path(__file__).resolve().parent.parent
MODEL = "mcq-tiny"  # the fastest lossy model


def _image(seed: int) -> np.ndarray:
    y, x = np.mgrid[0:32, 0:48]
    return (np.stack([x * (3 + seed), y * 5, (x + y * seed) * 2], axis=-1) % 256).astype(np.uint8)


@pytest.fixture()
def photos(tmp_path) -> Path:
    """photos/a0.png, a1.png, sub/b2.png, sub/deeper/c3.png and a note that is not an image."""
    folder = tmp_path / "photos"
    for i, name in enumerate(["a0.png", "a1.png", "sub/b2.png", "sub/deeper/c3.png"]):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(i)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _lines(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def test_folders_patterns_and_lists(photos, tmp_path):
    flat = batch.expand([str(photos)], {".png"})
    assert [Path(f).name for f in flat[0]] == ["a0.png", "a1.png"] and flat[1] == ["a0.png",
                                                                                   "a1.png"]
    deep = batch.expand([str(photos)], {".png"}, recursive=True)
    assert deep[1] == ["a0.png", "a1.png", "sub/b2.png", "sub/deeper/c3.png"]
    pattern = batch.expand([f"{photos}/sub/**/*.png"], {".png"})
    assert pattern[1] == ["b2.png", "deeper/c3.png"]  # named under the pattern's fixed folder
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two photos\n{photos / 'a1.png'}\n\n  {photos / 'sub/b2.png'}  \n")
    assert batch.expand([f"@{listing}"], {".png"})[0] == [str(photos / "a1.png"),
                                                          str(photos / "sub/b2.png")]
    for bad, message in ((f"{photos}/*.gif", "no input file matches"),
                         (f"@{tmp_path / 'missing.txt'}", "cannot read the list"),
                         (str(tmp_path / "empty"), "holds no input files")):
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(batch.PlanError, match=message):
            batch.expand([bad], {".png"})


def test_recursive_outputs_keep_the_layout_and_equal_one_by_one(photos, tmp_path):
    res = run("encode", photos, "-r", "-o", tmp_path / "out", "-m", MODEL)
    assert res.exit_code == 0, res.output
    coded = sorted(p.relative_to(tmp_path / "out").as_posix()
                   for p in (tmp_path / "out").rglob("*.nic"))
    assert coded == ["a0.nic", "a1.nic", "sub/b2.nic", "sub/deeper/c3.nic"]
    one = codec.encode(photos / "sub/deeper/c3.png", model=MODEL)
    assert (tmp_path / "out/sub/deeper/c3.nic").read_bytes() == one
    # the same names from two folders would clash without the layout: refused before coding
    res = run("encode", f"{photos}/**/*.png", photos / "a0.png", "-o", tmp_path / "x")
    assert res.exit_code == 2 and "would both write" in res.output


def test_manifest_resume_and_a_failing_file(photos, tmp_path, monkeypatch):
    """A bad file is reported (exit 1) while the others are coded; the manifest has a line
    per input; --resume codes only what is not done (the failed file, a removed output)."""
    (photos / "bad.png").write_bytes(b"not an image")
    manifest, out = tmp_path / "m.jsonl", tmp_path / "out"
    res = run("encode", photos, "-o", out, "-m", MODEL, "--manifest", manifest)
    assert res.exit_code == 1 and res.stderr.count("error: ") == 1 and "bad.png" in res.stderr
    lines = {Path(line["input"]).name: line for line in _lines(manifest)}
    assert sorted(lines) == ["a0.png", "a1.png", "bad.png"]
    assert lines["bad.png"]["status"] == "failed" and "bad.png" in lines["bad.png"]["error"]
    good = lines["a0.png"]
    assert good["status"] == "done" and good["error"] is None and good["model"] == MODEL
    assert good["bytes"] == (out / "a0.nic").stat().st_size == good["output_bytes"]
    assert good["bpp"] == round(8 * good["bytes"] / (48 * 32), 5)
    assert {"quality", "effort", "seconds", "finished"} <= set(good)

    coded = []
    real = files.encode_file
    monkeypatch.setattr(files, "encode_file", lambda src, dst, **kw: (
        coded.append(Path(src).name), real(src, dst, **kw))[1])
    monkeypatch.setattr("nicodec.cli.encode_file", files.encode_file)
    (out / "a1.nic").unlink()
    (photos / "bad.png").unlink()
    Image.fromarray(_image(9)).save(photos / "bad.png")  # repaired
    res = run("encode", photos, "-o", out, "-m", MODEL, "--manifest", manifest, "--resume")
    assert res.exit_code == 0, res.output
    assert sorted(coded) == ["a1.png", "bad.png"] and "1 of 3 files done" in res.stderr
    latest = batch.read_manifest(str(manifest))
    assert all(line["status"] == "done" for line in latest.values()) and len(latest) == 3
    assert len(_lines(manifest)) == 5  # appended, not rewritten
    coded.clear()
    assert run("encode", photos, "-o", out, "-m", MODEL, "--manifest", manifest,
               "--resume").exit_code == 0 and coded == []
    # an output changed since the manifest recorded it is not done: it needs --force
    (out / "a0.nic").write_bytes(b"changed")
    res = run("encode", photos, "-o", out, "--manifest", manifest, "--resume")
    assert res.exit_code == 2 and "a0.nic exists (not recorded as done" in res.output
    assert run("encode", photos, "-o", out, "--resume").exit_code == 2  # no manifest


def test_resume_as_a_subprocess(photos, tmp_path):
    """The exit codes and files of a real process: the second run codes nothing."""
    cmd = [sys.executable, "-m", "nicodec.cli", "encode", str(photos), "-o",
           str(tmp_path / "out"), "-m", MODEL, "--manifest", str(tmp_path / "m.jsonl")]
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    res = subprocess.run(cmd + ["--resume", "--json"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and json.loads(res.stdout) == [], res.stderr
    assert "2 of 2 files done by an earlier run" in res.stderr
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == before


def test_fsspec_url_output_has_the_bytes_of_a_folder(photos, tmp_path):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    reports = codec.encode_collection(photos, "memory://coded/run1", model=MODEL)
    assert [r.output for r in reports] == ["memory://coded/run1/a0.nic",
                                           "memory://coded/run1/a1.nic"]
    assert all(r.ok and r.record["bytes"] > 0 for r in reports)
    assert run("encode", photos, "-o", tmp_path / "local", "-m", MODEL).exit_code == 0
    for name in ("a0.nic", "a1.nic"):
        assert fs.cat(f"/coded/run1/{name}") == (tmp_path / "local" / name).read_bytes()
    assert not fs.glob("/coded/run1/.*tmp")
    # an existing object needs force; the URL decodes back through the command line
    again = run("encode", photos, "-o", "memory://coded/run1", "-m", MODEL)
    assert again.exit_code == 2 and "exist" in again.output
    res = run("decode", "memory://coded/run1", "-o", tmp_path / "png", "--json")
    assert res.exit_code == 0 and len(json.loads(res.output)) == 2
    decoded = np.asarray(Image.open(tmp_path / "png" / "a0.png"))
    assert np.array_equal(decoded, codec.decode_array((tmp_path / "local/a0.nic").read_bytes()))
    # inputs from a store, by pattern, keep their layout under the pattern's fixed part
    fs.pipe_file("/photos/2026/x/a0.png", (photos / "a0.png").read_bytes())
    fs.pipe_file("/photos/2026/a1.png", (photos / "a1.png").read_bytes())
    res = run("encode", "memory://photos/**/*.png", "-o", tmp_path / "fromstore", "-m", MODEL)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "fromstore/2026/x/a0.nic").read_bytes() == \
        (tmp_path / "local/a0.nic").read_bytes()
    assert (tmp_path / "fromstore/2026/a1.nic").exists()
    fs.rm("/photos", recursive=True)
    # worker processes cannot share a store that lives in this one
    res = run("encode", photos, "-o", "memory://coded/run2", "--jobs", "2")
    assert res.exit_code == 2 and "memory://" in res.output
    fs.rm("/coded", recursive=True)


def test_batch_usage_errors(photos, tmp_path):
    """Each before any coding (or any cluster) starts: exit 2, nothing written."""
    assert run("encode", photos, "--jobs", "2", "--cluster", "local:2").exit_code == 2
    res = run("encode", photos, "--cluster", "local:0")
    assert res.exit_code == 2 and "local:N" in res.output
    res = CliRunner().invoke(main, ["encode", "-", "-o", str(tmp_path / "x.nic"), "--cluster",
                                    "local:1"], input=(photos / "a0.png").read_bytes())
    assert res.exit_code == 2 and "stdin" in res.output and not (tmp_path / "x.nic").exists()


def test_dataset_decodes_in_dataloader_workers(photos, tmp_path):
    reports = codec.encode_collection(photos, tmp_path / "nic", model=MODEL, recursive=True)
    dataset = codec.NicDataset(str(tmp_path / "nic"), recursive=True)
    assert len(dataset) == 4 and dataset.files == [r.output for r in reports]
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2)
    batches = list(loader)
    assert [tuple(b.shape) for b in batches] == [(2, 3, 32, 48), (2, 3, 32, 48)]
    for i, path in enumerate(dataset.files):
        expected = codec.decode_tensor(Path(path).read_bytes())
        assert torch.equal(batches[i // 2][i % 2], expected)
    (tmp_path / "nic" / "a0.nic").write_bytes(b"garbage")
    with pytest.raises(codec.BitstreamError):
        dataset[0]


def test_one_progress_bar_for_the_collection(monkeypatch):
    """On a terminal: files done of all, bytes read and written, the rate and the ETA."""
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    names = [f"f{i}" for i in range(3)]
    batch.run(names, [f"{n}.out" for n in names], lambda src, dst: (
        {"input": src, "input_bytes": 2_000_000, "output_bytes": 50_000}, []),
        progress=True, what="encoding")
    last = screen.getvalue().split("\r")[-1]
    assert last.startswith("encoding: 100%") and "3/3" in last and "file" in last
    assert "6.0 MB read, 150.0 kB written" in last


def test_an_output_with_the_same_bytes_counts_as_written(tmp_path):
    """A task run twice (Dask recomputes a finished task whose worker died) finds its own
    output: no error; other bytes there are still refused without force."""
    target = str(tmp_path / "x.nic")
    files.write(target, b"coded", force=False)
    files.write(target, b"coded", force=False)
    with pytest.raises(files.Failure, match="exists"):
        files.write(target, b"other", force=False)
    assert Path(target).read_bytes() == b"coded" and len(list(tmp_path.iterdir())) == 1


def test_a_local_cluster_leaves_the_environment_as_it_was(photos, tmp_path):
    """Dask's nannies set MKL_NUM_THREADS=1 and more in the process that starts them, which
    torch in any process started later would obey (--threads 2 gave one thread)."""
    pytest.importorskip("distributed")
    before = dict(os.environ)
    reports = codec.encode_collection(photos, tmp_path / "out", model=MODEL, cluster="local:1")
    assert all(r.ok for r in reports) and len(reports) == 2
    assert dict(os.environ) == before
