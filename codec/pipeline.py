"""Encode and decode: pixels <-> symbols <-> packets <-> one file.

A model maps the image to a grid of *units* (one unit = ``model.unit`` pixels square), each
holding the same number of symbols (``model.columns(quality)``). Units are dealt to packets in a
diagonal interleave, so that the four neighbours of a unit always sit in other packets: a lost
packet removes scattered units, which the model conceals from their surviving neighbours. Each
packet has its own range coder, so packets decode independently; within a packet the columns are
coded in order, each with tables that the model computes from the earlier columns of the same unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bitstream.entropy import PacketDecoder, PacketEncoder, cost_bits
from bitstream.errors import CorruptHeaderError, ModelMismatchError, PacketLossError
from bitstream.format import Header, pack, unpack
from codec.image import ImageInput, load_pixels
from codec.registry import Model, info_by_id, load_model, model_info, resolve_model

BYTES_PER_PACKET = 4096  # default packet size: framing stays near 0.2% of the payload
MAX_AUTO_PACKETS = 16


@dataclass
class Encoded:
    """An encoded image and what the model predicted it would cost."""

    data: bytes
    model_bits: float  # sum of -log2 p of all symbols under the integer tables
    indices: np.ndarray


@dataclass
class Decoded:
    """A decoded image and what happened on the way."""

    pixels: np.ndarray  # (H, W, 1 or 3) uint8
    indices: np.ndarray  # (groups, h, w) decoded symbols (zeros where concealed)
    header: Header
    lost_packets: int
    concealed_fraction: float  # fraction of latent positions filled in by concealment


def packet_of_positions(h: int, w: int, n_packets: int) -> np.ndarray:
    """(h*w,) packet number of each raster position: (x + y * (n // 2)) mod n."""
    y, x = np.divmod(np.arange(h * w), w)
    return (x + y * (n_packets // 2)) % n_packets


def _pad_to(pixels: np.ndarray, multiple: int) -> torch.Tensor:
    h, w = pixels.shape[:2]
    padded = np.pad(pixels, ((0, -h % multiple), (0, -w % multiple), (0, 0)), mode="edge")
    if padded.shape[2] == 1:
        padded = np.repeat(padded, 3, axis=2)
    return torch.from_numpy(padded).permute(2, 0, 1)[None].float().div(255)


def encode_detailed(image: ImageInput, model: str | None = None, quality: int | None = None,
                    packets: int | None = None) -> Encoded:
    """Encode and also return the model's ideal bits and the symbols (for tests and benchmarks)."""
    name = resolve_model(model)
    info = model_info(name)
    quality = info.default_quality if quality is None else quality
    if quality not in info.qualities:
        raise ValueError(f"model {name!r} has qualities {info.qualities}, got {quality}")
    pixels = load_pixels(image)
    m = load_model(name)
    indices = m.analyze(_pad_to(pixels, m.unit), quality)
    groups, h, w = indices.shape
    flat = indices.reshape(groups, -1)
    estimate, tables = m.tables(flat, quality)
    n_packets = packets or int(np.clip(round(estimate / 8 / BYTES_PER_PACKET), 1,
                                       MAX_AUTO_PACKETS))
    if not 1 <= n_packets <= h * w:
        raise ValueError(f"packets must be 1..{h * w} for this image, got {n_packets}")
    owner = packet_of_positions(h, w, n_packets)
    wheres = [owner == p for p in range(n_packets)]
    coders = [PacketEncoder() for _ in range(n_packets)]
    bits = 0.0
    for g, table in enumerate(tables):  # all units at once: a unit's tables depend on it only
        bits += cost_bits(flat[g], table)
        for where, coder in zip(wheres, coders):
            coder.encode(flat[g, where], table if table.ndim == 1 else table[where])
    payloads = [coder.finish() for coder in coders]
    fields = dict(family=info.family, model_id=info.model_id, weights_digest=m.digest,
                  width=pixels.shape[1], height=pixels.shape[0], channels=pixels.shape[2],
                  bit_depth=8, quality=quality)
    return Encoded(pack(fields, payloads), bits, indices)


def encode(image: ImageInput, model: str | None = None, quality: int | None = None,
           packets: int | None = None, lossless: bool = False) -> bytes:
    """Compress an image (path, bytes, PIL image, uint8 array or [0, 1] tensor) to bytes.

    ``quality`` picks the rate setting (see ``available_models``/``codec models``); ``packets``
    the number of independently decodable packets (default: about one per 4 KB of payload, at
    most 16, so that a damaged byte costs a small part of the image and framing stays small).
    ``lossless`` codes every pixel exactly (with ``LOSSLESS_MODEL`` unless ``model`` names
    another lossless model).
    """
    return encode_detailed(image, resolve_model(model, lossless), quality, packets).data


def _model_for(header: Header) -> Model:
    info = info_by_id(header.model_id)
    if info is None:
        raise ModelMismatchError(f"the file was made with model id {header.model_id}, "
                                 f"which this nicodec installation does not have")
    if info.family != header.family:
        raise CorruptHeaderError("header is damaged (model and family disagree)")
    m = load_model(info.name)
    if m.digest != header.weights_digest:
        raise ModelMismatchError(
            f"the file was made with other weights of model {info.name!r} (digest "
            f"{header.weights_digest:04x}, installed {m.digest:04x}); decoding it would give "
            f"garbage: install the nicodec version that wrote it")
    if header.quality not in info.qualities:
        raise CorruptHeaderError(f"header is damaged (quality {header.quality} is not one of "
                                 f"{info.qualities} for model {info.name!r})")
    return m


def decode_detailed(data: bytes, strict: bool = False) -> Decoded:
    """Decode, concealing damaged packets unless ``strict``; report what was lost."""
    header, payloads = unpack(bytes(data))
    m = _model_for(header)
    groups, scale = m.columns(header.quality), m.unit
    h, w = -(-header.height // scale), -(-header.width // scale)
    n_packets = len(payloads)
    if n_packets > h * w:
        raise CorruptHeaderError("header is damaged (more packets than positions)")
    owner = packet_of_positions(h, w, n_packets)
    flat = np.zeros((groups, h * w), dtype=np.int64)
    lost = np.zeros(h * w, dtype=bool)
    for p, payload in enumerate(payloads):
        where = owner == p
        if payload is not None:
            try:
                decoder = PacketDecoder(payload)
                session = m.session(int(where.sum()), header.quality)
                for g in range(groups):
                    flat[g, where] = decoder.decode(session.freqs(flat[:g, where], g),
                                                    int(where.sum()))
                continue
            except (ValueError, RuntimeError):
                payloads[p] = None
        lost |= where
    lost_packets = sum(p is None for p in payloads)
    if lost_packets == n_packets:
        raise PacketLossError("every packet of the file is damaged or missing: nothing to decode")
    if lost_packets and strict:
        raise PacketLossError(f"{lost_packets} of {n_packets} packets are damaged or missing")
    indices = flat.reshape(groups, h, w)
    x_hat = m.synthesize(indices, lost.reshape(h, w) if lost_packets else None, header.quality)
    pixels = (x_hat[0, :, : header.height, : header.width].permute(1, 2, 0) * 255).round()
    pixels = pixels.to(torch.uint8).numpy()
    if header.channels == 1:
        gray = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        pixels = np.clip(np.rint(gray), 0, 255).astype(np.uint8)[:, :, None]
    return Decoded(pixels, indices, header, lost_packets, float(lost.mean()))
