"""nicodec: learned image compression with a versioned, damage-tolerant bitstream.

The distribution installs this one import name. ``import nicodec`` gives the public API of
:mod:`nicodec.codec` (``nicodec.encode``, ``nicodec.decode``, ``nicodec.BitstreamError``, ...),
loaded on first use so that the import itself stays cheap; ``from nicodec import codec`` is the
same module under its own name (importing it registers ``.nic`` with Pillow). The other
subpackages: ``nicodec.models`` (the model families and their weights), ``nicodec.bitstream``
(the file format), ``nicodec.eval`` (evaluation) and ``nicodec.cli`` (the ``codec`` command).
"""

from __future__ import annotations

import importlib
from typing import Any

# the names of nicodec.codec.__all__ (tests/test_packaging.py keeps the two lists equal)
__all__ = [
    "encode", "encode_to_target", "TargetResult", "decode", "decode_array", "decode_tensor",
    "decode_detailed", "load_model", "available_models", "model_info", "ModelInfo", "DEFAULT_MODEL",
    "LOSSLESS_MODEL", "Decoded", "Metadata", "MAX_PIXELS", "BitstreamError", "CorruptHeaderError",
    "CorruptMetadataError", "DecodeError", "ImageTooLargeError", "ModelMismatchError",
    "NotNicodecError", "PacketLossError", "TruncatedError", "UnsupportedVersionError",
    "UnsupportedImageError", "ConcealedWarning", "MetadataWarning", "ConversionWarning",
    "WeightsError", "encode_collection", "decode_collection", "FileReport",
    "NicDataset", "release_workers",
]
_SUBMODULES = ("codec", "models", "bitstream", "eval", "cli")


def __getattr__(name: str) -> Any:
    """A subpackage, or a name of the public API imported from ``nicodec.codec`` on first use
    (PEP 562); anything else is an AttributeError without importing anything."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.codec"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
