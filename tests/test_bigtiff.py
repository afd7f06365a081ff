"""Images bigger than memory (``codec/bigtiff.py``, ``models.tiling.zeros``): a big TIFF is read
piece by piece and gives the same file as the same pixels in memory; a big image decodes
straight into a TIFF file with the same pixels; the grids of a big image live in scratch files.
"Big" is lowered here to a few thousand pixels."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from nicodec import cli
from nicodec.codec import bigtiff
from nicodec.codec.image import Policy, UnsupportedImageError, load_image
from nicodec.codec.pipeline import decode_detailed, encode
from nicodec.models import tiling

MODEL = "mcq-tiny"  # the fastest lossy model: the streaming is the model's business nowhere


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    with Image.open(cli.sample_photo()) as img:
        return np.asarray(img.convert("RGB"))[100:196, 150:278]  # 96 x 128


@pytest.fixture
def big(monkeypatch):
    """Images above 4096 pixels are big; grids above 4096 bytes go to scratch files."""
    monkeypatch.setattr(bigtiff, "STREAM_PIXELS", 4096)
    monkeypatch.setattr(tiling, "SPILL_BYTES", 4096)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_big_tiff_is_read_from_disk_and_codes_as_in_memory(tmp_path, photo, big, compression):
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, photo, photometric="rgb", compression=compression, rowsperstrip=16)
    picture = load_image(path)
    assert isinstance(picture.pixels, np.memmap)  # the file itself, or a scratch grid
    np.testing.assert_array_equal(picture.pixels, photo)
    assert encode(path, model=MODEL) == encode(photo, model=MODEL)


def test_big_tiff_metadata_orientation_alpha_as_pillow_reads_them(tmp_path, photo, monkeypatch):
    """The streamed reader gives what Pillow's path gives: orientation applied, ICC profile
    kept, a real alpha plane kept."""
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    alpha = np.full(photo.shape[:2], 255, np.uint8)
    alpha[:10, :10] = 0
    rgba = np.dstack([photo, alpha])
    # (Pillow loads an RGBA TIFF with an orientation tag unrotated: that case is not compared)
    for orientation, pixels in [(1, photo), (3, photo), (6, photo), (8, photo), (1, rgba)]:
        path = tmp_path / f"o{orientation}-{pixels.shape[2]}.tif"
        tifffile.imwrite(path, pixels, photometric="rgb", iccprofile=profile,
                         extrasamples=("unassalpha",) if pixels.shape[2] == 4 else None,
                         extratags=[(bigtiff.ORIENTATION_TAG, "H", 1, orientation, True)])
        small = load_image(path)
        monkeypatch.setattr(bigtiff, "STREAM_PIXELS", 4096)
        streamed = load_image(path)
        monkeypatch.setattr(bigtiff, "STREAM_PIXELS", 1 << 26)
        assert isinstance(streamed.pixels, np.memmap)  # views of the mapped file
        np.testing.assert_array_equal(streamed.pixels, small.pixels)
        assert streamed.metadata.icc_profile == small.metadata.icc_profile == profile
        np.testing.assert_array_equal(streamed.metadata.alpha, small.metadata.alpha)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_big_16_bit_tiff_streams_both_ways_exactly(tmp_path, photo, big, compression):
    """Lossless: a 16-bit RGBA TIFF is read from disk and decodes straight into a 16-bit TIFF
    with the same samples; a lossy model reduces it to 8 bits (a band at a time) with a
    warning, as it does in memory."""
    rng = np.random.default_rng(3)
    deep = photo.astype(np.uint16) * 257 + rng.integers(0, 257, photo.shape, dtype=np.uint16)
    alpha = np.full(photo.shape[:2], 65535, np.uint16)
    alpha[:20, :30] = 1234
    rgba = np.dstack([deep, alpha])
    path, coded, out = tmp_path / "deep.tif", tmp_path / "deep.nic", tmp_path / "out.tif"
    tifffile.imwrite(path, rgba, photometric="rgb", extrasamples=("unassalpha",),
                     compression=compression, rowsperstrip=16)
    picture = load_image(path, Policy(depth="keep"))
    assert picture.pixels.dtype == np.uint16 and isinstance(picture.pixels, np.memmap)
    runner = CliRunner()
    result = runner.invoke(cli.main, ["encode", str(path), "-o", str(coded), "--lossless"])
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    assert runner.invoke(cli.main, ["decode", str(coded), "-o", str(out)]).exit_code == 0
    with tifffile.TiffFile(out) as tif:  # written by the streamed path: uncompressed, mapped
        assert tif.pages.first.is_memmappable
        np.testing.assert_array_equal(tif.asarray(), rgba)
    with pytest.warns(UserWarning, match="reduced to 8 bits"):
        lossy = encode(path, model=MODEL)
    with pytest.warns(UserWarning, match="reduced to 8 bits"):
        assert lossy == encode(rgba, model=MODEL)


def test_big_tiff_that_cannot_be_streamed_is_refused_clearly(tmp_path, photo, big):
    floats = tmp_path / "float.tif"
    tifffile.imwrite(floats, photo.astype(np.float32) / 255, photometric="rgb")
    with pytest.raises(UnsupportedImageError, match="8- or 16-bit grayscale or RGB"):
        load_image(floats)
    damaged = tmp_path / "damaged.tif"
    tifffile.imwrite(damaged, photo, photometric="rgb", compression="zlib")
    data = bytearray(damaged.read_bytes())
    data[200:400] = bytes(200)  # inside the compressed strip
    damaged.write_bytes(bytes(data))
    result = CliRunner().invoke(cli.main, ["encode", str(damaged), "-o", str(tmp_path / "x.nic")])
    assert result.exit_code == 1 and "cannot read image" in result.output
    assert not (tmp_path / "x.nic").exists() and "Traceback" not in result.output


def test_big_image_decodes_straight_into_a_tiff(tmp_path, photo, big):
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = tmp_path / "in.png"
    Image.fromarray(photo).save(source, icc_profile=profile)
    runner = CliRunner()
    coded, out = tmp_path / "in.nic", tmp_path / "out.tif"
    assert runner.invoke(cli.main, ["encode", str(source), "-o", str(coded), "-m",
                                    MODEL]).exit_code == 0
    result = runner.invoke(cli.main, ["decode", str(coded), "-o", str(out)])
    assert result.exit_code == 0, result.output
    with tifffile.TiffFile(out) as tif:  # written by the streamed path: uncompressed, mapped
        assert tif.pages.first.is_memmappable
        assert bytes(tif.pages.first.tags[bigtiff.ICC_TAG].value) == profile
        np.testing.assert_array_equal(tif.asarray(), decode_detailed(coded.read_bytes()).pixels)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failed_streamed_decode_leaves_no_file(tmp_path, photo, big):
    coded, out = tmp_path / "in.nic", tmp_path / "out.tif"
    data = bytearray(encode(photo, model=MODEL, packets=3))
    data[-5] ^= 0xFF  # the last packet fails its CRC
    coded.write_bytes(bytes(data))
    result = CliRunner().invoke(cli.main, ["decode", str(coded), "-o", str(out), "--strict"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == [coded]  # neither the output nor its temporary file
    result = CliRunner().invoke(cli.main, ["decode", str(coded), "-o", str(out)])
    assert result.exit_code == 0 and "concealed" in result.output and out.exists()


def test_grids_above_the_spill_size_live_in_unlinked_scratch_files(tmp_path, monkeypatch):
    monkeypatch.setenv("NICODEC_SCRATCH", str(tmp_path))
    monkeypatch.setattr(tiling, "SPILL_BYTES", 1000)
    small, grid = tiling.zeros((10, 10), np.int64), tiling.zeros((100, 10), np.int64)
    assert not isinstance(small, np.memmap) and isinstance(grid, np.memmap)
    assert not grid.any() and os.listdir(tmp_path) == []  # zero-filled, no name on disk
    grid[:] = 7
    assert grid.sum() == 7000


def test_no_room_for_scratch_files_is_a_clear_error(tmp_path, monkeypatch, photo):
    monkeypatch.setenv("NICODEC_SCRATCH", str(tmp_path / "missing"))
    monkeypatch.setattr(tiling, "SPILL_BYTES", 1000)
    with pytest.raises(OSError, match="scratch file in .*missing.*NICODEC_SCRATCH"):
        tiling.zeros((100, 10), np.int64)
    source, coded = tmp_path / "in.png", tmp_path / "in.nic"
    Image.fromarray(photo).save(source)
    result = CliRunner().invoke(cli.main, ["encode", str(source), "-o", str(coded), "-m", "mcq"])
    assert result.exit_code == 1 and "NICODEC_SCRATCH" in result.output
    assert "Traceback" not in result.output and not coded.exists()


def test_big_tiff_with_several_pages_follows_the_frames_policy(tmp_path, photo, big):
    from nicodec.codec.image import ConversionWarning, Policy

    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(photo, photometric="rgb")
        tif.write(photo[::-1].copy(), photometric="rgb")
    with pytest.warns(ConversionWarning, match="only the first is coded"):
        np.testing.assert_array_equal(load_image(path).pixels, photo)
    with pytest.raises(UnsupportedImageError, match="frames"):
        load_image(path, Policy(frames="refuse"))


def test_image_over_pillows_limit_points_to_tiff(tmp_path, photo, monkeypatch):
    path = tmp_path / "huge.png"
    Image.fromarray(photo).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses above twice this
    with pytest.raises(UnsupportedImageError, match="give it as a TIFF"):
        load_image(path)
