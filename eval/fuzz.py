"""Fuzzing the decoder: mutated small files of every family must decode or raise a BitstreamError.

    python -m nicodec.eval.fuzz --cases 100000 --seconds 600 [--seed 1] [--families mcq,vq]

Each case starts from a small valid file (tiny images, so that one decode takes milliseconds)
and applies one to three structure-aware mutations: bit flips, byte overwrites, truncation,
insertion, deletion, header fields rewritten with a valid CRC-8 (size, quality, model id, family,
channels, weights digest, packet count and lengths), and packet payloads mutated and resealed with
a valid CRC-16, so that the range decoder itself sees garbage. The outcome of a case is ``ok``,
``concealed``, the name of the BitstreamError subclass raised, or a failure: ``FOREIGN:<type>``
(any other exception), ``HANG`` (no answer within ``--timeout`` seconds: the worker process is
killed and restarted) or ``CRASH`` (the worker died). Decoding runs in a worker process so that a
hang or a crash cannot stop the run. A case is a pure function of (seed, family, number), so
``--seed`` continues with fresh cases and a failure is replayed from its printed key.

Forged sizes are decoded under a small pixel limit (``FUZZ_MAX_PIXELS``), so that a header that
promises a large image is refused instead of taking seconds per case; the limit itself is part
of what is fuzzed. ``tests/test_fuzz.py`` runs the same mutations for a few seconds per family
through hypothesis.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from collections import Counter
from functools import lru_cache
from multiprocessing import get_context

from nicodec.bitstream.errors import BitstreamError
from nicodec.bitstream.format import MAX_PACKETS, MAX_SIDE, Header, parse_header, seal_packet

FUZZ_MAX_PIXELS = 128 * 128
FAMILIES = ("mcq", "vq", "vq-static", "pc-photo", "pc-mnist", "ctx-photo")
KINDS = ("flip", "byte", "truncate", "insert", "delete", "header", "payload")
HEADER_FIELDS = ("width", "height", "quality", "model_id", "family", "channels",
                 "weights_digest", "packets", "lengths")
Op = tuple[str, int, int, bytes]  # (kind, a, b, blob): a and b are reduced to fit the data


def _image(width: int, height: int, channels: int):
    """A deterministic test picture: gradients and a block (what a photo's edges do to a coder)."""
    import numpy as np

    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 5 + y, y * 7, (x + y) * 3], axis=-1) % 256
    img[height // 4: height // 2, width // 3: width // 2] = [200, 30, 60]
    img = img.astype(np.uint8)
    return img[:, :, 0] if channels == 1 else img


# (model, width, height, channels, quality, packets) of the valid files mutations start from
SEEDS = {
    "mcq": [("mcq", 48, 32, 3, 4, 1), ("mcq", 48, 32, 3, 1, 3), ("mcq", 40, 24, 1, 2, 2)],
    "vq": [("vq", 32, 32, 3, 6, 1), ("vq", 48, 32, 3, 3, 2)],
    "vq-static": [("vq-static", 48, 32, 3, 3, 1), ("vq-static", 48, 32, 3, 8, 2)],
    "pc-photo": [("pc-photo", 32, 32, 3, 0, 1), ("pc-photo", 20, 12, 1, 0, 1)],
    "pc-mnist": [("pc-mnist", 28, 28, 1, 0, 1), ("pc-mnist", 56, 28, 1, 0, 2)],
    "ctx-photo": [("ctx-photo", 48, 32, 3, 0, 1), ("ctx-photo", 20, 12, 1, 0, 1)],
}


@lru_cache(maxsize=None)
def seed_files(family: str) -> tuple[bytes, ...]:
    """The valid files a family's cases start from (encoded once per process)."""
    from nicodec import codec

    return tuple(codec.encode(_image(w, h, c), model=model, quality=q, packets=p)
                 for model, w, h, c, q, p in SEEDS[family])


# --- mutations ------------------------------------------------------------------------------------


def _split(data: bytes) -> tuple[Header, list[bytes]] | None:
    """Header and raw packets (CRC included) of a file whose header parses, else None."""
    try:
        header, pos = parse_header(data)
    except BitstreamError:
        return None
    packets = []
    for length in header.packet_lengths:
        packets.append(data[pos: pos + length])
        pos += length
    return header, packets


def _join(header: Header, packets: list[bytes]) -> bytes:
    """A file from a header and raw packets: the header's lengths follow the packets."""
    lengths = tuple(len(p) for p in packets)
    return dataclasses.replace(header, packet_lengths=lengths).to_bytes() + b"".join(packets)


def _size(value: int) -> int:
    """Image side: mostly small (decodable under the fuzz limit), sometimes anything."""
    return 1 + (value >> 1) % 128 if value & 1 else 1 + (value >> 1) % MAX_SIDE


def _rewrite_header(data: bytes, field: int, value: int) -> bytes:
    """One header field set to a value from its whole range, with a valid CRC-8."""
    split = _split(data)
    if split is None:
        return data
    header, packets = split
    name = HEADER_FIELDS[field % len(HEADER_FIELDS)]
    changes = {
        "width": lambda: {"width": _size(value)},
        "height": lambda: {"height": _size(value)},
        "quality": lambda: {"quality": value % 40},
        "model_id": lambda: {"model_id": value % 12},
        "family": lambda: {"family": value % 16},
        "channels": lambda: {"channels": (1, 3)[value % 2]},
        "weights_digest": lambda: {"weights_digest": header.weights_digest ^ (1 << value % 16)},
    }
    if name in changes:
        return dataclasses.replace(header, **changes[name]()).to_bytes() + b"".join(packets)
    body = b"".join(packets)
    if name == "packets":  # the same bytes cut into another number of packets
        count = 1 + value % (8 if value & 1 else MAX_PACKETS)
        cuts = sorted(random.Random(value).randrange(len(body) + 1) for _ in range(count - 1))
        return _join(header, [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)])])
    # lengths: the stored length of one packet changed (the file's bytes stay as they are)
    lengths = list(header.packet_lengths)
    lengths[value % len(lengths)] = (value >> 4) % (2 * len(body) + 2) if value & 8 else value
    return dataclasses.replace(header, packet_lengths=tuple(lengths)).to_bytes() + body


def _mutate_bytes(data: bytes, kind: str, a: int, b: int, blob: bytes) -> bytes:
    """A byte-level mutation at position ``a`` (reduced to the data's length)."""
    n = len(data)
    pos = a % (n + 1)
    if kind == "flip" and n:
        return data[: pos % n] + bytes([data[pos % n] ^ (1 << b % 8)]) + data[pos % n + 1:]
    if kind == "byte" and n:
        return data[: pos % n] + bytes([b % 256]) + data[pos % n + 1:]
    if kind == "truncate":
        return data[:pos]
    if kind == "insert":
        return data[:pos] + (blob or bytes([b % 256])) + data[pos:]
    if kind == "delete":
        return data[:pos] + data[pos + 1 + b % 16:]
    return data


def _mutate_payload(data: bytes, a: int, b: int, blob: bytes) -> bytes:
    """A packet's payload mutated (byte-level, kind from ``b``) and resealed with a valid CRC."""
    split = _split(data)
    if split is None:
        return data
    header, packets = split
    k = a % len(packets)
    payload = packets[k][:-2]
    kind = ("flip", "byte", "truncate", "insert", "delete")[b % 5]
    packets[k] = seal_packet(_mutate_bytes(payload, kind, a >> 4, b >> 3, blob))
    return _join(header, packets)


def mutate(data: bytes, ops: list[Op]) -> bytes:
    """``data`` after the mutations ``ops`` (any values: they are reduced to fit)."""
    for kind, a, b, blob in ops:
        if kind == "header":
            data = _rewrite_header(data, a, b)
        elif kind == "payload":
            data = _mutate_payload(data, a, b, blob)
        else:
            data = _mutate_bytes(data, kind, a, b, blob)
    return data


def random_ops(rng: random.Random) -> list[Op]:
    """One to three mutations; header and payload ones (which pass the checksums) are common."""
    return [(rng.choice(KINDS), rng.getrandbits(24), rng.getrandbits(24),
             rng.randbytes(rng.choice((0, 1, 4, 32)))) for _ in range(rng.choice((1, 1, 2, 3)))]


def case(seed: int, family: str, number: int) -> bytes:
    """The bytes of case ``number`` of ``family`` in the run with ``seed``."""
    rng = random.Random(f"{seed}/{family}/{number}")
    files = seed_files(family)
    return mutate(files[rng.randrange(len(files))], random_ops(rng))


# --- outcomes -------------------------------------------------------------------------------------


def outcome(data: bytes, max_pixels: int | None = FUZZ_MAX_PIXELS) -> str:
    """'ok', 'concealed' or the BitstreamError class raised; anything else propagates. A
    successful decode must have the header's shape."""
    from nicodec.codec.pipeline import decode_detailed

    try:
        result = decode_detailed(data, max_pixels=max_pixels)
    except BitstreamError as exc:
        return type(exc).__name__
    header = result.header
    shape = (header.height, header.width, header.channels)
    if result.pixels.shape != shape or result.pixels.dtype.name != "uint8":
        raise AssertionError(f"decoded {result.pixels.shape} {result.pixels.dtype}, "
                             f"header says {shape} uint8")
    return "concealed" if result.lost_packets else "ok"


def _worker(conn) -> None:
    """Decodes the cases it is sent; answers (outcome, seconds, detail)."""
    import os

    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    from nicodec.codec.registry import available_models, load_model

    torch.set_num_threads(1)
    for name in available_models():  # loaded before the first case: case times are decodes
        load_model(name)
    conn.send("ready")
    while (data := conn.recv()) is not None:
        start = time.perf_counter()
        try:
            label, detail = outcome(data), ""
        except Exception as exc:  # noqa: BLE001 (this is what the fuzzer looks for)
            label, detail = f"FOREIGN:{type(exc).__name__}", repr(exc)[:300]
        conn.send((label, time.perf_counter() - start, detail))


class Decoder:
    """A worker process that decodes cases, replaced when it hangs or dies."""

    def __init__(self) -> None:
        self.context = get_context("spawn")
        self._start()

    def _start(self) -> None:
        self.conn, child = self.context.Pipe()
        self.process = self.context.Process(target=_worker, args=(child,), daemon=True)
        self.process.start()
        self.conn.recv()  # "ready": torch imported, every model loaded

    def run(self, data: bytes, timeout: float) -> tuple[str, float, str]:
        self.conn.send(data)
        start = time.perf_counter()
        try:
            if self.conn.poll(timeout):
                return self.conn.recv()
            label = "HANG"
        except EOFError:
            label = "CRASH"
        seconds = time.perf_counter() - start
        self.process.kill()
        self.process.join()
        self._start()
        return label, seconds, ""

    def close(self) -> None:
        self.conn.send(None)
        self.process.join(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000, help="cases in all (split evenly)")
    parser.add_argument("--seconds", type=float, default=600, help="stop after this long")
    parser.add_argument("--seed", type=int, default=0, help="another seed: other cases")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--timeout", type=float, default=30,
                        help="seconds after which a case counts as a hang")
    args = parser.parse_args(argv)
    families = args.families.split(",")
    decoder = Decoder()
    counts: dict[str, Counter] = {f: Counter() for f in families}
    failures, slowest = [], (0.0, "")
    start = time.monotonic()
    deadline = start + args.seconds
    number = 0
    try:
        while sum(sum(c.values()) for c in counts.values()) < args.cases \
                and time.monotonic() < deadline:
            for family in families:
                data = case(args.seed, family, number)
                label, seconds, detail = decoder.run(data, args.timeout)
                counts[family][label] += 1
                key = f"--seed {args.seed} {family} case {number}"
                if seconds > slowest[0]:
                    slowest = (seconds, f"{key} ({label}, {len(data)} bytes)")
                if label.startswith(("FOREIGN", "HANG", "CRASH")):
                    failures.append(f"{key}: {label} {detail} data={data.hex()}")
            number += 1
    finally:
        decoder.close()
    total = Counter()
    for family, counter in counts.items():
        total.update(counter)
        print(f"{family:10s} {sum(counter.values()):7d} cases: "
              + ", ".join(f"{k} {v}" for k, v in counter.most_common()))
    print(f"{'all':10s} {sum(total.values()):7d} cases: "
          + ", ".join(f"{k} {v}" for k, v in total.most_common()))
    elapsed = time.monotonic() - start
    print(f"{elapsed:.0f} s, {sum(total.values()) / elapsed:.0f} cases/s, seed {args.seed}")
    print(f"slowest case: {slowest[0]:.3f} s, {slowest[1]}")
    print(f"failures (foreign exceptions, hangs, crashes): {len(failures)}")
    for failure in failures[:20]:
        print("  " + failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
