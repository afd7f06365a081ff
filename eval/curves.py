"""Plot training curves: the held-back ``curve.jsonl`` of a run folder (``models.mcq.train``,
``models.vq.train vqgan``), or the VQ index prior's ``log.jsonl`` (``models.vq.train prior``).

    python -m nicodec.eval.curves runs/NAME/curve.jsonl [more.jsonl ...] --out eval/results/TOPIC/curve.png
    python -m nicodec.eval.curves runs/vqprior4/log.jsonl --out eval/results/vq-prior/curve-r4.png

Training runs: one panel with the training loss, one with the held-back PSNR of every quality
(MCQ; the full codebook for the VQGAN) against the step. Index prior: training bits per index
(per codebook size) and the held-back coding rate of every checked codebook and schedule, against
the fixed-length log2(K).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_curve(path: Path) -> list[dict]:
    """The points of one curve file, in step order."""
    points = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return sorted(points, key=lambda p: p["step"])


def plot(curves: dict[str, list[dict]], out: Path) -> None:
    """Loss and per-quality held-back PSNR against the step, one line style per curve file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(11, 4))
    for (name, points), style in zip(curves.items(), ["-", "--", ":", "-."] * 8):
        steps = [p["step"] for p in points]
        ax_loss.plot(steps, [p["loss"] for p in points], style, label=name)
        keys = dict.fromkeys(k for p in points for k in p["held_out_psnr"])
        for key in keys:  # quality q, or "autoencoder" (pretraining) where a run has it
            mine = [p for p in points if key in p["held_out_psnr"]]
            ax_psnr.plot([p["step"] for p in mine], [p["held_out_psnr"][key] for p in mine],
                         style, marker="." if len(mine) == 1 else None,
                         label=f"{name} {'q' if key.isdigit() else ''}{key}")
    ax_loss.set(xlabel="step", ylabel="training loss", yscale="log")
    ax_psnr.set(xlabel="step", ylabel="held-back PSNR (dB)")
    ax_loss.legend(fontsize=7)
    ax_psnr.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def plot_prior(points: list[dict], out: Path) -> None:
    """Index prior: training bits per index and held-back bits per index per schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    train = [p for p in points if "train_bits" in p]
    for q in sorted({p["q"] for p in train}):
        mine = [p for p in train if p["q"] == q]
        ax_train.plot([p["step"] for p in mine], [p["train_bits"] for p in mine], ".-",
                      linewidth=0.5, markersize=3, label=f"q{q}")
    checks = [p for p in points if "val" in p]
    for i, row in enumerate(checks[-1]["val"] if checks else []):
        for schedule, style in zip([k for k in row if k.startswith("s")], ["-", "--", ":"]):
            ax_val.plot([p["step"] for p in checks], [p["val"][i][schedule] for p in checks],
                        style, marker="o", color=f"C{i}", label=f"K={row['K']} {schedule}")
        ax_val.axhline(row["fixed_bits"], color=f"C{i}", alpha=0.3)
    ax_train.set(xlabel="step", ylabel="training bits per masked index")
    ax_val.set(xlabel="step", ylabel="held-back bits per index (coded)")
    ax_train.legend(fontsize=6, ncol=2, markerscale=4)
    ax_val.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("curves", nargs="+", type=Path, help="curve.jsonl files")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    curves = {p.parent.name: read_curve(p) for p in args.curves}
    if any("train_bits" in point for points in curves.values() for point in points):
        if len(curves) != 1:
            parser.error("index prior logs are plotted one at a time")
        plot_prior(next(iter(curves.values())), args.out)
    else:
        plot(curves, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
