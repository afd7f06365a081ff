"""Encode and decode: pixels <-> symbols <-> packets <-> one file.

A model maps the image to a grid of *units* (one unit = ``model.unit`` pixels square), each
holding the same number of symbols (``model.columns(quality)``). Units are dealt to packets in a
diagonal interleave, so that the four neighbours of a unit always sit in other packets: a lost
packet removes scattered units, which the model conceals from their surviving neighbours. Each
packet has its own range coder, so packets decode independently; within a packet the columns are
coded in order, each with tables that the model computes from the earlier columns of the same unit.

A model with a spatial prior (the VQ mode's masked index transformer) codes a one-packet file in
stages over the whole grid instead: the tables of each stage come from the stages before it. Its
multi-packet files use the model's static tables, and indices of lost packets are restored by the
prior rather than concealed in the latent.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import BinaryIO, Callable, Union

import numpy as np
import torch

from nicodec.bitstream.entropy import PacketDecoder, PacketEncoder, cost_bits
from nicodec.bitstream.errors import (BitstreamError, CorruptHeaderError, CorruptMetadataError,
                                      DecodeError, ModelMismatchError, PacketLossError)
from nicodec.bitstream.format import (MAX_PACKETS, MAX_PIXELS, Family, Header, check_pixels, extent,
                                      metadata_records, pack, parse_header, unpack)
from nicodec.bitstream.metadata import Metadata
from nicodec.codec.columns import UNDECODABLE, decode_columns, encode_columns, group_units
from nicodec.codec.image import ImageInput, Picture, Policy, load_image, read_binary
from nicodec.codec.registry import (Model, check_effort, info_by_id, load_model, load_revision,
                                    model_info, resolve_model)
from nicodec.models.tiling import zeros

BYTES_PER_PACKET = 4096  # default packet size: framing stays near 0.2% of the payload
MAX_AUTO_PACKETS = 16
BitstreamInput = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]", BinaryIO]
@dataclass
class Encoded:
    """An encoded image and what the model predicted it would cost."""

    data: bytes
    model_bits: float  # sum of -log2 p of all symbols under the integer tables
    indices: np.ndarray


@dataclass
class Decoded:
    """A decoded image and what happened on the way."""

    pixels: np.ndarray  # (H, W, 1 or 3) uint8; uint16 for a file of samples above 8 bits
    indices: np.ndarray  # (groups, h, w) decoded symbols (restored or zeros where concealed)
    header: Header
    lost_packets: int
    concealed_fraction: float  # fraction of latent positions filled in by concealment
    lost: np.ndarray  # (h, w) units whose packet was lost
    restored: bool = False  # lost indices were predicted by the model's prior (VQ transformer)
    metadata: Metadata = Metadata()  # ICC profile, EXIF, alpha plane (empty if lost)
    metadata_lost: bool = False  # the metadata block was damaged and dropped


def packet_of_positions(h: int, w: int, n_packets: int) -> np.ndarray:
    """(h*w,) packet number of each raster position: (x + y * (n // 2)) mod n."""
    y, x = np.divmod(np.arange(h * w), w)
    return (x + y * (n_packets // 2)) % n_packets


def encode_detailed(image: ImageInput, model: str | None = None, quality: int | None = None,
                    packets: int | None = None, effort: int = 1,
                    policy: Policy = Policy(), rate_weight: float | None = None,
                    analysis: object | None = None) -> Encoded:
    """Encode and also return the model's ideal bits and the symbols (for tests and benchmarks).

    ``image`` may also be a :class:`Picture` already loaded under a policy (the target search
    of ``codec.target`` encodes one several times). ``rate_weight`` overrides the encoder's
    weight of bits against latent error at this quality (models whose encoder has one,
    ``Model.tunable``; the target search steers the rate between quality steps with it). The
    decoder does not need it. ``analysis``: ``Model.analysis`` of the same pixels, computed
    once for several encodes of one picture (the same file as without it)."""
    name = resolve_model(model)
    info = model_info(name)
    quality = info.default_quality if quality is None else quality
    if quality not in info.qualities:
        raise ValueError(f"model {name!r} has qualities {info.qualities}, got {quality}")
    check_effort(name, effort)
    picture = image if isinstance(image, Picture) else load_image(image, policy)
    pixels = picture.pixels
    m = load_model(name)
    depth = picture.bit_depth
    if depth > max_depth(m):
        raise ValueError(f"model {name!r} codes {max_depth(m)}-bit samples, not {depth}-bit ones")
    fields = dict(family=info.family, model_id=info.model_id, weights_digest=m.digest,
                  width=pixels.shape[1], height=pixels.shape[0], channels=pixels.shape[2],
                  bit_depth=depth, quality=quality)
    if getattr(m.net, "codes_payloads", False):  # the model codes each packet itself
        payloads = m.net.encode_payloads(pixels, depth)
        if packets is not None and packets != len(payloads):
            warnings.warn(f"{name} codes one packet per tile of {m.unit}x{m.unit} pixels: "
                          f"{len(payloads)} packets, not {packets}", stacklevel=2)
        return Encoded(pack(fields, payloads, picture.records()), 8.0 * sum(map(len, payloads)),
                       np.zeros((1, 0, 0), np.int64))
    indices, estimate, tables = m.analyze_coded(pixels, quality, effort, rate_weight, analysis)
    groups, h, w = indices.shape
    flat = indices.reshape(groups, -1)
    n_packets = packets or int(np.clip(round(estimate / 8 / BYTES_PER_PACKET), 1,
                                       MAX_AUTO_PACKETS))
    limit = group_units(m)
    if packets is None and limit:  # a lossless coder's state lives for a whole packet: packets
        # of about the group limit keep it bounded (pc-photo: images above 16 megapixels)
        n_packets = min(max(n_packets, -(-h * w // limit)), MAX_PACKETS)
    if n_packets < 1:
        raise ValueError(f"packets must be at least 1, got {n_packets}")
    if n_packets > h * w:  # at most one packet per coded unit
        warnings.warn(f"{n_packets} packets asked for, but this image has only {h * w} coded "
                      f"block(s): using {h * w}", stacklevel=2)
        n_packets = h * w
    owner = packet_of_positions(h, w, n_packets)
    coders = [PacketEncoder() for _ in range(n_packets)]
    staged = m.staged(quality) if n_packets == 1 else None
    if staged:
        bits = _encode_stages(staged, flat[0], coders[0], h, w)
    else:
        bits = encode_columns(m, quality, flat, owner, coders, tables)
    payloads = [coder.finish() for coder in coders]
    return Encoded(pack(fields, payloads, picture.records()), bits, indices)


def max_depth(m: Model) -> int:
    """Bits per sample that model ``m`` codes exactly (8 unless its network says more)."""
    return getattr(m.net, "max_depth", 8)


def _encode_stages(staged, grid: np.ndarray, coder: PacketEncoder, h: int, w: int) -> float:
    """Code a spatial model's index grid (h*w,) stage by stage; returns the ideal bits."""
    bits = 0.0
    stage = staged.stage_map(h, w)
    for s in range(staged.stages):
        for a, b in staged.bands(h, w):  # grid rows: the tables of one band at a time
            symbols = grid[a * w:b * w][stage[a * w:b * w] == s]
            table = staged.stage_tables(grid, s, h, w, (a, b))
            coder.encode(symbols, table)
            bits += cost_bits(symbols, table)
    return bits


def _decode_stages(staged, payload: bytes, h: int, w: int) -> np.ndarray:
    """Decode a spatial model's grid (h*w,) stage by stage."""
    grid = np.zeros(h * w, dtype=np.int64)
    decoder = PacketDecoder(payload)
    stage = staged.stage_map(h, w)
    for s in range(staged.stages):
        for a, b in staged.bands(h, w):
            where = np.flatnonzero(stage[a * w:b * w] == s) + a * w
            grid[where] = decoder.decode(staged.stage_tables(grid, s, h, w, (a, b)), len(where))
    return grid


def encode(image: ImageInput, model: str | None = None, quality: int | None = None,
           packets: int | None = None, lossless: bool = False, effort: int = 1, *,
           alpha: str = "keep", depth: str | None = None, frames: str = "first",
           metadata: str = "keep") -> bytes:
    """Compress an image (path, bytes, binary file object, PIL image, numpy array or tensor).

    ``quality`` picks the rate setting (see ``available_models``/``codec models``); ``packets``
    the number of independently decodable packets (default: about one per 4 KB of payload, at
    most 16, so that a damaged byte costs a small part of the image and framing stays small;
    more than the image's coded blocks, e.g. 16x16 pixels each for ``mcq``, is lowered to that
    with a warning).
    ``lossless`` codes every pixel exactly (with ``LOSSLESS_MODEL`` unless ``model`` names
    another lossless model). ``effort`` above 1 (models that have effort levels: ``mcq``,
    ``vq`` and ``vq-static``, 1..3) searches longer at encode time for a better
    rate-distortion trade-off; the decoder is the same.

    What 8-bit grayscale or RGB cannot hold follows four policies (``codec/image.py``), each
    warning (:class:`ConversionWarning`) when it changes the image: ``alpha`` transparency is
    kept (the alpha plane coded losslessly in the file), dropped or refused; ``depth`` 16-bit and
    float samples are reduced to 8 bits (``"reduce"``), refused (``"refuse"``) or, 16-bit
    samples, coded exactly (``"keep"``: lossless models that code them, ``ctx-photo``; the file
    decodes to uint16); by default (None) a lossy model reduces them, a lossless one keeps them
    where it can and else refuses them, as its file would not be exact (``depth="reduce"``
    codes the 8-bit reduction exactly); ``frames`` an animation's first frame is coded, or it
    is refused; ``metadata`` the ICC profile and EXIF are kept or dropped.
    """
    name = resolve_model(model, lossless)
    exact = model_info(name).family == Family.LOSSLESS
    deep = exact and max_depth(load_model(name)) > 8
    if depth == "keep" and not deep:
        raise ValueError(f"model {name!r} cannot keep 16-bit samples (depth='keep'): it codes "
                         "8-bit samples; use a lossless model that codes them (ctx-photo) or "
                         "depth='reduce'")
    depth = depth or ("keep" if deep else "refuse" if exact else "reduce")
    policy = Policy(alpha=alpha, depth=depth, frames=frames, metadata=metadata, exact=exact)
    return encode_detailed(image, name, quality, packets, effort, policy).data


def _model_for(header: Header) -> Model:
    info = info_by_id(header.model_id)
    if info is None:
        raise ModelMismatchError(f"the file was made with model id {header.model_id}, "
                                 f"which this nicodec installation does not have")
    if info.family != header.family:
        raise CorruptHeaderError("header is damaged (model and family disagree)")
    m = load_revision(info.name, header.weights_digest)
    if m is None:
        raise ModelMismatchError(
            f"the file was made with other weights of model {info.name!r} (digest "
            f"{header.weights_digest:04x}, installed {load_model(info.name).digest:04x}); "
            f"decoding it would give garbage: install the nicodec version that wrote it")
    if header.quality not in info.qualities:
        raise CorruptHeaderError(f"header is damaged (quality {header.quality} is not one of "
                                 f"{info.qualities} for model {info.name!r})")
    return m


def render(x_hat: torch.Tensor, header: Header) -> np.ndarray:
    """A synthesized (1, 3, H', W') image in [0, 1] as the file's (H, W, 1 or 3) uint8 pixels."""
    return _to_uint8(x_hat[:, :, : header.height, : header.width], header.channels)


def _to_uint8(x_hat: torch.Tensor, channels: int) -> np.ndarray:
    """A (1, 3, h, w) image in [0, 1] as (h, w, channels) uint8 (one channel: luma)."""
    pixels = (x_hat[0].permute(1, 2, 0) * 255).round()
    pixels = pixels.to(torch.uint8).numpy()
    if channels == 1:
        gray = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        pixels = np.clip(np.rint(gray), 0, 255).astype(np.uint8)[:, :, None]
    return pixels


def _read_metadata(data: bytes, header: Header, strict: bool) -> tuple[Metadata, bool]:
    """The file's metadata, and whether a damaged block was dropped (raises if ``strict``)."""
    try:
        return Metadata.from_records(metadata_records(data), header.height, header.width,
                                     header.alpha_depth), False
    except CorruptMetadataError:
        if strict:
            raise
        return Metadata(), True


def read_bitstream(source: BitstreamInput) -> bytes:
    """The bytes of a nicodec file given as bytes, a path (``str`` or ``os.PathLike``; a missing
    file raises ``FileNotFoundError`` naming it) or a file object opened in binary mode (read
    from its position to its end)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:
            return file.read()
    if hasattr(source, "read"):
        return read_binary(source, "decode")
    raise TypeError(f"decode takes bytes, a path or a binary file object, "
                    f"got {type(source).__name__}")


def decode_detailed(data: BitstreamInput, strict: bool = False, max_pixels: int | None = MAX_PIXELS,
                    out: Callable[[Header, Metadata], np.ndarray] | None = None) -> Decoded:
    """Decode, concealing damaged packets and dropping a damaged metadata block unless
    ``strict``; report what was lost.

    ``out``, given the checked header and the file's metadata, returns the (height, width,
    channels) uint8 array (uint16 for samples above 8 bits) the pixels are written into, tile by tile (e.g. a memory-mapped
    output file, ``codec.bigtiff.create``, so that an image bigger than memory streams to
    disk); by default a new array.

    Any bytes either decode or raise a :class:`BitstreamError`: a header promising more than
    ``max_pixels`` pixels (None or 0: no limit) is refused before any work, and whatever fails
    while decoding a payload that passed its checksums becomes a :class:`DecodeError`.
    """
    data = read_bitstream(data)
    header, payloads = unpack(data)
    check_pixels(header, max_pixels)
    missing, _ = extent(header, parse_header(data)[1], len(data))
    metadata, metadata_lost = _read_metadata(data, header, strict)
    m = _model_for(header)
    if header.bit_depth > max_depth(m):
        raise CorruptHeaderError(f"header is damaged ({header.bit_depth}-bit samples for a model "
                                 f"of {max_depth(m)}-bit samples)")
    shape = (header.height, header.width, header.channels)
    dtype = np.uint16 if header.bit_depth > 8 else np.uint8
    target = np.empty(shape, dtype) if out is None else out(header, metadata)
    if target.shape != shape or target.dtype != dtype:
        raise ValueError(f"out must give a {shape} {np.dtype(dtype)} array, got {target.shape} "
                         f"{target.dtype}")
    try:
        result = _decode_payloads(m, header, payloads, strict, target, missing)
    except (BitstreamError, OSError):  # OSError: no room for scratch files, a full disk
        raise
    except MemoryError:
        raise DecodeError(f"not enough memory to decode a {header.width}x{header.height} "
                          f"image") from None
    except Exception as exc:  # numpy, torch, constriction on a forged file: still bad data
        raise DecodeError(f"the file is damaged: its payload does not decode "
                          f"({type(exc).__name__}: {exc})") from exc
    result.metadata, result.metadata_lost = metadata, metadata_lost
    return result


def _lost_error(lost: int, total: int, missing: int) -> PacketLossError:
    cut = f" (the file is cut short: {missing} bytes missing)" if missing else ""
    if lost == total:
        return PacketLossError(f"every packet of the file is damaged or missing: nothing to "
                               f"decode{cut}")
    return PacketLossError(f"{lost} of {total} packets are damaged or missing{cut}")


def _decode_own_payloads(m: Model, header: Header, payloads: list[bytes | None], strict: bool,
                         out: np.ndarray, missing: int) -> Decoded:
    """Pixels of a model that codes each packet itself (one tile per packet): a lost tile is
    mid-grey, and reported (refused when ``strict``)."""
    if strict and any(p is None for p in payloads):
        raise _lost_error(sum(p is None for p in payloads), len(payloads), missing)
    try:
        lost = m.net.decode_payloads(payloads, out, header.bit_depth, undecodable=UNDECODABLE)
    except ValueError as exc:
        raise CorruptHeaderError(f"header is damaged ({exc})") from None
    n_lost = sum(lost)
    if n_lost and (strict or n_lost == len(lost)):
        raise _lost_error(n_lost, len(lost), missing)
    grid = np.array(lost, bool).reshape(-(-header.height // m.unit), -(-header.width // m.unit))
    return Decoded(out, np.zeros((1, 0, 0), np.int64), header, n_lost,
                   float(grid.mean()), grid)


def _decode_payloads(m: Model, header: Header, payloads: list[bytes | None],
                     strict: bool, out: np.ndarray, missing: int) -> Decoded:
    """Symbols from the packets that passed their CRC, then pixels (concealing the rest).
    ``missing``: bytes the file lacks (it was cut short), named when packets are refused."""
    if getattr(m.net, "codes_payloads", False):
        return _decode_own_payloads(m, header, payloads, strict, out, missing)
    groups, scale = m.columns(header.quality), m.unit
    h, w = -(-header.height // scale), -(-header.width // scale)
    n_packets = len(payloads)
    if n_packets > h * w:
        raise CorruptHeaderError("header is damaged (more packets than positions)")
    owner = packet_of_positions(h, w, n_packets)
    staged = m.staged(header.quality)
    flat = zeros((groups, h * w), m.symbol_dtype)
    if staged and n_packets == 1:
        try:
            if payloads[0] is not None:
                flat[0] = _decode_stages(staged, payloads[0], h, w)
        except UNDECODABLE:
            payloads[0] = None
    else:
        decode_columns(m, header.quality, payloads, owner, flat)
    lost = np.isin(owner, [p for p, payload in enumerate(payloads) if payload is None])
    lost_packets = sum(p is None for p in payloads)
    if lost_packets and (strict or lost_packets == n_packets):
        raise _lost_error(lost_packets, n_packets, missing)
    indices = flat.reshape(groups, h, w)
    lost_grid = lost.reshape(h, w) if lost_packets else None
    mixture = None
    if staged and lost_packets:  # the transformer restores the lost indices themselves
        filled, probs = staged.restore(indices[0], lost_grid)
        indices, mixture, lost_grid = filled[None], (lost_grid, probs), None
    pixels = m.render(indices, lost_grid, header.quality, mixture, out,
                      lambda x_hat: _to_uint8(x_hat, header.channels))
    return Decoded(pixels, indices, header, lost_packets, float(lost.mean()), lost.reshape(h, w),
                   restored=bool(staged and lost_packets))
