"""A PyTorch dataset of nicodec files: a coded collection feeds a training pipeline directly.

Each item is decoded when it is asked for, so with ``DataLoader(..., num_workers=N)`` the
decoding runs in the loader's N worker processes (each decodes on one thread: PyTorch sets
that in its workers). The files are named as for ``codec decode``: paths, folders, glob
patterns, ``@LIST`` files and fsspec URLs.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from nicodec.bitstream.format import MAX_PIXELS
from nicodec.codec import decode_tensor
from nicodec.codec.batch import expand
from nicodec.codec.files import ENCODED_SUFFIX, read


class NicDataset(torch.utils.data.Dataset):
    """The decoded images of ``.nic`` files as (C, H, W) float tensors in [0, 1] (alpha, if a
    file has one, as the last channel), passed through ``transform`` when given.

    ``files``: a path, folder, pattern or URL, or a list of them (folders give their ``.nic``
    files; ``recursive``: with their subfolders'). ``strict`` and ``max_pixels`` are those of
    :func:`nicodec.codec.decode_tensor`: a damaged file is concealed (with a warning) unless
    ``strict``, and a file that does not decode raises ``BitstreamError`` from the loader."""

    def __init__(self, files: str | Sequence[str], transform: Callable[[torch.Tensor], Any]
                 | None = None, recursive: bool = False, strict: bool = False,
                 max_pixels: int | None = MAX_PIXELS) -> None:
        self.files = expand([files] if isinstance(files, str) else [str(f) for f in files],
                            {ENCODED_SUFFIX}, recursive)[0]
        self.transform = transform
        self.strict = strict
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Any:
        image = decode_tensor(read(self.files[index]), strict=self.strict,
                              max_pixels=self.max_pixels)
        return self.transform(image) if self.transform else image
