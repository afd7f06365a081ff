"""Turning what users hand us (paths, PIL images, numpy arrays, tensors) into 8-bit pixels.

The codec works on 8-bit grayscale or RGB. Anything else is converted when that loses nothing
(palette, CMYK, a fully opaque alpha channel, EXIF rotation) and refused with a clear message when
it would (transparency, 16-bit or float samples).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bitstream.format import MAX_SIDE

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
ImageInput = Union[str, Path, bytes, Image.Image, np.ndarray, "torch.Tensor"]


class UnsupportedImageError(ValueError):
    """The input cannot be encoded (unreadable, transparent, high bit depth, wrong shape)."""


def _from_pil(img: Image.Image) -> np.ndarray:
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        raise UnsupportedImageError(
            f"{img.mode} images (16-bit or float samples) are not supported: convert to 8 bits")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode == "PA":
        img = img.convert("RGBA")
    if img.mode == "1":
        img = img.convert("L")
    if img.mode not in ("L", "LA", "RGB", "RGBA"):
        img = img.convert("RGB")
    return from_array(np.asarray(img))


def from_array(array: np.ndarray) -> np.ndarray:
    """Validate an array and return it as (H, W, 1) or (H, W, 3) uint8."""
    if array.dtype != np.uint8:
        raise UnsupportedImageError(
            f"arrays must be uint8 (got {array.dtype}); 16-bit and float images are not supported")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise UnsupportedImageError(f"expected an (H, W), (H, W, 3) or (H, W, 4) array, "
                                    f"got shape {array.shape}")
    if array.shape[2] in (2, 4):
        alpha = array[:, :, -1]
        if alpha.min() < 255:
            raise UnsupportedImageError(
                "the image has transparency (an alpha channel that is not fully opaque), which "
                "nicodec does not encode: flatten it onto a background first")
        array = array[:, :, :-1]
    height, width = array.shape[:2]
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        raise UnsupportedImageError(f"image sides must be 1..{MAX_SIDE} pixels, got {width}x{height}")
    return np.ascontiguousarray(array)


def _from_tensor(tensor: torch.Tensor) -> np.ndarray:
    import torch

    t = tensor.detach().cpu()
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise UnsupportedImageError(f"expected a (C, H, W) or (1, C, H, W) tensor with C = 1 or 3, "
                                    f"got shape {tuple(tensor.shape)}")
    if t.is_floating_point():
        if t.numel() and (t.min() < 0 or t.max() > 1):
            raise UnsupportedImageError("float tensors must hold values in [0, 1]")
        t = (t * 255).round().to(torch.uint8)
    elif t.dtype != torch.uint8:
        raise UnsupportedImageError(f"tensors must be float in [0, 1] or uint8, got {t.dtype}")
    return from_array(t.permute(1, 2, 0).numpy())


def load_pixels(source: ImageInput) -> np.ndarray:
    """Any supported input -> (H, W, 1 or 3) uint8 array, EXIF orientation applied."""
    if isinstance(source, np.ndarray):
        return from_array(source)
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
    if torch is not None and isinstance(source, torch.Tensor):
        return _from_tensor(source)
    if isinstance(source, Image.Image):
        return _from_pil(source)
    if isinstance(source, (str, Path, bytes)):
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                img.load()
                return _from_pil(img)
        except FileNotFoundError:
            raise
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise UnsupportedImageError(f"cannot read image: {exc}") from None
    raise TypeError(f"cannot encode a {type(source).__name__}: pass a path, bytes, PIL image, "
                    f"numpy array or torch tensor")


def to_pil(pixels: np.ndarray) -> Image.Image:
    """(H, W, 1 or 3) uint8 -> PIL image in mode L or RGB."""
    return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
