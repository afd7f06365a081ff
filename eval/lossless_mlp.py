"""A small learned alternative to ctx-photo's context classes: ``python -m nicodec.eval.lossless_mlp``.

ctx-photo turns each sample's activity features (local gradients, neighbour and cross-channel
residual magnitudes) into a class through one fitted linear estimate, and codes each class with
a table picked from a learned bank. Here a tiny MLP (the same features, log-compressed, plus
the channel and the pass kind) gives each sample a discretized logistic mixture over its
residual instead, trained briefly on crops of the training photos (one thread). Both are
measured as ideal code lengths of the same hybrid tokens (the raw low bits are the same for
both and left out) on Kodak images; the bank's figure includes its table indices (8 bits per
used class).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nicodec.codec.registry import load_model
from nicodec.models.ctx import coder
from nicodec.models.ctx.train import DATA

KODAK = DATA.parent / "kodak"
WIDTH = 40  # activity features, zero-padded
VALUES = np.arange(256)  # zigzag u of 8-bit residuals


def collect(paths: list[Path], crop: int | None) -> list[dict]:
    """Per pass and channel: activity features (n, m), tokens (n,), classes (n,)."""
    tables = load_model("ctx-photo").net.tables
    rows: list[dict] = []
    fit_scale, tokens, classes = coder._fit_scale, coder.tokens, coder._classes

    def spy_scale(a, *rest):
        rows.append({"act": a.T.copy(), "channel": len(rows) % 3})
        return fit_scale(a, *rest)

    def spy_tokens(u):
        out = tokens(u)
        rows[-1]["tok"] = out[0].copy()
        return out

    def spy_classes(*args):
        ladder = classes(*args)
        rows[-1]["cls"] = ladder.cls.copy()  # the class ids (r4's ladder steps left out)
        return ladder

    coder._fit_scale, coder.tokens, coder._classes = spy_scale, spy_tokens, spy_classes
    try:
        for path in paths:
            img = np.asarray(Image.open(path).convert("RGB"))
            # one thread: the steps in order, so that each row's channel is known
            coder.encode_tile(img[:crop, :crop] if crop else img, 8, tables, threads=1)
    finally:
        coder._fit_scale, coder.tokens, coder._classes = fit_scale, tokens, classes
    return rows


def inputs(row: dict) -> np.ndarray:
    act = np.log1p(np.maximum(row["act"], 0))
    out = np.zeros((len(act), WIDTH + 4), np.float32)
    out[:, : act.shape[1]] = act
    out[:, WIDTH + row["channel"]] = 1
    out[:, WIDTH + 3] = np.log2(len(act))  # pass size: the level
    return out


class Mixture(torch.nn.Module):
    """Features -> K logistic components over the signed residual -> token probabilities."""

    def __init__(self, hidden: int = 32, k: int = 3) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(WIDTH + 4, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, 3 * k))
        r = np.where(VALUES & 1, -(VALUES + 1) // 2, VALUES // 2)
        self.register_buffer("r", torch.tensor(r, dtype=torch.float32))
        tok = coder.tokens(VALUES)[0]
        self.register_buffer("bins", torch.nn.functional.one_hot(torch.tensor(tok), coder.NTOK)
                             .float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log2 probabilities of the tokens (n, NTOK)."""
        logit, mean, log_scale = self.net(x).chunk(3, -1)
        r = self.r[None, :, None]
        scale = torch.exp(log_scale)[:, None]
        cdf = lambda z: torch.sigmoid((z - mean[:, None]) / scale)  # noqa: E731
        p = (cdf(r + 0.5) - cdf(r - 0.5)).clamp_min(1e-9)  # (n, 256, K)
        p = (p * torch.softmax(logit, -1)[:, None]).sum(-1)
        p = p / p.sum(-1, keepdim=True)
        return torch.log2((p @ self.bins).clamp_min(2.0 ** -16))


def bank_bits(rows: list[dict], bank: np.ndarray) -> float:
    """ctx-photo's cost of the tokens: per pass and channel, each class's best table."""
    bits = 0.0
    cost = 16 - np.log2(bank)
    for row in rows:
        used, inverse = np.unique(row["cls"], return_inverse=True)
        hist = np.bincount(inverse * coder.NTOK + row["tok"],
                           minlength=len(used) * coder.NTOK).reshape(-1, coder.NTOK)
        bits += (hist @ cost.T).min(1).sum() + 8 * len(used)
    return bits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-images", type=int, default=30)
    parser.add_argument("--kodak", type=int, default=6, help="Kodak images evaluated")
    parser.add_argument("--minutes", type=float, default=4.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train = collect(sorted(DATA.rglob("*.png"))[: args.train_images], 384)
    x = torch.tensor(np.concatenate([inputs(r) for r in train]))
    y = torch.tensor(np.concatenate([r["tok"] for r in train]))
    model = Mixture()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < args.minutes * 60:
        pick = torch.randint(0, len(x), (4096,))
        loss = -model(x[pick]).gather(1, y[pick, None]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    kodak = sorted(KODAK.glob("*.png"))[:: 4][: args.kodak]
    test = collect(kodak, None)
    pixels = sum(len(r["tok"]) for r in test) / 3
    with torch.no_grad():
        mlp = sum(-model(torch.tensor(inputs(r))).gather(
            1, torch.tensor(r["tok"])[:, None]).sum().item() for r in test)
    start = time.perf_counter()
    with torch.no_grad():
        model(torch.tensor(inputs(test[-1])))
    per_pass = time.perf_counter() - start
    bank = bank_bits(test, load_model("ctx-photo").net.tables.bank)
    print(f"{steps} steps in {args.minutes} min on {len(x)} training samples; "
          f"{len(kodak)} Kodak images (every 4th), token bits per pixel (raw bits left out):")
    print(f"  ctx-photo classes + bank: {bank / pixels:.4f} (table indices included)")
    print(f"  MLP logistic mixture:     {mlp / pixels:.4f} (weights not counted)")
    print(f"  MLP time for one finest pass of one channel ({len(test[-1]['tok'])} samples): "
          f"{per_pass:.2f} s")


if __name__ == "__main__":
    main()
