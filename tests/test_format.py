"""The container: varints, header round trip and size, checksums, refusals, metadata block."""

from __future__ import annotations

import numpy as np
import pytest

from bitstream.errors import (
    CorruptHeaderError,
    CorruptMetadataError,
    NotNicodecError,
    TruncatedError,
    UnsupportedVersionError,
)
from bitstream.format import (
    VERSION,
    Family,
    Header,
    crc8,
    crc16,
    metadata_records,
    pack,
    parse_header,
    read_varint,
    seal_metadata,
    unpack,
    write_varint,
)
from bitstream.metadata import MAX_PROFILE_BYTES, Metadata, describe

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


# --- version 2: metadata block ------------------------------------------------------------------

RECORDS = [(1, b"icc profile bytes"), (2, b"MM\x00*exif"), (9, b"")]


def test_metadata_block_round_trip():
    data = pack(FIELDS, [b"first", b"second"], RECORDS)
    header, offset = parse_header(data)
    block = len(seal_metadata(RECORDS))
    assert header.metadata_length == block and header.version == VERSION == 2
    assert metadata_records(data) == RECORDS
    assert unpack(data)[1] == [b"first", b"second"]
    assert data[offset:].startswith(b"first")
    assert metadata_records(pack(FIELDS, [b"x"])) == []


def test_no_metadata_costs_nothing_over_version_1():
    """Without metadata a version-2 header is exactly as long as a version-1 header."""
    for fields in (FIELDS, dict(FIELDS, quality=10, width=1, height=1, channels=1)):
        v2 = Header(packet_lengths=(40, 7), **fields)
        v1 = Header(packet_lengths=(40, 7), version=1, **fields)
        assert len(v2.to_bytes()) == len(v1.to_bytes())
        assert parse_header(v1.to_bytes() + bytes(47))[0] == v1  # version 1 is still read
        assert parse_header(v2.to_bytes() + bytes(47))[0] == v2
    with pytest.raises(ValueError, match="version 1"):
        Header(packet_lengths=(5,), version=1, metadata_length=4, **FIELDS).to_bytes()


def test_damaged_metadata_block_leaves_the_packets():
    data = pack(FIELDS, [b"first", b"second"], RECORDS)
    header, offset = parse_header(data)
    start = offset - header.metadata_length
    for i in range(start, offset):  # any flipped bit of the block, CRC included
        bad = bytearray(data)
        bad[i] ^= 0x04
        with pytest.raises(CorruptMetadataError):
            metadata_records(bytes(bad))
        assert unpack(bytes(bad))[1] == [b"first", b"second"]
    with pytest.raises(CorruptMetadataError, match="cut short"):
        metadata_records(data[: offset - 1])
    # a block whose CRC holds but whose records run past it
    broken = pack(FIELDS, [b"p"], [(1, b"abc")])
    header, offset = parse_header(broken)
    start = offset - header.metadata_length
    body = bytearray(broken[start : offset - 2])
    body[1] = 9  # record length 9 in a block of 3 body bytes
    forged = broken[:start] + bytes(body) + crc16(bytes(body)).to_bytes(2, "big") + broken[offset:]
    with pytest.raises(CorruptMetadataError, match="parse"):
        metadata_records(forged)


def test_header_damage_with_metadata_is_caught():
    data = pack(FIELDS, [b"payload"], RECORDS)
    header_end = parse_header(data)[1] - parse_header(data)[0].metadata_length
    for i in range(2, header_end - 1):
        for bit in range(8):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises((CorruptHeaderError, TruncatedError)):
                parse_header(bytes(bad))


def test_metadata_records_meaning():
    alpha = np.arange(12, dtype=np.uint8).reshape(3, 4)
    meta = Metadata(icc_profile=b"icc", exif=b"II*\x00", alpha=alpha)
    back = Metadata.from_records(meta.to_records() + [(42, b"future kind")], 3, 4)
    assert back.icc_profile == b"icc" and back.exif == b"II*\x00"
    assert np.array_equal(back.alpha, alpha)
    assert back.pil_info() == {"icc_profile": b"icc", "exif": b"Exif\x00\x00II*\x00"}
    assert not Metadata() and Metadata().to_records() == []
    with pytest.raises(CorruptMetadataError, match="twice"):
        Metadata.from_records([(1, b"a"), (1, b"b")], 3, 4)
    for height, width in ((3, 5), (2, 4)):  # the plane must inflate to exactly H x W bytes
        with pytest.raises(CorruptMetadataError, match="size"):
            Metadata.from_records(meta.to_records(), height, width)
    with pytest.raises(CorruptMetadataError, match="inflate"):
        Metadata.from_records([(3, b"not zlib")], 3, 4)
    with pytest.raises(CorruptMetadataError, match="limit"):
        Metadata.from_records([(2, bytes(MAX_PROFILE_BYTES + 1))], 3, 4)
    with pytest.raises(ValueError, match="limit"):
        Metadata(icc_profile=bytes(MAX_PROFILE_BYTES + 1)).to_records()
    assert describe(meta.to_records() + [(42, b"xy")])[::3] == [
        {"kind": "icc_profile", "bytes": 3}, {"kind": 42, "bytes": 2}]
