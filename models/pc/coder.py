"""Exact integer HCLT conditionals for arithmetic coding, computed incrementally.

Coding needs p(x_i | x_<i) for every variable in a fixed order. The **naive scheme** evaluates the
circuit once per variable with the evidence seen so far: D passes of size |p|, O(D |p|) per
image. The **efficient scheme** (the paper's idea of reusing computation; on a tree it is exact and
linear) codes the variables in *pre-order* of the latent tree. When variable i comes up, its whole
subtree is still unobserved (it marginalizes to 1), and everything observed outside the subtree
reaches Z_i through its parent only, so

    down_i(z_i)   = sum_{z_p} ctx_p(z_p) T_i[z_p, z_i]
    ctx_p(z_p)    = down_p(z_p) * e_p(z_p) * prod_{finished children c of p} up_c(z_p)
    p(x_i = v | x_<i) ∝ sum_{z_i} down_i(z_i) E_i[z_i, v]

where e_p(z) = E_p[z, x_p] is the observed emission and up_c(z_p) = sum_z T_c[z_p, z] e_c(z) ...
is the message of a child subtree, computed once when its last variable has been coded. Each
variable costs one H x H and one H x V product: O(|p|) per image in total, D/2 times fewer
operations than the naive scheme.

Everything is integer: parameters are stored as integers (``TRANS_BITS``, ``EMIT_BITS``), vectors are rescaled after every product by a power-of-two floor to at most
``VECTOR_BITS`` bits (plus one, so that no entry dies), and products are summed in float64 where
these integer sums stay far below 2**53 and are therefore exact in any order. The frequency tables
are identical on every machine, thread count and batch split.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from nicodec.bitstream.entropy import freqs_from_float_weights
from nicodec.models.pc.hclt import HCLT, TreeOrder

TRANS_BITS = 14  # each row of a transition table sums to about 2**14
EMIT_BITS = 15  # each emission row sums to about 2**15
VECTOR_BITS = 24  # message entries are kept below 2**24


def _quantize(log_probs: np.ndarray, bits: int, low: int) -> np.ndarray:
    """Rows of log-probabilities -> integers in low .. 2**15 - 1 (stored as int16), summing to
    about 2**bits. Emissions may round to 0 (the coder's tables still give every value at least
    1/2**16; a floor of 1 on 512-value rows would add ~1% of spurious mass, measured +0.012
    bits per symbol on photos); transitions keep at least 1 so every latent state stays live."""
    return np.clip(np.rint(np.exp(log_probs) * (1 << bits)), low, (1 << 15) - 1).astype(np.int64)


def _rescale(v: np.ndarray) -> np.ndarray:
    """floor(v / 2**s) + 1 per row, with s the smallest shift that brings the row's maximum below
    2**VECTOR_BITS: exact integer arithmetic on integer-valued float64 arrays."""
    _, exponent = np.frexp(v.max(axis=-1, keepdims=True))
    shift = np.maximum(exponent - VECTOR_BITS, 0)
    return np.floor(np.ldexp(v, -shift)) + 1


class IntHCLT:
    """The integer twin of an :class:`HCLT`: ``root`` (H,), ``trans`` (D, H, H) positive and
    ``emit`` (D, H, V) non-negative integers, and the parent array that fixes the coding order."""

    def __init__(self, parent: np.ndarray, root: np.ndarray, trans: np.ndarray,
                 emit: np.ndarray) -> None:
        self.order = TreeOrder.of(parent)
        self.root = root.astype(np.float64)
        self.trans = trans.astype(np.float64)
        self.emit = emit.astype(np.float64)
        # (D, V, H) for lookups of observed emissions, float32 like the coder's state (exact)
        self.emit_t = np.ascontiguousarray(self.emit.transpose(0, 2, 1), np.float32)
        h = root.shape[0]
        if h * (1 << (VECTOR_BITS + 1 + EMIT_BITS)) >= 1 << 53 or (
                h * (1 << (VECTOR_BITS + 1 + TRANS_BITS + 1))) >= 1 << 53:
            raise ValueError(f"{h} latent states overflow exact float64 sums")

    @classmethod
    def from_float(cls, model: HCLT) -> "IntHCLT":
        return cls(model.parent.numpy(), _quantize(model.log_root.numpy(), TRANS_BITS, 1),
                   _quantize(model.log_trans.numpy(), TRANS_BITS, 1),
                   _quantize(model.log_emit.numpy(), EMIT_BITS, 0))

    @property
    def variables(self) -> int:
        return len(self.order.parent)

    def start(self, n: int) -> "TreeCoder":
        """Coding state for ``n`` units (images or tiles) coded side by side."""
        return TreeCoder(self, n)

    def tables(self, data: np.ndarray, count: int | None = None) -> Iterator[np.ndarray]:
        """Tables (n, V) of the first ``count`` (default all) variables in coding order, each
        given the true values of the earlier ones; ``data`` (n, D) in variable order."""
        coder = self.start(len(data))
        for k, node in enumerate(self.order.preorder[:count]):
            yield coder.freqs(k)
            coder.observe(k, data[:, node])

    def naive_freqs(self, data: np.ndarray, k: int) -> np.ndarray:
        """Tables of the k-th coded variable from scratch (the naive scheme: nothing is reused
        between variables)."""
        *_, last = self.tables(data, k + 1)
        return last


class TreeCoder:
    """Pre-order coding state: ``freqs(k)`` then ``observe(k, values)`` for k = 0 .. D-1.

    ``freqs(k)`` is :meth:`enter` (the message into the variable's latent) then :meth:`table`
    (its tables); a caller may take the tables of a few samples at a time (``rows``), which keeps
    the (rows, V) arrays in the processor's cache. The state is the messages of the nodes on the
    current root path; every one of them is an integer of at most 2**VECTOR_BITS (``_rescale``)
    or an emission, so it is kept exactly as float32 (half the memory) and widened to float64
    for every product.
    """

    def __init__(self, model: IntHCLT, n: int) -> None:
        self.m, self.n = model, n
        self.down: dict[int, np.ndarray] = {}  # nodes on the current root path
        self.evidence: dict[int, np.ndarray] = {}  # e * prod(finished children), same nodes
        self.finish_at: dict[int, list[int]] = {}
        order = model.order
        for node in order.preorder[np.argsort(-order.depth[order.preorder], kind="stable")]:
            self.finish_at.setdefault(int(order.subtree_end[node]), []).append(int(node))

    def freqs(self, k: int) -> np.ndarray:
        """Frequency tables (n, V) of the k-th variable in pre-order, given the earlier ones."""
        self.enter(k)
        return self.table(k)

    def enter(self, k: int) -> None:
        """Compute the message into the latent of the k-th variable in pre-order."""
        m = self.m
        node = int(m.order.preorder[k])
        parent = int(m.order.parent[node])
        if parent < 0:
            down = np.broadcast_to(m.root, (self.n, len(m.root)))
        else:
            ctx = _rescale(np.multiply(self.down[parent], self.evidence[parent],
                                       dtype=np.float64))
            down = _rescale(ctx @ m.trans[node])
        self.down[node] = down.astype(np.float32)

    def table(self, k: int, rows: slice = slice(None)) -> np.ndarray:
        """Frequency tables (rows, V) of the k-th variable, after :meth:`enter`."""
        node = int(self.m.order.preorder[k])
        return freqs_from_float_weights(self.down[node][rows].astype(np.float64)
                                        @ self.m.emit[node])

    def observe(self, k: int, values: np.ndarray) -> None:
        """Record the coded values (n,) of the k-th variable; close the finished subtrees."""
        m = self.m
        node = int(m.order.preorder[k])
        self.evidence[node] = m.emit_t[node][np.asarray(values, np.int64)]
        for done in self.finish_at.get(k, []):  # deepest first: children before their parents
            up = _rescale(self.evidence.pop(done) @ m.trans[done].T)
            del self.down[done]
            parent = int(m.order.parent[done])
            if parent >= 0:
                self.evidence[parent] = _rescale(self.evidence[parent] * up).astype(np.float32)
