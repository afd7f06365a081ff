"""Plot training curves written by ``models.train`` (``curve.jsonl`` in a run folder).

    python -m eval.curves runs/NAME/curve.jsonl [more.jsonl ...] --out eval/results/NAME.png

One panel with the training loss, one with the held-back PSNR of every quality against the step.
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
        for q in points[0]["held_out_psnr"]:
            ax_psnr.plot(steps, [p["held_out_psnr"][q] for p in points], style,
                         label=f"{name} q{q}")
    ax_loss.set(xlabel="step", ylabel="training loss", yscale="log")
    ax_psnr.set(xlabel="step", ylabel="held-back PSNR (dB)")
    ax_loss.legend(fontsize=7)
    ax_psnr.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("curves", nargs="+", type=Path, help="curve.jsonl files")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    plot({p.parent.name: read_curve(p) for p in args.curves}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
