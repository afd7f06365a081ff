"""The .nic format in Pillow: Image.open decodes lazily, Image.save encodes (codec/pillow_plugin)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image, ImageCms, UnidentifiedImageError

from nicodec import codec
from nicodec.bitstream.format import MAX_SIDE


@pytest.fixture()
def image(small_rgb) -> Image.Image:
    return Image.fromarray(np.tile(small_rgb, (2, 2, 1)))  # 74x106


def test_round_trip_matches_codec_decode(tmp_path, image):
    image.save(tmp_path / "a.nic", quality=3, effort=1)
    data = (tmp_path / "a.nic").read_bytes()
    assert data == codec.encode(image, quality=3), "save writes what codec.encode writes"
    with Image.open(tmp_path / "a.nic") as im:
        assert im.format == "NIC" and im.mode == "RGB" and im.size == image.size
        assert im.info["nicodec_quality"] == 3
        pixels = np.asarray(im)
    assert np.array_equal(pixels, codec.decode_array(data))
    assert Image.registered_extensions()[".nic"] == "NIC" and Image.MIME["NIC"]


def test_grayscale_lossless_and_model_options(tmp_path, image):
    gray = image.convert("L")
    gray.save(tmp_path / "g.nic", lossless=True)
    with Image.open(tmp_path / "g.nic") as im:
        assert im.mode == "L" and np.array_equal(np.asarray(im), np.asarray(gray))
    image.save(tmp_path / "t.nic", model="mcq-tiny", quality=2)
    assert (tmp_path / "t.nic").read_bytes() == codec.encode(image, model="mcq-tiny", quality=2)


def test_alpha_and_icc_profile(tmp_path, image):
    rgba = image.convert("RGBA")
    alpha = np.tile(np.arange(image.width, dtype=np.uint8) * 2, (image.height, 1))
    rgba.putalpha(Image.fromarray(alpha))
    rgba.info["icc_profile"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgba.save(tmp_path / "a.nic", quality=2)
    data = (tmp_path / "a.nic").read_bytes()
    with Image.open(tmp_path / "a.nic") as im:
        assert im.mode == "RGBA" and im.info["icc_profile"] == rgba.info["icc_profile"]
        pixels = np.asarray(im)
    assert np.array_equal(pixels, codec.decode_array(data))
    assert np.array_equal(pixels[:, :, 3], alpha), "alpha is coded losslessly"


def test_save_to_a_target(tmp_path, image):
    image.save(tmp_path / "t.nic", target_bpp=0.4)
    data = (tmp_path / "t.nic").read_bytes()
    assert 0.36 <= 8 * len(data) / (image.width * image.height) <= 0.4
    with pytest.raises(ValueError, match="replaces quality"):
        image.save(tmp_path / "u.nic", target_bpp=0.4, quality=2)
    assert not (tmp_path / "u.nic").exists()


def test_open_reads_the_header_only(tmp_path, image, monkeypatch):
    image.save(tmp_path / "a.nic")

    def refuse(*args, **kwargs):
        raise AssertionError("decoded before load()")

    monkeypatch.setattr(codec, "decode_array", refuse)
    with Image.open(tmp_path / "a.nic") as im:
        assert im.size == image.size and im.mode == "RGB"


def test_foreign_and_damaged_files(tmp_path, image):
    (tmp_path / "text.nic").write_bytes(b"hello, this is text")
    with pytest.raises(UnidentifiedImageError):
        Image.open(tmp_path / "text.nic")
    image.save(tmp_path / "a.nic", packets=4)
    data = (tmp_path / "a.nic").read_bytes()
    header = bytearray(data)
    header[5] ^= 0xFF  # inside the header: its CRC fails
    (tmp_path / "header.nic").write_bytes(bytes(header))
    with pytest.raises(UnidentifiedImageError, match="header is damaged"):
        Image.open(tmp_path / "header.nic")
    (tmp_path / "short.nic").write_bytes(data[:3])
    with pytest.raises(UnidentifiedImageError, match="nicodec"):
        Image.open(tmp_path / "short.nic")
    packet = bytearray(data)
    packet[-1] ^= 0xFF  # the last packet's CRC fails: concealed, as codec.decode does
    (tmp_path / "packet.nic").write_bytes(bytes(packet))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Image.open(tmp_path / "packet.nic") as im:
            pixels = np.asarray(im)
        expected = codec.decode_array(bytes(packet))
    assert any(issubclass(w.category, codec.ConcealedWarning) for w in caught)
    assert np.array_equal(pixels, expected)
    image.save(tmp_path / "one.nic", packets=1)
    lost = bytearray((tmp_path / "one.nic").read_bytes())
    lost[-1] ^= 0xFF  # the only packet: nothing left to decode
    (tmp_path / "lost.nic").write_bytes(bytes(lost))
    with Image.open(tmp_path / "lost.nic") as im:
        with pytest.raises(OSError, match="every packet"):
            im.load()


def test_unsupported_image_is_not_written(tmp_path):
    too_wide = Image.new("L", (MAX_SIDE + 1, 1))
    with pytest.raises(OSError, match="nicodec"):
        too_wide.save(tmp_path / "x.nic")
    assert not (tmp_path / "x.nic").exists()
