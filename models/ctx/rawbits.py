"""r5's coded raw bits: under a large token (u of 16 and up), the top ``raw_coded`` raw bits
and the lowest (the residual's sign, ``raw_sign``) are range-coded with the weight file's
probability of a 1 for the sample's class and token (``Tables.raw``, (bits, classes, NTOK), in
units of 2**-PRECISION); the raw bits between them stay uniform (``coder.py`` sends them). The
density falls inside a token's range, the more so the narrower the class, and a large
residual's sign is skewed too (explore.md, "ctx-photo r5 candidate: tables")."""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from nicodec.bitstream.entropy import PRECISION, PacketDecoder
from nicodec.models.ctx.tokens import NTOK


class Coding(Protocol):
    """What of a coder revision (``coder.Revision``) the raw bits follow."""

    raw_coded: int  # the top raw bits coded (0: none, before r5)
    raw_sign: bool  # and the lowest (the residual's sign)
    phase: bool  # the class ids have phase halves (r2 on)


def raw_context(cls: np.ndarray, tok: np.ndarray, rev: Coding) -> np.ndarray:
    """r5: the rows of ``Tables.raw`` of samples of class ids ``cls`` and tokens ``tok``: the
    class without its phase half, and the token."""
    return (cls >> 1 if rev.phase else cls) * NTOK + tok


def bit_tables(raw: np.ndarray, j: int, context: np.ndarray) -> np.ndarray:
    """r5: the (n, 2) frequency rows of the ``j``-th coded raw bit in ``context``, from the
    weight file's tables ``raw`` (``Tables.raw``)."""
    one = raw[j].reshape(-1)[context]
    return np.stack([(1 << PRECISION) - one, one], 1)


def coded_raw(rev: Coding) -> int:
    """r5: how many of a token's raw bits are coded with ``Tables.raw`` (at most)."""
    return rev.raw_coded + rev.raw_sign


def top_raw(cls: np.ndarray, tok: np.ndarray, nraw: np.ndarray, raw: np.ndarray,
            rev: Coding) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
    """r5's encoder: the top ``raw_coded`` raw bits of each sample, then (``raw_sign``) its
    lowest, as (context, bits) of one coder call each (each over the samples with a bit
    left), and the raw bits left between them (counts, values), sent uniform. Only the
    samples with raw bits (tokens of 16 and up: few) are looked at."""
    if not coded_raw(rev):
        return [], nraw, raw
    big = np.flatnonzero(nraw)
    n, v, context = nraw[big], raw[big], raw_context(cls[big], tok[big], rev)
    top = []
    for _ in range(rev.raw_coded):
        has = n > 0
        n = n - has
        top.append((context[has], (v[has] >> n[has]) & 1))
        v = v & ((1 << n) - 1)
    if rev.raw_sign:
        has = n > 0
        top.append((context[has], v[has] & 1))
        n, v = n - has, v >> has
    nraw, raw = nraw.copy(), raw.copy()
    nraw[big], raw[big] = n, v
    return top, nraw, raw


def get_top_raw(coder: PacketDecoder, cls: np.ndarray, tok: np.ndarray, nraw: np.ndarray,
                rev: Coding, raw: np.ndarray
                ) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """r5: the inverse of :func:`top_raw`: decodes the coded raw bits of the samples with raw
    bits, and returns the raw bit counts left (sent uniform), and what puts the coded bits
    back around those bits' values (``raw``: the weight file's tables, ``Tables.raw``)."""
    big = np.flatnonzero(nraw)
    n, context = nraw[big], raw_context(cls[big], tok[big], rev)
    high = np.zeros(len(big), np.int64)
    for j in range(rev.raw_coded):
        has = n > 0
        n = n - has
        high[has] = 2 * high[has] + coder.decode(bit_tables(raw, j, context[has]))
    low, lowest = np.zeros((2, len(big)), np.int64)  # the sign bit, and whether there is one
    if rev.raw_sign:
        lowest[:] = n > 0
        low[lowest == 1] = coder.decode(bit_tables(raw, rev.raw_coded, context[lowest == 1]))
        n = n - lowest
    left = nraw.copy()
    left[big] = n

    def rebuilt(values: np.ndarray) -> np.ndarray:
        values = values.copy()
        values[big] = (high << n | values[big]) << lowest | low
        return values
    return left, rebuilt
