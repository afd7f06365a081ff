"""Damaged, foreign and mismatched files: a clear error or a concealed decode, never a crash."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

import codec
from bitstream.errors import BitstreamError
from bitstream.format import Header, parse_header
from codec.pipeline import decode_detailed


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
    bad[1] = (3 << 4) | (bad[1] & 0x0F)
    with pytest.raises(codec.UnsupportedVersionError, match="version 3"):
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
