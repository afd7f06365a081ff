"""Entropy coding: integer frequency tables and constriction's range coder.

The rule that keeps decoding bit-exact on every machine: **the coder only ever sees integer
frequency tables**, and every table is computed with integer arithmetic from integers. Models hand
over either static integer tables (stored in their weights) or integer logits produced by exact
fixed-point inference (``models/fixedpoint.py``); :func:`freqs_from_logits` turns those into
frequencies with integer operations only. Floating point never reaches the coder, so the thread
count, the BLAS library, the batch composition or the order of tiles cannot change a single
probability (CompressAI issues #279 and #309 are the failure this avoids).

Frequencies sum to ``2**PRECISION`` and are at least 1, so every symbol stays codable. They are
passed to constriction as exact dyadic floats ``freq / 2**PRECISION``; constriction (pinned to one
minor version, whose format is stable) maps identical inputs to identical fixed-point models.
"""

from __future__ import annotations

import constriction
import numpy as np
import torch

PRECISION = 16
TOTAL = 1 << PRECISION

# Logits are log2-probabilities in fixed point with LOGIT_FRAC fractional bits.
LOGIT_FRAC = 8
_ONE = 1 << 30
# round(2**30 * 2**(-1/256)), written out so that no libm call is involved.
_STEP = 1070838486


def _exp2_table() -> np.ndarray:
    """2**30 * 2**(-i/256) for i in 0..255, by integer recurrence (identical everywhere)."""
    table = [_ONE]
    for _ in range(255):
        table.append((table[-1] * _STEP + (1 << 29)) >> 30)
    return np.array(table, dtype=np.int64)


_EXP2 = _exp2_table()
_MAX_DROP = 30 << LOGIT_FRAC  # below 2**-30 of the top symbol a weight is simply 0


def _weight_table() -> torch.Tensor:
    """Softmax weight of every logit drop 0.._MAX_DROP: 2**30 * 2**(-drop/256), floored, as the
    table of fractional steps shifted by the whole bits (one lookup instead of three steps)."""
    drop = np.arange(_MAX_DROP + 1)
    return torch.from_numpy(_EXP2[drop & 0xFF] >> (drop >> LOGIT_FRAC))


_WEIGHTS = _weight_table()


def freqs_from_logits(logits: np.ndarray | torch.Tensor) -> np.ndarray:
    """Integer log2-logits (..., K), in units of 2**-LOGIT_FRAC bits, to frequencies (..., K).

    Integer-only: softmax via a table of 2**(-drop/256) below each row's largest logit, then a
    rescale to ``TOTAL`` where every symbol keeps at least 1 and the rounding remainder goes to
    the most likely one. The steps are torch integer operations: this is the hot path of every
    learned prior, and torch spreads each step over the threads (int64 arithmetic gives the
    same integers on any thread count).
    """
    logits = torch.as_tensor(logits)
    if logits.is_floating_point() or logits.is_complex() or logits.dtype == torch.bool:
        raise TypeError("freqs_from_logits takes integer logits (use exact fixed-point inference)")
    logits = logits.long()
    drop = (logits.amax(-1, keepdim=True) - logits).clamp_(max=_MAX_DROP)
    return _rescale(torch.take(_WEIGHTS, drop)).numpy()


def freqs_from_weights(weights: np.ndarray) -> np.ndarray:
    """Non-negative integer weights (..., K), proportional to probabilities, to frequencies.

    Every symbol keeps at least 1, the floor of its share of the rest, and the rounding remainder
    goes to the heaviest symbol. Integer-only; weights must stay below 2**(63 - PRECISION).
    """
    weights = np.asarray(weights)
    if weights.dtype.kind not in "iu":
        raise TypeError("freqs_from_weights takes integer weights")
    weights = weights.astype(np.int64, copy=False)
    if weights.size and (weights.min() < 0 or weights.max() >= 1 << (63 - PRECISION)):
        raise ValueError("weights must be non-negative and below 2**(63 - PRECISION)")
    return _rescale(torch.from_numpy(weights.copy())).numpy()


_DOUBT = 2.0 ** -30  # quotients nearer an integer than this are recomputed in integers


def freqs_from_float_weights(weights: np.ndarray) -> np.ndarray:
    """:func:`freqs_from_weights` of non-negative integer weights (n, K) held in float64, whose
    row sums stay below 2**53 (so every sum is exact): the same frequencies, faster.

    This is the hot path of the lossless models (a float64 product of integer matrices, about
    1.5e9 table entries per megapixel). Instead of an int64 division per entry, the share
    w (TOTAL - K) / total is computed in float64, within 2**-36 of the exact quotient (it is
    below 2**16; two roundings of 2**-53): its floor is exact unless the quotient lies within
    that distance of an integer, and the entries within 2**-30 of one (exact quotients, a weight
    of 0) are recomputed in integers.
    """
    n, k = weights.shape
    if not 2 <= k <= TOTAL // 4:
        raise ValueError(f"alphabet size {k} is out of range")
    total = weights.sum(-1, keepdims=True)
    if n and not total.max() < 2.0 ** 53:
        raise ValueError("float weights must sum to less than 2**53 per row")
    top = weights.argmax(-1)  # the first of equal maxima, as torch.argmax in _rescale
    np.maximum(total, 1, out=total)
    share = weights * ((TOTAL - k) / total)
    freqs = np.floor(share)
    share -= freqs  # the fraction, then its distance from the nearest integer
    share -= 0.5
    doubt = np.abs(share, out=share) > 0.5 - _DOUBT
    freqs = freqs.astype(np.int64)
    if doubt.any():
        rows, cols = np.nonzero(doubt)
        exact = weights[rows, cols].astype(np.int64) * (TOTAL - k)
        freqs[rows, cols] = exact // total[rows, 0].astype(np.int64)
    freqs += 1
    freqs[np.arange(n), top] += TOTAL - freqs.sum(-1)
    return freqs


def _rescale(weights: torch.Tensor) -> torch.Tensor:
    """:func:`freqs_from_weights` on valid int64 weights, which it overwrites with the result."""
    k = weights.shape[-1]
    if not 2 <= k <= TOTAL // 4:
        raise ValueError(f"alphabet size {k} is out of range")
    total = weights.sum(-1, keepdim=True).clamp_(min=1)
    top = weights.argmax(-1, keepdim=True)
    freqs = torch.div(weights.mul_(TOTAL - k), total, rounding_mode="floor").add_(1)
    return freqs.scatter_add_(-1, top, TOTAL - freqs.sum(-1, keepdim=True))


def freqs_from_counts(counts: np.ndarray) -> np.ndarray:
    """Symbol counts (K,) (e.g. from training data) to a static frequency table summing to TOTAL."""
    counts = np.asarray(counts, dtype=np.float64)
    k = counts.shape[-1]
    scaled = np.floor(counts / counts.sum() * (TOTAL - k)).astype(np.int64)
    freqs = 1 + scaled
    freqs[np.argmax(freqs)] += TOTAL - freqs.sum()
    return freqs


def cost_bits(symbols: np.ndarray, freqs: np.ndarray) -> float:
    """Ideal code length in bits of ``symbols`` under integer tables (shared (K,) or (n, K))."""
    symbols = np.asarray(symbols, dtype=np.int64)
    if freqs.ndim == 1:
        chosen = freqs[symbols]
    else:
        chosen = np.take_along_axis(freqs, symbols[:, None], axis=1)[:, 0]
    return float(-np.log2(chosen / TOTAL).sum())


def _model_args(freqs: np.ndarray):
    # one pass, exact: TOTAL is a power of 2
    probs = np.ascontiguousarray(np.multiply(freqs, 1.0 / TOTAL, dtype=np.float64))
    if freqs.ndim == 1:
        return (constriction.stream.model.Categorical(probs, perfect=False),)
    return constriction.stream.model.Categorical(perfect=False), probs


class PacketEncoder:
    """Range-codes the symbols of one packet, stage after stage."""

    def __init__(self) -> None:
        self._coder = constriction.stream.queue.RangeEncoder()

    def encode(self, symbols: np.ndarray, freqs: np.ndarray) -> None:
        """Code ``symbols`` (n,) with a shared table (K,) or one table per symbol (n, K)."""
        symbols = np.ascontiguousarray(symbols, dtype=np.int32)
        if symbols.size:
            self._coder.encode(symbols, *_model_args(freqs))

    def finish(self) -> bytes:
        """The packet payload: the coder's 32-bit words, little-endian, trailing zero bytes cut."""
        words = self._coder.get_compressed().astype("<u4")
        return words.tobytes().rstrip(b"\0")


class PacketDecoder:
    """Decodes the symbols of one packet in the order they were encoded."""

    def __init__(self, payload: bytes) -> None:
        padded = payload + b"\0" * (-len(payload) % 4)
        words = np.frombuffer(padded, dtype="<u4").astype(np.uint32)
        self._coder = constriction.stream.queue.RangeDecoder(words)

    def decode(self, freqs: np.ndarray, count: int | None = None) -> np.ndarray:
        """Decode ``count`` symbols with a shared table, or one symbol per row of ``freqs``."""
        if freqs.ndim == 1:
            if not count:
                return np.zeros(0, dtype=np.int64)
            return self._coder.decode(*_model_args(freqs), count).astype(np.int64)
        if not len(freqs):
            return np.zeros(0, dtype=np.int64)
        return self._coder.decode(*_model_args(freqs)).astype(np.int64)
