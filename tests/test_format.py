"""The container: varints, header round trip and size, checksums, refusals, metadata block,
packet lengths (trailing bytes, truncation)."""

from __future__ import annotations

import numpy as np
import pytest

from nicodec.bitstream.errors import (
    CorruptHeaderError,
    CorruptMetadataError,
    NotNicodecError,
    TruncatedError,
    UnsupportedVersionError,
)
from nicodec.bitstream.format import (
    VERSION,
    Family,
    Header,
    crc8,
    crc16,
    extent,
    metadata_records,
    pack,
    parse_header,
    read_varint,
    seal_metadata,
    seal_packet,
    unpack,
    write_varint,
)
from nicodec.bitstream.metadata import MAX_PROFILE_BYTES, Metadata, describe

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
    assert offset == 13, "a Kodak-sized image in one small packet must have a 13-byte header"
    assert header == Header(packet_lengths=(5,), **FIELDS)
    for length in (5, 2000, 20000):  # version 3 adds the last packet's length: 1 to 3 bytes
        v3 = Header(packet_lengths=(length,), **FIELDS).to_bytes()
        v2 = Header(packet_lengths=(length,), version=2, **FIELDS).to_bytes()
        assert len(v2) == 12 and len(v3) == 12 + len(write_varint(length))


def test_packets_round_trip_and_crc():
    payloads = [b"first", b"", b"third packet"]
    data = pack(FIELDS, payloads)
    header, got = unpack(data)
    assert got == payloads and len(header.packet_lengths) == 3
    damaged = bytearray(data)
    damaged[-3] ^= 0x10  # inside the last packet
    assert unpack(bytes(damaged))[1] == [b"first", b"", None]
    assert unpack(data[:-1])[1] == [b"first", b"", None]  # truncated last packet
    assert unpack(data + b"x")[1] == payloads  # trailing bytes are no part of the file


def test_refusals():
    data = pack(FIELDS, [b"payload"])
    with pytest.raises(NotNicodecError):
        parse_header(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(TruncatedError):
        parse_header(data[:1])
    end = parse_header(data)[1]
    for cut in range(2, end):
        with pytest.raises(TruncatedError):
            parse_header(data[:cut])
    newer = bytearray(data)
    newer[1] = ((VERSION + 1) << 4) | 1
    with pytest.raises(UnsupportedVersionError, match="upgrade"):
        parse_header(bytes(newer))
    for i in range(2, end - 1):  # any single damaged header byte is caught by the CRC-8
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
    assert header.metadata_length == block and header.version == VERSION == 5
    assert metadata_records(data) == RECORDS
    assert unpack(data)[1] == [b"first", b"second"]
    assert data[offset:].startswith(b"first")
    assert metadata_records(pack(FIELDS, [b"x"])) == []


def test_no_metadata_costs_nothing_over_version_1():
    """Without metadata a version-2 header is exactly as long as a version-1 header; version 3
    adds only the last packet's length."""
    for fields in (FIELDS, dict(FIELDS, quality=10, width=1, height=1, channels=1)):
        v3 = Header(packet_lengths=(40, 7), **fields)
        v2 = Header(packet_lengths=(40, 7), version=2, **fields)
        v1 = Header(packet_lengths=(40, 7), version=1, **fields)
        assert len(v2.to_bytes()) == len(v1.to_bytes()) == len(v3.to_bytes()) - 1
        for header in (v1, v2, v3):  # versions 1 and 2 are still read
            assert parse_header(header.to_bytes() + bytes(47))[0] == header
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


# --- version 3: every packet's length stored ----------------------------------------------------

TAILS = [b"\n", b"\r\n", bytes(3), b"x" * 1000, pack(FIELDS, [b"another file"])]


def test_trailing_bytes_are_ignored_from_version_3():
    """Bytes appended to a file (a newline, padding, another file) are no part of it: every
    packet still passes its CRC, and the tail is reported as trailing."""
    payloads = [b"first", b"", b"third packet"]
    for records in ((), RECORDS):
        data = pack(FIELDS, payloads, records)
        offset = parse_header(data)[1]
        assert extent(parse_header(data)[0], offset, len(data)) == (0, 0)
        for tail in TAILS:
            header, got = unpack(data + tail)
            assert got == payloads and header == parse_header(data)[0]
            assert extent(header, offset, len(data + tail)) == (0, len(tail))
            assert metadata_records(data + tail) == list(records)


def test_version_2_still_reads_trailing_bytes_as_the_last_packet():
    """Old files decode exactly as before: their last packet runs to the end of the file."""
    packets = [seal_packet(p) for p in (b"first", b"second")]
    header = Header(packet_lengths=tuple(map(len, packets)), version=2, **FIELDS)
    data = header.to_bytes() + b"".join(packets)
    assert unpack(data)[1] == [b"first", b"second"]
    parsed, got = unpack(data + b"\n")
    assert got == [b"first", None] and parsed.packet_lengths == (7, 9)
    assert extent(parsed, len(header.to_bytes()), len(data) + 1) == (0, 0)  # cannot tell


def test_truncation_is_known_from_the_stored_lengths():
    """A file cut anywhere after its header loses exactly the packets the cut reaches, and says
    how many bytes are missing."""
    payloads = [b"first packet", b"second", b"the third packet"]
    data = pack(FIELDS, payloads)
    header, offset = parse_header(data)
    ends = np.cumsum(header.packet_lengths) + offset
    for cut in range(offset, len(data)):
        got = unpack(data[:cut])[1]
        whole = int(np.searchsorted(ends, cut, side="right"))  # packets entirely before the cut
        assert got == payloads[:whole] + [None] * (3 - whole), cut
        assert extent(header, offset, cut) == (len(data) - cut, 0)


def test_truncation_does_not_depend_on_the_crc():
    """A cut that leaves a valid CRC at the new end of the file: version 2 takes the shortened
    last packet for a whole one, version 3 knows that it is short."""
    inner = b"a payload whose prefix"
    payload = inner + crc16(inner).to_bytes(2, "big") + b" goes on"
    for version, expected in ((2, [b"first", inner]), (3, [b"first", None])):
        packets = [seal_packet(b"first"), seal_packet(payload)]
        header = Header(packet_lengths=tuple(map(len, packets)), version=version, **FIELDS)
        data = header.to_bytes() + b"".join(packets)
        cut = len(header.to_bytes()) + len(packets[0]) + len(inner) + 2
        assert unpack(data[:cut])[1] == expected, version
