"""Images bigger than memory, from and to TIFF files, without holding their pixels.

Pillow decodes a whole image into memory (and refuses one above 179 megapixels as a
decompression bomb). A TIFF with more than STREAM_PIXELS pixels is read with tifffile instead
(``codec.image.load_image``): an uncompressed one is mapped into memory straight from the file,
a compressed one is decoded into a scratch grid (``models.tiling.zeros``: a mapped scratch file
when it is big). The encoder then reads it a tile at a time (``models.tiling.Pixels``). The
other way, :func:`create` makes a new uncompressed TIFF mapped into memory, which the decoder
fills tile by tile (``codec.pipeline.decode_detailed(out=...)``): the kernel writes the pixels
to disk as memory runs short, so neither side needs the image in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nicodec.bitstream.metadata import Metadata

STREAM_PIXELS = 1 << 26  # TIFFs above this many pixels (67 Mpx) are streamed; tests lower it
TIFF_SUFFIXES = (".tif", ".tiff")
ICC_TAG, ORIENTATION_TAG, EXIF_TAG = 34675, 274, 34665

# EXIF orientation -> the view that shows the image upright (as ImageOps.exif_transpose)
UPRIGHT = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1), 6: lambda a: a.swapaxes(0, 1)[:, ::-1],
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1), 8: lambda a: a.swapaxes(0, 1)[::-1],
}


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """The view of ``pixels`` that shows them upright, given their EXIF orientation."""
    return UPRIGHT.get(int(orientation), lambda a: a)(pixels)


def is_big(width: int, height: int) -> bool:
    """Whether an image of this size is read and written piece by piece."""
    return width * height > STREAM_PIXELS


def create(path: str | Path, height: int, width: int, channels: int,
           metadata: Metadata = Metadata(), dtype: type = np.uint8) -> np.ndarray:
    """A new uncompressed TIFF of (height, width, channels) pixels of ``dtype`` (uint8 or
    uint16) at ``path``, mapped into memory: write the pixels into the returned (height, width,
    channels) array, then :func:`finish` it. The file's ICC profile and alpha plane are
    written; EXIF is not."""
    import tifffile

    alpha = metadata.alpha is not None
    samples = channels + alpha
    mapped = tifffile.memmap(
        path, shape=(height, width, samples) if samples > 1 else (height, width),
        dtype=dtype, photometric="rgb" if channels == 3 else "minisblack",
        extrasamples=("unassalpha",) if alpha else None, iccprofile=metadata.icc_profile,
        bigtiff=height * width * samples * np.dtype(dtype).itemsize > 2**31, metadata=None)
    mapped = mapped.reshape(height, width, samples)
    if alpha:
        mapped[:, :, channels] = metadata.alpha
    return mapped[:, :, :channels]


def finish(pixels: np.ndarray) -> None:
    """Write what :func:`create`'s array holds to its file (views of a memory map are memory
    maps: flushing one flushes the file)."""
    if isinstance(pixels, np.memmap):
        pixels.flush()
