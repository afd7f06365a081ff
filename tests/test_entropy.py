"""Integer frequency tables, the range coder, and bit-exactness of the fixed-point prior."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nicodec.bitstream.entropy import (
    TOTAL,
    PacketDecoder,
    PacketEncoder,
    cost_bits,
    freqs_from_counts,
    freqs_from_float_weights,
    freqs_from_logits,
    freqs_from_weights,
)

ROOT = Path(__file__).resolve().parent.parent


def test_freqs_from_logits_is_a_valid_table():
    rng = np.random.default_rng(0)
    logits = rng.integers(-20000, 20000, size=(100, 256))
    freqs = freqs_from_logits(logits)
    assert (freqs.sum(-1) == TOTAL).all() and freqs.min() >= 1
    assert (np.argmax(freqs, -1) == np.argmax(logits, -1)).all()
    # shifting all logits of a row changes nothing: only differences matter
    assert (freqs_from_logits(logits + 12345) == freqs).all()
    with pytest.raises(TypeError):
        freqs_from_logits(logits.astype(np.float32))


def _reference_freqs(logits: np.ndarray) -> np.ndarray:
    """The table rule written out step by step in plain Python integers (the specification the
    vectorised :func:`freqs_from_logits` must match bit for bit)."""
    step = [1 << 30]
    for _ in range(255):
        step.append((step[-1] * 1070838486 + (1 << 29)) >> 30)
    rows = []
    for row in logits.tolist():
        top = max(row)
        weights = [step[d & 0xFF] >> (d >> 8) for d in (min(top - v, 30 << 8) for v in row)]
        total, k = sum(weights), len(row)
        freqs = [1 + w * (TOTAL - k) // total for w in weights]
        freqs[weights.index(max(weights))] += TOTAL - sum(freqs)
        rows.append(freqs)
    return np.array(rows)


def test_freqs_from_logits_match_the_reference_rule():
    rng = np.random.default_rng(3)
    logits = np.concatenate([
        rng.integers(-20000, 20000, size=(40, 256)),  # most symbols far below the top
        rng.integers(-900, 900, size=(40, 256)),  # all within a few bits
        np.repeat(rng.integers(-5, 5, size=(10, 1)), 256, axis=1),  # ties: uniform rows
        rng.integers(-8000, 0, size=(10, 256)) // 256 * 256,  # exact powers of two
    ])
    expected = _reference_freqs(logits)
    assert (freqs_from_logits(logits) == expected).all()
    assert (freqs_from_logits(torch.from_numpy(logits.astype(np.int32))) == expected).all()
    assert freqs_from_logits(np.zeros((0, 256), np.int64)).shape == (0, 256)


def test_float_weights_give_the_integer_rule():
    """The float64 path of the lossless models equals the int64 rule on every kind of row: wide
    and narrow magnitudes, zeros, ties, one-hot rows and exact quotients (where a float floor
    would round the wrong way), sums up to just below 2**53."""
    rng = np.random.default_rng(5)
    rows = []
    for bits in (4, 20, 44, 52):  # row sums below 2**bits; entries below 2**47 (integer rule)
        for k in (2, 7, 512):
            top = max(1, min(46, bits - int(np.ceil(np.log2(k))) - 1))
            w = rng.integers(0, 1 << top, size=(30, k))
            w[:5] = 0
            w[:5, 0] = 1 << top  # one-hot: the quotient is exactly TOTAL - k
            w[5:10] = w[5:10, :1]  # ties everywhere
            w[10:15] = (TOTAL - k) * rng.integers(1, 4, size=(5, k))  # many exact quotients
            w[15:20, ::2] = 0
            rows.append(w)
    for w in rows:
        assert (freqs_from_float_weights(w.astype(np.float64)) == freqs_from_weights(w)).all()
    assert freqs_from_float_weights(np.zeros((0, 4))).shape == (0, 4)
    with pytest.raises(ValueError):
        freqs_from_float_weights(np.full((1, 4), 2.0 ** 51))  # sums to 2**53
    with pytest.raises(ValueError):
        freqs_from_float_weights(np.ones((1, 1)))


def test_freqs_follow_softmax():
    logits = np.array([[0, -256, -512, -2560]])  # log2 units with 8 fractional bits
    freqs = freqs_from_logits(logits)[0]
    expected = np.array([1, 0.5, 0.25, 2 ** -10])
    np.testing.assert_allclose(freqs / TOTAL, expected / expected.sum(), rtol=1e-3, atol=2 / TOTAL)


def test_range_coder_round_trip_and_overhead():
    rng = np.random.default_rng(1)
    static = freqs_from_counts(rng.integers(1, 1000, 256))
    sym0 = rng.choice(256, size=5000, p=static / TOTAL)
    tables = freqs_from_logits(rng.integers(-3000, 0, size=(3000, 64)))
    sym1 = np.array([rng.choice(64, p=t / TOTAL) for t in tables])
    enc = PacketEncoder()
    enc.encode(sym0, static)
    enc.encode(sym1, tables)
    payload = enc.finish()
    dec = PacketDecoder(payload)
    assert (dec.decode(static, len(sym0)) == sym0).all()
    assert (dec.decode(tables) == sym1).all()
    ideal = cost_bits(sym0, static) + cost_bits(sym1, tables)
    assert len(payload) * 8 <= ideal * 1.002 + 32


PRIOR_SCRIPT = """
import hashlib, sys
import numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
from nicodec.models.mcq.prior import ChannelPrior, IntChannelPrior
prior = IntChannelPrior.from_float(ChannelPrior(4, 256, 64), np.arange(256) + 1.0)
rng = np.random.default_rng(0)
ctx = rng.integers(0, 256, size=(3, 20000))
digest = hashlib.sha256()
for g in range(4):
    digest.update(prior.freqs(ctx[:g], g).tobytes())
print(digest.hexdigest())
"""


def test_prior_tables_identical_across_thread_counts():
    """The same integer tables with 1 and 2 threads (separate processes, as on two machines)."""
    out = [subprocess.run([sys.executable, "-c", PRIOR_SCRIPT, str(n)], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout for n in (1, 2)]
    assert out[0] == out[1] and len(out[0].strip()) == 64


def test_prior_tables_independent_of_batch_composition():
    import torch

    from nicodec.models.mcq.prior import ChannelPrior, IntChannelPrior

    torch.manual_seed(0)
    prior = IntChannelPrior.from_float(ChannelPrior(4, 256, 64), np.arange(256) + 1.0)
    ctx = np.random.default_rng(2).integers(0, 256, size=(3, 4000))
    for g in range(1, 4):
        whole = prior.freqs(ctx[:g], g)
        order = np.random.default_rng(g).permutation(4000)
        parts = [prior.freqs(ctx[:g, chunk], g) for chunk in np.array_split(order, 7)]
        assert (np.concatenate(parts) == whole[order]).all()


def test_prior_tables_match_an_int64_reference():
    """The float32 embedding-bag hidden layer gives the integers of a plain int64 evaluation,
    even with every weight at the int16 limit; context indices out of range are refused."""
    from nicodec.models.fixedpoint import INT_LIMIT
    from nicodec.models.mcq.prior import (HIDDEN_CAP, HIDDEN_FRAC, LOGIT_FRAC, OUT_FRAC,
                                          IntChannelPrior)

    rng = np.random.default_rng(3)
    groups, extra, vocab, hidden, k = 3, 6, 257, 16, 256
    embed = rng.integers(-INT_LIMIT, INT_LIMIT + 1, (groups, extra + groups, vocab, hidden))
    embed[0, :, 5] = INT_LIMIT  # index 5 everywhere: the largest possible sum
    bias = rng.integers(-INT_LIMIT, INT_LIMIT + 1, (groups, hidden))
    out = rng.integers(-2000, 2001, (groups, hidden, k))
    out_bias = rng.integers(-3000, 3001, (groups, k))
    prior = IntChannelPrior(embed, bias, out, out_bias, None)
    ctx = rng.integers(0, vocab, (extra + groups, 3000))
    ctx[:, :10] = 5
    for g in range(groups):
        h = bias[g] + sum(embed[g, j][ctx[j]] for j in range(extra + g))
        logits = (np.clip(h, 0, HIDDEN_CAP) @ out[g]) >> (HIDDEN_FRAC + OUT_FRAC - LOGIT_FRAC)
        assert (prior.freqs(ctx, g) == freqs_from_logits(logits + out_bias[g])).all()
    with pytest.raises(ValueError, match="out of range"):
        prior.freqs(np.full((extra + 1, 4), vocab), 1)
