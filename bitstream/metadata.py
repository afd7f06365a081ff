"""What the records of the metadata block mean: ICC profile, EXIF and the alpha plane.

The block itself (records of kind, length and body behind a CRC-16) is ``bitstream/format.py``;
this module turns its records into a :class:`Metadata` and back. The alpha plane is coded
losslessly with deflate (zlib), which suits the mostly flat planes of real images; the colour
channels stay the model's business. The plane has the image's sample depth: 8 bits, or 16
(big-endian) in a file of deeper samples (format version 5 on).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from nicodec.bitstream.errors import CorruptMetadataError
from nicodec.bitstream.format import Record

MAX_PROFILE_BYTES = 1 << 20  # an ICC profile or an EXIF block (each)
EXIF_PREFIX = b"Exif\x00\x00"  # what JPEG's APP1 segment and Pillow put before the TIFF data


class Kind(IntEnum):
    """Kind of a metadata record (the number written in the file)."""

    ICC_PROFILE = 1
    EXIF = 2
    ALPHA = 3


@dataclass(frozen=True)
class Metadata:
    """What a file carries besides the coded pixels."""

    icc_profile: bytes | None = None
    exif: bytes | None = None  # the TIFF structure, without the "Exif\\0\\0" prefix
    alpha: np.ndarray | None = None  # (H, W) uint8 or uint16, all ones opaque; None: opaque

    def __bool__(self) -> bool:
        return any(x is not None for x in (self.icc_profile, self.exif, self.alpha))

    def to_records(self) -> list[Record]:
        """The records to write, in kind order (none for an empty Metadata)."""
        records: list[Record] = []
        for kind, data in ((Kind.ICC_PROFILE, self.icc_profile), (Kind.EXIF, self.exif)):
            if data is not None:
                if len(data) > MAX_PROFILE_BYTES:
                    raise ValueError(f"{kind.name} record of {len(data)} bytes is over the "
                                     f"{MAX_PROFILE_BYTES >> 20} MiB limit")
                records.append((int(kind), bytes(data)))
        if self.alpha is not None:
            plane = np.ascontiguousarray(self.alpha,
                                         dtype=">u2" if self.alpha.dtype == np.uint16 else np.uint8)
            records.append((int(Kind.ALPHA), zlib.compress(plane.tobytes(), 9)))
        return records

    @classmethod
    def from_records(cls, records: list[Record], height: int, width: int, depth: int = 8
                     ) -> Metadata:
        """Read the records of a file whose image is ``height`` x ``width``, its alpha plane
        of ``depth`` bits per sample (``Header.alpha_depth``; above 8 held in 16 bits).

        Records of kinds this nicodec does not know are skipped (they cannot change the pixels:
        a kind that would needs a new format version). A repeated kind, an oversized profile, an
        alpha plane that does not inflate to exactly the plane's size or holds samples above
        ``depth`` bits raises :class:`CorruptMetadataError`.
        """
        found: dict[int, bytes] = {}
        for kind, data in records:
            if kind in found:
                raise CorruptMetadataError(f"metadata record kind {kind} appears twice")
            found[kind] = data
        for kind in (Kind.ICC_PROFILE, Kind.EXIF):
            if len(found.get(kind, b"")) > MAX_PROFILE_BYTES:
                raise CorruptMetadataError(f"{kind.name} record is over the "
                                           f"{MAX_PROFILE_BYTES >> 20} MiB limit")
        alpha = None
        if Kind.ALPHA in found:
            dtype = np.dtype(">u2" if depth > 8 else np.uint8)
            size = height * width * dtype.itemsize
            inflater = zlib.decompressobj()
            try:  # never inflate past the plane's size, whatever the record claims
                plane = inflater.decompress(found[Kind.ALPHA], size)
                complete = inflater.eof and not inflater.unconsumed_tail
            except zlib.error as exc:
                raise CorruptMetadataError(f"the alpha plane does not inflate ({exc})") from None
            if not complete or len(plane) != size:
                raise CorruptMetadataError("the alpha plane does not match the image size")
            alpha = np.frombuffer(plane, dtype).reshape(height, width).astype(dtype.newbyteorder("="))
            if int(alpha.max()) >> depth:
                raise CorruptMetadataError(f"the alpha plane holds samples above {depth} bits")
        return cls(found.get(Kind.ICC_PROFILE), found.get(Kind.EXIF), alpha)

    def pil_info(self) -> dict[str, bytes]:
        """The ``icc_profile`` and ``exif`` entries of a PIL image's info (and save arguments)."""
        info = {}
        if self.icc_profile is not None:
            info["icc_profile"] = self.icc_profile
        if self.exif is not None:
            info["exif"] = EXIF_PREFIX + self.exif
        return info


def describe(records: list[Record]) -> list[dict]:
    """Kind name (or number) and size of each record, for ``codec info``: nothing is decoded."""
    return [{"kind": Kind(kind).name.lower() if kind in Kind._value2member_map_ else kind,
             "bytes": len(data)} for kind, data in records]
