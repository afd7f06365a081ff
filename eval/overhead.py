"""Coding overhead: real file bits against the model's own -log2 p of the symbols.

    python -m nicodec.eval.overhead [--images ../shared/data/kodak] [--model mcq-tiny] [--quality 4]

For every image it prints the file size, the ideal size under the model's (integer) probability
tables, and the overhead split into header, packet framing (length fields and CRCs) and range
coder. "framed" is payload plus packet framing against the ideal (the foundation issue's target:
at most 0.5%); "total" adds the fixed header.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nicodec.bitstream.format import PACKET_CRC_BYTES, parse_header, write_varint
from nicodec.codec.pipeline import encode_detailed
from nicodec.codec.registry import DEFAULT_MODEL

DEFAULT_IMAGES = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "kodak"


def measure(path: Path, model: str, quality: int | None, packets: int | None) -> dict:
    """Sizes in bytes of one encoded image, split by where the bytes go."""
    encoded = encode_detailed(path, model=model, quality=quality, packets=packets)
    header, offset = parse_header(encoded.data)
    lengths = header.packet_lengths
    table = sum(len(write_varint(n)) for n in header.stored_lengths())
    framing = table + PACKET_CRC_BYTES * len(lengths)
    ideal = encoded.model_bits / 8
    total = len(encoded.data)
    return {"image": path.name, "bytes": total, "ideal_bytes": round(ideal, 1),
            "header_bytes": offset - table, "framing_bytes": framing,
            "coder_bytes": round(total - offset - PACKET_CRC_BYTES * len(lengths) - ideal, 1),
            "packets": len(lengths),
            "framed_overhead_pct": round(100 * (total - (offset - table) - ideal) / ideal, 3),
            "overhead_pct": round(100 * (total - ideal) / ideal, 3),
            "bpp": 8 * total / (header.width * header.height)}


def main() -> None:
    parser = argparse.ArgumentParser(description="Coding overhead vs the model's -log2 p.")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--quality", type=int, default=None)
    parser.add_argument("--packets", type=int, default=None, help="default: the encoder's")
    parser.add_argument("--json", action="store_true", help="print per-image rows as JSON")
    args = parser.parse_args()
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() == ".png")
    if not paths:
        parser.error(f"no PNG images in {args.images}")
    rows = [measure(p, args.model, args.quality, args.packets) for p in tqdm(paths, leave=False, disable=None)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'image':<14}{'bytes':>8}{'ideal':>10}{'header':>8}{'framing':>9}{'coder':>8}"
          f"{'pkts':>6}{'framed':>9}{'total':>9}")
    for r in rows:
        print(f"{r['image']:<14}{r['bytes']:>8}{r['ideal_bytes']:>10.1f}{r['header_bytes']:>8}"
              f"{r['framing_bytes']:>9}{r['coder_bytes']:>8.1f}{r['packets']:>6}"
              f"{r['framed_overhead_pct']:>8.3f}%{r['overhead_pct']:>8.3f}%")
    total, ideal = sum(r["bytes"] for r in rows), sum(r["ideal_bytes"] for r in rows)
    headers = sum(r["header_bytes"] for r in rows)
    print(f"{'all':<14}{total:>8}{ideal:>10.1f}{'':>31}"
          f"{100 * (total - headers - ideal) / ideal:>8.3f}%{100 * (total - ideal) / ideal:>8.3f}%"
          f"   mean bpp {np.mean([r['bpp'] for r in rows]):.4f}")


if __name__ == "__main__":
    main()
