"""Analysis and synthesis of big images in overlapping tiles, so memory stays that of one tile.

A convolutional transform's output at a position depends only on the input within its receptive
field. Run on a tile that carries a margin of at least that reach around its interior, the
interior of the output is what the whole image would give (up to float rounding: the kernels
may sum in another order on another shape), and the margin is cropped. Tiles start on multiples
of the model's unit, so strided layers sample the same positions as on the whole image, and a
tile at the image border sees the same zero padding there as the whole image does. An image that
fits in one tile is computed whole, exactly as without tiling.

:class:`Pixels` hands out float tiles of the edge-padded image from its 8-bit pixels, so no
float copy of the whole image is made; :func:`analyze_in_tiles` assembles an analysis' latent
grids from tiles; :func:`synthesize_in_tiles` decodes a latent grid tile by tile into 8-bit
pixels; :func:`conceal_in_bands` computes a concealed latent grid a band of unit rows at a time.

The grids of a whole image (latents, symbols) are made by :func:`zeros`: in memory, or, above
SPILL_BYTES, in an unlinked scratch file mapped into memory, which the kernel writes out when
memory runs short, so an image whose grids do not fit in memory still codes.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable

import numpy as np
import torch

TILE = 2048  # pixels per tile side (a multiple of every model's unit); tests lower it
SPILL_BYTES = 1 << 26  # a grid larger than this (64 MiB) lives in a scratch file; tests lower it


def scratch_dir() -> str:
    """Folder of the scratch files: ``$NICODEC_SCRATCH``, else the system's temporary folder."""
    return os.environ.get("NICODEC_SCRATCH") or tempfile.gettempdir()


def zeros(shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """A zero-filled array for one image's grid: in memory, or, when it is larger than
    SPILL_BYTES, a memory map of an unlinked file in :func:`scratch_dir` (its disk space
    reserved now, so a full disk is an ``OSError`` here rather than a crash later; the file
    disappears with the array)."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if nbytes <= SPILL_BYTES:
        return np.zeros(shape, dtype)
    folder = scratch_dir()
    try:
        with tempfile.TemporaryFile(dir=folder, prefix="nicodec-") as f:
            os.posix_fallocate(f.fileno(), 0, nbytes)
            return np.memmap(f, dtype=dtype, mode="r+", shape=shape)
    except OSError as exc:
        raise OSError(exc.errno, f"no room for a {nbytes / 2**30:.2f} GB scratch file in "
                                 f"{folder} ({exc.strerror}); set NICODEC_SCRATCH to a folder "
                                 "with more space") from None


def zeros_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """:func:`zeros` as a tensor (sharing the array's memory or mapping)."""
    return torch.from_numpy(zeros(shape, torch.empty(0, dtype=dtype).numpy().dtype))


def spans(size: int, tile: int, margin: int) -> list[tuple[int, int, int, int]]:
    """(outer start, outer end, inner start, inner end) of the tiles along one side of ``size``:
    the inner spans cover 0..size once, each outer one adds up to ``margin`` on both sides."""
    return [(max(0, a - margin), min(size, a + tile + margin), a, min(size, a + tile))
            for a in range(0, size, tile)]


class Pixels:
    """An image as the analysis sees it: 8-bit (H, W, 1 or 3) pixels, edge-padded to a
    multiple of ``unit``, handed out as float (1, 3, h, w) tiles in [0, 1]; or an already
    padded float image (1, 3, H, W), handed out as slices."""

    def __init__(self, image: np.ndarray | torch.Tensor, unit: int) -> None:
        self.image, self.unit = image, unit
        if isinstance(image, torch.Tensor):
            self.height, self.width = image.shape[-2:]
        else:
            h, w = image.shape[:2]
            self.height, self.width = h + -h % unit, w + -w % unit

    @classmethod
    def of(cls, x: "Pixels | torch.Tensor", unit: int) -> "Pixels":
        return x if isinstance(x, Pixels) else cls(x, unit)

    @property
    def visible(self) -> tuple[int, int]:
        """(height, width) of the image itself, without the padding."""
        if isinstance(self.image, torch.Tensor):
            return self.height, self.width
        return self.image.shape[0], self.image.shape[1]

    def tile(self, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        """Rows y0..y1, columns x0..x1 of the padded image as (1, 3, y1-y0, x1-x0) floats."""
        if isinstance(self.image, torch.Tensor):
            return self.image[:, :, y0:y1, x0:x1]
        h, w = self.image.shape[:2]
        part = self.image[min(y0, h - 1):min(y1, h), min(x0, w - 1):min(x1, w)]
        part = np.pad(part, ((0, y1 - y0 - part.shape[0]), (0, x1 - x0 - part.shape[1]), (0, 0)),
                      mode="edge")
        if part.shape[2] == 1:
            part = np.repeat(part, 3, axis=2)
        return torch.from_numpy(part).permute(2, 0, 1)[None].float().div(255)

    def whole(self) -> torch.Tensor:
        return self.tile(0, self.height, 0, self.width)

    def uint8(self, y0: int = 0, y1: int | None = None) -> np.ndarray:
        """Rows y0..y1 (default all) of the padded image as (y1-y0, W, 3) uint8 (for exact,
        pixel-level models, which take the image a band of rows at a time)."""
        y1 = self.height if y1 is None else y1
        if isinstance(self.image, torch.Tensor):
            band = self.image[0, :, y0:y1]
            return (band * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        h, w = self.image.shape[:2]
        part = self.image[min(y0, h - 1):min(y1, h)]
        padded = np.pad(part, ((0, y1 - y0 - part.shape[0]), (0, self.width - w), (0, 0)),
                        mode="edge")
        return np.repeat(padded, 3, axis=2) if padded.shape[2] == 1 else padded


def analyze_in_tiles(pixels: Pixels, analysis: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
                     margin: int, tile: int | None = None) -> tuple[torch.Tensor, ...]:
    """The outputs of ``analysis`` (a tuple of (1, c, H/s, W/s) tensors, each at its own
    scale s) on the whole padded image, computed in tiles of ``tile`` pixels (default
    :data:`TILE`) with ``margin`` pixels of context; both multiples of the unit."""
    tile = tile or TILE
    if pixels.height <= tile and pixels.width <= tile:
        return analysis(pixels.whole())
    outputs: list[torch.Tensor] = []
    for ya, yb, y0, y1 in spans(pixels.height, tile, margin):
        for xa, xb, x0, x1 in spans(pixels.width, tile, margin):
            parts = analysis(pixels.tile(ya, yb, xa, xb))
            if not outputs:
                outputs = [zeros_tensor((*p.shape[:2], pixels.height * p.shape[2] // (yb - ya),
                                             pixels.width * p.shape[3] // (xb - xa)), p.dtype)
                           for p in parts]
            for out, part in zip(outputs, parts):
                s = (yb - ya) // part.shape[2]  # pixels per position of this output
                out[:, :, y0 // s:y1 // s, x0 // s:x1 // s] = \
                    part[:, :, (y0 - ya) // s:(y1 - ya) // s, (x0 - xa) // s:(x1 - xa) // s]
    return tuple(outputs)


def synthesize_in_tiles(latent: torch.Tensor, synthesis: Callable[[torch.Tensor], torch.Tensor],
                        scale: int, margin: int, render: Callable[[torch.Tensor], np.ndarray],
                        out: np.ndarray, tile: int | None = None) -> np.ndarray:
    """Decode a latent grid (1, c, h, w) of ``scale`` pixels per position into ``out``
    (H, W, channels) uint8, H <= scale * h: ``synthesis`` maps latent tiles to (1, 3, ...)
    images, ``render`` turns an image tile into uint8 (H', W', channels). Tiles of ``tile``
    pixels (default :data:`TILE`) carry ``margin`` latent positions of context."""
    step = (tile or TILE) // scale
    height, width = out.shape[:2]
    for ya, yb, y0, y1 in spans(latent.shape[2], step, margin):
        for xa, xb, x0, x1 in spans(latent.shape[3], step, margin):
            if y0 * scale >= height or x0 * scale >= width:
                continue  # a tile of padding only
            image = synthesis(latent[:, :, ya:yb, xa:xb])
            inner = image[:, :, (y0 - ya) * scale:(y1 - ya) * scale,
                          (x0 - xa) * scale:(x1 - xa) * scale]
            rows, cols = min(y1 * scale, height) - y0 * scale, min(x1 * scale, width) - x0 * scale
            out[y0 * scale:y0 * scale + rows, x0 * scale:x0 * scale + cols] = \
                render(inner[:, :, :rows, :cols])
    return out


def conceal_in_bands(conceal: Callable[[np.ndarray], torch.Tensor], symbols: np.ndarray,
                     margin: int, unit: int) -> torch.Tensor:
    """``conceal(symbols)`` (symbols (columns, h, w) -> latent (1, c, s*h, s*w)) of a grid with
    nothing lost, computed for bands of a tile's height (TILE / ``unit`` unit rows, the whole
    width) with ``margin`` rows of context, into a :func:`zeros` grid;
    the margin covers the reach of the concealment's convolutions, so the bands give the whole
    grid's latent."""
    h = symbols.shape[1]
    rows = max(1, TILE // unit)
    if h <= rows:
        return conceal(symbols)
    latent = None
    for ya, yb, y0, y1 in spans(h, rows, margin):
        part = conceal(symbols[:, ya:yb])
        s = part.shape[2] // (yb - ya)
        if latent is None:
            latent = zeros_tensor((*part.shape[:2], s * h, part.shape[3]), part.dtype)
        latent[:, :, s * y0:s * y1] = part[:, :, s * (y0 - ya):s * (y1 - ya)]
    return latent
