"""Quality under lost indices (VQ mode): restoration by the masked transformer vs naive fills.

    python -m nicodec.eval.loss [--images ../shared/data/kodak] [--model vq] [--quality 8]
                        [--packets 20] [--losses 0,5,10,20,30] [--trials 2] [--limit N]
                        [--out nicodec-eval/loss]
    codec loss ...                (the same options)

Each image is encoded once with ``--packets`` packets (units are dealt to packets in the
format's diagonal interleave, so a lost packet removes scattered indices). For each loss level,
``round(level * packets)`` packets are damaged at random (``--trials`` draws per image, seeded)
and the file is decoded four ways:

* ``restored``: nicodec's decoder: the transformer predicts the lost indices, most confident
  first, and each lost unit is synthesized from the expected codeword under its prediction;
* ``hard``: the same predictions, synthesized from the most likely index alone;
* ``frequent``: lost indices set to the most frequent index of the static table (naive fill);
* ``inpaint``: lost units filled in the latent with the average of their known neighbours (how
  the MCQ models conceal).

PSNR and MS-SSIM are measured against the original; the PSNR drop is against the loss-free
decode of the same file. The summary also states what packetisation costs: the same images in
one packet (coded by the transformer) and in ``--packets`` packets (static tables, packet table
and CRCs). Writes ``summary.json``, ``summary.txt`` and ``loss_psnr.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nicodec.bitstream.format import parse_header
from nicodec.codec.pipeline import decode_detailed, encode, render
from nicodec.codec.registry import load_model
from nicodec.eval.metrics import ms_ssim, psnr
from nicodec.eval.rd import DEFAULT_IMAGES, HelpFormatter, load_images

METHODS = ("restored", "hard", "frequent", "inpaint")


def damage(data: bytes, packets: list[int]) -> bytes:
    """The file with the CRC of each listed packet broken (those packets decode as lost)."""
    header, pos = parse_header(data)
    out = bytearray(data)
    ends = pos + np.cumsum(header.packet_lengths)
    for p in packets:
        out[int(ends[p]) - 1] ^= 0xFF
    return bytes(out)


def decode_all_ways(data: bytes, model: str) -> tuple[dict[str, np.ndarray], float, float]:
    """Decoded pixels per method, the lost fraction, and the restored decode's seconds."""
    start = time.perf_counter()
    result = decode_detailed(data)
    seconds = time.perf_counter() - start
    out = {"restored": result.pixels}
    if result.lost_packets:
        m = load_model(model)
        q = result.header.quality
        frequent = result.indices.copy()
        frequent[0][result.lost] = int(np.argmax(m.session(1, q).freqs(frequent[:0], 0)))
        out["hard"] = render(m.synthesize(result.indices, None, q), result.header)
        out["frequent"] = render(m.synthesize(frequent, None, q), result.header)
        out["inpaint"] = render(m.synthesize(result.indices, result.lost, q), result.header)
    else:
        out.update({method: result.pixels for method in METHODS})
    return out, result.concealed_fraction, seconds


def run(images, model: str, quality: int, packets: int, losses: list[float], trials: int,
        seed: int) -> dict:
    """Measure every image at every loss level; returns the summary."""
    rows = []
    sizes = {"one_packet": [], "packets": [], "framing_one": [], "framing_packets": []}
    for i, (name, pixels) in enumerate(tqdm(images, desc="loss", file=sys.stderr, disable=None)):
        data = encode(pixels, model=model, quality=quality, packets=packets)
        single = encode(pixels, model=model, quality=quality, packets=1)
        sizes["packets"].append(len(data))
        sizes["one_packet"].append(len(single))
        sizes["framing_packets"].append(parse_header(data)[1] + 2 * packets)  # header, CRCs
        sizes["framing_one"].append(parse_header(single)[1] + 2)
        clean, _, clean_s = decode_all_ways(data, model)
        clean_psnr = psnr(pixels, clean["restored"])
        rng = np.random.default_rng([seed, i])
        for level in losses:
            n_lost = round(level * packets)
            for trial in range(trials if n_lost else 1):
                lost = sorted(rng.choice(packets, n_lost, replace=False).tolist())
                decoded, fraction, seconds = decode_all_ways(damage(data, lost), model)
                row = {"image": name, "loss": level, "trial": trial, "lost_packets": lost,
                       "lost_fraction": fraction, "clean_psnr": clean_psnr,
                       "decode_s": seconds, "clean_decode_s": clean_s}
                for method, out in decoded.items():
                    row[f"{method}_psnr"] = psnr(pixels, out)
                    row[f"{method}_ms_ssim"] = ms_ssim(pixels, out)
                rows.append(row)
    return summarize(rows, sizes, images, model, quality, packets)


def summarize(rows: list[dict], sizes: dict, images, model: str, quality: int,
              packets: int) -> dict:
    pixels = sum(p.shape[0] * p.shape[1] for _, p in images)
    levels = []
    for level in sorted({r["loss"] for r in rows}):
        sel = [r for r in rows if r["loss"] == level]
        entry = {"loss": level, "lost_fraction": float(np.mean([r["lost_fraction"] for r in sel])),
                 "clean_psnr": float(np.mean([r["clean_psnr"] for r in sel])),
                 "decode_s": float(np.mean([r["decode_s"] for r in sel])),
                 "clean_decode_s": float(np.mean([r["clean_decode_s"] for r in sel]))}
        for method in METHODS:
            entry[f"{method}_psnr"] = float(np.mean([r[f"{method}_psnr"] for r in sel]))
            entry[f"{method}_ms_ssim"] = float(np.mean([r[f"{method}_ms_ssim"] for r in sel]))
            entry[f"{method}_drop_db"] = entry["clean_psnr"] - entry[f"{method}_psnr"]
        levels.append(entry)
    one, many = sum(sizes["one_packet"]), sum(sizes["packets"])
    return {"model": model, "quality": quality, "packets": packets, "images": len(images),
            "trials": max(r["trial"] for r in rows) + 1, "levels": levels,
            "bytes_one_packet": one, "bytes_packets": many,
            "bpp_one_packet": one * 8 / pixels, "bpp_packets": many * 8 / pixels,
            "packetisation_bytes_per_image": (many - one) / len(images),
            "framing_bytes_one_packet": float(np.mean(sizes["framing_one"])),
            "framing_bytes_packets": float(np.mean(sizes["framing_packets"])), "rows": rows}


def table(summary: dict) -> str:
    s = summary
    lines = [f"{s['model']} q{s['quality']}, {s['images']} images, {s['packets']} packets, "
             f"{s['trials']} random draws per loss level",
             f"size: one packet (transformer coding) {s['bpp_one_packet']:.4f} bpp; "
             f"{s['packets']} packets (static tables, packet table, CRCs) "
             f"{s['bpp_packets']:.4f} bpp: +{s['packetisation_bytes_per_image']:.0f} bytes "
             f"per image, of which framing (header, packet table, CRCs) "
             f"{s['framing_bytes_packets']:.0f} vs {s['framing_bytes_one_packet']:.0f} bytes and "
             f"the rest static instead of transformer coding",
             "",
             "lost   indices  clean dB | " + " | ".join(f"{m} dB (drop) MS-SSIM" for m in METHODS)
             + " | decode s"]
    for e in s["levels"]:
        cells = " | ".join(f"{e[f'{m}_psnr']:6.2f} ({e[f'{m}_drop_db']:4.2f}) "
                           f"{e[f'{m}_ms_ssim']:.4f}" for m in METHODS)
        lines.append(f"{e['loss']:4.0%}  {e['lost_fraction']:6.1%}   {e['clean_psnr']:6.2f} | "
                     f"{cells} | {e['decode_s']:.2f}")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = summary["levels"]
    x = [100 * e["lost_fraction"] for e in levels]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    for ax, metric, label in ((axes[0], "psnr", "PSNR (dB)"), (axes[1], "ms_ssim", "MS-SSIM")):
        for method in METHODS:
            ax.plot(x, [e[f"{method}_{metric}"] for e in levels], "o-", label=method)
        if metric == "psnr":
            ax.plot(x, [e["clean_psnr"] for e in levels], "k--", label="loss-free decode")
        ax.set_xlabel("indices lost (%)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{summary['model']} q{summary['quality']}: lost packets "
                 f"({summary['packets']} per file), {summary['images']} images")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="codec loss", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES,
                        help="folder of test images (PNG, PPM or BMP), such as Kodak")
    parser.add_argument("--model", default="vq", help="a VQ model of the registry")
    parser.add_argument("--quality", type=int, default=8, help="ladder quality")
    parser.add_argument("--packets", type=int, default=20,
                        help="packets per file; one packet's indices are scattered over the "
                             "image (20: each packet is 5%% of the indices)")
    parser.add_argument("--losses", default="0,5,10,20,30",
                        help="percent of packets lost, comma-separated")
    parser.add_argument("--trials", type=int, default=2,
                        help="random draws of the lost packets per loss level")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the packet draws")
    parser.add_argument("--out", type=Path, default=Path("nicodec-eval/loss"),
                        help="folder for summary.json, summary.txt and the plot (the committed "
                             "figures: --out eval/results/vq-prior/loss)")
    args = parser.parse_args(argv)
    losses = [float(v) / 100 for v in args.losses.split(",")]
    if args.packets < 2 or any(not 0 <= v < 1 for v in losses):
        parser.error("--packets must be at least 2 and --losses percentages in 0..99")
    images = load_images(args.images, args.limit)
    summary = run(images, args.model, args.quality, args.packets, losses, args.trials, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    text = table(summary)
    (args.out / "summary.txt").write_text(text + "\n")
    plot(summary, args.out / "loss_psnr.png")
    print(text)
    return summary


if __name__ == "__main__":
    main()
