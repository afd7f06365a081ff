"""Turning what users hand us (paths, PIL images, numpy arrays, tensors) into 8-bit pixels.

The codec works on 8-bit grayscale or RGB. Anything else is converted when that loses nothing
(palette, CMYK, a fully opaque alpha channel, EXIF rotation). What would lose something follows
the caller's policy, each with a :class:`ConversionWarning` when it changes the image or a clear
refusal when asked:

- ``alpha``: transparency is kept (the alpha plane is coded losslessly beside the pixels),
  dropped, or refused;
- ``depth``: 16-bit and float samples are reduced to 8 bits, refused, or kept as 16-bit
  samples (``"keep"``: lossless models that code them exactly, the default for those; a lossless
  model that cannot refuses them by default, as its file would not be exact);
- ``frames``: of an animation (or a multi-page file) the first frame is coded, or it is refused;
- ``metadata``: the ICC profile and EXIF (its orientation reset to 1, as the rotation is applied
  to the pixels) are kept in the file, or dropped.
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nicodec.bitstream.format import MAX_METADATA_BYTES, MAX_SIDE, Record, seal_metadata
from nicodec.bitstream.metadata import EXIF_PREFIX, MAX_PROFILE_BYTES, Metadata
from nicodec.codec import bigtiff, png16

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                  ".gif"}
ImageInput = Union[str, "os.PathLike[str]", bytes, BinaryIO, Image.Image, np.ndarray,
                   "torch.Tensor"]
POLICIES = {"alpha": ("keep", "drop", "refuse"), "depth": ("reduce", "refuse", "keep"),
            "frames": ("first", "refuse"), "metadata": ("keep", "drop")}
ORIENTATION_TAG = 0x0112
COLOUR_SPACES = {1: b"GRAY", 3: b"RGB "}  # ICC data colour space of the coded channels


class UnsupportedImageError(ValueError):
    """The input cannot be encoded (unreadable, wrong shape, or refused by the caller's policy)."""


class ConversionWarning(UserWarning):
    """The input was changed on its way in (bit depth reduced, frames or metadata dropped)."""


@dataclass(frozen=True)
class Policy:
    """What to do with what 8-bit grayscale or RGB cannot hold (see the module docstring)."""

    alpha: str = "keep"
    depth: str = "reduce"
    frames: str = "first"
    metadata: str = "keep"
    exact: bool = False  # the coding is lossless: a refused depth says that it would not be exact

    def __post_init__(self) -> None:
        for name, choices in POLICIES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Picture:
    """An input ready for the model: its pixels and what the file carries beside them."""

    pixels: np.ndarray  # (H, W, 1 or 3) uint8, or uint16 (16-bit samples, depth policy "keep")
    metadata: Metadata

    @property
    def bit_depth(self) -> int:
        """Bits per sample of the pixels: 8 or 16."""
        return 16 if self.pixels.dtype == np.uint16 else 8

    def records(self) -> list[Record]:
        """The metadata records to write; refused, naming the choices that leave them out, when
        they would pass the format's limit on the metadata block (a huge, noisy alpha plane)."""
        records = self.metadata.to_records()
        size = len(seal_metadata(records))
        if size > MAX_METADATA_BYTES:
            raise UnsupportedImageError(
                f"the image's alpha plane and metadata take {size} bytes, over the "
                f"{MAX_METADATA_BYTES >> 20} MiB a file may carry; pass "
                f"{option_text('alpha', 'drop')} or {option_text('metadata', 'drop')}")
        return records


def option_text(name: str, value: str) -> str:
    """How to pass a policy choice, in Python and on the command line (for messages)."""
    return f"{name}={value!r} (command line: --{name} {value})"


def _refuse_or_warn(policy: Policy, name: str, what: str, done: str) -> None:
    """Refuse ``what`` when the ``name`` policy says so (naming the choice that accepts it), else
    warn that it was ``done`` (naming the choice that refuses it). Samples the ``depth`` policy
    would keep but cannot (float samples, a 16-bit PIL image already reduced) are refused."""
    if name == "depth" and policy.depth == "keep":
        raise UnsupportedImageError(
            f"{what}, which lossless coding cannot keep exactly from this input (it keeps "
            "16-bit samples of integer arrays, PNG and TIFF files); pass "
            f"{option_text(name, 'reduce')} to code the image reduced to 8 bits (exact to the "
            "reduction, not to the original), or keep the original file")
    if getattr(policy, name) == "refuse":
        accept = POLICIES[name][0]
        if name == "depth" and policy.exact:
            raise UnsupportedImageError(
                f"{what}, which lossless coding cannot keep yet (it codes 8-bit samples "
                f"exactly); pass {option_text(name, accept)} to code the image reduced to 8 bits "
                "(exact to the reduction, not to the original), or keep the original file")
        raise UnsupportedImageError(f"{what}; pass {option_text(name, accept)} to accept it")
    warnings.warn(f"{what}: {done} (pass {option_text(name, 'refuse')} to refuse such input "
                  "instead)", ConversionWarning, stacklevel=4)


def _reduce_depth(array: np.ndarray, policy: Policy) -> np.ndarray:
    """16-bit (or wider integer) samples and float samples in [0, 1] -> uint8; integer samples
    -> uint16 when the policy keeps 16 bits (float samples are then refused)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind in "ui":
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise UnsupportedImageError(f"{array.dtype} samples must lie in 0..65535")
        if policy.depth == "keep":
            return array.astype(np.uint16)
        what, reduced = "16-bit samples", to_8_bits(array)
    elif array.dtype.kind == "f":
        if array.size and not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
            raise UnsupportedImageError("float samples must lie in [0, 1]")
        what, reduced = "float samples", np.rint(array.astype(np.float64) * 255)
    else:
        raise UnsupportedImageError(f"arrays must be uint8, uint16 or float in [0, 1] "
                                    f"(got {array.dtype})")
    _refuse_or_warn(policy, "depth", f"the image has {what}", "reduced to 8 bits")
    return reduced.astype(np.uint8)


def to_8_bits(samples: np.ndarray) -> np.ndarray:
    """16-bit samples -> the nearest 8-bit ones (0 and 65535 stay black and white)."""
    return ((samples.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)


def colour_for_pillow(pixels: np.ndarray, stacklevel: int) -> np.ndarray:
    """16-bit colour samples reduced to 8 bits, with a :class:`ConversionWarning` (Pillow has no
    16-bit colour mode); ``stacklevel`` is that of the caller's caller."""
    warnings.warn("Pillow has no 16-bit mode for this image: it is reduced to 8 bits "
                  "(decode_array returns the 16-bit samples)", ConversionWarning,
                  stacklevel=stacklevel)
    return to_8_bits(pixels)


def _split_alpha(array: np.ndarray, policy: Policy) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 2 or 4) -> colour channels and the alpha plane (None when fully opaque)."""
    colour, alpha = array[:, :, :-1], array[:, :, -1]
    if alpha.min() == np.iinfo(array.dtype).max or policy.alpha == "drop":
        return colour, None
    if policy.alpha == "refuse":
        raise UnsupportedImageError(
            "the image has transparency (an alpha channel that is not fully opaque); pass "
            f"{option_text('alpha', 'keep')} to code the alpha plane losslessly in the file, or "
            f"{option_text('alpha', 'drop')} to code the colour channels only")
    return colour, np.ascontiguousarray(alpha)


def _picture(array: np.ndarray, policy: Policy, metadata: Metadata = Metadata()) -> Picture:
    """Validate an array and split it into (H, W, 1 or 3) uint8 pixels and the alpha plane."""
    array = _reduce_depth(array, policy)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise UnsupportedImageError(f"expected an (H, W), (H, W, 3) or (H, W, 4) array, "
                                    f"got shape {array.shape}")
    height, width = array.shape[:2]
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        raise UnsupportedImageError(f"image sides must be 1..{MAX_SIDE} pixels, got {width}x{height}")
    alpha = None
    if array.shape[2] in (2, 4):
        array, alpha = _split_alpha(array, policy)
    profile = metadata.icc_profile
    if profile is not None and profile[16:20] != COLOUR_SPACES[array.shape[2]]:
        warnings.warn(f"the ICC profile describes {profile[16:20].decode('latin-1').strip()!r} "
                      "colour, not the coded pixels: dropped", ConversionWarning, stacklevel=3)
        profile = None
    return Picture(np.ascontiguousarray(array), Metadata(profile, metadata.exif, alpha))


def _reset_orientation(tiff: bytes) -> bytes:
    """EXIF (TIFF structure) with the orientation tag of its first directory set to 1, all else
    byte for byte (maker notes keep their offsets)."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return tiff
    ifd = int.from_bytes(tiff[4:8], order)
    count = int.from_bytes(tiff[ifd : ifd + 2], order) if ifd + 2 <= len(tiff) else 0
    out = bytearray(tiff)
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        if int.from_bytes(tiff[entry : entry + 2], order) == ORIENTATION_TAG:
            out[entry + 8 : entry + 10] = (1).to_bytes(2, order)  # a SHORT, left-justified
    return bytes(out)


def _pil_metadata(img: Image.Image, policy: Policy) -> Metadata:
    """The ICC profile and EXIF of an image (none when the policy drops them)."""
    profile, exif = img.info.get("icc_profile") or None, img.info.get("exif") or None
    if policy.metadata == "drop":
        return Metadata()
    if exif is not None:
        exif = _reset_orientation(exif.removeprefix(EXIF_PREFIX))
    for name, data in (("ICC profile", profile), ("EXIF block", exif)):
        if data is not None and len(data) > MAX_PROFILE_BYTES:
            raise UnsupportedImageError(
                f"the image's {name} is {len(data)} bytes, over the {MAX_PROFILE_BYTES >> 20} MiB "
                f"a file may carry; pass {option_text('metadata', 'drop')} to code it without")
    return Metadata(profile, exif)


def _deep_samples(img: Image.Image, source: str | bytes) -> np.ndarray:
    """The 16-bit samples of a PNG or TIFF file that Pillow would reduce to 8 bits, read
    exactly (``codec/png16.py``, tifffile), EXIF orientation applied, as (H, W, C) uint16."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        if img.format == "PNG":
            samples = png16.read(data)
        else:
            import tifffile

            samples = tifffile.imread(io.BytesIO(data), key=0)
    except png16.PngError as exc:
        raise UnsupportedImageError(f"cannot read image: {exc}") from None
    except Exception as exc:  # noqa: BLE001 (tifffile's codecs on damaged data)
        raise UnsupportedImageError(f"cannot read image: the TIFF is damaged "
                                    f"({type(exc).__name__}: {exc})") from None
    if samples.dtype != np.uint16 or samples.ndim not in (2, 3):
        raise UnsupportedImageError(f"cannot read image: expected 16-bit samples, got "
                                    f"{samples.dtype} of shape {samples.shape}")
    orientation = img.getexif().get(ORIENTATION_TAG, 1)
    return bigtiff.upright(samples, orientation)


def _from_pil(img: Image.Image, policy: Policy, source: str | bytes | None = None) -> Picture:
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        _refuse_or_warn(policy, "frames", f"the image has {frames} frames (an animation or "
                        "several pages)", "only the first is coded")
        img.seek(0)
    metadata = _pil_metadata(img, policy)
    tiles = getattr(img, "tile", ())  # how a file still to be loaded will be read
    if not img.mode.startswith("I") and any(";16" in str(t.args) for t in tiles):
        # 16-bit colour (or gray with alpha): Pillow keeps the high byte of each sample
        if policy.depth == "keep" and source is not None and img.format in ("PNG", "TIFF"):
            return _picture(_deep_samples(img, source), policy, metadata)
        _refuse_or_warn(policy, "depth", "the image has 16-bit samples", "reduced to 8 bits")
    img = ImageOps.exif_transpose(img)
    if "transparency" in img.info and img.mode in ("P", "L", "RGB"):
        img = img.convert("LA" if img.mode == "L" else "RGBA")
    if img.mode in ("P", "PA", "RGBa", "La", "1"):
        img = img.convert({"P": "RGB", "La": "LA", "1": "L"}.get(img.mode, "RGBA"))
    if img.mode not in ("L", "LA", "RGB", "RGBA", "I", "F") and not img.mode.startswith("I;16"):
        img = img.convert("RGB")
    return _picture(np.asarray(img), policy, metadata)


def _from_tensor(tensor: torch.Tensor, policy: Policy) -> Picture:
    """A (C, H, W) or (1, C, H, W) tensor: uint8, or float in [0, 1] reduced to 8 bits as the
    same numpy array would be (the ``depth`` policy: a :class:`ConversionWarning`, or refused)."""
    import torch

    t = tensor.detach().cpu()
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise UnsupportedImageError(f"expected a (C, H, W) or (1, C, H, W) tensor with C = 1 or 3, "
                                    f"got shape {tuple(tensor.shape)}")
    if t.is_floating_point():
        t = t.double()  # exact for every float dtype (bfloat16 has no numpy twin)
    elif t.dtype != torch.uint8:
        raise UnsupportedImageError(f"tensors must be float in [0, 1] or uint8, got {t.dtype}")
    return _picture(t.permute(1, 2, 0).numpy(), policy)


def read_binary(source: BinaryIO, what: str) -> bytes:
    """Everything left in a file object opened in binary mode (``what`` names it in errors)."""
    data = source.read()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} read {type(data).__name__} from {type(source).__name__}: "
                        f"open the file in binary mode ('rb')")
    return bytes(data)


def _from_big_tiff(path: str | Path, policy: Policy) -> Picture | None:
    """A TIFF file of more than ``bigtiff.STREAM_PIXELS`` pixels as a :class:`Picture` whose
    pixels stay on disk (a memory map of the file or of a scratch grid, ``codec/bigtiff.py``);
    None for any other file, which Pillow reads. Only 8- or 16-bit grayscale or RGB (with or
    without alpha) is streamed; other big TIFFs are refused with what to do. 16-bit samples stay
    16-bit when the policy keeps them, else they are reduced a band of rows at a time into a
    scratch grid (memory stays bounded either way)."""
    if Path(path).suffix.lower() not in bigtiff.TIFF_SUFFIXES:
        return None
    import tifffile

    from nicodec.models.tiling import zeros

    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, OSError, ValueError):
        return None  # not a TIFF after all: Pillow says what it is
    with tif:
        page = tif.pages.first
        height, width = page.imagelength, page.imagewidth
        if not bigtiff.is_big(width, height):
            return None
        samples = page.samplesperpixel
        dtype = page.dtype
        if dtype not in (np.uint8, np.uint16) or samples not in (1, 2, 3, 4) or \
                page.imagedepth > 1 or (samples > 1 and page.planarconfig != 1) or \
                page.photometric not in (1, 2):
            raise UnsupportedImageError(
                f"a TIFF above {bigtiff.STREAM_PIXELS / 1e6:.0f} megapixels is read piece by "
                "piece only when it holds 8- or 16-bit grayscale or RGB samples, interleaved; "
                "convert it (e.g. vips copy in.tif out.tif[compression=none]) or give a smaller "
                "image")
        if not (height <= MAX_SIDE and width <= MAX_SIDE):
            raise UnsupportedImageError(f"image sides must be 1..{MAX_SIDE} pixels, got "
                                        f"{width}x{height}")
        shape = (height, width, samples)
        try:
            if page.is_memmappable:
                pixels = tifffile.memmap(path, page=0, mode="r").reshape(shape)
            else:
                pixels = page.asarray(out=zeros(shape[:2] if samples == 1 else shape, dtype))
                pixels = pixels.reshape(shape)
        except (MemoryError, OSError) as exc:
            raise UnsupportedImageError(f"cannot read image: {exc}") from None
        except Exception as exc:  # noqa: BLE001 (tifffile's codecs on damaged data)
            raise UnsupportedImageError(f"cannot read image: the TIFF is damaged "
                                        f"({type(exc).__name__}: {exc})") from None
        tags = page.tags
        orientation = tags.valueof(bigtiff.ORIENTATION_TAG, 1)
        pixels = bigtiff.upright(pixels, orientation)
        if dtype == np.uint16 and policy.depth != "keep":
            _refuse_or_warn(policy, "depth", "the image has 16-bit samples", "reduced to 8 bits")
            pixels = _reduced_in_bands(pixels)
        keep = policy.metadata == "keep"
        profile = tags.valueof(bigtiff.ICC_TAG) if keep else None
        if bigtiff.EXIF_TAG in tags and keep:
            warnings.warn("the EXIF block of a streamed TIFF is not kept (its orientation is "
                          "applied to the pixels)", ConversionWarning, stacklevel=3)
        pages = len(tif.pages)
    if pages > 1:
        _refuse_or_warn(policy, "frames", f"the image has {pages} frames (an animation or "
                        "several pages)", "only the first is coded")
    alpha = None
    if samples in (2, 4):
        pixels, alpha = _split_alpha(pixels, policy)
    return Picture(pixels, Metadata(bytes(profile) if profile else None, None, alpha))


def _reduced_in_bands(pixels: np.ndarray, rows: int = 256) -> np.ndarray:
    """16-bit samples (a memory map) reduced to 8 bits into a scratch grid, ``rows`` at a time."""
    from nicodec.models.tiling import zeros

    out = zeros(pixels.shape, np.uint8)
    for top in range(0, len(pixels), rows):
        out[top:top + rows] = to_8_bits(pixels[top:top + rows])
    return out


def load_image(source: ImageInput, policy: Policy = Policy()) -> Picture:
    """Any supported input -> 8-bit pixels (EXIF orientation applied) and their metadata.

    ``source`` is a path (``str`` or ``os.PathLike``), the bytes of an image file, a file
    object opened in binary mode (read from its position to its end), a PIL image, a numpy
    array or a torch tensor."""
    if isinstance(source, np.ndarray):
        return _picture(source, policy)
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
    if torch is not None and isinstance(source, torch.Tensor):
        return _from_tensor(source, policy)
    if isinstance(source, Image.Image):
        return _from_pil(source, policy)
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, (bytearray, memoryview)):
        source = bytes(source)
    elif hasattr(source, "read"):
        source = read_binary(source, "encode")
    if isinstance(source, str):
        picture = _from_big_tiff(source, policy)  # a TIFF too big for memory, else None
        if picture is not None:
            return picture
    if isinstance(source, (str, bytes)):
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                return _from_pil(img, policy, source)
        except FileNotFoundError:
            raise
        except UnidentifiedImageError:
            raise UnsupportedImageError("cannot read image: not a format Pillow knows "
                                        "(PNG, JPEG, WebP, TIFF, BMP, ...)") from None
        except Image.DecompressionBombError as exc:
            raise UnsupportedImageError(
                f"cannot read image: {exc}; give it as a TIFF, which is read piece by piece "
                "(e.g. vips copy in.png out.tif)") from None
        except OSError as exc:
            raise UnsupportedImageError(f"cannot read image: {exc}") from None
    raise TypeError(f"cannot encode a {type(source).__name__}: pass a path, bytes, a binary file "
                    f"object, PIL image, numpy array or torch tensor")


def to_pil(pixels: np.ndarray, metadata: Metadata = Metadata()) -> Image.Image:
    """(H, W, 1 or 3) uint8 (and the file's metadata) -> PIL image in mode L, LA, RGB or RGBA,
    with the ICC profile and EXIF in its ``info`` (where Pillow's ``save`` looks for them).

    16-bit grayscale becomes mode I;16. Pillow has no 16-bit colour mode, nor one with alpha:
    16-bit RGB, and 16-bit samples with alpha, are reduced to 8 bits with a
    :class:`ConversionWarning` (``decode_array`` gives the samples exactly)."""
    alpha = metadata.alpha
    if pixels.dtype == np.uint16 and pixels.shape[2] == 1 and alpha is None:
        img = Image.fromarray(pixels[:, :, 0])
        img.info.update(metadata.pil_info())
        return img
    if pixels.dtype == np.uint16:
        pixels = colour_for_pillow(pixels, stacklevel=4)
    if alpha is not None:
        pixels = np.dstack([pixels, alpha if alpha.dtype == np.uint8 else to_8_bits(alpha)])
    img = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    img.info.update(metadata.pil_info())
    return img
