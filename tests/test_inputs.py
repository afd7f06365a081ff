"""The image files people have: transparency, 16-bit and float samples, CMYK, palettes, ICC
profiles and EXIF, animations; each kept, converted with a warning, or refused when asked."""

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
from click.testing import CliRunner
from PIL import Image, ImageCms

from nicodec import codec
from nicodec.bitstream.format import VERSION, parse_header
from nicodec.bitstream.metadata import MAX_PROFILE_BYTES
from nicodec.cli import main
from nicodec.codec import image as image_module
from nicodec.codec.pipeline import decode_detailed

ROOT = Path(__file__).resolve().parent.parent
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.fixture(scope="module")
def alpha_plane(small_rgb) -> np.ndarray:
    """A plane with opaque, transparent and soft (anti-aliased) parts."""
    y, x = np.mgrid[0 : small_rgb.shape[0], 0 : small_rgb.shape[1]]
    soft = np.clip((np.hypot(y - 18, x - 26) - 10) * 40, 0, 255)
    return soft.astype(np.uint8)


def _png(img: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", **params)
    return buffer.getvalue()


def _png16(samples: np.ndarray) -> bytes:
    """A 16-bit PNG (gray, gray+alpha, RGB or RGBA by the channel count): Pillow cannot write
    16-bit colour, so the file is put together here."""
    height, width, channels = samples.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _warned(call, category=codec.ConversionWarning):
    """Run ``call``; return its result and the messages of the warnings of ``category``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    return result, [str(w.message) for w in caught if issubclass(w.category, category)]


# --- transparency -------------------------------------------------------------------------------


def test_rgba_keeps_alpha_exactly(small_rgb, alpha_plane):
    rgba = np.dstack([small_rgb, alpha_plane])
    data, notes = _warned(lambda: codec.encode(rgba))
    assert notes == [], "keeping alpha changes nothing: no warning"
    plain = codec.encode(small_rgb)
    decoded = codec.decode_array(data)
    assert decoded.shape == (37, 53, 4)
    assert np.array_equal(decoded[:, :, 3], alpha_plane), "alpha is lossless"
    assert np.array_equal(decoded[:, :, :3], codec.decode_array(plain)), "colour as without alpha"
    assert np.abs(decoded[:, :, :3].astype(int) - small_rgb).mean() < 20
    image = codec.decode(data)
    assert image.mode == "RGBA" and np.array_equal(np.asarray(image)[:, :, 3], alpha_plane)
    assert codec.decode_tensor(data).shape == (4, 37, 53)
    header = parse_header(data)[0]
    assert len(data) - len(plain) == header.metadata_length + 2  # the block and its length field
    # from a PNG file, and grayscale with alpha
    png = codec.decode(codec.encode(_png(Image.fromarray(rgba))))
    assert np.array_equal(np.asarray(png)[:, :, 3], alpha_plane)
    gray = codec.decode(codec.encode(Image.fromarray(rgba).convert("LA")))
    assert gray.mode == "LA" and np.array_equal(np.asarray(gray)[:, :, 1], alpha_plane)


def test_alpha_refused_or_dropped_when_asked(small_rgb, alpha_plane):
    rgba = np.dstack([small_rgb, alpha_plane])
    with pytest.raises(codec.UnsupportedImageError, match="transparency") as error:
        codec.encode(rgba, alpha="refuse")
    assert "alpha='keep'" in str(error.value) and "--alpha keep" in str(error.value)
    assert codec.encode(rgba, alpha="drop") == codec.encode(small_rgb)
    with pytest.raises(ValueError, match="alpha must be one of"):
        codec.encode(rgba, alpha="maybe")


def test_palette_png_with_and_without_transparency(small_rgb, alpha_plane):
    palette = Image.fromarray(small_rgb).quantize(64)
    assert codec.encode(_png(palette)) == codec.encode(np.asarray(palette.convert("RGB")))
    palette.info["transparency"] = 0  # palette entry 0 is transparent
    expected = np.asarray(palette.convert("RGBA"))[:, :, 3]
    decoded = codec.decode(codec.encode(_png(palette, transparency=0)))
    assert decoded.mode == "RGBA" and np.array_equal(np.asarray(decoded)[:, :, 3], expected)


def test_cmyk_jpeg(small_rgb):
    buffer = io.BytesIO()
    Image.fromarray(small_rgb).convert("CMYK").save(buffer, format="JPEG", quality=95)
    with Image.open(io.BytesIO(buffer.getvalue())) as img:
        assert img.mode == "CMYK"
        expected = np.asarray(img.convert("RGB"))
    decoded = codec.decode_array(codec.encode(buffer.getvalue()))
    assert decoded.shape == small_rgb.shape
    assert np.abs(decoded.astype(int) - expected).mean() < 20


# --- bit depth ----------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_16_bit_png_reduced_with_warning_or_refused(small_rgb, alpha_plane, channels):
    eight = np.dstack([small_rgb, alpha_plane])[:, :, :channels] if channels > 1 \
        else small_rgb[:, :, :1]
    png = _png16(eight.astype(np.uint16) * 257)  # reduces exactly to the 8-bit samples
    data, notes = _warned(lambda: codec.encode(png))
    assert len(notes) == 1 and "16-bit" in notes[0] and "depth='refuse'" in notes[0]
    assert data == codec.encode(eight if channels > 1 else eight[:, :, 0])
    with pytest.raises(codec.UnsupportedImageError, match="16-bit") as error:
        codec.encode(png, depth="refuse")
    assert "depth='reduce'" in str(error.value) and "--depth reduce" in str(error.value)


def test_16_bit_and_float_arrays(small_rgb):
    wide = small_rgb.astype(np.uint16) * 257 + 100  # rounds to the same 8-bit samples
    data, notes = _warned(lambda: codec.encode(wide))
    assert data == codec.encode(small_rgb) and "16-bit" in notes[0]
    unit = small_rgb.astype(np.float32) / 255
    data, notes = _warned(lambda: codec.encode(unit))
    assert data == codec.encode(small_rgb) and "float" in notes[0]
    float_image = Image.fromarray(unit[:, :, 0])  # mode F, as float TIFFs read
    data, notes = _warned(lambda: codec.encode(float_image))
    assert data == codec.encode(small_rgb[:, :, 0]) and notes
    for bad in (unit * 2, np.full((4, 4), np.nan, np.float32)):
        with pytest.raises(codec.UnsupportedImageError, match=r"\[0, 1\]"):
            codec.encode(bad)
    with pytest.raises(codec.UnsupportedImageError, match="float"):
        codec.encode(unit, depth="refuse")


def test_float_tensor_warns_and_refuses_like_the_same_array(small_rgb):
    torch = pytest.importorskip("torch")
    unit = small_rgb.astype(np.float32) / 255
    tensor = torch.from_numpy(unit).permute(2, 0, 1)
    from_array, array_notes = _warned(lambda: codec.encode(unit))
    for t in (tensor, tensor[None], tensor.to(torch.bfloat16).double()):
        data, notes = _warned(lambda: codec.encode(t))
        assert notes == array_notes and "float samples" in notes[0]
    assert data == from_array
    with pytest.raises(codec.UnsupportedImageError, match="float"):
        codec.encode(tensor, depth="refuse")
    for bad in (tensor * 2, torch.full((1, 4, 4), float("nan"))):
        with pytest.raises(codec.UnsupportedImageError, match=r"\[0, 1\]"):
            codec.encode(bad)
    uint8 = torch.from_numpy(small_rgb).permute(2, 0, 1)
    data, notes = _warned(lambda: codec.encode(uint8))
    assert data == codec.encode(small_rgb) and notes == []


# --- animations ---------------------------------------------------------------------------------


def test_animated_gif_first_frame_or_refused(small_rgb):
    frames = [Image.fromarray(np.roll(small_rgb, 9 * i, axis=1)).quantize(32) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    gif = buffer.getvalue()
    with Image.open(io.BytesIO(gif)) as img:
        first = np.asarray(img.convert("RGB"))
    data, notes = _warned(lambda: codec.encode(gif))
    assert len(notes) == 1 and "3 frames" in notes[0] and "frames='refuse'" in notes[0]
    assert data == codec.encode(first)
    with pytest.raises(codec.UnsupportedImageError, match="3 frames") as error:
        codec.encode(gif, frames="refuse")
    assert "frames='first'" in str(error.value)


# --- ICC profile and EXIF -----------------------------------------------------------------------


def _tagged(small_rgb, fmt: str, orientation: int = 6) -> bytes:
    img = Image.fromarray(small_rgb)
    exif = img.getexif()
    exif[0x010F] = "nicodec test camera"  # Make
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, icc_profile=SRGB, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("source", ["PNG", "JPEG"])
def test_icc_and_exif_round_trip_through_the_api(small_rgb, source):
    data = codec.encode(_tagged(small_rgb, source))
    decoded = decode_detailed(data)
    assert decoded.metadata.icc_profile == SRGB
    image = codec.decode(data)
    assert image.size == (37, 53), "orientation 6 was applied to the pixels"
    assert image.info["icc_profile"] == SRGB
    exif = image.getexif()
    assert exif[0x010F] == "nicodec test camera" and exif[0x0112] == 1
    for fmt in ("PNG", "JPEG", "WEBP"):  # Pillow writes them back from the info
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format=fmt, **decoded.metadata.pil_info())
        with Image.open(io.BytesIO(buffer.getvalue())) as again:
            assert again.info["icc_profile"] == SRGB, fmt
            assert again.getexif()[0x010F] == "nicodec test camera", fmt
            assert again.getexif()[0x0112] == 1, fmt


@pytest.mark.parametrize("order", ["little", "big"])
def test_exif_orientation_reset_in_place(order):
    """Only the orientation value changes: every other byte (maker notes, offsets) stays."""
    magic = b"II*\x00" if order == "little" else b"MM\x00*"
    u16, u32 = (lambda v: v.to_bytes(2, order)), (lambda v: v.to_bytes(4, order))
    entries = [(0x010F, 2, 4, b"abc\x00"), (0x0112, 3, 1, u16(8) + b"\x00\x00")]
    tiff = magic + u32(8) + u16(len(entries)) + b"".join(
        u16(tag) + u16(kind) + u32(count) + value for tag, kind, count, value in entries) + u32(0)
    reset = image_module._reset_orientation(tiff)
    assert len(reset) == len(tiff)
    assert [i for i in range(len(tiff)) if reset[i] != tiff[i]] == [31 if order == "big" else 30]
    exif = Image.Exif()
    exif.load(reset)
    assert exif[0x0112] == 1 and exif[0x010F] == "abc"
    assert image_module._reset_orientation(b"not exif") == b"not exif"


def test_metadata_dropped_when_asked_or_when_it_does_not_fit(small_rgb):
    plain = codec.encode(small_rgb)
    tagged = _tagged(small_rgb, "PNG", orientation=1)
    assert codec.encode(tagged, metadata="drop") == plain
    gray, notes = _warned(lambda: codec.encode(Image.open(io.BytesIO(tagged)).convert("L")))
    assert any("ICC profile" in n for n in notes), "an RGB profile does not describe gray pixels"
    assert decode_detailed(gray).metadata.icc_profile is None
    huge = Image.fromarray(small_rgb)
    huge.info["icc_profile"] = SRGB[:16] + b"RGB " + bytes(MAX_PROFILE_BYTES)
    with pytest.raises(codec.UnsupportedImageError, match="MiB") as error:
        codec.encode(huge)
    assert "metadata='drop'" in str(error.value)
    assert codec.encode(huge, metadata="drop") == plain



def test_metadata_block_limit(small_rgb, alpha_plane, monkeypatch):
    rgba = np.dstack([small_rgb, alpha_plane])
    monkeypatch.setattr(image_module, "MAX_METADATA_BYTES", 64)  # the deflated plane is larger
    with pytest.raises(codec.UnsupportedImageError, match="over the") as error:
        codec.encode(rgba)
    assert "alpha='drop'" in str(error.value)
    assert codec.encode(rgba, alpha="drop") == codec.encode(small_rgb)


# --- damaged metadata ---------------------------------------------------------------------------


def test_damaged_metadata_block_still_decodes_the_pixels(small_rgb, alpha_plane, tmp_path):
    data = codec.encode(np.dstack([small_rgb, alpha_plane]), packets=2)
    header, offset = parse_header(data)
    bad = bytearray(data)
    bad[offset - header.metadata_length + 3] ^= 0x20
    bad = bytes(bad)
    clean = decode_detailed(data)
    result = decode_detailed(bad)
    assert result.metadata_lost and not result.metadata and result.lost_packets == 0
    assert np.array_equal(result.pixels, clean.pixels)
    image, notes = _warned(lambda: codec.decode(bad), codec.MetadataWarning)
    assert image.mode == "RGB" and len(notes) == 1
    with pytest.raises(codec.CorruptMetadataError):
        codec.decode(bad, strict=True)
    (tmp_path / "bad.nic").write_bytes(bad)
    res = CliRunner().invoke(main, ["decode", str(tmp_path / "bad.nic"), "-o",
                                    str(tmp_path / "out.png")])
    assert res.exit_code == 0 and "metadata block is damaged" in res.stderr
    res = CliRunner().invoke(main, ["info", str(tmp_path / "bad.nic"), "--json"])
    assert json.loads(res.stdout)["metadata"].startswith("damaged")


# --- command line -------------------------------------------------------------------------------


def test_cli_options_and_info(small_rgb, alpha_plane, tmp_path):
    exif = Image.Exif()
    exif[0x010F] = "nicodec test camera"
    Image.fromarray(np.dstack([small_rgb, alpha_plane])).save(tmp_path / "a.png",
                                                               icc_profile=SRGB, exif=exif)
    res = CliRunner().invoke(main, ["encode", str(tmp_path / "a.png"), "--alpha", "refuse"])
    assert res.exit_code == 1 and "--alpha keep" in res.stderr
    assert not (tmp_path / "a.nic").exists()
    res = CliRunner().invoke(main, ["encode", str(tmp_path / "a.png")])
    assert res.exit_code == 0 and res.stderr == ""
    res = CliRunner().invoke(main, ["info", str(tmp_path / "a.nic"), "--json"])
    info = json.loads(res.stdout)
    assert info["format_version"] == VERSION
    assert [r["kind"] for r in info["metadata"]] == ["icc_profile", "exif", "alpha"]
    assert info["metadata"][0]["bytes"] == len(SRGB)
    res = CliRunner().invoke(main, ["decode", str(tmp_path / "a.nic"), "-o",
                                    str(tmp_path / "out.png")])
    with Image.open(tmp_path / "out.png") as out:
        assert out.mode == "RGBA" and out.info["icc_profile"] == SRGB
        assert out.getexif()[0x010F] == "nicodec test camera"
        assert np.array_equal(np.asarray(out)[:, :, 3], alpha_plane)
    res = CliRunner().invoke(main, ["decode", str(tmp_path / "a.nic"), "-o",
                                    str(tmp_path / "out.jpg")])
    assert res.exit_code == 0 and "alpha plane dropped" in res.stderr
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.mode == "RGB" and out.info["icc_profile"] == SRGB
        assert out.getexif()[0x010F] == "nicodec test camera"
    assert "--frames" in CliRunner().invoke(main, ["encode", "--help"]).stdout


def test_cli_subprocess_warns_and_refuses(small_rgb, tmp_path):
    (tmp_path / "deep.png").write_bytes(_png16(small_rgb.astype(np.uint16) * 257))

    def run(*args):
        return subprocess.run([sys.executable, "-m", "nicodec.cli", *map(str, args)], cwd=ROOT,
                              capture_output=True, text=True)

    res = run("encode", tmp_path / "deep.png", "--json")
    assert res.returncode == 0 and "warning:" in res.stderr and "16-bit" in res.stderr
    assert "16-bit" in json.loads(res.stdout)["warnings"][0]
    res = run("encode", tmp_path / "deep.png", "-o", tmp_path / "again.nic", "--depth", "refuse")
    assert res.returncode == 1 and "--depth reduce" in res.stderr
    assert not (tmp_path / "again.nic").exists()


# --- lossless and 16 bits ------------------------------------------------------------------------


def test_lossless_keeps_16_bit_and_refuses_what_it_cannot_keep(small_rgb):
    """ctx-photo (the --lossless default) keeps 16-bit samples; pc-photo, which codes 8 bits,
    and float samples (no exact 16-bit form) are refused unless the reduction is asked for."""
    deep = small_rgb.astype(np.uint16) * 257 + 3  # not an 8-bit image in disguise
    png = _png16(deep)
    assert (codec.decode_array(codec.encode(png, lossless=True)) == deep).all()
    for call in (lambda: codec.encode(png, model="pc-photo"),  # lossless without the flag
                 lambda: codec.encode(small_rgb.astype(np.float32) / 255, lossless=True)):
        with pytest.raises(codec.UnsupportedImageError, match="lossless coding cannot") as error:
            call()
        assert "--depth reduce" in str(error.value) and "not to the original" in str(error.value)
    data, notes = _warned(lambda: codec.encode(png, lossless=True, depth="reduce"))
    assert len(notes) == 1 and "reduced to 8 bits" in notes[0]
    assert (codec.decode_array(data) == small_rgb).all()  # exact to the 8-bit reduction
    _, notes = _warned(lambda: codec.encode(png))  # lossy: reduced, as before
    assert "reduced to 8 bits" in notes[0]


def test_cli_lossless_16_bit_exit_codes(small_rgb, tmp_path):
    (tmp_path / "deep.png").write_bytes(_png16(small_rgb.astype(np.uint16) * 257 + 3))

    def run(*args):
        return subprocess.run([sys.executable, "-m", "nicodec.cli", *map(str, args)], cwd=ROOT,
                              capture_output=True, text=True)

    res = run("encode", tmp_path / "deep.png", "-o", tmp_path / "x.nic", "--lossless",
              "--model", "pc-photo")
    assert res.returncode == 1 and not (tmp_path / "x.nic").exists()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "lossless" in lines[0]
    res = run("encode", tmp_path / "deep.png", "-o", tmp_path / "x.nic", "--lossless",
              "--depth", "reduce")
    assert res.returncode == 0 and "reduced to 8 bits" in res.stderr
    assert (codec.decode_array((tmp_path / "x.nic").read_bytes()) == small_rgb).all()
    res = CliRunner().invoke(main, ["encode", str(tmp_path / "deep.png"), "-o",
                                    str(tmp_path / "y.nic"), "--lossless", "--model", "pc-photo"])
    assert res.exit_code == 1 and "lossless coding cannot keep" in res.stderr
    assert "else refuse (--depth reduce" in " ".join(CliRunner().invoke(main, ["encode", "--help"])
                                                .stdout.split())
