"""Hybrid tokens of non-negative integers, zigzag signs and uniform tables: what the residuals
(``coder.py``) and the side information (``side.py``) are both coded with.

A value below ``SPLIT`` is its own token; a larger one is its exponent and the bit below its
top bit, and the bits under those are sent raw (uniform).
"""

from __future__ import annotations

import numpy as np

from nicodec.bitstream.entropy import PRECISION

SPLIT = 16  # hybrid tokens: values below are their own token
NTOK = 40  # tokens of 16-bit samples: 16 + 2 per octave from 2**4 to 2**15
_UNIFORM: dict[int, np.ndarray] = {}  # uniform tables by bit count


_SMALL: list[np.ndarray] = []  # token, raw bit count and raw bits' mask of 0 .. 2**16 - 1


def tokens(u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(token, raw bit count, raw value) of non-negative integers (below 2**16 for the
    residuals' 40 tokens, below 2**32 for the side information's 72). Values below 2**16 (the
    residuals') are looked up in tables made once: a few gathers, where computing them took
    a sixth of the encoder's planning of a step."""
    u = np.asarray(u, np.int64)
    if u.size and u.max() < 1 << 16:
        if not _SMALL:
            tok, nraw, _ = _tokens(np.arange(1 << 16))
            _SMALL[:] = [tok, nraw, (1 << nraw) - 1]
        return _SMALL[0][u], _SMALL[1][u], u & _SMALL[2][u]
    return _tokens(u)


def _tokens(u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`tokens` computed."""
    n = np.frexp(np.maximum(u, 1).astype(np.float64))[1].astype(np.int64) - 1  # floor(log2 u)
    big = u >= SPLIT
    nraw = np.where(big, n - 1, 0)
    tok = np.where(big, SPLIT + (n - 4) * 2 + ((u >> np.maximum(n - 1, 0)) & 1), u)
    return tok, nraw, u & ((1 << nraw) - 1)


def untoken(tok: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Inverse of :func:`tokens` given the token and its raw value."""
    n = (tok - SPLIT) // 2 + 4
    big = tok >= SPLIT
    top = (1 << np.where(big, n, 0)) | (((tok - SPLIT) & 1) << np.maximum(n - 1, 0))
    return np.where(big, top | raw, tok)


def raw_bits(tok: np.ndarray) -> np.ndarray:
    """Raw bit count of each token."""
    return np.where(tok >= SPLIT, (tok - SPLIT) // 2 + 3, 0)


def zigzag(v: np.ndarray) -> np.ndarray:
    """Signed integers as non-negative ones: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ..."""
    v = np.asarray(v, np.int64)
    return np.where(v >= 0, 2 * v, -2 * v - 1)


def unzigzag(u: np.ndarray) -> np.ndarray:
    """Inverse of :func:`zigzag`."""
    return np.where(u & 1, -(u + 1) // 2, u // 2)


def uniform(bits: int) -> np.ndarray:
    """The uniform table of ``bits``-bit values (made once per bit count)."""
    if bits not in _UNIFORM:
        _UNIFORM[bits] = np.full(1 << bits, 1 << (PRECISION - bits), np.int64)
    return _UNIFORM[bits]
