"""Column-by-column coding of a unit grid's packets, in chunks of units.

Each packet's stream holds column 0 of its units (raster order), then column 1, and so on
(``bitstream/FORMAT.md``); column j of a unit is coded with the table the model computes from
columns < j of the same unit. A column's tables for every unit at once would take n_units x K
integers (gigabytes for a 100-megapixel image), so they are computed for a chunk of units at a
time (a contiguous raster range of CHUNK table rows) and each packet's coder takes that chunk's
units of the packet. The coders see the same symbols with the same tables in the same order as
with one table for the whole column, so the bytes are identical; the tables of a chunk come from
a table source (the prior, or a session of a stateful prior) of its own, which computes what it
would compute for those units among all of them (the priors are positionwise and exact).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from bitstream.entropy import PacketDecoder, PacketEncoder, cost_bits

CHUNK = 16384  # table rows per chunk of a column (CHUNK x K integers); tests lower it
# What the range decoder raises on data its tables cannot have produced (constriction: an
# AssertionError); the packet is then lost, as if its CRC had failed.
UNDECODABLE = (ValueError, RuntimeError, AssertionError)


def chunks(n: int, rows_per_unit: int = 1) -> list[slice]:
    """Contiguous raster ranges of n units, each with at most :data:`CHUNK` table rows (a
    unit has ``rows_per_unit``: the lossless models code many patches per unit)."""
    size = max(1, CHUNK // rows_per_unit)
    return [slice(a, min(n, a + size)) for a in range(0, n, size)] or [slice(0, 0)]


def encode_columns(m, quality: int, flat: np.ndarray, owner: np.ndarray,
                   coders: Sequence[PacketEncoder],
                   tables: Sequence[np.ndarray] | None = None) -> float:
    """Code the columns ``flat`` (columns, units) into the packet ``coders``; ``owner`` (units,)
    is each unit's packet. ``tables`` (one per column: shared (K,) or (units, K)) are the
    analysis' own when it kept them; otherwise each chunk's tables come from ``m.session``.
    Returns the ideal code length in bits (-log2 p summed over the symbols)."""
    parts = chunks(flat.shape[1], m.table_rows)
    sessions = [None if tables is not None else m.session(part.stop - part.start, quality)
                for part in parts]
    wheres = [[owner[part] == p for p in range(len(coders))] for part in parts]
    bits = 0.0
    for j in range(len(flat)):
        for part, session, where in zip(parts, sessions, wheres):
            if tables is None:
                table = session.freqs(flat[:j, part], j)
            else:
                table = tables[j] if tables[j].ndim == 1 else tables[j][part]
            column = flat[j, part]
            bits += cost_bits(column, table)
            for p, coder in enumerate(coders):
                coder.encode(column[where[p]], table if table.ndim == 1 else table[where[p]])
    return bits


def decode_columns(m, quality: int, payloads: list[bytes | None], owner: np.ndarray,
                   flat: np.ndarray) -> None:
    """Decode the columns ``flat`` (columns, units) in place, column by column and chunk by
    chunk, the tables of a chunk computed for the units of every received packet, as at
    encoding. A packet that fails to decode is set to None in ``payloads``; its units are left
    to concealment."""
    received = np.flatnonzero(np.isin(owner, [p for p, payload in enumerate(payloads)
                                              if payload is not None]))
    decoders = {p: PacketDecoder(payload) for p, payload in enumerate(payloads)
                if payload is not None}
    parts = chunks(len(received), m.table_rows)
    sessions = [m.session(part.stop - part.start, quality) for part in parts]
    wheres = [{p: owner[received[part]] == p for p in decoders} for part in parts]
    for j in range(len(flat)):
        if not decoders:  # every packet failed: no more tables to compute for them
            break
        for part, session, where in zip(parts, sessions, wheres):
            units = received[part]
            table = session.freqs(flat[:j, units], j)
            column = flat[j, units]
            for p in list(decoders):
                try:
                    column[where[p]] = decoders[p].decode(
                        table if table.ndim == 1 else table[where[p]], int(where[p].sum()))
                except UNDECODABLE:
                    payloads[p] = None
                    del decoders[p]
            flat[j, units] = column
