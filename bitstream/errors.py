"""Errors raised while reading a nicodec file.

All of them derive from :class:`BitstreamError`, so a caller (and the CLI, which maps it to exit
code 1) can tell "this data is bad" apart from programming errors.
"""


class BitstreamError(ValueError):
    """The data is not a decodable nicodec file."""


class NotNicodecError(BitstreamError):
    """The data does not start with the nicodec magic byte."""


class UnsupportedVersionError(BitstreamError):
    """The file uses a format version this nicodec cannot read."""


class TruncatedError(BitstreamError):
    """The data ends before the header (or the first packet) is complete."""


class CorruptHeaderError(BitstreamError):
    """The header's checksum does not match: nothing in the file can be trusted."""


class CorruptMetadataError(BitstreamError):
    """The metadata block (ICC profile, EXIF, alpha plane) is damaged; the pixels still decode."""


class ModelMismatchError(BitstreamError):
    """The file was made with a model (or weights) that this installation does not have."""


class PacketLossError(BitstreamError):
    """Packets are damaged or missing and the caller asked for a strict decode."""


class ImageTooLargeError(BitstreamError):
    """The header promises more pixels than the caller's limit (a decompression-bomb guard)."""


class DecodeError(BitstreamError):
    """The payload could not be decoded although its checksums pass (a forged or miscoded file)."""
