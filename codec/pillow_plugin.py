"""nicodec files in Pillow: ``Image.open("photo.nic")`` and ``im.save("photo.nic", ...)``.

``from nicodec import codec`` registers the format (Pillow has no plugin entry points, so an import is how a
plugin joins it, as with pillow-avif-plugin and pillow-jxl-plugin)::

    from nicodec import codec
    from PIL import Image

    with Image.open("photo.nic") as im:   # reads the header: size, mode (L, LA, RGB, RGBA),
                                           # ICC profile and EXIF in im.info
        print(im.size, im.mode)
        im.load()                          # decodes the payload
    im.save("copy.nic", model="mcq", quality=4, effort=1)  # or lossless=True, target_bpp=0.2

Save options are those of ``codec.encode`` (``model``, ``quality``, ``effort``, ``lossless``,
``packets``, ``alpha``, ``depth``, ``frames``, ``metadata``: the image's ICC profile and EXIF
in ``im.info`` are kept) or one target of ``codec.encode_to_target`` (``target_bpp``, ``target_size``,
``target_psnr``; not with ``quality``). A file that starts like a nicodec file but whose header
cannot be read raises ``PIL.UnidentifiedImageError`` with the reason; a file whose payload
cannot be decoded (unknown model, every packet damaged) raises ``OSError`` at ``load()``. Damaged
packets are concealed with a ``codec.ConcealedWarning``, as ``codec.decode`` does.
"""

from __future__ import annotations

import io
from typing import IO

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from nicodec.bitstream.errors import BitstreamError, CorruptMetadataError, NotNicodecError
from nicodec.bitstream.format import MAGIC, metadata_records, parse_header
from nicodec.bitstream.metadata import Kind, Metadata

FORMAT = "NIC"
EXTENSION = ".nic"
MIME = "image/x-nicodec"
MODES = {1: "L", 3: "RGB"}  # header channels -> Pillow mode
SAVE_OPTIONS = ("model", "quality", "packets", "lossless", "effort", "alpha", "depth", "frames",
                "metadata")
TARGET_OPTIONS = ("target_bpp", "target_size", "target_psnr")


def _accept(prefix: bytes) -> bool:
    return prefix[:1] == bytes([MAGIC])


class NicodecImageFile(ImageFile.ImageFile):
    """A nicodec file: size and mode from the header at open, pixels decoded at ``load()``."""

    format = FORMAT
    format_description = "nicodec learned image codec"

    def _open(self) -> None:
        data = self.fp.read()
        try:
            header, _ = parse_header(data)
        except NotNicodecError as error:
            raise SyntaxError(str(error)) from None  # Pillow tries the other formats
        except BitstreamError as error:
            raise UnidentifiedImageError(f"nicodec file {self.filename or ''}: {error}") from None
        if header.channels not in MODES:
            raise UnidentifiedImageError(f"nicodec file with {header.channels} channels")
        try:  # the metadata block is read, not inflated: whether there is alpha, ICC, EXIF
            records = dict(metadata_records(data))
        except CorruptMetadataError:
            records = {}  # load() drops the block too, with a MetadataWarning
        alpha = "A" if Kind.ALPHA in records else ""
        self._mode = MODES[header.channels] + alpha
        if header.bit_depth > 8 and self._mode == "L":
            self._mode = "I;16"  # 16-bit colour has no Pillow mode: load() reduces it to 8 bits
        self._size = (header.width, header.height)
        self.info.update(Metadata(records.get(Kind.ICC_PROFILE), records.get(Kind.EXIF)).pil_info())
        self.info.update(nicodec_model_id=header.model_id, nicodec_quality=header.quality,
                         nicodec_packets=len(header.packet_lengths))
        self._payload: bytes | None = data
        self.tile = []

    def load(self):
        if self._payload is not None:
            from nicodec import codec
            from nicodec.codec.image import colour_for_pillow

            try:
                pixels = codec.decode_array(self._payload)  # with alpha as the last channel
            except BitstreamError as error:
                raise OSError(f"cannot decode nicodec file {self.filename or ''}: {error}"
                              ) from None
            self._payload = None
            pixels = pixels.reshape(*pixels.shape[:2], -1)
            if pixels.dtype == np.uint16 and self.mode != "I;16":
                pixels = colour_for_pillow(pixels, stacklevel=3)
            pixels = pixels.astype("<u2") if self.mode == "I;16" else pixels
            if pixels.shape[2] < len(self.getbands()):  # an alpha plane that failed to inflate was
                opaque = np.full(pixels.shape[:2], 255, np.uint8)  # dropped (MetadataWarning)
                pixels = np.dstack([pixels, opaque])
            if self.fp and self._exclusive_fp:
                self.fp.close()
            self.fp = io.BytesIO(pixels.tobytes())
            self.tile = [("raw", (0, 0, *self.size), 0, self.mode)]
        return super().load()


def _save(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    from nicodec import codec

    options = {k: v for k, v in im.encoderinfo.items() if k in SAVE_OPTIONS + TARGET_OPTIONS}
    targets = {k: options.pop(k) for k in TARGET_OPTIONS if k in options}
    try:
        if targets:
            if "quality" in options or options.get("lossless"):
                raise ValueError("a target (target_bpp, target_size, target_psnr) replaces "
                                 "quality and cannot be lossless")
            options.pop("lossless", None)
            data = codec.encode_to_target(im, **targets, **options).data
        else:
            data = codec.encode(im, **options)
    except codec.UnsupportedImageError as error:
        raise OSError(f"cannot write {im.mode} image as nicodec: {error}") from None
    fp.write(data)


Image.register_open(FORMAT, NicodecImageFile, _accept)
Image.register_save(FORMAT, _save)
Image.register_extension(FORMAT, EXTENSION)
Image.register_mime(FORMAT, MIME)
