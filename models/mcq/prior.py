"""The MCQ family's priors: positionwise conditional priors over codebook indices, trained in
float, shipped as integers.

:class:`ChannelPrior` predicts the index of codebook group g at one position from a list of
context indices: ``extra`` tokens that every group sees (e.g. the coarser level's indices at the
parent position) followed by the indices of groups < g at the same position. Each context slot has
its own embedding table; the embeddings are summed, passed through a ReLU and a linear layer to
logits. There is no spatial context, so every position of a group is predicted in one vectorised
step.

:class:`IntChannelPrior` is the same network in integers, evaluated exactly with
``models/fixedpoint.py``: its frequency tables are bit-identical on every machine.

:class:`IntMCQPrior` gives the tables of the MCQ unit layout column by column: coarse groups from
the coarse groups before them, fine groups from the context rows of :func:`fine_context` (the
parent's coarse indices, optionally the same group at sibling children, the groups before it).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nicodec.bitstream.entropy import LOGIT_FRAC, freqs_from_counts, freqs_from_logits
from nicodec.models.fixedpoint import FLOAT32_EXACT_LIMIT, INT_LIMIT, check_exact, to_fixed

HIDDEN_FRAC = 8  # fixed-point bits of the hidden layer
OUT_FRAC = 10  # fixed-point bits of the output weights
HIDDEN_CAP = 1 << 16

# The children of a unit (c = 2 dy + dx) coded before child c whose index of the same fine group
# the prior sees, by neighbour slot (left, up, up-left, up-right); -1: no such child (the slot
# holds the token ``codebook_size``). Children of one unit sit in one packet, so this context
# never reaches across packets, and each column is still decoded in one vectorised step.
SIBLINGS = ((-1, -1, -1, -1), (0, -1, -1, -1), (-1, 0, -1, 1), (2, 1, 0, -1))


def fine_context(units: np.ndarray | torch.Tensor, coarse_groups: int, g: int, child: int,
                 sibling_groups: int, absent: int) -> list:
    """The context rows of fine group g at ``child``, from unit columns (columns, N): the
    parent's coarse indices; with ``sibling_groups``, four sibling slots (the group's indices at
    the children of SIBLINGS, or ``absent`` where there is none or g >= sibling_groups); then
    the child's own groups < g."""
    rows = [units[k] for k in range(coarse_groups)]
    if sibling_groups:
        none = (np.full(units.shape[1], absent) if isinstance(units, np.ndarray) else
                torch.full((units.shape[1],), absent, dtype=units.dtype, device=units.device))
        rows += [units[coarse_groups + 4 * g + c] if c >= 0 and g < sibling_groups else none
                 for c in SIBLINGS[child]]
    return rows + [units[coarse_groups + 4 * k + child] for k in range(g)]


class ChannelPrior(nn.Module):
    """p(i_g | extra tokens, i_<g) for ``groups`` targets over ``codebook_size`` symbols."""

    def __init__(self, groups: int, codebook_size: int, hidden: int, extra: int = 0,
                 context_size: int | None = None) -> None:
        super().__init__()
        self.groups, self.codebook_size, self.extra = groups, codebook_size, extra
        vocab = max(codebook_size, context_size or 0)
        self.embed = nn.Parameter(torch.randn(groups, extra + groups, vocab, hidden) * 0.1)
        self.bias = nn.Parameter(torch.zeros(groups, hidden))
        self.out = nn.Parameter(torch.randn(groups, hidden, codebook_size) * 0.05)
        self.out_bias = nn.Parameter(torch.zeros(groups, codebook_size))

    def logits(self, context: torch.Tensor, g: int) -> torch.Tensor:
        """Natural-log logits (N, K) of group g from context indices (extra + g, N)."""
        h = self.bias[g].expand(context.shape[1], -1)
        for j in range(self.extra + g):
            h = h + self.embed[g, j][context[j]]
        return F.relu(h) @ self.out[g] + self.out_bias[g]

    def loss(self, context: torch.Tensor | list[torch.Tensor], targets: torch.Tensor
             ) -> torch.Tensor:
        """Mean cross-entropy in bits per symbol of targets (groups, N): ``context`` is the
        extra tokens (E, N) that every group sees, followed by the groups < g of ``targets``,
        or the whole context of each group, a list of (extra + g, N)."""
        total = 0.0
        for g in range(self.groups):
            if self.extra + g == 0:
                continue  # group 0 without context uses a counted static table
            if isinstance(context, list):
                ctx = context[g]
            else:
                ctx = torch.cat([context, targets[:g]]) if self.extra else targets[:g]
            total = total + F.cross_entropy(self.logits(ctx, g), targets[g]) / np.log(2)
        return total / self.groups


class IntChannelPrior:
    """The integer version of :class:`ChannelPrior`, evaluated exactly."""

    def __init__(self, embed: np.ndarray, bias: np.ndarray, out: np.ndarray,
                 out_bias: np.ndarray, static: np.ndarray | None) -> None:
        self.embed, self.bias, self.out, self.out_bias = embed, bias, out, out_bias
        self.extra = embed.shape[1] - embed.shape[0]
        self.static = static  # (K,) frequencies of group 0 when it has no context
        # The hidden layer is clipped to [0, HIDDEN_CAP], so one bound covers every product.
        check_exact(HIDDEN_CAP, np.abs(out).max(initial=0), out.shape[1])
        # torch views of the same integers: this is the hot path of MCQ coding, and one thread
        # pool (torch's) serves all of it (numpy's BLAS beside torch's threads halves the speed).
        # Each group's embedding tables are one float32 bag, so that the hidden layer is a
        # single embedding_bag sum (a loop of row lookups took 15x longer); its terms are int16
        # integers, so every partial sum stays an exact integer in float32, in any order.
        groups, rows, vocab, hidden = embed.shape
        check_exact(INT_LIMIT, 1, rows + 1, FLOAT32_EXACT_LIMIT)  # rows and the bias
        self._vocab = vocab
        self._bag = torch.from_numpy(embed.reshape(groups, rows * vocab, hidden)
                                     .astype(np.float32))
        self._offsets = torch.arange(rows)[:, None] * vocab
        self._bias = torch.from_numpy(bias.astype(np.float32))
        self._out = torch.from_numpy(out.astype(np.float64))
        self._out_bias = torch.from_numpy(out_bias)

    @classmethod
    def from_float(cls, prior: ChannelPrior, group0_counts: np.ndarray | None = None
                   ) -> "IntChannelPrior":
        """Quantize a trained prior; output weights are converted to log2 units on the way."""
        log2e = 1.0 / np.log(2.0)
        return cls(
            embed=to_fixed(prior.embed, HIDDEN_FRAC),
            bias=to_fixed(prior.bias, HIDDEN_FRAC),
            out=to_fixed(prior.out * log2e, OUT_FRAC),
            out_bias=to_fixed(prior.out_bias * log2e, LOGIT_FRAC),
            static=None if prior.extra else freqs_from_counts(group0_counts),
        )

    def tensors(self, prefix: str = "prior") -> dict[str, torch.Tensor]:
        """The integer tensors as stored in a weight file (int16, the static table int32)."""
        out = {f"{prefix}.{name}": torch.from_numpy(getattr(self, name).astype(np.int16))
               for name in ("embed", "bias", "out", "out_bias")}
        if self.static is not None:
            out[f"{prefix}.static"] = torch.from_numpy(self.static.astype(np.int32))
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str = "prior"
                     ) -> "IntChannelPrior":
        def get(name: str) -> np.ndarray | None:
            t = tensors.get(f"{prefix}.{name}")
            return None if t is None else t.numpy().astype(np.int64)
        return cls(get("embed"), get("bias"), get("out"), get("out_bias"), get("static"))

    def freqs(self, context: np.ndarray, g: int) -> np.ndarray:
        """Frequency table(s) of group g: shared (K,) when there is no context, else (N, K)."""
        if self.extra + g == 0:
            return self.static
        context = torch.from_numpy(np.asarray(context, dtype=np.int64))
        if context.numel() and (context.min() < 0 or context.max() >= self._vocab):
            raise ValueError(f"context index out of range 0..{self._vocab - 1}")
        index = (context[:self.extra + g] + self._offsets[:self.extra + g]).t()
        h = F.embedding_bag(index, self._bag[g], mode="sum").add_(self._bias[g])
        products = h.clamp_(0, HIDDEN_CAP).double() @ self._out[g]  # exact (check_exact)
        logits = products.long().bitwise_right_shift_(HIDDEN_FRAC + OUT_FRAC - LOGIT_FRAC)
        return freqs_from_logits(logits.add_(self._out_bias[g]))


class IntMCQPrior:
    """Column-wise integer tables for the unit layout of :class:`MCQ`."""

    def __init__(self, coarse: IntChannelPrior, fine: IntChannelPrior, coarse_groups: int,
                 sibling_groups: int = 0) -> None:
        self.coarse, self.fine, self.mc = coarse, fine, coarse_groups
        self.sibling_groups, self.absent = sibling_groups, fine.out.shape[-1]

    def freqs(self, context: np.ndarray, j: int) -> np.ndarray:
        """Tables of column j from columns < j of the same units."""
        if j < self.mc:
            return self.coarse.freqs(context[:j], j)
        g, child = divmod(j - self.mc, 4)
        rows = fine_context(context, self.mc, g, child, self.sibling_groups, self.absent)
        return self.fine.freqs(np.stack(rows), g)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**self.coarse.tensors("coarse_prior"), **self.fine.tensors("fine_prior")}
