"""Column-by-column coding of a unit grid's packets, in chunks of units.

Each packet's stream holds column 0 of its units (raster order), then column 1, and so on
(``bitstream/FORMAT.md``); column j of a unit is coded with the table the model computes from
columns < j of the same unit. A column's tables for every unit at once would take n_units x K
integers (gigabytes for a 100-megapixel image), so they are computed for a chunk of units at a
time (CHUNK table rows) and each packet's coder takes that chunk's units of the packet. The
coders see the same symbols with the same tables in the same order as with one table for the
whole column, so the bytes are identical; the tables of a chunk come from a table source (the
prior, or a session of a stateful prior) of its own, which computes what it would compute for
those units among all of them (the priors are positionwise and exact).

Units are taken packet by packet (packet-major order, raster order within a packet), so that a
packet's units in a chunk are one contiguous range: its symbols and tables are views, not
copies. A prior that keeps state across columns (``Model.streaming``: the lossless HCLT keeps
messages for every patch until its last column) codes one group of whole packets at a time,
GROUP_ROWS table rows or one packet: packets are independent streams, so only that group's
state is alive, and memory is bounded by the packet size instead of growing with the image.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from nicodec.bitstream.entropy import PacketDecoder, PacketEncoder, cost_bits

CHUNK = 16384  # table rows per chunk of a column (CHUNK x K integers); tests lower it
# table rows (units x rows per unit) of a stateful prior coded at once, at least one packet: 1024
# tiles of pc-photo (64 patches each: about 130 MB of coder state) or 65536 digits; tests lower it
GROUP_ROWS = 1 << 16
# What the range decoder raises on data its tables cannot have produced (constriction: an
# AssertionError); the packet is then lost, as if its CRC had failed.
UNDECODABLE = (ValueError, RuntimeError, AssertionError)


def chunks(n: int, rows_per_unit: int = 1) -> list[slice]:
    """Contiguous ranges of n units, each with at most :data:`CHUNK` table rows (a unit has
    ``rows_per_unit``: the lossless models code many patches per unit)."""
    size = max(1, CHUNK // rows_per_unit)
    return [slice(a, min(n, a + size)) for a in range(0, n, size)] or [slice(0, 0)]


def group_units(m) -> int | None:
    """Units of the model ``m`` whose coding state may be alive at once: None (no limit) for a
    stateless prior, else GROUP_ROWS table rows' worth (the encoder makes packets no bigger)."""
    return max(1, GROUP_ROWS // m.table_rows) if m.streaming else None


def _groups(owner: np.ndarray, packets: Sequence[int], limit: int | None
            ) -> list[tuple[np.ndarray, dict[int, tuple[int, int]]]]:
    """The units of ``packets`` (unit numbers, packet-major) in groups coded one after another,
    each with the range of every packet's units in it: one group, or groups of whole packets
    with at most ``limit`` units (or one packet)."""
    order = np.argsort(owner, kind="stable")  # packet-major, raster order within a packet
    ends = np.cumsum(np.bincount(owner, minlength=max(packets, default=-1) + 1))
    members = {p: order[ends[p - 1] if p else 0:ends[p]] for p in packets}
    groups: list[list[int]] = [[]]
    size = 0
    for p in packets:
        if limit and groups[-1] and size + len(members[p]) > limit:
            groups.append([])
            size = 0
        groups[-1].append(p)
        size += len(members[p])
    result = []
    for group in groups:
        ends = np.cumsum([len(members[p]) for p in group])
        spans = {p: (int(end) - len(members[p]), int(end)) for p, end in zip(group, ends)}
        units = np.concatenate([members[p] for p in group]) if group else np.zeros(0, np.int64)
        result.append((units, spans))
    return result


def _within(spans: dict[int, tuple[int, int]], part: slice) -> dict[int, slice]:
    """Each packet's units in the chunk ``part`` of a group, as slices of the chunk."""
    cut = {p: (max(a, part.start), min(b, part.stop)) for p, (a, b) in spans.items()}
    return {p: slice(a - part.start, b - part.start) for p, (a, b) in cut.items() if a < b}


def encode_columns(m, quality: int, flat: np.ndarray, owner: np.ndarray,
                   coders: Sequence[PacketEncoder],
                   tables: Sequence[np.ndarray] | None = None) -> float:
    """Code the columns ``flat`` (columns, units) into the packet ``coders``; ``owner`` (units,)
    is each unit's packet. ``tables`` (one per column: shared (K,) or (units, K)) are the
    analysis' own when it kept them; otherwise each chunk's tables come from ``m.session``.
    Returns the ideal code length in bits (-log2 p summed over the symbols)."""
    bits = 0.0
    for units, spans in _groups(owner, range(len(coders)), group_units(m)):
        symbols = flat[:, units]
        parts = chunks(len(units), m.table_rows)
        sessions = [None if tables is not None else m.session(part.stop - part.start, quality)
                    for part in parts]
        wheres = [_within(spans, part) for part in parts]
        for j in range(len(flat)):
            for part, session, where in zip(parts, sessions, wheres):
                if tables is None:
                    table = session.freqs(symbols[:j, part], j)
                else:
                    table = tables[j] if tables[j].ndim == 1 else tables[j][units[part]]
                column = symbols[j, part]
                bits += cost_bits(column, table)
                for p, rows in where.items():
                    coders[p].encode(column[rows], table if table.ndim == 1 else table[rows])
    return bits


def decode_columns(m, quality: int, payloads: list[bytes | None], owner: np.ndarray,
                   flat: np.ndarray) -> None:
    """Decode the columns ``flat`` (columns, units) in place, column by column and chunk by
    chunk, the tables of a chunk computed for the units of every received packet, as at
    encoding. A packet that fails to decode is set to None in ``payloads``; its units are left
    to concealment."""
    received = [p for p, payload in enumerate(payloads) if payload is not None]
    decoders = {p: PacketDecoder(payloads[p]) for p in received}
    for units, spans in _groups(owner, received, group_units(m)):
        symbols = np.zeros((len(flat), len(units)), flat.dtype)
        parts = chunks(len(units), m.table_rows)
        sessions = [m.session(part.stop - part.start, quality) for part in parts]
        wheres = [_within(spans, part) for part in parts]
        for j in range(len(flat)):
            if not decoders.keys() & spans.keys():  # every packet of the group failed
                break
            for part, session, where in zip(parts, sessions, wheres):
                table = session.freqs(symbols[:j, part], j)
                column = symbols[j, part]
                for p, rows in where.items():
                    if p not in decoders:
                        continue
                    try:
                        column[rows] = decoders[p].decode(
                            table if table.ndim == 1 else table[rows], rows.stop - rows.start)
                    except UNDECODABLE:
                        payloads[p] = None
                        del decoders[p]
        flat[:, units] = symbols
