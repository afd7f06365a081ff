"""nicodec: learned image compression with a versioned, damage-tolerant bitstream.

    import codec
    data = codec.encode("photo.png", quality=4)     # bytes
    small = codec.encode("photo.png", effort=3)     # encoder search (mcq), same decoder
    exact = codec.encode("photo.png", lossless=True)  # every pixel decodes bit for bit
    image = codec.decode(data)                      # PIL.Image
    codec.available_models()                        # ['mcq-tiny', ...]

Errors: any bytes handed to ``decode*`` either decode or raise :class:`BitstreamError` (or a
subclass), never another exception: :class:`ImageTooLargeError` when the header promises more
than ``max_pixels`` pixels (default ``MAX_PIXELS``, Pillow's 179-megapixel bomb limit; pass
``max_pixels=None`` for no limit), :class:`DecodeError` when a payload that passed its checksums
does not decode. An input image that cannot be encoded raises :class:`UnsupportedImageError`.
When packets of a file are damaged, ``decode`` conceals them and emits a
:class:`ConcealedWarning`; pass ``strict=True`` to get :class:`PacketLossError` instead.

The functions are safe to call from several threads at once (each model loads once). Importing
``codec`` is cheap: torch and the models load on first use of a function that needs them.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

from bitstream.errors import (
    BitstreamError,
    CorruptHeaderError,
    DecodeError,
    ImageTooLargeError,
    ModelMismatchError,
    NotNicodecError,
    PacketLossError,
    TruncatedError,
    UnsupportedVersionError,
)
from bitstream.format import MAX_PIXELS
from codec.registry import (DEFAULT_MODEL, LOSSLESS_MODEL, ModelInfo, available_models,
                            model_info)

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

__all__ = [
    "encode", "decode", "decode_array", "decode_tensor", "decode_detailed", "load_model",
    "available_models", "model_info", "ModelInfo", "DEFAULT_MODEL", "LOSSLESS_MODEL", "Decoded",
    "MAX_PIXELS", "BitstreamError", "CorruptHeaderError", "DecodeError", "ImageTooLargeError",
    "ModelMismatchError", "NotNicodecError", "PacketLossError", "TruncatedError",
    "UnsupportedVersionError", "UnsupportedImageError", "ConcealedWarning",
]

# Names that pull in torch, imported from their module on first use (PEP 562).
_LAZY = {"encode": "codec.pipeline", "decode_detailed": "codec.pipeline",
         "Decoded": "codec.pipeline", "load_model": "codec.registry",
         "UnsupportedImageError": "codec.image"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'codec' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class ConcealedWarning(UserWarning):
    """Some packets were damaged; their part of the image was concealed."""


def decode_array(data: bytes, strict: bool = False,
                 max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Decode to an (H, W) or (H, W, 3) uint8 array."""
    from codec.pipeline import decode_detailed

    result = decode_detailed(data, strict=strict, max_pixels=max_pixels)
    if result.lost_packets:
        warnings.warn(f"{result.lost_packets} damaged packet(s): concealed "
                      f"{result.concealed_fraction:.1%} of the image", ConcealedWarning,
                      stacklevel=2)
    return result.pixels[:, :, 0] if result.pixels.shape[2] == 1 else result.pixels


def decode(data: bytes, strict: bool = False, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """Decode to a PIL image (mode L or RGB)."""
    from codec.image import to_pil

    pixels = decode_array(data, strict=strict, max_pixels=max_pixels)
    return to_pil(pixels if pixels.ndim == 3 else pixels[:, :, None])


def decode_tensor(data: bytes, strict: bool = False,
                  max_pixels: int | None = MAX_PIXELS) -> torch.Tensor:
    """Decode to a (C, H, W) float tensor in [0, 1]."""
    import torch

    pixels = decode_array(data, strict=strict, max_pixels=max_pixels)
    pixels = pixels if pixels.ndim == 3 else pixels[:, :, None]
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div(255)
