"""16-bit samples through the whole pipeline (issue 37): 16-bit PNG, TIFF and uint16 arrays in,
coded exactly by ctx-photo (format version 4 records the depth; version 5 keeps a 16-bit alpha
plane), the same samples out of
``decode_array`` and ``codec decode`` (16-bit PNG or TIFF)."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from nicodec import codec
from nicodec.bitstream.errors import CorruptHeaderError, PacketLossError
from nicodec.bitstream.format import VERSION, Header, crc8, parse_header
from nicodec.bitstream.metadata import Metadata
from nicodec.cli import main
from nicodec.codec import png16
from nicodec.codec.image import to_8_bits
from nicodec.codec.pipeline import decode_detailed

ROOT = Path(__file__).resolve().parents[1]


def _deep(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    """Gradients with noise over the whole 16-bit range (no 8-bit data shifted up)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 700 + y * 400 + k * 9000) % 60000 for k in range(c)], -1)
    return np.clip(base + rng.integers(0, 300, base.shape), 0, 65535).astype(np.uint16)


def _filtered_rows(samples: np.ndarray) -> bytes:
    """Rows that cycle through the five filters (a reference filter written from the PNG
    specification), each behind its filter byte."""
    height, width, channels = samples.shape
    bpp = 2 * channels
    raw = samples.astype(">u2").view(np.uint8).reshape(height, -1).astype(np.int64)
    rows = []
    for y in range(height):
        kind, line = y % 5, raw[y]
        prior = raw[y - 1] if y else np.zeros_like(line)
        left = np.concatenate([np.zeros(bpp, np.int64), line[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int64), prior[:-bpp]])
        if kind == 4:
            p = left + prior - upleft
            pa, pb, pc = abs(p - left), abs(p - prior), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prior, upleft))
        else:
            pred = [0 * line, left, prior, (left + prior) // 2][kind]
        rows.append(bytes([kind]) + ((line - pred) % 256).astype(np.uint8).tobytes())
    return b"".join(rows)


def _png_filtered(samples: np.ndarray, interlace: bool = False, trns: bytes | None = None
                  ) -> bytes:
    """A 16-bit PNG of ``samples`` with every filter, Adam7-interlaced if asked (each pass a
    small image of its own), with a ``tRNS`` chunk if given, to check the reader on each."""
    height, width, channels = samples.shape
    passes = png16.ADAM7 if interlace else ((0, 0, 1, 1),)
    data = b"".join(_filtered_rows(samples[y0::dy, x0::dx]) for x0, y0, dx, dy in passes
                    if samples[y0::dy, x0::dx].size)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, png16.COLOUR_TYPES[channels], 0, 0,
                       int(interlace))
    return (png16.SIGNATURE + png16._chunk(b"IHDR", ihdr)
            + (png16._chunk(b"tRNS", trns) if trns is not None else b"")
            + png16._chunk(b"IDAT", zlib.compress(data)) + png16._chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png16_reads_every_filter_and_writes_what_it_reads(channels):
    samples = _deep(11, 9, channels)
    assert (png16.read(_png_filtered(samples)) == samples).all()
    written = png16.write(samples, icc_profile=b"profile", exif=b"MM\0*")
    assert (png16.read(written) == samples).all()
    if channels == 1:  # Pillow agrees on what the file holds
        assert (np.asarray(Image.open(io.BytesIO(written))) == samples[:, :, 0]).all()


@pytest.mark.parametrize("size", [(11, 9), (1, 1), (3, 10), (17, 5)])
def test_png16_reads_interlaced_images(size):
    """Adam7 passes, the empty ones of small images included; Pillow agrees for grayscale."""
    for channels in (1, 3):
        samples = _deep(*size, channels, seed=channels)
        data = _png_filtered(samples, interlace=True)
        assert (png16.read(data) == samples).all()
        if channels == 1:
            assert (np.asarray(Image.open(io.BytesIO(data))) == samples[:, :, 0]).all()


def test_png16_transparent_colour_becomes_an_alpha_channel():
    rgb = _deep(6, 7, 3)
    rgb[2, 3] = rgb[4, 5] = (1000, 2000, 3000)
    back = png16.read(_png_filtered(rgb, trns=struct.pack(">3H", 1000, 2000, 3000)))
    assert back.shape == (6, 7, 4) and (back[:, :, :3] == rgb).all()
    assert back[2, 3, 3] == back[4, 5, 3] == 0 and (back[:, :, 3] == 0).sum() == 2
    gray = rgb[:, :, :1]
    assert (png16.read(_png_filtered(gray, trns=struct.pack(">H", 1000)))[:, :, 1] == 0).sum() == 2
    with pytest.raises(png16.PngError, match="tRNS"):
        png16.read(_png_filtered(rgb, trns=b"\0\1"))
    data = codec.encode(_png_filtered(rgb, trns=struct.pack(">3H", 1000, 2000, 3000)),
                        lossless=True)
    assert (codec.decode_array(data) == back).all()


def test_png16_damage_is_reported():
    data = png16.write(_deep(8, 8, 3))
    with pytest.raises(png16.PngError, match="CRC"):
        png16.read(data[:40] + bytes([data[40] ^ 1]) + data[41:])
    with pytest.raises(png16.PngError, match="cut short"):
        png16.read(data[:-20])


@pytest.mark.parametrize("channels", [1, 3])
def test_uint16_arrays_round_trip_exactly(channels):
    image = _deep(37, 70, channels)
    data = codec.encode(image[:, :, 0] if channels == 1 else image, lossless=True)
    header = parse_header(data)[0]
    assert header.bit_depth == 16 and header.version == VERSION and header.channels == channels
    out = codec.decode_array(data)
    assert out.dtype == np.uint16 and (out.reshape(image.shape) == image).all()
    tensor = codec.decode_tensor(data)
    assert np.allclose(tensor.permute(1, 2, 0).numpy() * 65535, image, atol=1e-2)


def test_8_bit_files_are_version_3_files_but_for_the_version(small_rgb):
    data = codec.encode(small_rgb, lossless=True)
    header, _ = parse_header(data)
    assert header.bit_depth == 8 and header.version == VERSION
    v3 = Header(**{**header.__dict__, "version": 3}).to_bytes()
    assert v3[0] == data[0] and v3[1] == data[1] - 0x20 and v3[2:-1] == data[2:len(v3) - 1]


def test_depth_in_the_header_is_checked():
    fields = dict(family=3, model_id=1, weights_digest=0, width=4, height=4, channels=1,
                  quality=0, packet_lengths=(5,))
    deep = Header(bit_depth=16, **fields).to_bytes()
    assert parse_header(deep)[0].bit_depth == 16
    with pytest.raises(ValueError, match="version 3"):
        Header(bit_depth=16, version=3, **fields).to_bytes()
    with pytest.raises(ValueError, match="bits"):
        Header(bit_depth=17, **fields).to_bytes()
    three = bytearray(Header(bit_depth=8, version=3, **fields).to_bytes())
    three[7] |= 1  # the layout's depth bit in a version-3 header: damage
    three[-1] = crc8(bytes(three[:-1]))
    with pytest.raises(CorruptHeaderError, match="layout"):
        parse_header(bytes(three))
    eight = bytearray(deep)
    eight[8] = 8  # the depth bit set, but a depth of 8 bits
    eight[-1] = crc8(bytes(eight[:-1]))
    with pytest.raises(CorruptHeaderError, match="depth"):
        parse_header(bytes(eight))


def test_16_bit_files_through_the_cli_decode_to_the_same_samples(tmp_path):
    rgb, gray = _deep(30, 41, 3, seed=1), _deep(30, 41, 1, seed=2)
    (tmp_path / "rgb.png").write_bytes(_png_filtered(rgb))
    Image.fromarray(gray[:, :, 0]).save(tmp_path / "gray.png")  # Pillow's I;16 PNG
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "gray.tif", gray[:, :, 0])
    runner = CliRunner()
    for name, samples in (("rgb.png", rgb), ("gray.png", gray), ("rgb.tif", rgb),
                          ("gray.tif", gray)):
        nic = tmp_path / f"{name}.nic"
        res = runner.invoke(main, ["encode", str(tmp_path / name), "-o", str(nic), "--lossless"])
        assert res.exit_code == 0 and "warning" not in res.output, (name, res.output)
        for suffix in (".png", ".tiff"):
            out = tmp_path / f"{name}{suffix}"
            res = runner.invoke(main, ["decode", str(nic), "-o", str(out)])
            assert res.exit_code == 0, res.output
            back = png16.read(out.read_bytes()) if suffix == ".png" else tifffile.imread(out)
            assert back.dtype == np.uint16 and (back.reshape(samples.shape) == samples).all()
    info = json.loads(runner.invoke(main, ["info", str(tmp_path / "rgb.png.nic"), "--json"]).output)
    assert info["bit_depth"] == 16
    text = runner.invoke(main, ["info", str(tmp_path / "gray.tif.nic")]).output
    assert "16 bit" in text


def test_16_bit_cli_as_a_subprocess_and_formats_that_cannot_hold_it(tmp_path):
    rgb = _deep(20, 25, 3, seed=3)
    (tmp_path / "in.png").write_bytes(png16.write(rgb))

    def run(*args):
        return subprocess.run([sys.executable, "-m", "nicodec.cli", *map(str, args)], cwd=ROOT,
                              capture_output=True, text=True)

    assert run("encode", tmp_path / "in.png", "-o", tmp_path / "x.nic", "--lossless").returncode == 0
    res = run("decode", tmp_path / "x.nic", "-o", tmp_path / "out.png")
    assert res.returncode == 0 and (png16.read((tmp_path / "out.png").read_bytes()) == rgb).all()
    for suffix in (".jpg", ".webp", ".bmp"):
        res = run("decode", tmp_path / "x.nic", "-o", tmp_path / f"out{suffix}")
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1 and len(lines) == 1 and "16-bit" in lines[0], res.stderr
        assert lines[0].startswith("error:") and not (tmp_path / f"out{suffix}").exists()


def test_lossy_models_still_reduce_16_bit_input_with_a_warning():
    image = _deep(32, 32, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = codec.encode(png16.write(image), model="mcq-tiny")
    assert any("reduced to 8 bits" in str(w.message) for w in caught)
    assert parse_header(data)[0].bit_depth == 8 and codec.decode_array(data).dtype == np.uint8
    with pytest.raises(ValueError, match="cannot keep 16-bit"):
        codec.encode(image, model="mcq-tiny", depth="keep")


def _rgba16() -> np.ndarray:
    """16-bit RGB with a soft-edged 16-bit alpha hole (values no 8-bit plane holds)."""
    y, x = np.mgrid[0:24, 0:31]
    alpha = np.clip((np.hypot(y - 12, x - 15) - 6) * 9000 + 17, 0, 65535).astype(np.uint16)
    return np.dstack([_deep(24, 31, 3, seed=5), alpha])


def test_16_bit_alpha_is_kept_exactly_and_opaque_alpha_dropped():
    rgba = _rgba16()
    for image in (rgba, rgba[:, :, 2:]):  # RGBA and gray + alpha
        data = codec.encode(image, lossless=True)
        assert parse_header(data)[0].version == VERSION == 5
        out = codec.decode_array(data)
        assert out.dtype == np.uint16 and (out == image).all()
        assert (codec.decode_array(codec.encode(png16.write(image), lossless=True)) == image).all()
    with pytest.warns(codec.ConversionWarning, match="reduced to 8 bits"):
        pil = codec.decode(codec.encode(rgba, lossless=True))
    assert pil.mode == "RGBA" and (np.asarray(pil) == to_8_bits(rgba)).all()
    data = codec.encode(rgba, lossless=True, alpha="drop")
    assert (codec.decode_array(data) == rgba[:, :, :3]).all()
    opaque = rgba.copy()
    opaque[:, :, 3] = 65535
    assert codec.decode_array(codec.encode(opaque, lossless=True)).shape[2] == 3


def test_16_bit_alpha_through_the_cli_as_png_and_tiff(tmp_path):
    rgba = _rgba16()
    (tmp_path / "in.png").write_bytes(_png_filtered(rgba))
    tifffile.imwrite(tmp_path / "in.tif", rgba, photometric="rgb", extrasamples=("unassalpha",))
    runner = CliRunner()
    for name in ("in.png", "in.tif"):
        nic = tmp_path / f"{name}.nic"
        res = runner.invoke(main, ["encode", str(tmp_path / name), "-o", str(nic), "--lossless"])
        assert res.exit_code == 0 and "warning" not in res.output, res.output
        for suffix in (".png", ".tiff"):
            out = tmp_path / f"{name}{suffix}"
            assert runner.invoke(main, ["decode", str(nic), "-o", str(out)]).exit_code == 0
            back = png16.read(out.read_bytes()) if suffix == ".png" else tifffile.imread(out)
            assert back.dtype == np.uint16 and (back == rgba).all(), (name, suffix)


def test_alpha_depth_follows_the_version():
    """A version-5 file of 16-bit samples holds a 16-bit alpha plane; version 4 an 8-bit one
    (which its encoders never wrote beside 16-bit samples), so the same records read as the
    version says, and a 16-bit plane with samples above the file's depth is damage."""
    alpha16 = _rgba16()[:, :, 3]
    records = Metadata(alpha=alpha16).to_records()
    assert (Metadata.from_records(records, 24, 31, 16).alpha == alpha16).all()
    with pytest.raises(ValueError, match="image size"):
        Metadata.from_records(records, 24, 31, 8)
    with pytest.raises(ValueError, match="above 12 bits"):
        Metadata.from_records(records, 24, 31, 12)
    fields = dict(family=3, model_id=8, weights_digest=0, width=4, height=4, channels=1,
                  quality=0, packet_lengths=(5,), bit_depth=16)
    assert Header(version=4, **fields).alpha_depth == 8
    assert Header(**fields).alpha_depth == 16


def test_damaged_16_bit_files_are_reported(small_tiles):
    image = _deep(40, 70, 3)  # six tiles, six packets
    data = codec.encode(image, lossless=True)
    header, offset = parse_header(data)
    assert len(header.packet_lengths) > 1
    damaged = bytearray(data)
    damaged[offset + 5] ^= 0xFF
    with pytest.raises(PacketLossError):
        decode_detailed(bytes(damaged), strict=True)
    result = decode_detailed(bytes(damaged))
    assert result.lost_packets == 1 and result.pixels.dtype == np.uint16
    with pytest.raises(PacketLossError, match="cut short"):
        decode_detailed(data[:len(data) // 2], strict=True)


def test_pil_images_of_16_bit_files():
    """decode() and Image.open: 16-bit gray is mode I;16, exact; 16-bit RGB (no Pillow mode)
    is reduced to 8 bits with a warning."""
    import nicodec.codec.pillow_plugin  # noqa: F401 (registers the format)

    gray, rgb = _deep(12, 17, 1)[:, :, 0], _deep(12, 17, 3)
    gray_file, rgb_file = codec.encode(gray, lossless=True), codec.encode(rgb, lossless=True)
    for img in (codec.decode(gray_file), Image.open(io.BytesIO(gray_file))):
        assert img.mode == "I;16" and (np.asarray(img) == gray).all()
    with pytest.warns(codec.ConversionWarning, match="reduced to 8 bits"):
        assert codec.decode(rgb_file).mode == "RGB"
    with pytest.warns(codec.ConversionWarning, match="reduced to 8 bits"):
        img = Image.open(io.BytesIO(rgb_file))
        img.load()
    assert img.mode == "RGB" and np.abs(np.asarray(img) - rgb / 257.0).max() <= 0.5
