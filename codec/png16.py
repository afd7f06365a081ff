"""16-bit PNG samples, read and written exactly.

Pillow opens a 16-bit RGB, RGBA or gray-with-alpha PNG as 8-bit (it keeps the high byte of each
sample) and cannot write one. Lossless coding of 16-bit images needs the samples themselves, so
this module reads the image data of a 16-bit PNG (zlib stream, per-row filters, Adam7
interlacing, big-endian samples, a transparent colour as an alpha channel, as the PNG
specification lays them out) and writes 16-bit PNGs the same way
(every row with filter 0, the ICC profile and EXIF as ``iCCP`` and ``eXIf`` chunks). Everything
else about a PNG (its metadata, its orientation) is still read by Pillow.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel
COLOUR_TYPES = {count: kind for kind, count in CHANNELS.items()}
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2))  # the interlaced passes: first column and row, column and row steps


class PngError(ValueError):
    """The PNG cannot be read as 16-bit samples (damaged or not 16-bit)."""


def _chunks(data: bytes):
    """(type, body) of each chunk, checked against its CRC."""
    pos = len(SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc = data[pos + 8 + length:pos + 12 + length]
        if len(body) < length or len(crc) < 4:
            raise PngError("the PNG is cut short")
        if zlib.crc32(kind + body) != int.from_bytes(crc, "big"):
            raise PngError(f"the PNG's {kind.decode('latin-1')} chunk is damaged (CRC mismatch)")
        yield kind, body
        if kind == b"IEND":
            return
        pos += 12 + length
    raise PngError("the PNG is cut short (no IEND chunk)")


def is_deep(data: bytes) -> bool:
    """Whether ``data`` is a PNG of 16 bits per sample (from its IHDR, nothing decoded)."""
    return data[:8] == SIGNATURE and len(data) >= 26 and data[12:16] == b"IHDR" and data[24] == 16


def _unfilter(raw: np.ndarray, height: int, stride: int, bpp: int) -> np.ndarray:
    """Undo the per-row filters (PNG specification, section 9) of ``raw`` bytes.

    Average and Paeth make every pixel wait for the one to its left and those above it, so the
    pixels are reconstructed along anti-diagonals: one vectorised step per diagonal handles
    every row at once, whatever its filter (H + W steps instead of a Python loop per pixel)."""
    rows = raw.reshape(height, stride + 1)
    kind = rows[:, 0].astype(np.int32)
    if (kind > 4).any():
        raise PngError(f"the PNG is damaged (unknown row filter {int(kind.max())})")
    width = stride // bpp
    line = rows[:, 1:].reshape(height, width, bpp).astype(np.int32)
    # reconstructed bytes with a zero row above and a zero column to the left (bytes outside
    # the image count as 0), flattened to pixels: (height + 1) * (width + 1) rows of bpp bytes
    out = np.zeros(((height + 1) * (width + 1), bpp), np.int32)
    for d in range(height + width - 1):
        ys = np.arange(max(0, d - width + 1), min(height, d + 1))
        xs = d - ys
        here = (ys + 1) * (width + 1) + xs + 1
        left, up, upleft = out[here - 1], out[here - width - 1], out[here - width - 2]
        k = kind[ys, None]
        pa, pb, pc = np.abs(up - upleft), np.abs(left - upleft), np.abs(left + up - 2 * upleft)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        pred = np.select([k == 1, k == 2, k == 3, k == 4],
                         [left, up, (left + up) >> 1, paeth], 0)
        out[here] = (line[ys, xs] + pred) & 0xFF
    return out.reshape(height + 1, width + 1, bpp)[1:, 1:].reshape(height, stride).astype(np.uint8)


def read(data: bytes) -> np.ndarray:
    """The samples of a 16-bit PNG as an (H, W, C) uint16 array (C = 1, 2, 3 or 4): a
    transparent colour (``tRNS``) becomes an alpha channel (0 where the colour is, 65535
    elsewhere), as PNG decoders expand it. Raises :class:`PngError` for damage."""
    if not is_deep(data):
        raise PngError("not a 16-bit PNG")
    header, compressed, transparent = None, [], None
    for kind, body in _chunks(data):
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body[:13])
        elif kind == b"IDAT":
            compressed.append(body)
        elif kind == b"tRNS":
            transparent = np.frombuffer(body, ">u2").astype(np.uint16)
    width, height, _, colour, _, _, interlace = header
    if colour not in CHANNELS or interlace > 1:
        raise PngError(f"the PNG is damaged (colour type {colour}, interlace method {interlace} "
                       "at 16 bits)")
    channels = CHANNELS[colour]
    try:
        raw = np.frombuffer(zlib.decompress(b"".join(compressed)), np.uint8)
    except zlib.error as exc:
        raise PngError(f"the PNG's image data does not inflate ({exc})") from None
    samples = np.empty((height, width, channels), np.uint16)
    for x0, y0, dx, dy in ADAM7 if interlace else ((0, 0, 1, 1),):
        w, h = -(-max(width - x0, 0) // dx), -(-max(height - y0, 0) // dy)
        if not w or not h:
            continue  # a pass with no pixels has no bytes, not even filter bytes
        stride = w * channels * 2
        if len(raw) < h * (stride + 1):
            raise PngError("the PNG's image data is cut short")
        rows = _unfilter(raw[:h * (stride + 1)], h, stride, channels * 2)
        samples[y0::dy, x0::dx] = rows.view(">u2").reshape(h, w, channels)
        raw = raw[h * (stride + 1):]
    if transparent is not None:
        if colour not in (0, 2) or len(transparent) != channels:
            raise PngError("the PNG is damaged (a tRNS chunk that does not fit its colour type)")
        opaque = (samples != transparent).any(axis=2)
        samples = np.dstack([samples, np.where(opaque, 65535, 0).astype(np.uint16)])
    return samples


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def write(samples: np.ndarray, icc_profile: bytes | None = None, exif: bytes | None = None
          ) -> bytes:
    """An (H, W, C) uint16 array (C = 1, 2, 3 or 4) as a 16-bit PNG file."""
    height, width, channels = samples.shape
    ihdr = struct.pack(">IIBBBBB", width, height, 16, COLOUR_TYPES[channels], 0, 0, 0)
    rows = np.ascontiguousarray(samples, ">u2").view(np.uint8).reshape(height, -1)
    raw = np.hstack([np.zeros((height, 1), np.uint8), rows]).tobytes()
    out = SIGNATURE + _chunk(b"IHDR", ihdr)
    if icc_profile:
        out += _chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(icc_profile))
    if exif:
        out += _chunk(b"eXIf", exif)
    return out + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")
