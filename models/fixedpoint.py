"""Exact fixed-point inference for entropy models.

An entropy model's probabilities must be identical on the encoder and the decoder machine. Float
networks are not: a different thread count or BLAS kernel sums in another order and moves the
last bits. Here weights and activations are integers, and products are summed in float64, where
sums of integers are exact (hence order-free) as long as they stay below 2**53; every rescale is a
power-of-two floor division, which is exact too. The result is the same integer logits on any
CPU or GPU, in any batch or tile order.
"""

from __future__ import annotations

import numpy as np
import torch

EXACT_LIMIT = 1 << 53
FLOAT32_EXACT_LIMIT = 1 << 24  # the same for sums kept in float32
INT_LIMIT = (1 << 15) - 1  # magnitude cap on every stored weight: they are stored as int16


def to_fixed(values: torch.Tensor | np.ndarray, frac_bits: int) -> np.ndarray:
    """Round real values to integers in units of 2**-frac_bits, clipped to ±INT_LIMIT."""
    array = values.detach().double().cpu().numpy() if isinstance(values, torch.Tensor) else values
    return np.clip(np.rint(np.asarray(array, np.float64) * (1 << frac_bits)),
                   -INT_LIMIT, INT_LIMIT).astype(np.int32)


def check_exact(max_a: float, max_b: float, terms: int, limit: int = EXACT_LIMIT) -> None:
    """Refuse integer products whose sums of ``terms`` products of magnitudes up to ``max_a``
    and ``max_b`` could leave the exact integer range below ``limit`` (float64's, or
    ``FLOAT32_EXACT_LIMIT`` for sums kept in float32)."""
    if float(max_a) * float(max_b) * terms >= limit:
        raise OverflowError("fixed-point product could exceed the exact integer range "
                            f"(below 2**{limit.bit_length() - 1})")

