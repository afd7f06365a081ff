"""Encoder-side search of the MCQ mode: the effort levels of ``codec encode --effort``.

At effort 1 the encoder codes the analysis transform's latent as it comes (each residual stage
picks the codeword of least squared latent error plus a rate weight times its bits). A higher
effort first refines the fine residual itself for a few gradient steps, optimizing rate +
lambda x distortion **in pixel space, through the frozen synthesis**, and then codes the refined
residual the same way. Only the encoder changes: the decoder, the prior and the bitstream are
exactly those of effort 1.

The refinement carries stochastic Gumbel annealing (Yang, Bamler & Mandt, NeurIPS 2020) from
scalar rounding to residual VQ, without the noise: every stage's hard codeword choice is replaced
by a softmax over its codewords, with logits minus (squared distance + rate weight x bits) /
temperature, and the temperature is annealed from soft to nearly hard, so the latent is pushed
towards residuals that the stages code well. The bits are the prior's real code lengths given
the current hard choice of the columns before (refreshed every few steps); the rate term is the
expected bits of the soft choice. Lambda is set per image: ``RD_SLOPE`` times the MSE of the
effort-1 reconstruction, the slope of the curve there (measured on held-back photos).

The image is refined in tiles of units (each tile with a margin of latents around it that the
synthesis sees but the step leaves alone), so memory stays that of one tile whatever the image
size. Measured on held-back training photos and Kodak in ``models/weights/mcq.md``.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from nicodec.bitstream.entropy import PRECISION
from nicodec.models.codebooks import squared_distances
from nicodec.models import tiling
from nicodec.models.layers import channels_last
from nicodec.models.tiling import Pixels

# latent refinement steps of each effort level (1: none)
EFFORT_STEPS = {1: 0, 2: 10, 3: 24}
LEARNING_RATE = 0.02
TEMPERATURES = (0.3, 0.02)  # softmax temperature at the first and the last step (geometric)
RD_SLOPE = 2.0  # lambda = RD_SLOPE x the effort-1 MSE, per bit per pixel
TABLE_EVERY = 10  # steps between refreshes of the prior's code lengths
TILE = 64  # fine latents per tile side (512 pixels)
MARGIN = 4  # fine latents of context around a tile (the synthesis' reach is under 4)


def to_units(latent: torch.Tensor, units: slice | None = None) -> torch.Tensor:
    """A fine latent (1, d, h, w) in unit layout (child c = 2 dy + dx, unit, d); only the
    units (raster order) of ``units`` when given, copying only the rows that hold them."""
    _, d, h, w = latent.shape
    if units is not None:
        row, width = units.start // (w // 2), w // 2
        rows = latent[:, :, 2 * row:2 * -(-units.stop // width)]
        start = units.start - row * width
        return to_units(rows)[:, start:start + units.stop - units.start]
    return latent[0].view(d, h // 2, 2, w // 2, 2).permute(2, 4, 1, 3, 0).reshape(4, -1, d)


def from_units(units: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`to_units`."""
    d = units.shape[-1]
    return units.reshape(2, 2, h // 2, w // 2, d).permute(4, 2, 0, 3, 1).reshape(1, d, h, w)


def code_lengths(net, prior, coarse: torch.Tensor, residual: torch.Tensor, quality: int,
                 rate_weight: float) -> torch.Tensor:
    """Bits (stage, child, unit, K) of every codeword of every fine column, given the hard
    choice that :meth:`MCQ.code_residual` makes for the columns before it."""
    _, tables, _ = net.code_residual(coarse, residual, quality, prior, rate_weight)
    mc = net.config.coarse_groups
    bits = [PRECISION - torch.from_numpy(t.astype(np.float32)).log2_() for t in tables[mc:]]
    return torch.stack(bits).view(quality, 4, *bits[0].shape)


def soft_residual(net, residual: torch.Tensor, quality: int, rate_weight: float,
                  bits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the soft-quantized residual (1, d, h, w), expected bits per unit (unit,)) of the first
    ``quality`` residual stages, each a softmax over its codewords."""
    _, _, h, w = residual.shape
    left = to_units(residual)
    coded = torch.zeros_like(left)
    rate = left.new_zeros(left.shape[1])
    for s in range(quality):
        _, words = net.fine_vq.stage_codebook(s)
        score = squared_distances(left, words) + rate_weight * bits[s]
        p = torch.softmax(-score / temperature, -1)
        word = p @ words
        left, coded = left - word, coded + word
        rate = rate + (p * bits[s]).sum((0, 2))
    return from_units(coded, h, w), rate


def _spans(size: int) -> list[tuple[int, int]]:
    """Tiles of at most TILE fine latents along one side (an even size: whole units)."""
    return [(a, min(a + TILE, size)) for a in range(0, size, TILE)]


def _mse(net, latent: torch.Tensor, x: Pixels) -> float:
    """Mean squared error of the image that ``latent`` decodes to against ``x``, decoded in
    tiles (``models/tiling.py``); one tile is the whole image."""
    errors = []
    scale, margin = net.latent_scale, net.synthesis_margin
    for ya, yb, y0, y1 in tiling.spans(latent.shape[2], tiling.TILE // scale, margin):
        for xa, xb, x0, x1 in tiling.spans(latent.shape[3], tiling.TILE // scale, margin):
            image = net.decode_latent(latent[:, :, ya:yb, xa:xb])
            inner = image[:, :, (y0 - ya) * scale:(y1 - ya) * scale,
                          (x0 - xa) * scale:(x1 - xa) * scale]
            errors.append((F.mse_loss(inner, x.tile(y0 * scale, y1 * scale, x0 * scale,
                                                    x1 * scale)).item(), inner[0, 0].numel()))
    if len(errors) == 1:
        return errors[0][0]
    return sum(e * n for e, n in errors) / sum(n for _, n in errors)


def refine_residual(net, prior, x: Pixels, coarse: torch.Tensor, residual: torch.Tensor,
                    quality: int, rate_weight: float, steps: int) -> torch.Tensor:
    """The fine residual (1, d, H/8, W/8) after ``steps`` annealed rate-distortion steps through
    the synthesis (coarse indices fixed); ``x`` is the (padded) image it should decode to."""
    if steps == 0 or quality == 0:
        return residual
    prediction = net.h_s(channels_last(net.coarse_vq.embed(coarse)))
    symbols, _, _ = net.code_residual(coarse, residual, quality, prior, rate_weight, keep=False)
    lam = RD_SLOPE * _mse(net, net.conceal(symbols), x)  # distortion per bit per pixel
    residual = residual.clone()
    _, _, h, w = residual.shape
    for y0, y1 in _spans(h):
        for x0, x1 in _spans(w):
            a, b = max(0, y0 - MARGIN), min(h, y1 + MARGIN)
            c, d = max(0, x0 - MARGIN), min(w, x1 + MARGIN)
            residual[:, :, a:b, c:d] = _refine_tile(
                net, prior, x.tile(8 * a, 8 * b, 8 * c, 8 * d), coarse[:, :, a // 2:b // 2, c // 2:d // 2],
                prediction[:, :, a:b, c:d], residual[:, :, a:b, c:d], (y0 - a, y1 - a, x0 - c, x1 - c),
                quality, rate_weight, steps, lam)
    return residual


def _refine_tile(net, prior, x, coarse, prediction, residual, inner, quality, rate_weight,
                 steps, lam) -> torch.Tensor:
    """One tile of :func:`refine_residual`: only the latents inside ``inner`` (y0, y1, x0, x1)
    move, and only their pixels count."""
    y0, y1, x0, x1 = inner
    keep = torch.zeros_like(residual[:, :1])
    keep[:, :, y0:y1, x0:x1] = 1
    pixels = F.interpolate(keep, scale_factor=8.0)
    units = torch.zeros(residual.shape[2] // 2, residual.shape[3] // 2)
    units[y0 // 2:y1 // 2, x0 // 2:x1 // 2] = 1
    units = units.flatten()
    count = float((y1 - y0) * (x1 - x0) * 64)
    variable = residual.clone().requires_grad_(True)
    opt = torch.optim.Adam([variable], lr=LEARNING_RATE)
    t0, t1 = TEMPERATURES
    for step in range(steps):
        if step % TABLE_EVERY == 0:
            bits = code_lengths(net, prior, coarse, variable.detach(), quality, rate_weight)
        temperature = t0 * (t1 / t0) ** (step / max(1, steps - 1))
        with torch.enable_grad():
            coded, rate = soft_residual(net, variable, quality, rate_weight, bits, temperature)
            x_hat = net.g_s(prediction + coded)
            distortion = ((x_hat - x).pow(2) * pixels).sum() / (3 * count)
            loss = distortion + lam * (rate * units).sum() / count
            (grad,) = torch.autograd.grad(loss, [variable])
        variable.grad = grad * keep
        opt.step()
    return variable.detach()


def effort_steps(effort: int) -> int:
    """Refinement steps of an effort level; a clear error for a level that does not exist."""
    if effort not in EFFORT_STEPS:
        raise ValueError(f"effort must be one of {min(EFFORT_STEPS)}..{max(EFFORT_STEPS)}, "
                         f"got {effort}")
    return EFFORT_STEPS[effort]




SMALL_UNITS = 1  # images of at most this many units (16x16 pixels) get choose_in_pixels
CANDIDATES = 8  # codewords synthesized per index, the best by the error's slope


def choose_in_pixels(net, x: Pixels, symbols: np.ndarray) -> np.ndarray:
    """The fine indices of a small image (columns, uh, uw) chosen again, one at a time, each for
    the least squared error **on the image's own pixels** after the synthesis.

    In a tiny image (an icon, a single pixel) the edge padding up to the unit is most of what
    the network sees, and a unit's synthesis is poorest at its borders: the latent-space choice
    of :meth:`MCQ.code_residual` gave a 1x1 (200, 30, 40) back as (179, 72, 50). Here only the
    visible pixels count. Stage by stage, each index is changed to the best of the CANDIDATES
    codewords that the gradient of the error ranks first, if that lowers the error. Bits are
    not weighed: a tiny image's file is mostly its header, and this costs a few bytes
    (``eval/results/mcq/small-images.md``). Only the encoder changes."""
    mc = net.config.coarse_groups
    symbols = symbols.copy()
    _, uh, uw = symbols.shape
    height, width = x.visible
    target = x.whole()
    mask = torch.zeros_like(target[:, :1])
    mask[:, :, :height, :width] = 1
    y = net.conceal(symbols)
    current = float(((net.decode_latent(y) - target).pow(2) * mask).sum())
    for stage in range((symbols.shape[0] - mc) // 4):
        channels, words = net.fine_vq.stage_codebook(stage)
        with torch.enable_grad():  # the slope of the error ranks the codewords to try
            variable = y.clone().requires_grad_(True)
            error = ((net.g_s(variable) - target).pow(2) * mask).sum()
            (slope,) = torch.autograd.grad(error, [variable])
        for child, (uy, ux) in itertools.product(range(4), np.ndindex(uh, uw)):
            j, (dy, dx) = mc + 4 * stage + child, divmod(child, 2)
            fy, fx = 2 * uy + dy, 2 * ux + dx
            change = words - words[int(symbols[j, uy, ux])]
            tries = (change @ slope[0, channels, fy, fx]).topk(
                min(CANDIDATES, len(words)), largest=False).indices
            images = y.repeat(len(tries), 1, 1, 1)
            images[:, channels, fy, fx] += change[tries]
            errors = ((net.decode_latent(images) - target).pow(2) * mask).sum((1, 2, 3))
            pick = int(errors.argmin())
            if float(errors[pick]) < current:
                best = int(tries[pick])
                symbols[j, uy, ux], current = best, float(errors[pick])
                y[:, channels, fy, fx] += change[best]
    return symbols
