"""Big images in tiles and chunks (``models/tiling.py``, ``codec/columns.py``): an image several
tiles wide, coded in many chunks of units, gives the same file as coded whole, and decodes to the
same pixels (float rounding may move a rare pixel by one level), damaged packets included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nicodec.codec import columns, registry
from nicodec.codec.pipeline import decode_detailed, encode_detailed, packet_of_positions
from nicodec.models import tiling
from nicodec.models.pc import codec as pc_codec
from nicodec.models.vq import masked

SMALL_TILE = 128  # pixels; the image below is 5 x 4 tiles
SMALL_CHUNK = 7  # units


@pytest.fixture(scope="module")
def photo(kodak_pixels) -> np.ndarray:
    return kodak_pixels[:480, :624]  # not a multiple of the tile, nor of 32


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles, chunks and the kept-tables budget lowered so that every path is taken."""
    def apply():
        monkeypatch.setattr(tiling, "TILE", SMALL_TILE)
        monkeypatch.setattr(columns, "CHUNK", SMALL_CHUNK)
        monkeypatch.setattr(registry, "KEEP_SYMBOLS", 0)
        monkeypatch.setattr(masked, "BAND_POSITIONS", 400)  # bands of 10 grid rows
        monkeypatch.setattr(columns, "GROUP_ROWS", 4 * 64)  # lossless: 4 units, a packet at a time
        monkeypatch.setattr(pc_codec, "BAND_UNITS", 4)  # lossless: a row of tiles at a time
        monkeypatch.setattr(tiling, "SPILL_BYTES", 4096)  # grids in scratch files
    return apply


def _close(a: np.ndarray, b: np.ndarray) -> None:
    """Pixels equal up to float rounding: at most one level, on a tiny fraction of them."""
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def _damage_last_packet(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[-5] ^= 0xFF  # in the last packet's payload: its CRC fails
    return bytes(damaged)


@pytest.mark.parametrize("model, quality, packets", [("mcq", 4, None), ("mcq", 1, 3),
                                                     ("vq", 8, 4), ("vq", 3, 1),
                                                     ("vq-static", 3, 2)])
def test_tiled_coding_gives_the_same_file_and_pixels(photo, small_tiles, model, quality, packets):
    """Same file, same symbols, pixels within rounding; with a lost packet the same concealment
    (``vq``: the index transformer restores the lost indices band by band, and codes a
    one-packet file in stages band by band)."""
    whole = encode_detailed(photo, model=model, quality=quality, packets=packets)
    reference = decode_detailed(whole.data)
    damaged = _damage_last_packet(whole.data) if packets != 1 else whole.data
    reference_damaged = decode_detailed(damaged)
    small_tiles()
    tiled = encode_detailed(photo, model=model, quality=quality, packets=packets)
    assert tiled.data == whole.data
    assert tiled.model_bits == pytest.approx(whole.model_bits, rel=1e-9)
    decoded = decode_detailed(whole.data)
    assert (decoded.indices == reference.indices).all()
    _close(decoded.pixels, reference.pixels)
    concealed = decode_detailed(damaged)  # concealment works on the whole latent grid
    assert concealed.lost_packets == reference_damaged.lost_packets == (packets != 1)
    assert (concealed.indices == reference_damaged.indices).all()
    _close(concealed.pixels, reference_damaged.pixels)


def test_kept_tables_coded_in_chunks(photo, monkeypatch):
    """The analysis' own tables (kept below KEEP_SYMBOLS) coded chunk by chunk: same file."""
    whole = encode_detailed(photo[:256, :320], quality=6, packets=3)
    monkeypatch.setattr(columns, "CHUNK", SMALL_CHUNK)
    assert encode_detailed(photo[:256, :320], quality=6, packets=3).data == whole.data


def test_tiled_effort_search_decodes_like_the_whole(photo, small_tiles):
    """Effort 2 refines in its own tiles; tiled analysis and error measurement keep its file
    within float rounding of the whole-image one: same size to a few bytes, same pixels
    nearly everywhere."""
    whole = encode_detailed(photo[:256, :320], quality=4, effort=2)
    small_tiles()
    tiled = encode_detailed(photo[:256, :320], quality=4, effort=2)
    assert abs(len(tiled.data) - len(whole.data)) <= 0.01 * len(whole.data)
    a, b = decode_detailed(whole.data).pixels, decode_detailed(tiled.data).pixels
    mse = np.mean((a.astype(float) - b) ** 2)
    assert mse < 0.5  # PSNR between them above 51 dB


@pytest.mark.parametrize("packets", [2, 3])
def test_lossless_chunks_and_tiles_are_exact(photo, small_tiles, packets):
    """3 x 5 units: one unit per chunk, packets coded one by one, analysed and synthesized a
    row of tiles at a time, 2 synthesis tiles: the same file, the exact pixels."""
    image = photo[:96, :160]
    whole = encode_detailed(image, model="pc-photo", packets=packets)
    small_tiles()
    tiled = encode_detailed(image, model="pc-photo", packets=packets)
    assert tiled.data == whole.data
    assert tiled.indices.dtype == np.int16 and (tiled.indices == whole.indices).all()
    assert (decode_detailed(tiled.data).pixels == image).all()
    concealed = decode_detailed(_damage_last_packet(tiled.data))
    lost = np.repeat(np.repeat(concealed.lost, 32, 0), 32, 1)
    assert (concealed.pixels[~lost] == image[~lost]).all() and (concealed.pixels[lost] == 128).all()


def test_grayscale_big_image(small_tiles):
    """A grayscale image several tiles wide keeps one channel and decodes like the whole."""
    y, x = np.mgrid[0:300, 0:400]
    gray = ((np.sin(x / 17.0) + np.cos(y / 11.0)) * 60 + 128).astype(np.uint8)[:, :, None]
    whole = encode_detailed(gray, quality=2)
    reference = decode_detailed(whole.data).pixels
    small_tiles()
    tiled = encode_detailed(gray, quality=2)
    assert tiled.data == whole.data
    pixels = decode_detailed(tiled.data).pixels
    assert pixels.shape == (300, 400, 1)
    _close(pixels, reference)


def test_lossless_packets_bound_the_coder_state(photo, monkeypatch):
    """A big lossless image gets packets of about GROUP_ROWS rows (the coder's state lives
    for a packet): here 15 units, groups of 2 -> 8 packets; the sessions that hold state never
    span more than a packet (or a group of small ones), at encoding and at decoding."""
    image = photo[:96, :160]
    reference = encode_detailed(image, model="pc-photo")
    monkeypatch.setattr(columns, "GROUP_ROWS", 2 * 64)  # 2 units of 64 patches
    model = registry.load_model("pc-photo")
    sizes = []
    real = type(model.prior).session
    monkeypatch.setattr(type(model.prior), "session",
                        lambda prior, n: sizes.append(n) or real(prior, n))
    encoded = encode_detailed(image, model="pc-photo")
    decoded = decode_detailed(encoded.data)
    assert (decoded.pixels == image).all()
    assert len(decoded.header.packet_lengths) == 8
    largest = np.bincount(packet_of_positions(3, 5, 8)).max()  # 15 units dealt to 8 packets
    assert max(sizes) == max(2, largest) < 15  # one packet, or packets of <= 2 units together
    assert len(decode_detailed(reference.data).header.packet_lengths) < 8


def test_groups_are_whole_packets_in_packet_order():
    owner = np.array([0, 1, 2, 0, 1, 2, 0, 1, 0, 0])  # packets of 5, 3 and 2 units
    for limit, expected in ((None, [[0, 3, 6, 8, 9, 1, 4, 7, 2, 5]]),
                            (5, [[0, 3, 6, 8, 9], [1, 4, 7, 2, 5]]),
                            (2, [[0, 3, 6, 8, 9], [1, 4, 7], [2, 5]])):
        groups = columns._groups(owner, range(3), limit)
        assert [list(units) for units, _ in groups] == expected
    (units, spans), = columns._groups(owner, [1, 2], 5)
    assert list(units) == [1, 4, 7, 2, 5] and spans == {1: (0, 3), 2: (3, 5)}
    assert columns._within(spans, slice(2, 4)) == {1: slice(0, 1), 2: slice(1, 2)}


@pytest.mark.parametrize("size, tile, margin", [(100, 32, 8), (32, 32, 8), (7, 32, 0)])
def test_spans_cover_each_position_once(size, tile, margin):
    spans = tiling.spans(size, tile, margin)
    inner = np.concatenate([np.arange(a, b) for _, _, a, b in spans])
    assert (inner == np.arange(size)).all()
    for outer_a, outer_b, a, b in spans:
        assert outer_a == max(0, a - margin) and outer_b == min(size, b + margin)


def test_pixels_tiles_equal_the_padded_image(photo):
    """A float tile of the 8-bit pixels is the same slice of the edge-padded whole image."""
    image = photo[:50, :70]
    pixels = tiling.Pixels(image, 16)
    whole = pixels.whole()
    assert whole.shape == (1, 3, 64, 80)
    assert (whole[:, :, 49:, :70] == whole[:, :, 49:50, :70]).all()  # edge padding
    assert (pixels.tile(16, 64, 32, 80) == whole[:, :, 16:64, 32:80]).all()
    assert (pixels.uint8() == (whole[0] * 255).round().byte().permute(1, 2, 0).numpy()).all()
    assert (pixels.uint8(16, 48) == pixels.uint8()[16:48]).all()
    assert (tiling.Pixels(whole, 16).uint8(16, 48) == pixels.uint8()[16:48]).all()


def test_bigimage_script_measures_and_checks_seams(tmp_path, small_tiles, capsys):
    """``python -m nicodec.eval.bigimage``: a measured row per model and size (subprocesses; a lossless
    decode is checked against the image), and the seam check's row (tiled against untiled: the
    same file)."""
    from nicodec.eval import bigimage

    if not bigimage.PHOTO.exists():
        pytest.skip("training photos not found beside the repository (../shared/data/train)")
    bigimage.main(["--mpx", "0.02", "--models", "vq-static,pc-photo", "--images", str(tmp_path)])
    rows = capsys.readouterr().out.strip().splitlines()[-2:]
    assert rows[0].startswith("| vq-static | 0.02 |") and rows[0].count(" GB") == 2, rows
    assert "exact" not in rows[0] and "GB, exact |" in rows[1], rows  # lossless: checked
    small_tiles()
    bigimage.main(["--seams", "--mpx", "0.1", "--models", "mcq", "--images", str(tmp_path)])
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row.startswith("| mcq | 0.1 | yes |"), row
    assert tiling.TILE == SMALL_TILE  # restored after the untiled run


def test_bigimage_runs_the_checkout_named_by_root(tmp_path):
    """``--root``: the measured child runs that checkout's package, not the one the environment
    has installed (here a copy of the sources in another folder, its weights linked)."""
    import shutil

    import nicodec
    from nicodec.eval import bigimage

    package = Path(nicodec.__file__).resolve().parent
    copy = tmp_path / "checkout"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns(
        ".*", "tests", "results", "weights", "*.egg-info", "__pycache__"))
    (copy / "models" / "weights").symlink_to(package / "models" / "weights")
    src = tmp_path / "image.npy"
    np.save(src, np.full((24, 32, 3), 100, np.uint8))
    result = bigimage.run_child(copy, "encode", src, tmp_path / "image.nic", "ctx-photo", 4.0, 300)
    assert Path(result["package"]) == copy.resolve() and result["bytes"] > 0, result
