"""nicodec: learned image compression with a versioned, damage-tolerant bitstream.

    from nicodec import codec
    data = codec.encode("photo.png", quality=4)     # bytes
    small = codec.encode("photo.png", effort=3)     # encoder search, same decoder
    exact = codec.encode("photo.png", lossless=True)  # every pixel decodes bit for bit
    codec.encode_to_target("photo.png", target_bpp=0.2).data  # quality searched for a rate
    image = codec.decode(data)                      # PIL.Image (RGBA if the input had alpha)
    image = codec.decode("photo.nic")               # paths and binary file objects too
    image.info.get("icc_profile")                   # ICC profile and EXIF ride along
    codec.available_models()                        # ['mcq-tiny', ...]
    codec.encode_collection("photos/", "coded/", cluster="local:4")  # a FileReport per file
    codec.NicDataset("coded/")                      # decoded tensors for a DataLoader

Inputs: transparency is kept (the alpha plane coded losslessly beside the lossy colour),
16-bit and float samples are reduced to 8 bits, an animation's first frame is coded, and the ICC
profile and EXIF are kept; each change warns with :class:`ConversionWarning`, and ``encode``'s
``alpha``, ``depth``, ``frames`` and ``metadata`` arguments drop or refuse instead.

Errors: any bytes handed to ``decode*`` either decode or raise :class:`BitstreamError` (or a
subclass), never another exception: :class:`ImageTooLargeError` when the header promises more
than ``max_pixels`` pixels (default ``MAX_PIXELS``, Pillow's 179-megapixel bomb limit; pass
``max_pixels=None`` for no limit), :class:`DecodeError` when a payload that passed its checksums
does not decode. An input image that cannot be encoded raises :class:`UnsupportedImageError`.
A shipped weight file that is missing, truncated or damaged raises :class:`WeightsError` from any
function that needs the model (a ``RuntimeError``, not a ``BitstreamError``: the installation is
broken, not the data; the message names the file and says to reinstall).
When packets of a file are damaged, ``decode`` conceals them and emits a
:class:`ConcealedWarning`; pass ``strict=True`` to get :class:`PacketLossError` instead. A
damaged metadata block is dropped with a :class:`MetadataWarning` (strict:
:class:`CorruptMetadataError`).

Importing the package also registers the ``.nic`` format with Pillow (``codec/pillow_plugin.py``):
``PIL.Image.open("photo.nic")`` and ``image.save("photo.nic", quality=4)`` work after it.

The functions are safe to call from several threads at once (each model loads once). Importing
``codec`` is cheap: torch and the models load on first use of a function that needs them.
With BLAS on two threads or more, ``ctx-photo`` (``lossless=True``) codes in two processes on
Linux, the second kept for the next calls (it ends after 30 s without work, with this process,
or at :func:`release_workers`).
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from nicodec.bitstream.errors import (
    BitstreamError,
    CorruptHeaderError,
    CorruptMetadataError,
    DecodeError,
    ImageTooLargeError,
    ModelMismatchError,
    NotNicodecError,
    PacketLossError,
    TruncatedError,
    UnsupportedVersionError,
)
from nicodec.bitstream.format import MAX_PIXELS
from nicodec.bitstream.metadata import Metadata
from nicodec.codec.image import ConversionWarning, UnsupportedImageError, to_pil
from nicodec.codec.registry import (DEFAULT_MODEL, LOSSLESS_MODEL, ModelInfo, WeightsError,
                                    available_models, model_info)
from nicodec.codec import pillow_plugin  # noqa: F401  (registers .nic with Pillow)

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from nicodec.codec.pipeline import BitstreamInput, Decoded

__all__ = [
    "encode", "encode_to_target", "TargetResult", "decode", "decode_array", "decode_tensor",
    "decode_detailed", "load_model", "available_models", "model_info", "ModelInfo",
    "DEFAULT_MODEL", "LOSSLESS_MODEL", "Decoded", "Metadata", "MAX_PIXELS", "BitstreamError",
    "CorruptHeaderError", "CorruptMetadataError", "DecodeError", "ImageTooLargeError",
    "ModelMismatchError", "NotNicodecError", "PacketLossError", "TruncatedError",
    "UnsupportedVersionError", "UnsupportedImageError", "ConcealedWarning", "MetadataWarning",
    "ConversionWarning", "WeightsError", "encode_collection", "decode_collection", "FileReport",
    "NicDataset", "release_workers",
]

# Names that pull in torch (or the batch machinery), imported from their module on first
# use (PEP 562).
_LAZY = {"encode": "nicodec.codec.pipeline", "decode_detailed": "nicodec.codec.pipeline",
         "Decoded": "nicodec.codec.pipeline", "load_model": "nicodec.codec.registry",
         "encode_to_target": "nicodec.codec.target", "TargetResult": "nicodec.codec.target",
         "encode_collection": "nicodec.codec.batch", "decode_collection": "nicodec.codec.batch",
         "FileReport": "nicodec.codec.batch", "NicDataset": "nicodec.codec.dataset",
         "release_workers": "nicodec.models.ctx.partner"}


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


class MetadataWarning(UserWarning):
    """The file's metadata block was damaged: ICC profile, EXIF and alpha plane were dropped."""


def _decode_warned(data: BitstreamInput, strict: bool, max_pixels: int | None) -> Decoded:
    """decode_detailed, with a warning for each thing that was concealed or dropped."""
    from nicodec.codec.pipeline import decode_detailed

    result = decode_detailed(data, strict=strict, max_pixels=max_pixels)
    if result.lost_packets:
        warnings.warn(f"{result.lost_packets} damaged packet(s): concealed "
                      f"{result.concealed_fraction:.1%} of the image", ConcealedWarning,
                      stacklevel=3)
    if result.metadata_lost:
        warnings.warn("the metadata block is damaged: ICC profile, EXIF and alpha plane dropped",
                      MetadataWarning, stacklevel=3)
    return result


def _with_alpha(result: Decoded) -> np.ndarray:
    """(H, W, C) pixels with the alpha plane, if the file has one, as channel C."""
    alpha = result.metadata.alpha
    return result.pixels if alpha is None else np.dstack([result.pixels, alpha])


def decode_array(data: BitstreamInput, strict: bool = False,
                 max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Decode to an (H, W) or (H, W, 3) uint8 array; (H, W, 2) or (H, W, 4) with alpha;
    uint16 for a file of 16-bit samples (``encode(..., lossless=True)`` of uint16 input).

    ``data`` (here and in ``decode``, ``decode_tensor`` and ``decode_detailed``) is the file's
    bytes, a path (``str`` or ``os.PathLike``) or a file object opened in binary mode."""
    pixels = _with_alpha(_decode_warned(data, strict, max_pixels))
    return pixels[:, :, 0] if pixels.shape[2] == 1 else pixels


def decode(data: BitstreamInput, strict: bool = False, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """Decode to a PIL image (mode L or RGB; LA or RGBA with alpha) whose ``info`` holds the
    file's ICC profile and EXIF (so that ``save`` writes them back). 16-bit grayscale is mode
    I;16; 16-bit RGB, which Pillow cannot hold, is reduced to 8 bits with a warning."""
    result = _decode_warned(data, strict, max_pixels)
    return to_pil(result.pixels, result.metadata)


def decode_tensor(data: BitstreamInput, strict: bool = False,
                  max_pixels: int | None = MAX_PIXELS) -> torch.Tensor:
    """Decode to a (C, H, W) float tensor in [0, 1] (alpha, if any, as the last channel)."""
    import torch

    pixels = _with_alpha(_decode_warned(data, strict, max_pixels))
    scale = np.iinfo(pixels.dtype).max  # 255, or 65535 for 16-bit samples
    return torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1).div(scale)
