"""Collections on a real Dask cluster (issue 38): a local cluster of two worker processes,
started here (no outside service), codes a folder with the bytes of --jobs 1; a worker killed
while writing leaves no partial file and its file is coded again; a bad file fails alone; the
manifest is complete; a Dask bag of paths goes through the Python entry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

distributed = pytest.importorskip("distributed")

from nicodec import codec  # noqa: E402
from nicodec.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = "mcq-tiny"  # the fastest lossy model
COUNT = 6


@pytest.fixture(scope="module")
def client():
    """Two one-thread worker processes under nannies (which restart a worker that dies). The
    nannies write OMP_NUM_THREADS=1 and more into this process's environment: put back after,
    or the processes that later tests start would all take one thread."""
    environment = dict(os.environ)
    try:
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=":0") as cluster, \
                distributed.Client(cluster) as client:
            yield client
    finally:
        os.environ.clear()
        os.environ.update(environment)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cluster") / "photos"
    folder.mkdir()
    for i in range(COUNT):
        y, x = np.mgrid[0:32, 0:48]
        img = np.stack([x * (3 + i), y * 5, (x + y * i) * 2], axis=-1) % 256
        Image.fromarray(img.astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def serial(photos) -> dict[str, bytes]:
    """The outputs of --jobs 1: the bytes every other way must give."""
    out = photos.parent / "serial"
    res = CliRunner().invoke(main, ["encode", str(photos), "-o", str(out), "-m", MODEL])
    assert res.exit_code == 0, res.output
    return {p.name: p.read_bytes() for p in out.iterdir()}


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nicodec.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def _manifest(path: Path) -> dict[str, dict]:
    return {Path(line["input"]).name: line for line in map(json.loads, path.open())}


def test_cluster_gives_the_bytes_of_jobs_1_and_a_bad_file_fails_alone(client, photos, serial,
                                                                       tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for p in photos.iterdir():
        (inputs / p.name).write_bytes(p.read_bytes())
    (inputs / "bad.png").write_bytes(b"not an image")
    out, manifest = tmp_path / "out", tmp_path / "m.jsonl"
    res = _cli("encode", inputs, "-o", f"file://{out}", "-m", MODEL, "--cluster",
               client.scheduler.address, "--manifest", manifest)
    assert res.returncode == 1 and res.stderr.count("error: ") == 1, res.stderr
    assert "bad.png" in res.stderr and "Dask dashboard: http" in res.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == serial
    lines = _manifest(manifest)
    assert len(lines) == COUNT + 1 and lines["bad.png"]["status"] == "failed"
    assert all(lines[f"img{i}.png"]["status"] == "done" for i in range(COUNT))
    # decoding on the cluster gives the pixels of decoding here
    reports = codec.decode_collection(out, tmp_path / "png", cluster=client)
    assert all(r.ok for r in reports) and len(reports) == COUNT
    for r in reports:
        assert np.array_equal(np.asarray(Image.open(r.output)),
                              codec.decode_array(Path(r.input).read_bytes()))


def test_a_killed_worker_leaves_no_partial_file_and_its_file_is_retried(client, photos,
                                                                        serial, tmp_path):
    """The worker that writes img3.nic first dies halfway through the write (os._exit, as a
    kill or the out-of-memory killer would end it); the scheduler gives the file to a worker
    still alive, and the run ends complete with the bytes of --jobs 1."""
    marker = tmp_path / "killed"

    def arm() -> None:  # runs in each worker process (pickled by value: a local function)
        import os

        from nicodec.codec import files

        real = files.write

        def write(target, data, force):
            if target.endswith("img3.nic") and not os.path.exists(marker):
                with files.atomic(target, force) as tmp:
                    Path(tmp).write_bytes(data[: len(data) // 2])
                    marker.write_text(str(os.getpid()))
                    os._exit(1)
            return real(target, data, force)

        write.real = real
        files.write = write

    def disarm() -> None:
        from nicodec.codec import files

        files.write = getattr(files.write, "real", files.write)

    before = set(client.scheduler_info()["workers"])
    client.run(arm)
    try:
        out, manifest = tmp_path / "out", tmp_path / "m.jsonl"
        res = _cli("encode", photos, "-o", out, "-m", MODEL, "--cluster",
                   client.scheduler.address, "--manifest", manifest, "--json")
        assert res.returncode == 0, res.stderr
    finally:
        client.run(disarm)
    assert marker.exists(), "no worker was killed"
    assert set(client.scheduler_info()["workers"]) != before  # the nanny started a new one
    assert sorted(p.name for p in out.iterdir()) == sorted(serial)  # no .tmp left either
    assert {p.name: p.read_bytes() for p in out.iterdir()} == serial
    lines = _manifest(manifest)
    assert sorted(lines) == sorted(p.name for p in photos.iterdir())
    assert all(line["status"] == "done" for line in lines.values())
    assert [r["bytes"] for r in json.loads(res.stdout)] == [len(serial[f"img{i}.nic"])
                                                           for i in range(COUNT)]


def test_python_entry_takes_a_dask_bag_and_fsspec_urls(client, photos, serial, tmp_path):
    bag = pytest.importorskip("dask.bag")
    paths = bag.from_sequence(sorted(str(p) for p in photos.iterdir()), npartitions=2)
    reports = codec.encode_collection(paths, f"file://{tmp_path}/coded", model=MODEL,
                                      manifest=str(tmp_path / "m.jsonl"))  # the client in use
    assert [Path(r.output).name for r in reports] == sorted(serial)
    assert all(r.ok and Path(r.output).read_bytes() == serial[Path(r.output).name]
               for r in reports)
    again = codec.encode_collection(paths, tmp_path / "coded", cluster=client,
                                    manifest=str(tmp_path / "m.jsonl"), resume=True)
    assert all(r.skipped for r in again)
    res = CliRunner().invoke(main, ["encode", str(photos), "-o", "memory://x", "--cluster",
                                    client.scheduler.address])
    assert res.exit_code == 2 and "memory://" in res.output


def test_a_file_whose_workers_keep_dying_is_reported_and_its_leftover_removed(client, photos,
                                                                              tmp_path):
    """Every worker, restarted ones too (a worker plugin), dies writing img5.nic: after the
    scheduler's allowed failures (set to 1 here) the file is reported failed."""

    class Doom(distributed.WorkerPlugin):
        name = "doom"

        def setup(self, worker) -> None:
            import os

            from nicodec.codec import files

            real = files.write

            def write(target, data, force):
                if target.endswith("img5.nic"):
                    with files.atomic(target, force) as tmp:
                        Path(tmp).write_bytes(data[:10])
                        os._exit(1)
                return real(target, data, force)

            write.real = real
            files.write = write

        def teardown(self, worker) -> None:
            from nicodec.codec import files

            files.write = getattr(files.write, "real", files.write)

    def allow(failures, dask_scheduler=None):
        before, dask_scheduler.allowed_failures = dask_scheduler.allowed_failures, failures
        return before

    before = client.run_on_scheduler(allow, 1)
    client.register_plugin(Doom())
    try:
        out = tmp_path / "out"
        out.mkdir()
        reports = codec.encode_collection(photos / "img5.png", out, model=MODEL, cluster=client)
    finally:
        client.unregister_worker_plugin("doom")
        client.run_on_scheduler(allow, before)
    assert len(reports) == 1 and not reports[0].ok
    assert "died each time it was tried" in reports[0].error
    assert list(out.iterdir()) == []  # neither the output nor the killed attempts' leftover
