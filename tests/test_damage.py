"""Damaged, foreign and mismatched files: a clear error or a concealed decode, never a crash."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from nicodec import codec
from nicodec.bitstream.errors import BitstreamError
from nicodec.bitstream.format import VERSION, Header, parse_header
from nicodec.cli import main
from nicodec.codec.pipeline import decode_detailed

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def kodak_file(kodak_path):
    return codec.encode(kodak_path, packets=6)


def _outcome(data: bytes) -> str:
    """'error' for a BitstreamError, else 'ok' / 'concealed'; anything else propagates."""
    try:
        result = decode_detailed(data)
    except BitstreamError:
        return "error"
    assert result.pixels.shape[2] == 3
    return "concealed" if result.lost_packets else "ok"


def test_truncated_files(kodak_file):
    cuts = list(range(0, 40)) + list(range(40, len(kodak_file), 997)) + [len(kodak_file) - 1]
    outcomes = {cut: _outcome(kodak_file[:cut]) for cut in cuts}
    assert all(outcomes[c] == "error" for c in range(0, 30))
    assert outcomes[len(kodak_file) - 1] == "concealed"


def test_bit_flips(kodak_file):
    """A flipped header bit is an error; a flipped packet bit loses that packet only."""
    rng = np.random.default_rng(0)
    header_bytes = parse_header(kodak_file)[1]
    packet_positions = rng.integers(header_bytes, len(kodak_file), 40)
    for pos in list(range(header_bytes)) + list(packet_positions):
        bad = bytearray(kodak_file)
        bad[pos] ^= 1 << int(rng.integers(8))
        expected = "error" if pos < header_bytes else "concealed"
        assert _outcome(bytes(bad)) == expected, f"flip at byte {pos}"


def test_concealment_is_reported_and_strict_refuses(kodak_file):
    bad = bytearray(kodak_file)
    bad[len(bad) // 2] ^= 0xFF
    with pytest.warns(codec.ConcealedWarning, match="concealed"):
        codec.decode(bytes(bad))
    with pytest.raises(codec.PacketLossError):
        codec.decode(bytes(bad), strict=True)
    result = decode_detailed(bytes(bad))
    assert result.lost_packets == 1 and 0.1 < result.concealed_fraction < 0.25


def test_concealment_beats_nothing(kodak_path, kodak_file):
    """A lost packet costs some quality, but the concealed image stays close to the clean one."""
    clean = decode_detailed(kodak_file).pixels.astype(np.float64)
    bad = bytearray(kodak_file)
    bad[len(bad) // 2] ^= 0xFF
    concealed = decode_detailed(bytes(bad)).pixels.astype(np.float64)
    psnr = 10 * np.log10(255**2 / np.mean((clean - concealed) ** 2))
    assert psnr > 20


def test_trailing_bytes_cost_nothing(kodak_file):
    """Bytes appended to a file (a newline from a mail program, padding, another file) are
    ignored: the same pixels, no packet lost, no warning (format version 3, issue 35)."""
    clean = decode_detailed(kodak_file).pixels
    for tail in (b"\n", kodak_file):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert np.array_equal(codec.decode_array(kodak_file + tail), clean)


def test_cut_short_files_are_concealed_and_named(kodak_file):
    """A file cut short loses the packets the cut reaches (concealed as before); a strict decode
    refuses it, saying how many bytes are missing."""
    header, offset = parse_header(kodak_file)
    result = decode_detailed(kodak_file[:-100])
    assert result.lost_packets == 1 and result.concealed_fraction < 0.25
    with pytest.raises(codec.PacketLossError, match="cut short: 100 bytes missing"):
        decode_detailed(kodak_file[:-100], strict=True)
    with pytest.raises(codec.PacketLossError, match="nothing to decode.*cut short"):
        decode_detailed(kodak_file[:offset + 10])


def test_cli_trailing_newline_decodes_cleanly(small_rgb, tmp_path):
    """The issue's case as a user meets it, ``(cat k23.nic; printf '\\n') > x.nic``, in real
    processes: decode exits 0 without a word about damage and gives the clean file's pixels;
    ``codec info`` reports the trailing byte (and a file cut short, the missing bytes)."""
    clean = codec.encode(small_rgb, packets=2)
    (tmp_path / "x.nic").write_bytes(clean + b"\n")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "nicodec.cli", *map(str, args)], cwd=ROOT,
                              capture_output=True, text=True)

    res = run("decode", tmp_path / "x.nic", "-o", tmp_path / "x.png")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    with Image.open(tmp_path / "x.png") as img:
        assert np.array_equal(np.asarray(img), codec.decode_array(clean))
    res = run("info", tmp_path / "x.nic", "--json")
    assert res.returncode == 0
    record = json.loads(res.stdout)
    assert record["trailing_bytes"] == 1 and record["missing_bytes"] == 0
    assert record["format_version"] == VERSION and all(p["ok"] for p in record["packets"])

    text = CliRunner().invoke(main, ["info", str(tmp_path / "x.nic")])
    assert text.exit_code == 0 and "1 trailing byte after the last packet (ignored)" in text.stdout
    (tmp_path / "cut.nic").write_bytes(clean[:-5])
    text = CliRunner().invoke(main, ["info", str(tmp_path / "cut.nic")])
    assert "cut short: 5 bytes missing" in text.stdout and "(1 damaged)" in text.stdout
    # version 2 cannot tell: its last packet runs to the end of the file, as it always did
    old = (ROOT / "tests" / "data" / "golden" / "v2-mcq-tiny-q2-p2-meta.nic").read_bytes()
    (tmp_path / "v2.nic").write_bytes(old + b"\n")
    record = json.loads(CliRunner().invoke(main, ["info", str(tmp_path / "v2.nic"),
                                                  "--json"]).stdout)
    assert record["trailing_bytes"] is None and record["missing_bytes"] is None
    assert [p["ok"] for p in record["packets"]] == [True, False]


def test_random_bytes():
    rng = np.random.default_rng(1)
    for size in [0, 1, 5, 50, 5000]:
        for _ in range(20):
            data = bytes(rng.integers(0, 256, size, dtype=np.uint8))
            assert _outcome(data) == "error"
    for _ in range(20):  # random bytes behind a real magic byte
        data = b"n\x11" + bytes(rng.integers(0, 256, 300, dtype=np.uint8))
        assert _outcome(data) == "error"


def _rewrite_header(data: bytes, **changes) -> bytes:
    header, offset = parse_header(data)
    return dataclasses.replace(header, **changes).to_bytes() + data[offset:]


def test_other_weights_and_unknown_models(kodak_file):
    header, _ = parse_header(kodak_file)
    with pytest.raises(codec.ModelMismatchError, match="other weights"):
        decode_detailed(_rewrite_header(kodak_file, weights_digest=header.weights_digest ^ 1))
    with pytest.raises(codec.ModelMismatchError, match="model id 77"):
        decode_detailed(_rewrite_header(kodak_file, model_id=77))
    with pytest.raises(codec.CorruptHeaderError, match="quality"):
        decode_detailed(_rewrite_header(kodak_file, quality=9))


def test_other_format_version(kodak_file):
    bad = bytearray(kodak_file)
    bad[1] = ((VERSION + 1) << 4) | (bad[1] & 0x0F)
    with pytest.raises(codec.UnsupportedVersionError, match=f"version {VERSION + 1}"):
        decode_detailed(bytes(bad))
    bad[1] = (0 << 4) | (bad[1] & 0x0F)
    with pytest.raises(codec.UnsupportedVersionError, match="version 0"):
        decode_detailed(bytes(bad))


def test_lossy_decode_never_warns_on_clean_files(kodak_file):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        codec.decode(kodak_file)


def test_header_dataclass_is_the_contract():
    assert [f.name for f in dataclasses.fields(Header)] == [
        "family", "model_id", "weights_digest", "width", "height", "channels", "bit_depth",
        "quality", "packet_lengths", "metadata_length", "version"]
