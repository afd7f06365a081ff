"""The lossless PC models as codec models: an HCLT over the patches of square tiles.

A tile of ``unit`` x ``unit`` pixels is one packet unit. It is cut into patches of ``patch`` x
``patch`` pixels; the HCLT models one patch (its pixels, or for photos its colour-transformed
prediction residuals, ``models/pc/residuals.py``) and the patches are coded side by side. The
symbols of a unit are ordered ``column = k * patches + p``: variable k of the HCLT's coding order
(pre-order of the latent tree) for every patch p, so that column j is coded with the tables of
:class:`models.pc.coder.TreeCoder` after the columns before it.

* ``pc-mnist`` / ``pc-fashion``: grayscale 28 x 28 tiles, one patch of raw pixels per tile. A
  strip of 10 000 digits is one stream: the header is paid once.
* ``pc-photo``: RGB 32 x 32 tiles, 4 x 4 patches of residuals (48 variables).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from nicodec.codec.image import UnsupportedImageError
from nicodec.models.pc import residuals
from nicodec.models.pc.coder import IntHCLT, TreeCoder
from nicodec.models.tiling import Pixels, zeros

BAND_UNITS = 1024  # tiles analysed or synthesized at once (about a megapixel); tests lower it


@dataclass(frozen=True)
class TileLayout:
    """How an image becomes HCLT samples; stored in the weight file's metadata."""

    unit: int  # tile side (packet unit)
    patch: int  # patch side (one HCLT sample)
    channels: int  # 1: grayscale pixels, 3: RGB through the residual transform

    @property
    def patches(self) -> int:
        return (self.unit // self.patch) ** 2

    @property
    def values(self) -> int:
        """Alphabet of a symbol: 8-bit gray values, or residual symbols for RGB."""
        return residuals.SYMBOLS if self.channels == 3 else 256

    @property
    def variables(self) -> int:
        return self.patch * self.patch * self.channels

    def samples(self, tiles: np.ndarray) -> np.ndarray:
        """(N, unit, unit, channels) uint8 tiles -> (N, patches, variables) symbols."""
        n, u, s = len(tiles), self.unit, self.patch
        x = residuals.to_symbols(tiles) if self.channels == 3 else tiles.astype(np.int64)
        x = x.reshape(n, u // s, s, u // s, s, self.channels).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(n, self.patches, self.variables)

    def tiles(self, samples: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`samples`."""
        n, u, s = len(samples), self.unit, self.patch
        x = samples.reshape(n, u // s, u // s, s, s, self.channels).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(n, u, u, self.channels)
        return residuals.from_symbols(x) if self.channels == 3 else x.astype(np.uint8)


class PatchSession:
    """Tables for n units column by column (the pipeline's ``freqs(context, j)`` protocol): the
    HCLT enters variable k for all patches x n samples at the first column of k (samples in
    patch-major order), and gives the tables of patch p's n samples at column k * patches + p
    (a small (n, V) array each time, which stays in the processor's cache)."""

    def __init__(self, model: IntHCLT, n: int, patches: int) -> None:
        self.coder: TreeCoder = model.start(patches * n)
        self.n, self.patches, self.next = n, patches, 0

    def freqs(self, context: np.ndarray, j: int) -> np.ndarray:
        if j != self.next:
            raise ValueError("columns must be requested in order")
        self.next += 1
        k, p = divmod(j, self.patches)
        if p == 0:
            if k:
                done = context[(k - 1) * self.patches:k * self.patches]  # (patches, n)
                self.coder.observe(k - 1, done.reshape(-1))
            self.coder.enter(k)
        return self.coder.table(k, slice(p * self.n, (p + 1) * self.n))


class TilePrior:
    """An :class:`IntHCLT` with what the pipeline needs: sessions and a rate estimate."""

    def __init__(self, model: IntHCLT, patches: int, bits_per_symbol: float) -> None:
        self.model, self.patches, self.bits_per_symbol = model, patches, bits_per_symbol

    def session(self, n: int) -> PatchSession:
        return PatchSession(self.model, n, self.patches)


class TileHCLT:
    """Analysis (pixels -> symbols in coding order) and synthesis (the inverse), both exact.

    Both work on bands of tile rows (at most BAND_UNITS tiles, at least one row): the int64
    arrays of the residual transform are those of a band, not of the whole image; the symbols
    themselves are int16 (2 bytes per symbol, 3 symbols per pixel)."""

    symbol_dtype = np.int16  # symbols are below 512

    def __init__(self, layout: TileLayout, order: np.ndarray) -> None:
        self.layout, self.unit, self.order = layout, layout.unit, order

    def columns(self, quality: int) -> int:
        return self.layout.variables * self.layout.patches

    @staticmethod
    def bands(h: int, w: int) -> list[tuple[int, int]]:
        """Tile rows a..b of an h x w grid of tiles, BAND_UNITS tiles or one row at a time."""
        rows = max(1, BAND_UNITS // w)
        return [(a, min(h, a + rows)) for a in range(0, h, rows)]

    def analyze(self, x: Pixels | torch.Tensor, quality: int) -> np.ndarray:
        """(1, 3, H, W) in [0, 1] or :class:`Pixels` -> symbols (columns, H/unit, W/unit)."""
        u, c = self.unit, self.layout.channels
        pixels = Pixels.of(x, u)
        h, w = pixels.height // u, pixels.width // u
        symbols = zeros((self.columns(quality), h, w), self.symbol_dtype)
        for a, b in self.bands(h, w):
            band = pixels.uint8(a * u, b * u)
            if c == 1 and not ((band[..., 0] == band[..., 1]).all()
                               and (band[..., 0] == band[..., 2]).all()):
                raise UnsupportedImageError("this model codes grayscale images losslessly; the "
                                            "image has colour (use pc-photo: --lossless)")
            tiles = band[:, :, :c].reshape(b - a, u, w, u, c).transpose(0, 2, 1, 3, 4)
            samples = self.layout.samples(tiles.reshape(-1, u, u, c))[:, :, self.order]
            symbols[:, a:b] = samples.transpose(2, 1, 0).reshape(-1, b - a, w)
        return symbols

    # Decoding goes through the tiled path of the lossy models (``codec/registry.py``), with
    # the pixels themselves as the "latent": exact, and no float copy of the whole image.
    latent_scale = 1
    synthesis_margin = 0

    def conceal(self, symbols: np.ndarray, lost: np.ndarray | None = None) -> torch.Tensor:
        """Symbols -> the image (1, 3, H, W) as uint8; lost tiles come out mid-grey (a lossless
        code has nothing to conceal them with beyond the surviving tiles)."""
        u, c, patches = self.unit, self.layout.channels, self.layout.patches
        h, w = symbols.shape[1:]
        pixels = zeros((h * u, w * u, c), np.uint8)
        for a, b in self.bands(h, w):
            n = (b - a) * w
            samples = np.empty((n, patches, self.layout.variables), np.int64)
            samples[:, :, self.order] = symbols[:, a:b].reshape(len(self.order), patches,
                                                                n).transpose(2, 1, 0)
            tiles = self.layout.tiles(samples)
            if lost is not None:
                tiles[lost[a:b].reshape(-1)] = 128
            pixels[a * u:b * u] = tiles.reshape(b - a, w, u, u, c).transpose(0, 2, 1, 3, 4) \
                .reshape((b - a) * u, w * u, c)
        image = torch.from_numpy(pixels).permute(2, 0, 1)[None]
        return image.expand(1, 3, -1, -1) if c == 1 else image

    @staticmethod
    def decode_latent(image: torch.Tensor) -> torch.Tensor:
        """A uint8 tile of :meth:`conceal` as floats in [0, 1]."""
        return image.float() / 255

    def synthesize(self, symbols: np.ndarray, lost: np.ndarray | None = None) -> torch.Tensor:
        """Symbols -> (1, 3, H, W) image in [0, 1]."""
        return self.decode_latent(self.conceal(symbols, lost))


def save_weights(model: IntHCLT, layout: TileLayout, path: str, config: dict,
                 metadata: dict) -> None:
    """The shipped file: parent array and integer tables (int16); config and layout in the
    metadata."""
    tensors = {"parent": torch.from_numpy(model.order.parent.astype(np.int32)),
               "root": torch.from_numpy(model.root.astype(np.int16)),
               "trans": torch.from_numpy(model.trans.astype(np.int16)),
               "emit": torch.from_numpy(model.emit.astype(np.int16))}
    meta = {"config": json.dumps(config), "layout": json.dumps(layout.__dict__),
            **{k: str(v) for k, v in metadata.items()}}
    save_file(tensors, path, metadata=meta)


def load_weights(path: str) -> tuple[TileHCLT, TilePrior]:
    """Read a weight file written by :func:`save_weights` (integer tables, no pickle)."""
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k).numpy().astype(np.int64) for k in f.keys()}
    model = IntHCLT(t["parent"], t["root"], t["trans"], t["emit"])
    layout = TileLayout(**json.loads(meta["layout"]))
    bits = json.loads(meta.get("validation", "{}")).get("val_bpd", 8.0)
    return TileHCLT(layout, model.order.preorder), TilePrior(model, layout.patches, bits)
