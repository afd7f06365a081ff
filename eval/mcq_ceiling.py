"""Where the MCQ model's quality stops: the transforms, the quantizer, or the encoder?

    python -m nicodec.eval.mcq_ceiling [--images ../shared/data/kodak] [--names kodim01,kodim05]
                               [--steps 100] [--weights models/weights/mcq.safetensors]

For each photo this prints, in PSNR (and bpp where something is coded, the integer prior's
nearest-codeword code length):

* ``unquantized``: the analysis' fine latent decoded as it is (the autoencoder alone);
* ``q4`` and ``q8``: the same latent through 4 and 8 residual stages (nearest codewords);
* ``optimized``: the fine latent optimized by ``--steps`` Adam steps (lr 1e-2) of pixel MSE
  through the frozen synthesis, decoded unquantized (what the synthesis can reach);
* ``optimized q8``: that optimized latent through the 8 residual stages.

If ``optimized`` is far above ``unquantized`` but ``optimized q8`` is no better than ``q8``, the
gain lives in detail that the quantizer cannot carry: a better encoder (search, distillation)
cannot reach it through this quantizer, and only a finer quantizer (more bits per latent) or a
stronger synthesis raises the curve. Measured results: ``eval/results/mcq/ceiling.md``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from nicodec.models.mcq.codec import load_weights
from nicodec.models.weightfile import WEIGHTS

KODAK = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "kodak"


def _psnr(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    return -10 * math.log10(F.mse_loss(x_hat.clamp(0, 1), x).item())


@torch.no_grad()
def _quantized(net, prior, coarse, prediction, latent, x, quality) -> tuple[float, float]:
    """(PSNR, bpp) of ``latent`` through the first ``quality`` residual stages."""
    symbols, _, bits = net.code_residual(coarse, latent - prediction, quality, prior, 0.0,
                                         keep=False)
    return _psnr(net.decode_latent(net.conceal(symbols)), x), bits / (x.shape[2] * x.shape[3])


def ceiling(net, prior, x: torch.Tensor, steps: int) -> dict[str, tuple[float, ...]]:
    """The five figures of the module docstring for one image (1, 3, H, W), sides multiples of
    16."""
    with torch.no_grad():
        f = net.g_a(x)
        latent = net.fine_head(f)
        coarse = net.coarse_vq.indices(net.h_a(f))
        prediction = net.h_s(net.coarse_vq.embed(coarse))
        row = {"unquantized": (_psnr(net.g_s(latent), x),)}
        for q in (4, 8):
            row[f"q{q}"] = _quantized(net, prior, coarse, prediction, latent, x, q)
    variable = latent.clone().requires_grad_(True)
    opt = torch.optim.Adam([variable], lr=1e-2)
    for _ in range(steps):
        loss = F.mse_loss(net.g_s(variable), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        row["optimized"] = (_psnr(net.g_s(variable), x),)
    row["optimized q8"] = _quantized(net, prior, coarse, prediction, variable.detach(), x, 8)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=KODAK)
    parser.add_argument("--names", default="kodim01,kodim03,kodim05,kodim08,kodim13,kodim19")
    parser.add_argument("--steps", type=int, default=100, help="latent optimization steps")
    parser.add_argument("--weights", default=str(WEIGHTS / "mcq.safetensors"))
    args = parser.parse_args()
    net, prior = load_weights(args.weights)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    columns = ["unquantized", "q4", "q8", "optimized", "optimized q8"]
    print("image    " + "".join(f"{c:>18}" for c in columns))
    totals: dict[str, list[float]] = {c: [] for c in columns}
    for name in args.names.split(","):
        img = np.array(Image.open(args.images / f"{name}.png").convert("RGB"))
        img = img[:img.shape[0] // 16 * 16, :img.shape[1] // 16 * 16]
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float().div(255)
        row = ceiling(net, prior, x, args.steps)
        cells = []
        for c in columns:
            totals[c].append(row[c][0])
            cells.append(f"{row[c][0]:.2f} dB" + (f" {row[c][1]:.3f}" if len(row[c]) > 1 else ""))
        print(f"{name:9}" + "".join(f"{cell:>18}" for cell in cells), flush=True)
    print("mean     " + "".join(f"{np.mean(totals[c]):>15.2f} dB" for c in columns))


if __name__ == "__main__":
    main()
