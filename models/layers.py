"""Layers shared by the model families: strided convolutions, GDN, latent concealment."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _LowerBoundFunction(torch.autograd.Function):
    """``max(x, bound)`` whose gradient also passes where it would push ``x`` up off the bound
    (CompressAI's ``LowerBound``): a parameter stuck at the bound can still leave it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, bound)
        return torch.max(x, bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, bound = ctx.saved_tensors
        return ((x >= bound) | (grad < 0)) * grad, None


class _LowerBound(nn.Module):
    """Holds ``bound`` as a buffer (state-dict key ``...lower_bound.bound``)."""

    def __init__(self, bound: float):
        super().__init__()
        self.register_buffer("bound", torch.Tensor([float(bound)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LowerBoundFunction.apply(x, self.bound)


class _NonNegative(nn.Module):
    """CompressAI's ``NonNegativeParametrizer``: a parameter ``p`` stands for
    ``max(p, sqrt(minimum + pedestal))**2 - pedestal``, which stays above ``minimum``."""

    def __init__(self, minimum: float = 0.0, reparam_offset: float = 2**-18):
        super().__init__()
        pedestal = reparam_offset**2
        self.register_buffer("pedestal", torch.Tensor([pedestal]))
        self.lower_bound = _LowerBound((float(minimum) + pedestal) ** 0.5)

    def init(self, x: torch.Tensor) -> torch.Tensor:
        """The parameter that stands for ``x``."""
        return torch.sqrt(torch.max(x + self.pedestal, self.pedestal))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lower_bound(x) ** 2 - self.pedestal


class GDN(nn.Module):
    """Generalized divisive normalization (Balle et al. 2016), ``y = x / sqrt(beta + gamma x^2)``
    (inverse: times the root), as in CompressAI: the same initialisation, reparametrisation,
    training gradients and state-dict keys, so weights trained with either load into the other.
    Our own copy keeps the coding path free of compressai, whose import (torch_geometric,
    pandas) cost 3-5 s per ``codec`` command. Without autograd it runs in place: two
    full-size tensors instead of four. Each fresh tensor of a full-resolution layer costs page
    faults on first touch, which made GDN take as long as the convolutions around it."""

    def __init__(self, in_channels: int, inverse: bool = False, beta_min: float = 1e-6,
                 gamma_init: float = 0.1):
        super().__init__()
        self.inverse = bool(inverse)
        self.beta_reparam = _NonNegative(minimum=beta_min)
        self.beta = nn.Parameter(self.beta_reparam.init(torch.ones(in_channels)))
        self.gamma_reparam = _NonNegative()
        self.gamma = nn.Parameter(self.gamma_reparam.init(gamma_init * torch.eye(in_channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        beta = self.beta_reparam(self.beta)
        gamma = self.gamma_reparam(self.gamma).reshape(c, c, 1, 1)
        if torch.is_grad_enabled():
            norm = F.conv2d(x**2, gamma, beta)
            return x * (torch.sqrt(norm) if self.inverse else torch.rsqrt(norm))
        norm = F.conv2d(x * x, gamma, beta)
        return (norm.sqrt_() if self.inverse else norm.rsqrt_()).mul_(x)


__all__ = ["GDN", "channels_last", "conv", "deconv", "inpaint"]


def conv(cin: int, cout: int, stride: int = 2, kernel: int = 5) -> nn.Conv2d:
    """A 'same' convolution that divides the resolution by ``stride``."""
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)


def deconv(cin: int, cout: int) -> nn.ConvTranspose2d:
    """A 5x5 transposed convolution that doubles the resolution."""
    return nn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in NHWC memory layout, for inference: on the CPU, oneDNN runs the 5x5 transposed
    convolutions 1.5-2x faster on it (MCQ synthesis of a Kodak image: 0.28 -> 0.19 s on one
    thread). Values are the same up to float rounding."""
    return x.contiguous(memory_format=torch.channels_last)


def inpaint(z: torch.Tensor, lost: torch.Tensor) -> torch.Tensor:
    """Fill lost latent positions with the average of known 3x3 neighbours, growing inwards."""
    known = (~lost).float()[None, None]
    z = z * known
    kernel = torch.ones(1, 1, 3, 3)
    for _ in range(max(lost.shape)):
        if bool(known.min() > 0):
            break
        weight = F.conv2d(known, kernel, padding=1)
        total = F.conv2d(z.view(-1, 1, *z.shape[2:]), kernel, padding=1).view_as(z)
        fill = (weight > 0) & (known == 0)
        z = torch.where(fill, total / weight.clamp(min=1), z)
        known = torch.where(fill, torch.ones_like(known), known)
    return z


