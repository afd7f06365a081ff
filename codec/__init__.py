"""nicodec: learned image compression with a versioned, damage-tolerant bitstream.

    import codec
    data = codec.encode("photo.png", quality=4)     # bytes
    small = codec.encode("photo.png", effort=3)     # encoder search, same decoder
    exact = codec.encode("photo.png", lossless=True)  # every pixel decodes bit for bit
    image = codec.decode(data)                      # PIL.Image
    codec.available_models()                        # ['mcq-tiny', ...]

Errors: bad or damaged data raises :class:`BitstreamError` (or a subclass); an input image that
cannot be encoded raises :class:`UnsupportedImageError`. When packets of a file are damaged,
``decode`` conceals them and emits a :class:`ConcealedWarning`; pass ``strict=True`` to get
:class:`PacketLossError` instead.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from PIL import Image

from bitstream.errors import (
    BitstreamError,
    CorruptHeaderError,
    ModelMismatchError,
    NotNicodecError,
    PacketLossError,
    TruncatedError,
    UnsupportedVersionError,
)
from codec.image import UnsupportedImageError, to_pil
from codec.pipeline import Decoded, decode_detailed, encode
from codec.registry import (DEFAULT_MODEL, LOSSLESS_MODEL, ModelInfo, available_models, load_model,
                            model_info)

__all__ = [
    "encode", "decode", "decode_array", "decode_tensor", "decode_detailed", "load_model",
    "available_models", "model_info", "ModelInfo", "DEFAULT_MODEL", "LOSSLESS_MODEL", "Decoded",
    "BitstreamError", "CorruptHeaderError", "ModelMismatchError", "NotNicodecError",
    "PacketLossError", "TruncatedError", "UnsupportedVersionError", "UnsupportedImageError",
    "ConcealedWarning",
]


class ConcealedWarning(UserWarning):
    """Some packets were damaged; their part of the image was concealed."""


def decode_array(data: bytes, strict: bool = False) -> np.ndarray:
    """Decode to an (H, W) or (H, W, 3) uint8 array."""
    result = decode_detailed(data, strict=strict)
    if result.lost_packets:
        warnings.warn(f"{result.lost_packets} damaged packet(s): concealed "
                      f"{result.concealed_fraction:.1%} of the image", ConcealedWarning,
                      stacklevel=2)
    return result.pixels[:, :, 0] if result.pixels.shape[2] == 1 else result.pixels


def decode(data: bytes, strict: bool = False) -> Image.Image:
    """Decode to a PIL image (mode L or RGB)."""
    pixels = decode_array(data, strict=strict)
    return to_pil(pixels if pixels.ndim == 3 else pixels[:, :, None])


def decode_tensor(data: bytes, strict: bool = False) -> torch.Tensor:
    """Decode to a (C, H, W) float tensor in [0, 1]."""
    pixels = decode_array(data, strict=strict)
    pixels = pixels if pixels.ndim == 3 else pixels[:, :, None]
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div(255)
