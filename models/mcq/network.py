"""MCQ: multi-codebook quantization with a cascaded (coarse-to-fine) conditional prior.

After McQuic (Zhu et al., CVPR 2022), in two quantized levels:

* analysis to 1/8 (three strided 5x5 convolutions with GDN);
* **coarse level** at 1/16: a hyper-analysis of the 1/8 features, quantized by Mc codebooks;
* **fine level** at 1/8: the coarse codewords are decoded into a prediction of the 1/8 latent, and
  the *residual* is quantized by M codebooks, either as M channel groups or (``quantizer="rvq"``)
  as M residual stages over all channels. Quality q keeps the first q fine groups (nested,
  trained with a random q per image), so one network gives M + 1 rate points;
* quantizers are probabilistic (Gumbel-softmax over negative distances, the Gaussian mixture whose
  means are the codewords) in training and nearest-codeword when coding.

The prior is cascaded: coarse group g is coded from the coarse groups < g at the same position
(group 0 with a static table), and every fine group from the coarse indices of its parent
position plus the fine groups before it — no serial spatial context, so each group of a level is
decoded in one vectorised step. Both priors are integer networks (``models/mcq/prior.py``,
which also holds the context layout of the fine groups).

Packet unit: one coarse position (16x16 pixels) with its 2x2 fine children. The symbols of a unit
are ordered ``[coarse 0..Mc-1] + [fine group g, child c for g < q, c < 4]`` (group-major, children
``c = 2*dy + dx``), so the meaning of a column does not depend on the quality.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from nicodec.bitstream.entropy import PRECISION, cost_bits
from nicodec.models.codebooks import squared_distances
from nicodec.models.layers import GDN, channels_last, conv, deconv, inpaint
from nicodec.models.mcq import search
from nicodec.models.mcq.prior import ChannelPrior, IntChannelPrior, IntMCQPrior, fine_context
from nicodec.models.mcq.quantizers import GumbelMultiCodebookVQ, MultiCodebookVQ, ResidualVQ
from nicodec.models.tiling import Pixels, analyze_in_tiles, zeros

# tiles (models/tiling.py): pixels of context around an analysis tile (64 already gives
# bit-identical latents), fine latents around a synthesis tile, and units per coding chunk
ANALYSIS_MARGIN = 96
SYNTHESIS_MARGIN = 4
CONCEAL_MARGIN = 3  # units of context for h_s when the latent is made in bands (2 give the same)
CODE_CHUNK = 8192
QUANTIZERS = {"gumbel": GumbelMultiCodebookVQ, "ema": MultiCodebookVQ, "rvq": ResidualVQ}


def unit_columns(coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
    """Coarse indices (B, Mc, h, w) and fine indices (B, q, 2h, 2w) as the symbols of units,
    (Mc + 4q, B, h, w): ``[coarse 0..Mc-1] + [fine group g, child c = 2 dy + dx]``."""
    b, q, h, w = fine.shape
    children = fine.view(b, q, h // 2, 2, w // 2, 2).permute(1, 3, 5, 0, 2, 4)  # q dy dx b h w
    return torch.cat([coarse.transpose(0, 1), children.reshape(4 * q, b, h // 2, w // 2)])


@dataclass(frozen=True)
class MCQConfig:
    """Widths of the network; stored in the weight file's metadata."""

    channels: int = 64
    groups: int = 8  # fine codebook groups at 1/8 (= quality steps)
    group_dim: int = 8  # codeword dimension (rvq: the whole fine latent)
    codebook_size: int = 256
    coarse_groups: int = 2
    coarse_dim: int = 16
    coarse_codebook_size: int = 256
    prior_hidden: int = 64
    quantizer: str = "gumbel"  # "gumbel" (McQuic), "ema" (VQ-VAE recipe), "rvq" (residual)
    # the first N fine groups are also predicted from the same group at the unit's children
    # coded before (see SIBLINGS); 0: from the coarse indices and earlier groups only
    sibling_groups: int = 0

    @property
    def fine_width(self) -> int:
        """Channels of the fine latent: M groups side by side, or one residual-stage width."""
        return self.group_dim if self.quantizer == "rvq" else self.groups * self.group_dim


class MCQ(nn.Module):
    """Analysis, coarse and fine multi-codebook quantizers, prediction, synthesis, priors."""

    unit = 16
    latent_scale = 8  # pixels per position of the latent that decode_latent decodes
    synthesis_margin = SYNTHESIS_MARGIN
    conceal_margin = CONCEAL_MARGIN
    pretrain_noise = 0.3  # highest noise level of the pretraining pass, see pretrain_latent

    def __init__(self, config: MCQConfig = MCQConfig()) -> None:
        super().__init__()
        self.config = c = config
        n, fine, coarse = c.channels, c.fine_width, c.coarse_groups * c.coarse_dim
        self.g_a = nn.Sequential(conv(3, n), GDN(n), conv(n, n), GDN(n), conv(n, n))
        self.fine_head = conv(n, fine, stride=1, kernel=3)
        self.h_a = nn.Sequential(conv(n, n), GDN(n), conv(n, coarse, stride=1, kernel=3))
        self.h_s = nn.Sequential(deconv(coarse, n), nn.ReLU(), conv(n, fine, stride=1, kernel=3))
        self.g_s = nn.Sequential(deconv(fine, n), GDN(n, inverse=True), deconv(n, n),
                                 GDN(n, inverse=True), deconv(n, 3))
        vq = QUANTIZERS[c.quantizer]
        coarse_vq = MultiCodebookVQ if c.quantizer == "rvq" else vq
        self.coarse_vq = coarse_vq(c.coarse_groups, c.coarse_codebook_size, c.coarse_dim)
        self.fine_vq = vq(c.groups, c.codebook_size, c.group_dim)
        self.coarse_prior = ChannelPrior(c.coarse_groups, c.coarse_codebook_size, c.prior_hidden)
        siblings = 4 if c.sibling_groups else 0  # slots; their empty token is codebook_size
        self.fine_prior = ChannelPrior(c.groups, c.codebook_size, c.prior_hidden,
                                       extra=c.coarse_groups + siblings,
                                       context_size=max(c.coarse_codebook_size,
                                                        c.codebook_size + bool(siblings)))

    def columns(self, quality: int) -> int:
        """Symbols per unit: the coarse indices and q fine indices for each of 4 children."""
        return self.config.coarse_groups + 4 * quality

    def forward(self, x: torch.Tensor, active: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Training pass: x in [0, 1] (sides multiples of 16), ``active`` fine groups per image;
        ``active=None`` is the autoencoder alone (analysis, fine head, synthesis, nothing
        quantized), the pretraining pass of ``models.mcq.train --pretrain-steps`` (noise only in
        training mode)."""
        f = self.g_a(x)
        if active is None:
            noise = self.pretrain_noise if self.training else 0.0
            return {"x_hat": self.g_s(self.pretrain_latent(self.fine_head(f), noise)),
                    "commitment": x.new_zeros(())}
        cq, c_idx, c_commit = self.coarse_vq(self.h_a(f))
        prediction = self.h_s(cq)
        rq, f_idx, f_commit = self.fine_vq(self.fine_head(f) - prediction, active)
        x_hat = self.g_s(prediction + rq)
        # the prior's cross-entropy reaches only the prior's parameters (indices are integers)
        return {"x_hat": x_hat, "coarse": c_idx, "fine": f_idx, "commitment": c_commit + f_commit,
                "prior_bits": self.prior_loss(c_idx, f_idx)}

    @staticmethod
    def pretrain_latent(y: torch.Tensor, max_noise: float) -> torch.Tensor:
        """The fine latent as the pretraining pass decodes it: scaled to unit RMS over the batch
        (so the encoder cannot outgrow the quantization error: left free, the latent grew about
        13x in energy, mostly in directions the synthesis ignores) plus Gaussian noise of a
        random level per image, 0 .. ``max_noise`` (the residual VQ's error after 1 to 8 stages
        is 0.03-0.2 of the latent's RMS), so the synthesis learns to decode coarse latents."""
        y = y * y.pow(2).mean().add(1e-8).rsqrt()
        if max_noise == 0:  # evaluation: no noise, and no draw from the random stream
            return y
        level = torch.rand(y.shape[0], 1, 1, 1, device=y.device) * max_noise
        return y + level * torch.randn_like(y)

    def prior_loss(self, coarse: torch.Tensor, fine: torch.Tensor, sample: int = 2048
                   ) -> torch.Tensor:
        """Bits per symbol of both priors on (detached) training indices (B, Mc, h, w) and
        (B, M, 2h, 2w), at most ``sample`` random units (plenty for the small prior, and it
        keeps steps cheap)."""
        units = unit_columns(coarse, fine).flatten(1)
        pick = torch.randperm(units.shape[1], device=units.device)[:sample]
        return self.unit_prior_loss(units[:, pick])

    def unit_prior_loss(self, units: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (bits per symbol) of both priors on symbols (columns, N) of whole units
        in the layout of :meth:`analyze`, each fine symbol with the context of
        :func:`fine_context`."""
        c, mc = self.config, self.config.coarse_groups
        contexts = [torch.cat([torch.stack(fine_context(units, mc, g, child, c.sibling_groups,
                                                        c.codebook_size)) for child in range(4)],
                              1) for g in range(c.groups)]
        fine = units[mc:].view(c.groups, 4, -1).reshape(c.groups, -1)  # (g, child * n)
        return (self.coarse_prior.loss(units[:0], units[:mc])
                + self.fine_prior.loss(contexts, fine))

    def export_prior(self, column0: np.ndarray) -> IntMCQPrior:
        """The integer priors; coarse group 0 gets a static table counted from ``column0``."""
        counts = np.bincount(column0, minlength=self.config.coarse_codebook_size) + 0.5
        return IntMCQPrior(IntChannelPrior.from_float(self.coarse_prior, counts),
                           IntChannelPrior.from_float(self.fine_prior), self.config.coarse_groups,
                           self.config.sibling_groups)

    @torch.no_grad()
    def latents(self, x: Pixels | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(coarse indices (1, Mc, H/16, W/16), fine residual (1, d, H/8, W/8)) of an image,
        in tiles (``models/tiling.py``) with ANALYSIS_MARGIN pixels of context: the part of the
        encoder that no quality, effort or rate weight changes."""
        return analyze_in_tiles(Pixels.of(x, self.unit), self._tile_latents, ANALYSIS_MARGIN)

    def _tile_latents(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.g_a(channels_last(x))
        coarse = self.coarse_vq.indices(self.h_a(f))
        prediction = self.h_s(channels_last(self.coarse_vq.embed(coarse)))
        return coarse, self.fine_head(f) - prediction

    @torch.no_grad()
    def analyze(self, x: torch.Tensor, quality: int) -> np.ndarray:
        """Image (1, 3, H, W), sides multiples of 16 -> symbols (columns, H/16, W/16), every
        index the nearest codeword."""
        coarse, residual = self.latents(x)
        return unit_columns(coarse, self.fine_vq.indices(residual, quality))[:, 0].cpu().numpy()

    @torch.no_grad()
    def analyze_coded(self, x: Pixels | torch.Tensor, quality: int, prior: IntMCQPrior,
                      rate_weight: float, effort: int = 1, keep: bool = True,
                      latents: tuple[torch.Tensor, torch.Tensor] | None = None
                      ) -> tuple[np.ndarray, list[np.ndarray] | None, float]:
        """Symbols as :meth:`analyze` gives them, the integer table of every column (uint16
        where they are per unit; None unless ``keep``: the coder then computes them again, in
        chunks) and their cost in bits.

        The fine indices are chosen group by group (residual stage or channel group), each the
        codeword that minimises squared latent error plus ``rate_weight`` times its code length
        in bits under ``prior`` (greedy entropy-constrained VQ; the coarse indices stay
        nearest). Weight 0 is the nearest codeword. ``effort`` above 1 first refines the fine
        residual through the synthesis (``models/mcq/search.py``). An image of at most
        ``search.SMALL_UNITS`` units then has its fine indices chosen again for its own pixels,
        the padding ignored (``search.choose_in_pixels``). Only the encoder decides
        this way: the decoder reads indices as before, and the tables computed here are the
        ones the coder uses. ``latents``: what :meth:`latents` gave for these pixels, when the
        same image is coded several times (not modified here).
        """
        pixels = Pixels.of(x, self.unit)
        coarse, residual = self.latents(pixels) if latents is None else latents
        residual = search.refine_residual(self, prior, pixels, coarse, residual, quality,
                                          rate_weight, search.effort_steps(effort))
        coded = self.code_residual(coarse, residual, quality, prior, rate_weight, keep)
        if quality == 0 or coarse[0, 0].numel() > search.SMALL_UNITS:
            return coded
        symbols = search.choose_in_pixels(self, pixels, coded[0])
        return (symbols, *self.tables_and_bits(symbols, prior, keep))

    def tables_and_bits(self, symbols: np.ndarray, prior: IntMCQPrior, keep: bool = True
                        ) -> tuple[list[np.ndarray] | None, float]:
        """The table of every column of symbols (columns, h, w) (None unless ``keep``) and
        their cost in bits."""
        flat = symbols.reshape(len(symbols), -1)
        tables = [prior.freqs(flat[:j], j) for j in range(len(flat))]
        bits = sum(cost_bits(column, table) for column, table in zip(flat, tables))
        return (tables if keep else None), bits

    @torch.no_grad()
    def code_residual(self, coarse: torch.Tensor, residual: torch.Tensor, quality: int,
                      prior: IntMCQPrior, rate_weight: float, keep: bool = True
                      ) -> tuple[np.ndarray, list[np.ndarray] | None, float]:
        """The coding step of :meth:`analyze_coded`: symbols (columns, h/2, w/2), tables (None
        unless ``keep``) and bits of coarse indices (1, Mc, h/2, w/2) and a fine residual
        (1, d, h, w). Units are independent (the prior has no spatial context), so they are
        chosen in chunks of CODE_CHUNK, which bounds the memory of the tables."""
        mc, (_, d, h, w) = self.config.coarse_groups, residual.shape
        columns, n = self.columns(quality), h * w // 4
        symbols = zeros((columns, n), np.int64)
        symbols[:mc] = coarse[0].reshape(mc, -1).cpu().numpy()
        kept: list[list[np.ndarray]] = [[] for _ in range(columns)]
        bits = 0.0
        for a in range(0, n, CODE_CHUNK):
            chunk = slice(a, min(n, a + CODE_CHUNK))
            left = search.to_units(residual, chunk).contiguous()  # (child, unit, d), a copy
            for j in range(columns):
                table = prior.freqs(symbols[:j, chunk], j)  # from the columns before j only
                if j >= mc:
                    s, child = divmod(j - mc, 4)
                    channels, words = self.fine_vq.stage_codebook(s)
                    target = left[child][:, channels]
                    score = squared_distances(target, words)
                    if rate_weight:
                        bits_of = PRECISION - torch.from_numpy(table).float().log2_()
                        score = score.add_(bits_of, alpha=rate_weight)
                    idx = score.argmin(-1)
                    target -= words[idx]  # a view: residual stages code what is left
                    symbols[j, chunk] = idx.numpy()
                bits += cost_bits(symbols[j, chunk], table)
                if keep:  # frequencies are 1 .. 2**16 - 1: uint16 holds them in a quarter
                    kept[j].append(table if table.ndim == 1 else table.astype(np.uint16))
        tables = [t[0] if len(t) == 1 or t[0].ndim == 1 else np.concatenate(t) for t in kept] \
            if keep else None
        return symbols.reshape(columns, h // 2, w // 2), tables, bits

    @torch.no_grad()
    def conceal(self, symbols: np.ndarray, lost: np.ndarray | None = None) -> torch.Tensor:
        """Symbols (columns, uh, uw) -> the latent (1, d, 2uh, 2uw) that :meth:`decode_latent`
        turns into pixels; ``lost`` (uh, uw) units are filled from their neighbours."""
        mc = self.config.coarse_groups
        s = torch.from_numpy(np.ascontiguousarray(symbols, dtype=np.int64))
        q, uh, uw = (s.shape[0] - mc) // 4, s.shape[1], s.shape[2]
        coarse = self.coarse_vq.embed(s[None, :mc])
        fine_idx = s[mc:].view(q, 2, 2, uh, uw).permute(0, 3, 1, 4, 2).reshape(1, q, 2 * uh, 2 * uw)
        residual = self.fine_vq.embed_prefix(fine_idx)
        if lost is not None and lost.any():
            coarse = inpaint(coarse, torch.from_numpy(lost))
        y = self.h_s(channels_last(coarse)) + residual
        if lost is not None and lost.any():
            fine_lost = torch.from_numpy(lost).repeat_interleave(2, 0).repeat_interleave(2, 1)
            y = inpaint(y, fine_lost)
        return y

    @torch.no_grad()
    def decode_latent(self, y: torch.Tensor) -> torch.Tensor:
        """Latent (1, d, h, w) -> image (1, 3, 8h, 8w) in [0, 1] (any tile of it, with
        SYNTHESIS_MARGIN latents of context for the interior to match the whole)."""
        return self.g_s(channels_last(y)).clamp(0, 1)

    @torch.no_grad()
    def synthesize(self, symbols: np.ndarray, lost: np.ndarray | None = None) -> torch.Tensor:
        """Symbols (columns, uh, uw) -> image (1, 3, 16uh, 16uw); ``lost`` (uh, uw) is concealed."""
        return self.decode_latent(self.conceal(symbols, lost))

    def config_dict(self) -> dict:
        return asdict(self.config)
