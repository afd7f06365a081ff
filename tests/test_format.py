"""The container: varints, header round trip and size, checksums, refusals."""

from __future__ import annotations

import pytest

from bitstream.errors import (
    CorruptHeaderError,
    NotNicodecError,
    TruncatedError,
    UnsupportedVersionError,
)
from bitstream.format import (
    VERSION,
    Family,
    Header,
    crc8,
    pack,
    parse_header,
    read_varint,
    unpack,
    write_varint,
)

FIELDS = dict(family=Family.MCQ, model_id=1, weights_digest=0xBEEF, width=768, height=512,
              channels=3, bit_depth=8, quality=4)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16383, 16384, 2**32 + 5])
def test_varint_round_trip(value):
    data = write_varint(value)
    assert read_varint(data + b"\xff", 0) == (value, len(data))
    assert len(data) == max(1, -(-value.bit_length() // 7))


def test_varint_rejects_negative_and_truncation():
    with pytest.raises(ValueError):
        write_varint(-1)
    with pytest.raises(TruncatedError):
        read_varint(b"\x80\x80", 0)


def test_header_round_trip_and_kodak_size():
    data = pack(FIELDS, [b"abc"])
    header, offset = parse_header(data)
    assert offset == 12, "a Kodak-sized image in one packet must have a 12-byte header"
    assert header == Header(packet_lengths=(5,), **FIELDS)


def test_packets_round_trip_and_crc():
    payloads = [b"first", b"", b"third packet"]
    data = pack(FIELDS, payloads)
    header, got = unpack(data)
    assert got == payloads and len(header.packet_lengths) == 3
    damaged = bytearray(data)
    damaged[-3] ^= 0x10  # inside the last packet
    assert unpack(bytes(damaged))[1] == [b"first", b"", None]
    assert unpack(data[:-1])[1] == [b"first", b"", None]  # truncated last packet
    assert unpack(data + b"x")[1] == [b"first", b"", None]  # trailing junk breaks the last CRC


def test_refusals():
    data = pack(FIELDS, [b"payload"])
    with pytest.raises(NotNicodecError):
        parse_header(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(TruncatedError):
        parse_header(data[:1])
    for cut in range(2, 12):
        with pytest.raises(TruncatedError):
            parse_header(data[:cut])
    newer = bytearray(data)
    newer[1] = ((VERSION + 1) << 4) | 1
    with pytest.raises(UnsupportedVersionError, match="upgrade"):
        parse_header(bytes(newer))
    for i in range(2, 11):  # any single damaged header byte is caught by the CRC-8
        for bit in range(8):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises((CorruptHeaderError, TruncatedError)):
                parse_header(bytes(bad))


def test_crc8_known_value():
    assert crc8(b"123456789") == 0xF4  # CRC-8/SMBUS check value
