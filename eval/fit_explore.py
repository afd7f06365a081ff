"""Measure first (issue 36): a first overfitted-codec prototype on the CPU.

Not a codec yet (no bitstream): it measures what per-image fitting reaches in a given number of
seconds, from a zero start or from a learned initialization, with the rate estimated from the
entropy model (decoder weights counted at ``WEIGHT_BITS`` bits each when they are sent).

The model, after Cool-chic, shaped for a CPU:

- a latent pyramid, one channel per level, level l at 1/2**(first + l) of the image;
- synthesis: the levels upsampled bilinearly to full resolution, a per-pixel MLP on
  channels-last tensors (linear layers are matrix products; 1x1 convolutions are not, here), one
  3x3 convolution on its output;
- entropy model: a checkerboard ARM shared by the levels (decodable in two passes per level,
  every latent of a pass at once): the first pass sees the coarser level's 3x3 neighbourhood,
  the second also the four first-pass neighbours; a Laplace distribution per latent;
- steps on random crops of the image (cache-sized tensors) rather than the whole image.

``python -m nicodec.eval.fit_explore init --minutes 50 --out init.pt`` trains the initialization
(analysis network, synthesis, ARM) on the training photos; ``python -m nicodec.eval.fit_explore fit
--image kodim23.png --seconds 60 [--init init.pt]`` fits one image and prints bpp and PSNR as it
goes; ``--time-step`` prints the cost of one step at several crop sizes. Results:
``eval/results/fit/explore.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

WEIGHT_BITS = 8  # assumed cost of one sent decoder weight


def quantize(y: torch.Tensor, mode: str) -> torch.Tensor:
    """``noise``: additive uniform noise (rate while training); ``ste``: rounding with a
    straight-through gradient; ``round``: rounding."""
    if mode == "noise":
        return y + torch.empty_like(y).uniform_(-0.5, 0.5)
    if mode == "ste":
        return y + (torch.round(y) - y).detach()
    return torch.round(y)


def laplace_bits(y: torch.Tensor, mu: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Code length in bits of integer(-ish) ``y`` under Laplace(mu, b) integrated over bins."""
    d = y - mu

    def cdf(t: torch.Tensor) -> torch.Tensor:
        return 0.5 + 0.5 * torch.sign(t) * (1 - torch.exp(-t.abs() / b))

    return -torch.log2((cdf(d + 0.5) - cdf(d - 0.5)).clamp_min(1e-9)).sum()


class Synthesis(nn.Module):
    """Per-pixel MLP (channels last) and a 3x3 convolution on its RGB output; with
    ``out_conv`` the hidden layer reaches RGB through a 3x3 convolution instead of a linear
    layer (width x 27 more multiply-adds per pixel)."""

    def __init__(self, levels: int, width: int = 16, out_conv: bool = False):
        super().__init__()
        self.l1, self.l2 = nn.Linear(levels, width), nn.Linear(width, width)
        self.out = nn.Conv2d(width, 3, 3, padding=1) if out_conv else nn.Linear(width, 3)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, H, W, levels) upsampled latents -> (B, 3, H, W) image."""
        h = F.relu(self.l1(z))
        h = F.relu(self.l2(h)) + h
        if isinstance(self.out, nn.Conv2d):
            x = self.out(h.permute(0, 3, 1, 2))
        else:
            x = self.out(h).permute(0, 3, 1, 2)
        return x + self.conv(x) + 0.5


class ARM(nn.Module):
    """Checkerboard context model shared by all levels, with a learned bias per level."""

    def __init__(self, levels: int, width: int = 16):
        super().__init__()
        self.l1, self.l2, self.out = (nn.Linear(9 + 4 + 1, width), nn.Linear(width, width),
                                      nn.Linear(width, 2))
        self.level = nn.Parameter(torch.zeros(levels, 2))

    def forward(self, y: torch.Tensor, coarse: torch.Tensor | None, level: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Laplace (mu, scale) of every latent of ``y`` (B, h, w) given the coarser level
        (B, ceil(h/2), ceil(w/2)) or None, and, on the second checkerboard pass, the four
        first-pass neighbours."""
        B, h, w = y.shape
        if coarse is None:
            near = y.new_zeros(B, h, w, 9)
        else:
            up = F.interpolate(coarse[:, None], scale_factor=2, mode="nearest")[:, :, :h, :w]
            near = F.unfold(up, 3, padding=1).view(B, 9, h, w).permute(0, 2, 3, 1)
        pad = F.pad(y, (1, 1, 1, 1))
        four = torch.stack([pad[:, :-2, 1:-1], pad[:, 2:, 1:-1], pad[:, 1:-1, :-2],
                            pad[:, 1:-1, 2:]], -1)
        second = ((torch.arange(h)[:, None] + torch.arange(w)) % 2).to(y.dtype)
        second = second.expand(B, h, w)[..., None]
        feat = torch.cat([near, four * second, second], -1)
        hidden = F.relu(self.l1(feat))
        hidden = F.relu(self.l2(hidden)) + hidden
        out = self.out(hidden) + self.level[level]
        return out[..., 0], torch.exp(out[..., 1].clamp(-4, 5)) + 1e-3


class Decoder(nn.Module):
    """Synthesis and ARM over a latent pyramid (what a file would carry the weights of)."""

    def __init__(self, levels: int, first: int, width: int = 16, out_conv: bool = False):
        super().__init__()
        self.levels, self.first = levels, first
        self.syn, self.arm = Synthesis(levels, width, out_conv), ARM(levels, width)

    def forward(self, rate: list[torch.Tensor], synth: list[torch.Tensor], size: tuple[int, int]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) image from ``synth`` latents and the bits of ``rate`` latents
        (lists of (B, h_l, w_l))."""
        bits = rate[0].new_zeros(())
        feats = []
        for level in range(self.levels):
            coarse = rate[level + 1] if level + 1 < self.levels else None
            bits = bits + laplace_bits(rate[level], *self.arm(rate[level], coarse, level))
            scale = 2 ** (self.first + level)
            feats.append(F.interpolate(synth[level][:, None], scale_factor=scale, mode="bilinear",
                                       align_corners=False)[:, 0, :size[0], :size[1]])
        return self.syn(torch.stack(feats, -1)), bits


class Analysis(nn.Module):
    """Image -> latent pyramid: the learned initialization of the latents."""

    def __init__(self, levels: int, first: int, ch: int = 32):
        super().__init__()
        stem = [nn.Conv2d(3, ch, 3, 1, 1), nn.ReLU()] if first == 0 else [
            m for i in range(first) for m in (nn.Conv2d(3 if i == 0 else ch, ch, 5, 2, 2), nn.ReLU())]
        self.stem = nn.Sequential(*stem)
        self.down = nn.ModuleList([nn.Sequential(nn.Conv2d(ch, ch, 3, 2, 1), nn.ReLU(),
                                                 nn.Conv2d(ch, ch, 3, 1, 1), nn.ReLU())
                                   for _ in range(levels - 1)])
        self.heads = nn.ModuleList([nn.Conv2d(ch, 1, 3, 1, 1) for _ in range(levels)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.stem(x)
        out = [self.heads[0](f)[:, 0]]
        for down, head in zip(self.down, self.heads[1:]):
            f = down(f)
            out.append(head(f)[:, 0])
        return out


def load_rgb(path: str | Path) -> torch.Tensor:
    """(3, H, W) float image in [0, 1]."""
    with Image.open(path) as img:
        return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).float() / 255


def pyramid_sizes(h: int, w: int, levels: int, first: int) -> list[tuple[int, int]]:
    return [(math.ceil(h / 2 ** (first + l)), math.ceil(w / 2 ** (first + l)))
            for l in range(levels)]


def train_init(args: argparse.Namespace) -> None:
    """Train analysis, synthesis and ARM together on random crops of the training photos."""
    from nicodec.models.data import DEFAULT_TRAIN, CropSampler, load_images, split_paths

    torch.manual_seed(0)
    sampler = CropSampler(load_images(split_paths(Path(args.data or DEFAULT_TRAIN))[0],
                                      args.crop), args.crop)
    ana, dec = Analysis(args.levels, args.first), Decoder(args.levels, args.first)
    opt = torch.optim.Adam([*ana.parameters(), *dec.parameters()], lr=1e-3)
    start, step, ema = time.perf_counter(), 0, None
    while time.perf_counter() - start < args.minutes * 60:
        x = sampler.batch(args.batch)
        ys = ana(x)
        xh, bits = dec([quantize(y, "noise") for y in ys], [quantize(y, "ste") for y in ys],
                       (args.crop, args.crop))
        mse = F.mse_loss(xh, x)
        bpp = bits / (args.batch * args.crop ** 2)
        opt.zero_grad(set_to_none=True)
        (mse + args.lam * bpp).backward()
        opt.step()
        step += 1
        now = (10 * math.log10(1 / mse.item()), bpp.item())
        ema = now if ema is None else tuple(0.98 * e + 0.02 * v for e, v in zip(ema, now))
        if step % 100 == 0:
            print(f"{time.perf_counter() - start:7.0f} s  step {step}  PSNR {ema[0]:.2f}  "
                  f"bpp {ema[1]:.3f}", flush=True)
            torch.save({"ana": ana.state_dict(), "dec": dec.state_dict(), "args": vars(args)},
                       args.out)
    torch.save({"ana": ana.state_dict(), "dec": dec.state_dict(), "args": vars(args)}, args.out)


class Fit(nn.Module):
    """One image's latents (parameters) and decoder."""

    def __init__(self, img: torch.Tensor, levels: int, first: int, init: str | None = None,
                 out_conv: bool = False):
        super().__init__()
        h, w = img.shape[1:]
        if init:
            saved = torch.load(init, weights_only=True)
            levels, first = saved["args"]["levels"], saved["args"]["first"]
        self.levels, self.first = levels, first
        self.dec = Decoder(levels, first, out_conv=out_conv and not init)
        starts = [torch.zeros(s) for s in pyramid_sizes(h, w, levels, first)]
        if init:
            self.dec.load_state_dict(saved["dec"])
            ana = Analysis(levels, first)
            ana.load_state_dict(saved["ana"])
            align = 2 ** (first + levels - 1)
            with torch.no_grad():
                padded = F.pad(img[None], (0, -w % align, 0, -h % align), mode="replicate")
                starts = [y[0, :s.shape[0], :s.shape[1]] for y, s in zip(ana(padded), starts)]
        self.latents = nn.ParameterList([nn.Parameter(s.clone()) for s in starts])

    def forward(self, box: tuple[int, int, int, int], rate_mode: str, synth_mode: str
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and bits of the crop ``box`` = (top, left, h, w), aligned to the coarsest
        level."""
        top, left, h, w = box
        crops = []
        for level, y in enumerate(self.latents):
            s = 2 ** (self.first + level)
            crops.append(y[top // s:top // s + math.ceil(h / s),
                           left // s:left // s + math.ceil(w / s)][None])
        xh, bits = self.dec([quantize(y, rate_mode) for y in crops],
                            [quantize(y, synth_mode) for y in crops], (h, w))
        return xh[0], bits

    def measure(self, img: torch.Tensor, send_weights: bool) -> tuple[float, float]:
        """(bpp, PSNR) of the whole image with rounded latents."""
        h, w = img.shape[1:]
        with torch.no_grad():
            xh, bits = self((0, 0, h, w), "round", "round")
            mse = F.mse_loss(xh.clamp(0, 1), img).item()
        weights = sum(p.numel() for p in self.dec.parameters()) * WEIGHT_BITS * send_weights
        return (bits.item() + weights) / (h * w), 10 * math.log10(1 / mse)


def fit(args: argparse.Namespace) -> dict:
    """Fit one image for ``args.seconds``: noise-quantized rate, then (last 20%) rounding
    throughout at a tenth of the learning rate."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    img = load_rgb(args.image)
    h, w = img.shape[1:]
    model = Fit(img, args.levels, args.first, args.init, args.out_conv)
    send = args.tune == "all"
    groups = [{"params": list(model.latents.parameters()), "lr": args.lr}]
    if send:
        groups.append({"params": list(model.dec.parameters()), "lr": args.lr / 2})
    opt = torch.optim.Adam(groups)
    align = 2 ** (model.first + model.levels - 1)
    history = [(0.0, 0, *model.measure(img, send))]
    print(f"start: {history[-1][2]:.4f} bpp {history[-1][3]:.2f} dB", flush=True)
    start, step, shown = time.perf_counter(), 0, 0.0
    while (spent := time.perf_counter() - start) < args.seconds:
        late = spent > 0.8 * args.seconds
        if args.crop:
            top = int(rng.integers(0, (h - args.crop) // align + 1)) * align
            left = int(rng.integers(0, (w - args.crop) // align + 1)) * align
            box = (top, left, args.crop, args.crop)
        else:
            box = (0, 0, h, w)
        xh, bits = model(box, "ste" if late else "noise", "ste")
        target = img[:, box[0]:box[0] + box[2], box[1]:box[1] + box[3]]
        loss = F.mse_loss(xh, target) + args.lam * bits / (box[2] * box[3])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for i, group in enumerate(opt.param_groups):
            group["lr"] = args.lr * (0.5 if i else 1.0) * (0.1 if late else 1.0)
        opt.step()
        step += 1
        if spent - shown > args.log_every:
            shown = spent
            history.append((round(spent, 1), step, *model.measure(img, send)))
            print(f"{spent:6.1f} s  step {step}  {history[-1][2]:.4f} bpp  "
                  f"{history[-1][3]:.2f} dB", flush=True)
    bpp, psnr = model.measure(img, send)
    return {"image": Path(args.image).name, "seconds": args.seconds, "steps": step,
            "bpp": round(bpp, 4), "psnr": round(psnr, 2), "init": args.init, "tune": args.tune,
            "crop": args.crop, "lam": args.lam, "lr": args.lr}


def time_steps(args: argparse.Namespace) -> None:
    """Seconds per forward+backward step at a few crop sizes and on the whole image."""
    img = load_rgb(args.image)
    h, w = img.shape[1:]
    model = Fit(img, args.levels, args.first)
    for box in [(0, 0, 128, 128), (0, 0, 256, 256), (0, 0, h, w)]:
        start = time.perf_counter()
        for _ in range(3):
            xh, bits = model(box, "noise", "ste")
            (xh.mean() + bits).backward()
        print(f"{box[2]}x{box[3]}: {(time.perf_counter() - start) / 3:.3f} s per step")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("init", "fit", "time"):
        p = sub.add_parser(name, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.add_argument("--levels", type=int, default=6, help="latent levels")
        p.add_argument("--first", type=int, default=1,
                       help="the finest level is at 1/2**first of the image")
        p.add_argument("--lam", type=float, default=0.002, help="rate weight (MSE + lam * bpp)")
        p.add_argument("--threads", type=int, default=1, help="torch threads")
        if name == "init":
            p.add_argument("--minutes", type=float, default=50, help="training time")
            p.add_argument("--batch", type=int, default=8, help="crops per step")
            p.add_argument("--crop", type=int, default=128, help="crop side")
            p.add_argument("--data", help="training photos (default: ../shared/data/train)")
            p.add_argument("--out", default="fit-init.pt", help="where the weights go")
        else:
            p.add_argument("--image", required=True, help="the image to fit")
        if name == "fit":
            p.add_argument("--seconds", type=float, default=60, help="fitting time")
            p.add_argument("--crop", type=int, default=256, help="crop side (0: whole image)")
            p.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
            p.add_argument("--init", help="a learned initialization from 'init'")
            p.add_argument("--tune", choices=["all", "latents"], default="all",
                           help="fit the decoder too (its weights are then counted) or only "
                                "the latents (the decoder is the shared initialization)")
            p.add_argument("--seed", type=int, default=0, help="random seed")
            p.add_argument("--out-conv", action="store_true",
                           help="hidden layer to RGB through a 3x3 convolution (zero start)")
            p.add_argument("--log-every", type=float, default=10, help="seconds between lines")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "init":
        train_init(args)
    elif args.command == "time":
        time_steps(args)
    else:
        print(json.dumps(fit(args)))


if __name__ == "__main__":
    main()
