"""Every file is hostile (issue 27): size limits before allocation, no exception but ours, a CLI
that starts without torch, thread safety, and parallel batches that equal serial ones."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from nicodec import codec
from nicodec.bitstream.errors import BitstreamError
from nicodec.bitstream.format import MAX_PIXELS, parse_header, seal_packet
from nicodec.cli import main
from nicodec.codec import pipeline, registry
from nicodec.codec.pipeline import decode_detailed

ROOT = Path(__file__).resolve().parent.parent


def _image(seed: int, width: int = 48, height: int = 32) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * (3 + seed), y * 5, (x + y * seed) * 2], axis=-1) % 256
    return img.astype(np.uint8)


@pytest.fixture(scope="module")
def small_file() -> bytes:
    return codec.encode(_image(1), packets=1)


def _resize(data: bytes, width: int, height: int) -> bytes:
    """The file with another size in its header (valid CRC-8), packets unchanged."""
    header, offset = parse_header(data)
    return dataclasses.replace(header, width=width, height=height).to_bytes() + data[offset:]


def test_forged_size_is_refused_before_any_allocation(small_file):
    forged = _resize(small_file, 60000, 40000)
    tracemalloc.start()
    with pytest.raises(codec.ImageTooLargeError) as error:
        decode_detailed(forged)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes allocated to refuse a forged header"
    message = str(error.value)
    assert "60000x40000" in message and f"{MAX_PIXELS:,}" in message and "max_pixels" in message
    assert MAX_PIXELS == 2 * Image.MAX_IMAGE_PIXELS  # Pillow's decompression-bomb error limit


def test_forged_size_without_limit_ends_in_our_error(small_file):
    """With the limit lifted, the forged size makes the range decoder fail (constriction raises
    AssertionError): the packet is lost, and with every packet lost the file is refused."""
    with pytest.raises(codec.PacketLossError):
        decode_detailed(_resize(small_file, 6000, 4000), max_pixels=None)


def test_range_decoder_assertion_loses_the_packet():
    """Regression: the AssertionError constriction raises on data its tables cannot have
    produced escaped the column decoder. A packet of garbage behind a valid CRC-16 is now lost
    and concealed like a packet whose CRC fails."""
    data = codec.encode(_image(2, 96, 64), packets=2)
    header, offset = parse_header(data)
    first = data[offset: offset + header.packet_lengths[0]]
    garbage = seal_packet(b"\xff" * 40)
    forged = dataclasses.replace(header, packet_lengths=(len(first), len(garbage))).to_bytes()
    result = decode_detailed(forged + first + garbage)
    assert result.lost_packets == 1 and 0.4 < result.concealed_fraction < 0.6
    assert result.pixels.shape == (64, 96, 3)


def test_any_failure_of_the_payload_is_a_decode_error(small_file, monkeypatch):
    def broken(*args, **kwargs):
        raise IndexError("index 9 is out of bounds")

    monkeypatch.setattr(registry.Model, "render", broken)  # the synthesis, after the symbols
    with pytest.raises(codec.DecodeError, match="does not decode.*IndexError") as error:
        decode_detailed(small_file)
    assert isinstance(error.value.__cause__, IndexError)


def test_decode_refuses_what_is_neither_bytes_nor_a_path_nor_a_file():
    with pytest.raises(TypeError, match="bytes"):
        decode_detailed(10**9)  # bytes(10**9) would allocate a gigabyte of zeros


def test_every_decode_function_takes_the_limit(small_file):
    pixels = 48 * 32
    for function in (codec.decode, codec.decode_array, codec.decode_tensor, decode_detailed):
        with pytest.raises(codec.ImageTooLargeError):
            function(small_file, max_pixels=pixels - 1)
        for limit in (pixels, 0, None):
            function(small_file, max_pixels=limit)
    assert np.array_equal(codec.decode_array(small_file, max_pixels=pixels),
                          decode_detailed(small_file).pixels)


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_max_pixels(tmp_path, small_file):
    (tmp_path / "a.nic").write_bytes(small_file)
    res = _cli("decode", tmp_path / "a.nic", "-o", tmp_path / "a.png", "--max-pixels", 1000)
    assert res.exit_code == 1 and "exceeds the limit of 1,000 pixels" in res.output
    assert not (tmp_path / "a.png").exists()
    for limit in ("1536", "none", "0"):
        res = _cli("decode", tmp_path / "a.nic", "-o", tmp_path / "a.png", "--max-pixels", limit,
                   "--force")
        assert res.exit_code == 0, res.output
    assert _cli("decode", tmp_path / "a.nic", "--max-pixels", "-3").exit_code == 2
    assert _cli("decode", tmp_path / "a.nic", "--max-pixels", "lots").exit_code == 2
    assert "'none': no limit" in " ".join(_cli("decode", "--help").output.split())


def test_cli_forged_file_is_one_line_without_torch(tmp_path, small_file):
    """As a real process: exit 1, one 'error:' line, no traceback, torch never imported."""
    forged = tmp_path / "forged.nic"
    forged.write_bytes(_resize(small_file, 60000, 40000))
    probe = ("import sys, nicodec.cli as cli\n"
             "try:\n    cli.main(sys.argv[1:])\n"
             "except SystemExit as exit:\n"
             "    print('torch' in sys.modules, exit.code)\n")
    res = subprocess.run([sys.executable, "-c", probe, "decode", str(forged), "-o",
                          str(tmp_path / "out.png")], cwd=ROOT, capture_output=True, text=True)
    assert res.stdout.split() == ["False", "1"]
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "60000x40000" in res.stderr and "--max-pixels" in res.stderr


def test_info_never_decodes(tmp_path, small_file, monkeypatch):
    (tmp_path / "a.nic").write_bytes(_resize(small_file, 60000, 40000))

    def refuse(*args, **kwargs):
        raise AssertionError("codec info decoded the payload")

    monkeypatch.setattr(pipeline, "decode_detailed", refuse)
    res = _cli("info", tmp_path / "a.nic", "--json")
    assert res.exit_code == 0 and json.loads(res.output)["width"] == 60000


@pytest.mark.parametrize("args", [["--help"], ["info", "FILE"], ["models", "--json"],
                                  ["decode", "--help"], ["encode", "--help"]])
def test_cli_commands_that_do_not_code_do_not_import_torch(tmp_path, small_file, args):
    (tmp_path / "a.nic").write_bytes(small_file)
    args = [str(tmp_path / "a.nic") if a == "FILE" else a for a in args]
    probe = ("import sys, nicodec.cli as cli\n"
             "try:\n    cli.main(sys.argv[1:])\n"
             "except SystemExit as exit:\n"
             "    sys.stderr.write(f'torch={\"torch\" in sys.modules} exit={exit.code}')\n")
    res = subprocess.run([sys.executable, "-c", probe, *args], cwd=ROOT, capture_output=True,
                         text=True)
    assert "torch=False exit=0" in res.stderr, res.stderr
    if args[0] == "models":
        assert any(r["measured"] for r in json.loads(res.stdout))  # rates read without torch


def test_import_codec_is_lazy_and_the_api_stays(small_file):
    probe = ("import sys, nicodec.codec as codec\n"
             "lazy = 'torch' not in sys.modules\n"
             "from nicodec.codec import encode, decode_detailed, UnsupportedImageError\n"
             "import nicodec.codec.pipeline, nicodec.codec as codec\n"
             "image = codec.decode(sys.stdin.buffer.read())\n"
             "print(lazy, 'encode' in dir(codec), encode is codec.pipeline.encode, image.size)\n")
    res = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         input=small_file)
    assert res.stdout.decode().split() == ["True", "True", "True", "(48,", "32)"], res.stderr
    with pytest.raises(AttributeError):
        codec.no_such_name  # noqa: B018


def test_model_loads_once_under_concurrent_requests(monkeypatch):
    loads = []
    real = registry.Model.__init__

    def counting(self, *args):
        loads.append(1)
        real(self, *args)

    monkeypatch.setattr(registry.Model, "__init__", counting)
    registry.load_model.cache_clear()
    try:
        barrier = threading.Barrier(4)
        models = []

        def load():
            barrier.wait()
            models.append(registry.load_model("mcq-tiny"))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        registry.load_model.cache_clear()
    assert len(loads) == 1 and len({id(m) for m in models}) == 1


@pytest.mark.parametrize("model", ["mcq", "vq", "vq-static", "pc-photo", "ctx-photo"])
def test_threads_give_the_serial_bytes_and_pixels(model):
    images = [_image(seed, 48 + 16 * seed, 32) for seed in range(4)]
    packets = [1, 1, 1, 1] if model == "ctx-photo" else [1, 2, 1, 2]  # ctx-photo: a tile a packet
    serial = [codec.encode(img, model=model, packets=p) for img, p in zip(images, packets)]
    decoded = [decode_detailed(d).pixels for d in serial]
    results: dict[int, tuple[bytes, np.ndarray]] = {}
    barrier = threading.Barrier(4)

    def work(i):
        barrier.wait()
        data = codec.encode(images[i], model=model, packets=packets[i])
        results[i] = data, decode_detailed(data).pixels

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert results[i][0] == serial[i], f"image {i}: other bytes when coded in threads"
        assert np.array_equal(results[i][1], decoded[i])


def test_jobs_give_the_serial_outputs_and_errors(tmp_path):
    for i in range(3):
        Image.fromarray(_image(i)).save(tmp_path / f"img{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    outputs = {}
    for jobs in (1, 2):
        out = tmp_path / f"out{jobs}"
        res = _cli("encode", tmp_path, "-o", out, "-m", "mcq-tiny", "--jobs", jobs, "--json")
        assert res.exit_code == 1, res.output
        assert res.stderr.count("error: ") == 1 and "bad.png" in res.stderr
        records = json.loads(res.stdout)
        assert [Path(r["input"]).name for r in records] == ["bad.png"] + [
            f"img{i}.png" for i in range(3)]
        outputs[jobs] = {p.name: p.read_bytes() for p in out.glob("*.nic")}
        res = _cli("decode", out, "-o", tmp_path / f"png{jobs}", "--jobs", jobs)
        assert res.exit_code == 0, res.output
        outputs[jobs].update({p.name: np.asarray(Image.open(p)).tobytes()
                              for p in (tmp_path / f"png{jobs}").glob("*.png")})
        assert not list(out.glob(".*tmp"))
    assert len(outputs[1]) == 6 and outputs[1] == outputs[2]


def _broken_weights(kind: str, shipped: Path) -> bytes | None:
    """A weight file's bytes as a broken installation leaves them (None: the file is missing)."""
    data = shipped.read_bytes()
    other = registry.WEIGHTS_DIR / registry.MODELS["pc-mnist"].weights  # another model's file
    return {"missing": None, "truncated": data[: len(data) // 2], "empty": b"",
            "garbage": bytes(range(256)) * 64, "other model": other.read_bytes()}[kind]


@pytest.fixture(params=["missing", "truncated", "empty", "garbage", "other model"])
def broken_install(request, monkeypatch, tmp_path):
    """The weights folder as a broken installation of mcq-tiny leaves it, and a file that
    mcq-tiny wrote while it was whole."""
    name = registry.MODELS["mcq-tiny"].weights
    written = codec.encode(_image(2), model="mcq-tiny")
    folder = tmp_path / "weights"
    folder.mkdir()
    data = _broken_weights(request.param, registry.WEIGHTS_DIR / name)
    if data is not None:
        (folder / name).write_bytes(data)
    monkeypatch.setattr(registry, "WEIGHTS_DIR", folder)
    registry.load_model.cache_clear()
    yield request.param, folder / name, written
    registry.load_model.cache_clear()


def test_broken_weights_raise_weights_error_naming_the_file(broken_install):
    _, path, written = broken_install
    for call in (lambda: codec.encode(_image(2), model="mcq-tiny"),
                 lambda: codec.decode(written), lambda: codec.load_model("mcq-tiny")):
        with pytest.raises(codec.WeightsError, match="reinstall") as caught:
            call()
        assert str(path) in str(caught.value) and caught.value.path == path
        assert not isinstance(caught.value, BitstreamError)  # the data is not at fault


def test_cli_broken_weights_is_one_line(broken_install, tmp_path):
    kind, path, written = broken_install
    Image.fromarray(_image(2)).save(tmp_path / "a.png")
    (tmp_path / "b.nic").write_bytes(written)
    (tmp_path / "c.nic").write_bytes(written)
    for args in (["encode", tmp_path / "a.png", "-m", "mcq-tiny", "-o", tmp_path / "a.nic"],
                 ["decode", tmp_path / "b.nic", tmp_path / "c.nic", "-o", tmp_path / "out"],
                 ["demo", "-m", "mcq-tiny", "-o", tmp_path / "demo"]):
        res = _cli(*args)
        assert res.exit_code == 1, res.output
        # one line, although decode has two inputs: the batch stops at a broken installation
        assert res.stdout == "" and res.stderr.count("\n") == 1, res.stderr
        assert res.stderr.startswith("error: ") and str(path) in res.stderr
        assert "reinstall" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "a.nic").exists() and not (tmp_path / "out").exists()
    res = _cli("models", "--json")
    assert res.exit_code == 0
    record = next(r for r in json.loads(res.stdout) if r["name"] == "mcq-tiny")
    # the listing reads the metadata only: it sees damaged bytes, not another model's file
    assert (record["weights_error"] is not None) == (kind in ("truncated", "empty", "garbage"))
    assert record["installed"] == (kind != "missing")
    line = next(line for line in _cli("models").stdout.splitlines() if line.startswith("mcq-tiny"))
    assert ("[weights" in line) == (kind not in ("other model",))


def test_cli_broken_weights_as_a_process(tmp_path):
    """As a real process: a truncated weight file gives exit 1 and one line, no traceback."""
    name = registry.MODELS["mcq-tiny"].weights
    (tmp_path / name).write_bytes((registry.WEIGHTS_DIR / name).read_bytes()[:1000])
    Image.fromarray(_image(3)).save(tmp_path / "a.png")
    probe = ("import sys, pathlib, nicodec.cli as cli, nicodec.codec.registry, nicodec.codec as codec\n"
             f"codec.registry.WEIGHTS_DIR = pathlib.Path({str(tmp_path)!r})\n"
             "cli.main(sys.argv[1:])\n")
    res = subprocess.run([sys.executable, "-c", probe, "encode", str(tmp_path / "a.png"), "-m",
                          "mcq-tiny", "-o", str(tmp_path / "a.nic")], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 1 and res.stdout == "", res.stderr
    assert res.stderr.startswith("error: the weights of model 'mcq-tiny'"), res.stderr
    assert res.stderr.count("\n") == 1 and "reinstall" in res.stderr
    assert not (tmp_path / "a.nic").exists()
