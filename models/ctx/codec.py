"""``ctx-photo`` as the registry loads it: tiles of at most ``TILE`` pixels, one packet each.

The pipeline's units and per-column tables do not fit a model whose tables come from the
samples decoded before them, so this network codes each packet's payload itself
(``codes_payloads``): the image is cut into tiles of ``TILE`` x ``TILE`` pixels (row-major,
the last row and column of tiles smaller), each coded by ``coder.encode_tile`` into one
packet. A tile decodes without any other, so memory stays that of one tile whatever the image
size, and a damaged packet loses exactly its tile.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
from safetensors.numpy import load_file

from nicodec.bitstream.entropy import TOTAL
from nicodec.models.ctx.coder import (NTOK, REVISIONS, Tables, decode_tile, encode_tile,
                                     coded_raw, raw_rows)
from nicodec.models.ctx.side import SideModel

TILE = 1024


def tile_boxes(height: int, width: int, tile: int = TILE) -> Iterator[tuple[int, int, int, int]]:
    """(top, left, bottom, right) of every tile, row-major."""
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            yield top, left, min(top + tile, height), min(left + tile, width)


class ContextNet:
    """The coder with its learned tables, in the shape the registry expects of a network."""

    codes_payloads = True
    unit = TILE
    max_depth = 16  # bits per sample it codes exactly (the pipeline's "keep" depth policy)

    def __init__(self, tables: Tables) -> None:
        self.tables = tables

    def columns(self, quality: int) -> int:
        return 1

    def encode_payloads(self, pixels: np.ndarray, depth: int = 8) -> list[bytes]:
        """One payload per tile (``unit`` pixels square) of (H, W, C) samples of ``depth``
        bits."""
        return [encode_tile(pixels[t:b, l:r], depth, self.tables)
                for t, l, b, r in tile_boxes(*pixels.shape[:2], self.unit)]

    def decode_payloads(self, payloads: list[bytes | None], out: np.ndarray, depth: int = 8,
                        undecodable: tuple[type, ...] = (ValueError,)) -> list[bool]:
        """Decode every payload into its tile of ``out`` (H, W, C); a missing payload, or one
        that fails to decode (``undecodable``), leaves its tile mid-grey. Returns which tiles
        were lost."""
        boxes = list(tile_boxes(*out.shape[:2], self.unit))
        if len(boxes) != len(payloads):
            raise ValueError(f"{len(payloads)} packets for {len(boxes)} tiles")
        lost = []
        for (t, l, b, r), payload in zip(boxes, payloads):
            tile = None
            if payload is not None:
                with contextlib.suppress(*undecodable):
                    tile = decode_tile(payload, (b - t, r - l, out.shape[2]), depth, self.tables)
            out[t:b, l:r] = 1 << (depth - 1) if tile is None else tile
            lost.append(tile is None)
        return lost


def load_weights(path: str) -> tuple[ContextNet, None]:
    """The table bank, class ladder and coder revision of a weight file (``train.py``; a file
    without a ``revision`` tensor is r1, the first), r3's side-information model and r5's
    raw bits' tables."""
    tensors = load_file(path)
    bank, edges = tensors["bank"].astype(np.int64), tensors["edges"].astype(np.int64)
    if bank.ndim != 2 or not 1 <= len(bank) <= 256 or (bank < 1).any() \
            or (bank.sum(1) != bank[0].sum()).any():
        raise ValueError("the table bank is damaged")  # indices are sent in one byte
    revision = int(tensors["revision"][0]) if "revision" in tensors else 1
    if revision not in REVISIONS:
        raise ValueError(f"coder revision {revision} is not known to this version")
    rev = REVISIONS[revision]
    side = SideModel.from_tensors(tensors) if rev.coded_side else None
    tables = Tables(bank, edges, rev, side=side)
    if coded_raw(rev):  # r5: the raw bits' tables
        raw = tensors["raw"].astype(np.int64) if "raw" in tensors else np.zeros(0, np.int64)
        if raw.shape != (coded_raw(rev), raw_rows(tables), NTOK) or (raw < 1).any() \
                or (raw >= TOTAL).any():
            raise ValueError("the raw bits' tables are damaged")
        tables.raw = raw
    return ContextNet(tables), None
