"""The nicodec container: header, packet table and CRC-protected packets.

The byte layout is the contract documented in ``bitstream/FORMAT.md``; this module is its only
reader and writer. Everything is built from unsigned LEB128 variable-length integers so that a
Kodak image in one packet carries a 14-byte header. Version 2 added an optional metadata block
of typed records between the header and the packets (what the kinds mean is
``bitstream/metadata.py``). Version 3 (written now) stores the length of every packet, the last
one included, so that the decoder finds the end of the file's data without trusting the end of
the file: bytes appended to a file (a newline added by a mail program) are ignored, and a file
cut short is known to be. Version 4 adds the sample depth: bit 0 of the layout, reserved until
then, marks samples deeper than 8 bits, whose depth follows as one more integer; an 8-bit file is
a version-3 file but for its version number. Version 5 (written now) gives the alpha plane of a
deeper file the image's depth (16-bit samples; ``bitstream/metadata.py``); every other file is a
version-4 file but for its version number. Versions 1 to 4 are still read.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from nicodec.bitstream.errors import (
    CorruptHeaderError,
    CorruptMetadataError,
    ImageTooLargeError,
    NotNicodecError,
    TruncatedError,
    UnsupportedVersionError,
)

MAGIC = 0x6E  # ASCII 'n'
VERSION = 5
READABLE_VERSIONS = (1, 2, 3, 4, 5)
DEPTHS = range(8, 17)  # bits per sample a header can describe (from version 4 above 8)
MAX_SIDE = 1 << 16
MAX_PACKETS = 4096
# Decoders refuse headers promising more pixels than this unless told otherwise: Pillow's
# decompression-bomb error threshold (2 * Image.MAX_IMAGE_PIXELS), about 179 megapixels.
MAX_PIXELS = 2 * 89_478_485
PACKET_CRC_BYTES = 2
MAX_METADATA_BYTES = 64 << 20  # the whole metadata block, CRC included

Record = tuple[int, bytes]  # (kind, body) of one metadata record


class Family(IntEnum):
    """Codec family: which kind of model made the symbols."""

    MCQ = 1
    VQ = 2
    LOSSLESS = 3


# --- variable-length integers (unsigned LEB128) -------------------------------------------------


def write_varint(value: int) -> bytes:
    """Encode a non-negative integer as unsigned LEB128 (7 bits per byte, low bits first)."""
    if value < 0:
        raise ValueError(f"varint must be non-negative, got {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Decode an unsigned LEB128 integer at ``pos``; return (value, next position)."""
    value = 0
    for shift in range(0, 63, 7):
        if pos >= len(data):
            raise TruncatedError("file ends inside the header")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise CorruptHeaderError("header integer is too long")


# --- checksums ----------------------------------------------------------------------------------

_CRC8_TABLE = []
for _byte in range(256):
    _crc = _byte
    for _ in range(8):
        _crc = ((_crc << 1) ^ 0x07) & 0xFF if _crc & 0x80 else (_crc << 1) & 0xFF
    _CRC8_TABLE.append(_crc)


def crc8(data: bytes) -> int:
    """CRC-8 (polynomial 0x07, as in SMBus) of ``data``: guards the header."""
    crc = 0
    for byte in data:
        crc = _CRC8_TABLE[crc ^ byte]
    return crc


def crc16(data: bytes) -> int:
    """CRC-16/CCITT (polynomial 0x1021, init 0xFFFF) of ``data``: guards each packet."""
    return binascii.crc_hqx(data, 0xFFFF)


# --- header -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """Everything a decoder needs before the first symbol."""

    family: Family
    model_id: int
    weights_digest: int  # first 16 bits of the SHA-256 of the model's weight file
    width: int
    height: int
    channels: int  # 1 (grayscale) or 3 (RGB)
    bit_depth: int  # bits per sample: 8, or 9..16 from version 4 on (stored as uint16)
    quality: int
    packet_lengths: tuple[int, ...]  # bytes of each packet, CRC included
    metadata_length: int = 0  # bytes of the metadata block, CRC included; 0: no block
    version: int = VERSION  # the format version the header is (or was) written in

    def _layout(self) -> int:
        if self.version == 1:
            if self.metadata_length:
                raise ValueError("format version 1 has no metadata block")
            return (self.quality << 2) | ((self.channels == 3) << 1)
        return ((self.quality << 3) | (bool(self.metadata_length) << 2) | ((self.channels == 3) << 1)
                | (self.bit_depth > 8))

    @property
    def alpha_depth(self) -> int:
        """Bits per sample of the alpha plane: the image's from version 5 on, else 8."""
        return self.bit_depth if self.version >= 5 else 8

    def stored_lengths(self) -> tuple[int, ...]:
        """The packet lengths the header's table holds: every one from version 3 on; before,
        all but the last, whose packet ran to the end of the file."""
        return self.packet_lengths if self.version >= 3 else self.packet_lengths[:-1]

    def to_bytes(self) -> bytes:
        """Serialize the header and packet table."""
        if not 1 <= self.width <= MAX_SIDE or not 1 <= self.height <= MAX_SIDE:
            raise ValueError(f"image sides must be 1..{MAX_SIDE}, got {self.width}x{self.height}")
        if self.channels not in (1, 3) or self.bit_depth not in DEPTHS:
            raise ValueError(f"only grayscale or RGB images of {DEPTHS[0]} to {DEPTHS[-1]} bits "
                             "per sample are supported")
        if self.bit_depth > 8 and self.version < 4:
            raise ValueError(f"format version {self.version} holds only 8-bit samples")
        if not 1 <= len(self.packet_lengths) <= MAX_PACKETS:
            raise ValueError(f"packet count must be 1..{MAX_PACKETS}")
        if self.version not in READABLE_VERSIONS:
            raise ValueError(f"cannot write format version {self.version}")
        if not 0 <= self.metadata_length <= MAX_METADATA_BYTES:
            raise ValueError(f"the metadata block is {self.metadata_length} bytes, over the "
                             f"{MAX_METADATA_BYTES >> 20} MiB limit")
        out = bytearray([MAGIC, (self.version << 4) | int(self.family)])
        out += write_varint(self.model_id)
        out += self.weights_digest.to_bytes(2, "big")
        out += write_varint(self.width - 1)
        out += write_varint(self.height - 1)
        out += write_varint(self._layout())
        if self.bit_depth > 8:
            out += write_varint(self.bit_depth)
        if self.metadata_length:
            out += write_varint(self.metadata_length)
        out += write_varint(len(self.packet_lengths))
        for length in self.stored_lengths():
            out += write_varint(length)
        out.append(crc8(bytes(out)))
        return bytes(out)


def parse_header(data: bytes) -> tuple[Header, int]:
    """Read and verify the header; return it with the offset of the first packet.

    The metadata block, if any, is the ``header.metadata_length`` bytes just before that offset.
    From version 3 on every packet's length is read from the header, and whatever follows the
    last packet is no part of the file (see :func:`extent`). In versions 1 and 2 the last
    packet's length is whatever remains of the file. Either way a truncated file shows up as
    damaged packets, not as an unreadable header.
    """
    if len(data) < 2:
        raise TruncatedError("file is too short to be a nicodec file")
    if data[0] != MAGIC:
        raise NotNicodecError("not a nicodec file (wrong magic byte)")
    version, family = data[1] >> 4, data[1] & 0x0F
    if version not in READABLE_VERSIONS:
        raise UnsupportedVersionError(
            f"file uses nicodec format version {version}; this nicodec reads versions "
            f"{READABLE_VERSIONS[0]} to {VERSION}"
            + (" (the file is newer: upgrade nicodec)" if version > VERSION else "")
        )
    pos = 2
    model_id, pos = read_varint(data, pos)
    if pos + 2 > len(data):
        raise TruncatedError("file ends inside the header")
    digest = int.from_bytes(data[pos : pos + 2], "big")
    pos += 2
    width_m1, pos = read_varint(data, pos)
    height_m1, pos = read_varint(data, pos)
    layout, pos = read_varint(data, pos)
    quality_shift = 2 if version == 1 else 3
    bit_depth = 8
    if version >= 4 and layout & 1:
        bit_depth, pos = read_varint(data, pos)
        if bit_depth <= 8 or bit_depth not in DEPTHS:
            raise CorruptHeaderError("header is damaged (impossible sample depth)")
    metadata_length = 0
    if version >= 2 and layout & 4:
        metadata_length, pos = read_varint(data, pos)
        if not 1 <= metadata_length <= MAX_METADATA_BYTES:
            raise CorruptHeaderError("header is damaged (impossible metadata length)")
    n_packets, pos = read_varint(data, pos)
    if not 1 <= n_packets <= MAX_PACKETS:
        # Checked before reading the table so garbage cannot make us loop for long.
        raise CorruptHeaderError("header is damaged (impossible packet count)")
    lengths = []
    for _ in range(n_packets if version >= 3 else n_packets - 1):
        length, pos = read_varint(data, pos)
        lengths.append(length)
    if pos >= len(data):
        raise TruncatedError("file ends inside the header")
    if crc8(data[:pos]) != data[pos]:
        raise CorruptHeaderError("header is damaged (checksum mismatch)")
    pos += 1 + metadata_length
    try:
        family_enum = Family(family)
    except ValueError:
        raise CorruptHeaderError(f"unknown codec family {family}") from None
    if width_m1 >= MAX_SIDE or height_m1 >= MAX_SIDE or (layout & 1 and version < 4):
        raise CorruptHeaderError("header is damaged (impossible image size or layout)")
    if version < 3:
        lengths.append(max(0, len(data) - pos - sum(lengths)))
    header = Header(
        family=family_enum,
        model_id=model_id,
        weights_digest=digest,
        width=width_m1 + 1,
        height=height_m1 + 1,
        channels=3 if layout & 2 else 1,
        bit_depth=bit_depth,
        quality=layout >> quality_shift,
        packet_lengths=tuple(lengths),
        metadata_length=metadata_length,
        version=version,
    )
    return header, pos


# --- metadata block -----------------------------------------------------------------------------


def seal_metadata(records: Sequence[Record]) -> bytes:
    """The metadata block: every record as kind, length, body; then the CRC-16 of them all."""
    body = b"".join(write_varint(kind) + write_varint(len(data)) + data for kind, data in records)
    return seal_packet(body) if records else b""


def metadata_records(data: bytes) -> list[Record]:
    """The records of a file's metadata block, in file order ([] when it has none).

    Raises :class:`CorruptMetadataError` when the block fails its CRC, is cut short or does not
    parse into whole records: the packets (found through the header alone) are not affected.
    """
    header, end = parse_header(data)
    if not header.metadata_length:
        return []
    block = data[end - header.metadata_length : end]
    if len(block) < header.metadata_length:
        raise CorruptMetadataError("the metadata block is cut short")
    body, crc = block[:-PACKET_CRC_BYTES], block[-PACKET_CRC_BYTES:]
    if len(crc) < PACKET_CRC_BYTES or crc16(body) != int.from_bytes(crc, "big"):
        raise CorruptMetadataError("the metadata block is damaged (checksum mismatch)")
    records, pos = [], 0
    try:
        while pos < len(body):
            kind, pos = read_varint(body, pos)
            length, pos = read_varint(body, pos)
            if pos + length > len(body):
                raise TruncatedError("record runs past the block")
            records.append((kind, bytes(body[pos : pos + length])))
            pos += length
    except (TruncatedError, CorruptHeaderError) as exc:
        raise CorruptMetadataError(f"the metadata block does not parse ({exc})") from None
    return records


def check_pixels(header: Header, max_pixels: int | None = MAX_PIXELS) -> None:
    """Refuse a header whose image has more than ``max_pixels`` pixels (None or 0: no limit),
    before anything is allocated for it: a few forged header bytes must not cost gigabytes."""
    pixels = header.width * header.height
    if max_pixels and pixels > max_pixels:
        raise ImageTooLargeError(
            f"image of {header.width}x{header.height} = {pixels:,} pixels exceeds the limit of "
            f"{max_pixels:,} pixels (a guard against decompression bombs); raise it with "
            f"max_pixels= (codec decode --max-pixels) if the file is trusted")


# --- packets ------------------------------------------------------------------------------------


def seal_packet(payload: bytes) -> bytes:
    """Append the CRC that lets a decoder detect a damaged packet."""
    return payload + crc16(payload).to_bytes(PACKET_CRC_BYTES, "big")


def pack(header_fields: dict, payloads: list[bytes], records: Sequence[Record] = ()) -> bytes:
    """Build a complete file from header fields (all but ``packet_lengths`` and
    ``metadata_length``), packet payloads and metadata records (none: no metadata block)."""
    packets = [seal_packet(p) for p in payloads]
    metadata = seal_metadata(records)
    header = Header(packet_lengths=tuple(len(p) for p in packets),
                    metadata_length=len(metadata), **header_fields)
    return header.to_bytes() + metadata + b"".join(packets)


def unpack(data: bytes) -> tuple[Header, list[bytes | None]]:
    """Split a file into its header and packet payloads.

    A packet that is missing, short or fails its CRC comes back as ``None``: the caller decides
    whether to conceal it or to refuse the file. Header damage raises.
    """
    header, pos = parse_header(data)
    payloads: list[bytes | None] = []
    for length in header.packet_lengths:
        packet = data[pos : pos + length]
        pos += length
        if len(packet) < PACKET_CRC_BYTES or len(packet) < length:
            payloads.append(None)
            continue
        payload, crc = packet[:-PACKET_CRC_BYTES], packet[-PACKET_CRC_BYTES:]
        payloads.append(payload if crc16(payload) == int.from_bytes(crc, "big") else None)
    return header, payloads


def extent(header: Header, offset: int, size: int) -> tuple[int, int]:
    """(missing, trailing) of a file of ``size`` bytes whose header parsed to ``header`` and
    ``offset``: the bytes it lacks up to the end of its last packet (it was cut short), and the
    bytes that follow that end (appended by something else; decoders ignore them).

    Versions 1 and 2 cannot tell, their last packet running to the end of the file: (0, 0).
    """
    if header.version < 3:
        return 0, 0
    end = offset + sum(header.packet_lengths)
    return max(0, end - size), max(0, size - end)
