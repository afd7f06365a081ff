"""Reversible colour transform and MED prediction residuals for the photo lossless mode.

Per tile (the packet unit), so that a tile decodes from its own symbols only:

* the JPEG 2000 reversible colour transform: Y = floor((R + 2G + B) / 4) in 0..255,
  U = B - G and V = R - G in -255..255 (exactly invertible in integers);
* per channel, the median edge detector of LOCO-I / JPEG-LS predicts each sample from its left,
  upper and upper-left neighbours inside the tile (left only on the first row, upper only on the
  first column, the middle of the range for the first sample);
* the residual is reduced modulo the channel's range (256 for Y, 511 for U and V), so that it has
  as many values as the channel, and zig-zag mapped (0, -1, 1, -2, ...) to a symbol in
  0..SYMBOLS-1.

Encoding is vectorised over the whole tile; decoding walks the tile in raster order, vectorised
over tiles and channels (the prediction needs the reconstructed neighbours).
"""

from __future__ import annotations

import numpy as np

SYMBOLS = 512  # alphabet of every residual symbol (Y uses 256 of them, U and V 511)
_RANGE = np.array([256, 511, 511])  # values per channel
_LOW = np.array([0, -255, -255])  # smallest value per channel
_START = np.array([128, 0, 0])  # prediction of a tile's first sample


def rct(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (..., 3) int64 YUV."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    return np.stack([(r + 2 * g + b) >> 2, b - g, r - g], -1)


def inverse_rct(yuv: np.ndarray) -> np.ndarray:
    """(..., 3) int64 YUV -> (..., 3) uint8 RGB."""
    y, u, v = yuv[..., 0], yuv[..., 1], yuv[..., 2]
    g = y - ((u + v) >> 2)
    return np.stack([v + g, g, u + g], -1).astype(np.uint8)


def _med(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    low, high = np.minimum(a, b), np.maximum(a, b)
    return np.where(c >= high, low, np.where(c <= low, high, a + b - c))


def _zigzag(r: np.ndarray) -> np.ndarray:
    return np.where(r >= 0, 2 * r, -2 * r - 1)


def _unzigzag(s: np.ndarray) -> np.ndarray:
    return np.where(s % 2 == 0, s // 2, -(s + 1) // 2)


def _wrap(r: np.ndarray) -> np.ndarray:
    """Residual reduced modulo the channel range to the interval centred on 0."""
    half = _RANGE // 2
    return (r + half) % _RANGE - half


def to_symbols(tiles: np.ndarray) -> np.ndarray:
    """(N, T, T, 3) uint8 RGB tiles -> (N, T, T, 3) residual symbols in 0..SYMBOLS-1."""
    x = rct(tiles)
    a = np.zeros_like(x)
    b = np.zeros_like(x)
    c = np.zeros_like(x)
    a[:, :, 1:], b[:, 1:], c[:, 1:, 1:] = x[:, :, :-1], x[:, :-1], x[:, :-1, :-1]
    pred = _med(a, b, c)
    pred[:, 0, 1:] = x[:, 0, :-1]  # first row: left neighbour
    pred[:, 1:, 0] = x[:, :-1, 0]  # first column: upper neighbour
    pred[:, 0, 0] = _START
    return _zigzag(_wrap(x - pred))


def from_symbols(symbols: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_symbols`: (N, T, T, 3) symbols -> (N, T, T, 3) uint8 RGB."""
    n, t = symbols.shape[:2]
    r = _unzigzag(np.asarray(symbols, np.int64))
    x = np.zeros_like(r)
    for yy in range(t):
        for xx in range(t):
            if yy == 0 and xx == 0:
                pred = np.broadcast_to(_START, (n, 3))
            elif yy == 0:
                pred = x[:, 0, xx - 1]
            elif xx == 0:
                pred = x[:, yy - 1, 0]
            else:
                pred = _med(x[:, yy, xx - 1], x[:, yy - 1, xx], x[:, yy - 1, xx - 1])
            x[:, yy, xx] = (pred + r[:, yy, xx] - _LOW) % _RANGE + _LOW
    return inverse_rct(x)
