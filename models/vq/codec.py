"""The shipped VQ model as the codec sees it: one VQGAN, a ladder of codebooks, static tables.

Quality q selects codebook ``sizes[q - 1]`` (8, 16, ... 2048, then the full trained codebook).
Each 16x16 unit of the image is one symbol, the index of the nearest codeword of that codebook
to the encoder's unit-norm latent; it is coded with the codebook's static frequency table
(counted on training images), so a Kodak image at K = 8 costs about 1536 * 3 bits.

The registry (``codec/registry.py``) asks for the quality-specific parts through ``at(quality)``
on the network and on the prior: both the codewords and the tables depend on it.
"""

from __future__ import annotations

import numpy as np
import torch

from nicodec.bitstream.entropy import cost_bits
from nicodec.models import weightfile
from nicodec.models.layers import inpaint
from nicodec.models.tiling import Pixels, analyze_in_tiles
from nicodec.models.vq import search
from nicodec.models.vq.vqgan import VQGAN, VQGANConfig, nearest

TRANSFORMS = ("encoder.", "quant_in.", "quant_out.", "decoder.")
# tiles (models/tiling.py): pixels of context around an encoder tile (128 already gives
# bit-identical latents) and latent positions around a decoder tile
ANALYSIS_MARGIN = 160
SYNTHESIS_MARGIN = 8


class VQLevel:
    """The network at one quality: ``analyze`` / ``synthesize`` with that quality's codebook."""

    unit = VQGAN.unit
    latent_scale = VQGAN.unit  # pixels per position of the decoder's input
    synthesis_margin = SYNTHESIS_MARGIN
    conceal_margin = 0  # a codeword per unit, nothing lost: no context

    def __init__(self, model: VQGAN, codebook: torch.Tensor) -> None:
        self.model, self.codebook = model, codebook

    def columns(self, quality: int | None = None) -> int:
        return 1

    @torch.no_grad()
    def analyze(self, x: Pixels | torch.Tensor, quality: int | None = None) -> np.ndarray:
        """Image (1, 3, H, W) in [0, 1], sides multiples of 16 (or :class:`Pixels`) -> indices
        (1, H/16, W/16); the encoder runs in tiles with ANALYSIS_MARGIN pixels of context."""
        if isinstance(x, torch.Tensor) and (x.shape[-1] % self.unit or x.shape[-2] % self.unit):
            raise ValueError(f"image sides must be multiples of {self.unit}, got "
                             f"{tuple(x.shape[-2:])}")
        (z,) = analyze_in_tiles(Pixels.of(x, self.unit), lambda t: (self.model.encode(t),),
                                ANALYSIS_MARGIN)
        return nearest(z, self.codebook).cpu().numpy()

    @torch.no_grad()
    def analyze_searched(self, x: Pixels, table: np.ndarray, effort: int,
                         rate_weight: float) -> np.ndarray:
        """Indices (1, H/16, W/16) chosen in pixel space through the decoder
        (``models/vq/search.py``); effort 1 is :meth:`analyze`."""
        if search.effort_search(effort)[1] == 0:
            return self.analyze(x)
        (z,) = analyze_in_tiles(x, lambda t: (self.model.encode(t),), ANALYSIS_MARGIN)
        chosen = search.refine_indices(self.decode, x, z, self.codebook, table, effort,
                                       rate_weight)
        return chosen[None].numpy()

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, h, w) -> images (B, 3, 16h, 16w) in [0, 1], nothing concealed."""
        codes = self.codebook[indices].permute(0, 3, 1, 2)
        return self.model.decoder(self.model.quant_out(codes)).clamp(0, 1)

    @torch.no_grad()
    def synthesize(self, symbols: np.ndarray, lost: np.ndarray | None = None,
                   mixture: tuple[np.ndarray, np.ndarray] | None = None) -> torch.Tensor:
        """Indices (1, h, w) -> image (1, 3, 16h, 16w) in [0, 1]: :meth:`decode_latent` of
        :meth:`conceal`."""
        return self.decode_latent(self.conceal(symbols, lost, mixture))

    @torch.no_grad()
    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder input (1, c, h, w) -> image (1, 3, 16h, 16w) in [0, 1] (any tile of it, with
        SYNTHESIS_MARGIN positions of context for the interior to match the whole)."""
        return self.model.decoder(z).clamp(0, 1)

    @torch.no_grad()
    def conceal(self, symbols: np.ndarray, lost: np.ndarray | None = None,
                mixture: tuple[np.ndarray, np.ndarray] | None = None) -> torch.Tensor:
        """Indices (1, h, w) -> the decoder's input (1, c, h, w).

        ``lost`` (h, w) marks units from damaged packets: their latent (after the projection
        out of the lookup space) is filled from the surviving neighbours, as in the other
        families (``models.layers.inpaint``). ``mixture`` = (where (h, w), probabilities
        (n, K)) instead gives the units at ``where`` (raster order) the expected codeword under
        a predicted distribution (the index transformer's restoration).
        """
        idx = torch.from_numpy(np.ascontiguousarray(symbols, dtype=np.int64))
        if idx.ndim != 3 or idx.shape[0] != 1:
            raise ValueError(f"expected symbols of shape (1, h, w), got {tuple(idx.shape)}")
        if idx.numel() and (idx.min() < 0 or idx.max() >= len(self.codebook)):
            raise ValueError(f"symbols must lie in 0..{len(self.codebook) - 1}")
        codes = self.codebook[idx]  # (1, h, w, d)
        if mixture is not None:
            where, probs = mixture
            codes[0][torch.from_numpy(where)] = torch.from_numpy(probs).float() @ self.codebook
        z = self.model.quant_out(codes.permute(0, 3, 1, 2))
        if lost is not None and lost.any():
            z = inpaint(z, torch.from_numpy(np.asarray(lost, dtype=bool)))
        return z


class VQNet:
    """The ladder: one VQGAN and a codebook per quality (1-based)."""

    unit = VQGAN.unit

    def __init__(self, model: VQGAN, codebooks: list[torch.Tensor]) -> None:
        self.model, self.codebooks = model.eval(), codebooks
        self.sizes = [len(c) for c in codebooks]

    def at(self, quality: int) -> VQLevel:
        if not 1 <= quality <= len(self.codebooks):
            raise ValueError(f"VQ qualities are 1..{len(self.codebooks)}, got {quality}")
        return VQLevel(self.model, self.codebooks[quality - 1])

    def columns(self, quality: int) -> int:
        return self.at(quality).columns()

    def analyze(self, x: torch.Tensor, quality: int) -> np.ndarray:
        return self.at(quality).analyze(x)

    def analyze_coded(self, x: Pixels, quality: int, prior, rate_weight: float,
                      effort: int = 1, keep: bool = True
                      ) -> tuple[np.ndarray, list[np.ndarray], float]:
        """(indices (1, h, w), [the quality's static table], their bits under it) as the
        encoder codes them: at effort above 1 searched through the decoder against that table's
        code lengths. (A one-packet ``vq`` file codes the indices with the transformer instead;
        the static table then only sets the packet count.) One shared table: ``keep`` costs
        nothing."""
        table = prior.at(quality).freqs(None, 0)
        symbols = self.at(quality).analyze_searched(x, table, effort, rate_weight)
        return symbols, [table], cost_bits(symbols.ravel(), table)

    def synthesize(self, symbols: np.ndarray, lost: np.ndarray | None = None,
                   quality: int | None = None, mixture=None) -> torch.Tensor:
        if quality is None:
            raise ValueError("the VQ model needs the quality to know which codebook was used")
        return self.at(quality).synthesize(symbols, lost, mixture)


class StaticPrior:
    """One static (K,) frequency table for the single column of every unit."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table

    def freqs(self, context: np.ndarray, j: int) -> np.ndarray:
        if j != 0:
            raise ValueError(f"the VQ model codes one column per unit, asked for column {j}")
        return self.table


class LadderPrior:
    """The static tables of every quality; ``at(quality)`` gives that quality's prior."""

    def __init__(self, tables: list[np.ndarray]) -> None:
        self.tables = tables

    def at(self, quality: int) -> StaticPrior:
        if not 1 <= quality <= len(self.tables):
            raise ValueError(f"VQ qualities are 1..{len(self.tables)}, got {quality}")
        return StaticPrior(self.tables[quality - 1])


def save_weights(model: VQGAN, codebooks: list[torch.Tensor], tables: list[np.ndarray],
                 path: str, metadata: dict, half: bool = True) -> None:
    """Write the shipped file: transforms (float16 unless ``half`` is off), per-quality codebooks
    (float32) and integer tables (int32); the VQGAN config and ladder sizes in the metadata."""
    dtype = torch.float16 if half else torch.float32
    extra = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()
             if k.startswith(TRANSFORMS)}
    for q, (cb, table) in enumerate(zip(codebooks, tables), start=1):
        extra[f"ladder.{q}.codebook"] = cb.detach().float().contiguous()
        extra[f"ladder.{q}.freqs"] = torch.from_numpy(np.asarray(table, dtype=np.int32))
    config = {**model.config_dict(), "sizes": [len(c) for c in codebooks]}
    weightfile.write(path, model, lambda k: False, extra, config, metadata)


def load_weights(path: str) -> tuple[VQNet, LadderPrior]:
    """Read a file written by :func:`save_weights` (computation is float32 either way)."""
    config, tensors = weightfile.read(path)
    sizes = config.pop("sizes")
    model = weightfile.load_state(VQGAN(VQGANConfig(**config)), tensors)
    codebooks = [tensors[f"ladder.{q}.codebook"].float() for q in range(1, len(sizes) + 1)]
    tables = [tensors[f"ladder.{q}.freqs"].numpy().astype(np.int64)
              for q in range(1, len(sizes) + 1)]
    if [len(c) for c in codebooks] != sizes or [len(t) for t in tables] != sizes:
        raise ValueError(f"{path}: ladder codebooks or tables disagree with sizes {sizes}")
    return VQNet(model, codebooks), LadderPrior(tables)
