"""Measure first (issue 36): an overfitted-codec prototype on the CPU.

Not a codec yet (no bitstream): it measures what per-image fitting reaches in a given number of
seconds, from a zero start or from a learned initialization, with the rate estimated from the
entropy model (each sent decoder parameter counted at ``WEIGHT_BITS`` bits).

The model, after Cool-chic, shaped for a CPU:

- a latent pyramid, one channel per level, level l at 1/2**(first + l) of the image;
- upsampling: each level bilinearly to full resolution (``--upsample bilinear``), or learned:
  the pyramid is brought up one octave at a time by separable 8-tap filters, one pair per octave,
  started at bilinear (``--upsample learned``);
- synthesis: a per-pixel MLP on channels-last tensors (linear layers are matrix products;
  1x1 convolutions are not, here), then 3x3 convolutions: on RGB (``--syn-ch 3``, residual) or
  on ``--syn-ch`` channels (the last one to RGB), ``--syn-convs`` of them;
- entropy model: an ARM shared by the levels and decodable in ``--passes`` 2 (checkerboard) or 4
  (2x2 phases) passes per level, every latent of a pass at once; each latent sees the coarser
  level's 3x3 neighbourhood and the already decoded latents of a ``--window`` square; a Laplace
  distribution per latent;
- steps on random crops of the image (``--crop``) or on the whole image (``--crop 0``).

Schedules (``--schedule``): ``switch`` trains with noise on the rate and rounding (straight-
through) in the synthesis, then, for the last 20%, rounds everywhere at a tenth of the learning
rate; ``cosine`` and ``step`` quantize as ``switch`` but the learning rate decays through the
whole budget (half a cosine from 1 to 0; or 1, 0.3, 0.1, 0.03 by quarters); ``soft`` (after C3)
uses soft rounding whose temperature falls from 0.3 to 0.05 and additive noise (rate:
soft(y) + u, synthesis: soft(soft(y) + u)) with a cosine-decayed learning rate, then the last 15%
rounds everywhere, the learning rate falling from a tenth to zero. The temperature follows the
clock, and with ``--anneal-steps N`` it falls no faster than over N steps, so that a slow step
cannot leave the latents at zero while the temperature is already low.

Optimizers (``--opt``): Adam, or SOAP for the decoder (``--opt soap`` needs the ``heavyball``
package, which nicodec does not depend on); the latents always use Adam.

What is sent (``--tune``): ``all`` decoder weights, or on top of a learned initialization only
the latents (``latents``), also the biases (``bias``), the output layers (``out``) or a rank
``--rank`` delta of every weight matrix (``lowrank``).

Commands::

    python -m nicodec.eval.fit_explore init --minutes 50 --out init.pt [decoder options]
        trains the initialization (analysis network and the decoder: synthesis, ARM, learned
        upsampler) on the training photos; fits from it use its decoder;
    python -m nicodec.eval.fit_explore fit --image kodim23.png --seconds 60 [--init init.pt]
        fits one image, prints bpp and PSNR (rounded latents, whole image) every
        ``--log-every`` seconds and a JSON line at the end;
    python -m nicodec.eval.fit_explore time --image kodim23.png [model options] [--compile]
            [--channels-last]
        prints the seconds of one step at 128², 256² and the whole image;
    python -m nicodec.eval.fit_explore compare LOG...
        prints the fits' table rows against WebP (interpolated in log bpp from
        ``eval/results/kodak/per_image.csv``) and each configuration's BD-rate and BD-PSNR
        against WebP over its rate weights (``eval/bd.py``).

Results: ``eval/results/fit/explore.md``.
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
from torch.nn.utils import parametrize

WEIGHT_BITS = 8  # assumed cost of one sent decoder parameter
TAPS = 8  # learned upsampling filter length


def soft_round(y: torch.Tensor, temp: float) -> torch.Tensor:
    """Differentiable rounding (Agustsson & Theis): the identity as temp grows, rounding as it
    falls to 0."""
    m = torch.floor(y)
    r = y - m - 0.5
    return m + 0.5 + torch.tanh(r / temp) / (2 * math.tanh(0.5 / temp))


def quantize(y: torch.Tensor, mode: str, temp: float = 0.3) -> torch.Tensor:
    """``noise``: additive uniform noise; ``ste``: rounding with a straight-through gradient;
    ``round``: rounding; ``soft_noise``: soft rounding plus noise (rate while training,
    ``soft`` schedule); ``soft_twice``: soft(soft(y) + noise) (synthesis, ``soft`` schedule)."""
    if mode == "noise":
        return y + torch.empty_like(y).uniform_(-0.5, 0.5)
    if mode == "ste":
        return y + (torch.round(y) - y).detach()
    if mode == "soft_noise":
        return soft_round(y, temp) + torch.empty_like(y).uniform_(-0.5, 0.5)
    if mode == "soft_twice":
        return soft_round(quantize(y, "soft_noise", temp), temp)
    return torch.round(y)


def laplace_bits(y: torch.Tensor, mu: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Code length in bits of integer(-ish) ``y`` under Laplace(mu, b) integrated over bins."""
    d = y - mu

    def cdf(t: torch.Tensor) -> torch.Tensor:
        return 0.5 + 0.5 * torch.sign(t) * (1 - torch.exp(-t.abs() / b))

    return -torch.log2((cdf(d + 0.5) - cdf(d - 0.5)).clamp_min(1e-9)).sum()


class Upsampler(nn.Module):
    """Learned 2x upsampling, one separable ``TAPS``-tap filter per octave (the same along
    both axes), started at bilinear."""

    def __init__(self, octaves: int):
        super().__init__()
        k = torch.zeros(TAPS)
        k[TAPS // 2 - 2:TAPS // 2 + 2] = torch.tensor([0.25, 0.75, 0.75, 0.25])
        self.k = nn.Parameter(k.repeat(max(octaves, 1), 1))

    def up2(self, x: torch.Tensor, octave: int, h: int, w: int) -> torch.Tensor:
        """(B, C, h', w') -> (B, C, h, w), h <= 2h', w <= 2w' (replicated edges)."""
        c, k = x.shape[1], self.k[octave]
        pad = TAPS // 4
        offset = TAPS // 2 - 1 + 2 * pad  # where bilinear's first output sample lands
        x = F.pad(x, (0, 0, pad, pad), mode="replicate")
        x = F.conv_transpose2d(x, k.view(1, 1, TAPS, 1).expand(c, 1, TAPS, 1).contiguous(),
                               stride=(2, 1), groups=c)[:, :, offset:offset + h]
        x = F.pad(x, (pad, pad, 0, 0), mode="replicate")
        return F.conv_transpose2d(x, k.view(1, 1, 1, TAPS).expand(c, 1, 1, TAPS).contiguous(),
                                  stride=(1, 2), groups=c)[:, :, :, offset:offset + w]

    def forward(self, latents: list[torch.Tensor], first: int, size: tuple[int, int]
                ) -> torch.Tensor:
        """(B, h_l, w_l) per level -> (B, H, W, levels), finest level first."""
        z = latents[-1][:, None]
        for level in range(len(latents) - 2, -1, -1):
            y = latents[level]
            z = torch.cat([y[:, None], self.up2(z, first + level, *y.shape[1:])], 1)
        for octave in range(first - 1, -1, -1):
            h, w = math.ceil(size[0] / 2 ** octave), math.ceil(size[1] / 2 ** octave)
            z = self.up2(z, octave, h, w)
        return z.permute(0, 2, 3, 1)


class Synthesis(nn.Module):
    """Per-pixel MLP (channels last), then 3x3 convolutions. With ``ch`` 3 the MLP gives RGB and
    the ``convs`` are residual on it; otherwise the MLP gives ``ch`` channels, ``convs - 1``
    residual ReLU convolutions follow and a last one gives RGB. ``out_conv``: the hidden layer
    reaches the ``ch`` channels through a 3x3 convolution instead of a linear layer."""

    def __init__(self, levels: int, width: int = 16, out_conv: bool = False, ch: int = 3,
                 convs: int = 1):
        super().__init__()
        self.l1, self.l2 = nn.Linear(levels, width), nn.Linear(width, width)
        self.out = nn.Conv2d(width, ch, 3, padding=1) if out_conv else nn.Linear(width, ch)
        self.res = nn.ModuleList([nn.Conv2d(ch, ch, 3, padding=1)
                                  for _ in range(convs if ch == 3 else convs - 1)])
        for conv in self.res:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.rgb = nn.Conv2d(ch, 3, 3, padding=1) if ch != 3 else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, H, W, levels) upsampled latents -> (B, 3, H, W) image."""
        h = F.relu(self.l1(z))
        h = F.relu(self.l2(h)) + h
        if isinstance(self.out, nn.Conv2d):
            x = self.out(h.permute(0, 3, 1, 2))
        else:
            x = self.out(h).permute(0, 3, 1, 2)
        for conv in self.res:
            x = x + conv(x if self.rgb is None else F.relu(x))
        if self.rgb is not None:
            x = self.rgb(F.relu(x))
        return x + 0.5


def pass_order(passes: int) -> torch.Tensor:
    """(2, 2) decoding pass of a latent by (row % 2, column % 2)."""
    return torch.tensor([[0, 1], [1, 0]]) if passes == 2 else torch.tensor([[0, 2], [3, 1]])


class ARM(nn.Module):
    """Multi-pass context model shared by all levels, with a learned bias per level."""

    def __init__(self, levels: int, width: int = 16, window: int = 3, passes: int = 2):
        super().__init__()
        self.window, self.passes = window, passes
        self.l1, self.l2, self.out = (nn.Linear(9 + window ** 2 + passes - 1, width),
                                      nn.Linear(width, width), nn.Linear(width, 2))
        self.level = nn.Parameter(torch.zeros(levels, 2))
        order = pass_order(passes)
        r = window // 2
        offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
        # mask[i % 2, j % 2, k]: neighbour k is decoded before latent (i, j)
        mask = torch.tensor([[[float(order[(i + dy) % 2, (j + dx) % 2] < order[i, j])
                               for dy, dx in offsets] for j in range(2)] for i in range(2)])
        onehot = F.one_hot(order, passes)[..., 1:].float()
        self.register_buffer("mask", mask, persistent=False)
        self.register_buffer("onehot", onehot, persistent=False)

    def forward(self, y: torch.Tensor, coarse: torch.Tensor | None, level: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Laplace (mu, scale) of every latent of ``y`` (B, h, w) given the coarser level
        (B, ceil(h/2), ceil(w/2)) or None and the latents of earlier passes. ``y`` starts on
        an even row and column of its level."""
        B, h, w = y.shape
        if coarse is None:
            near = y.new_zeros(B, h, w, 9)
        else:
            up = F.interpolate(coarse[:, None], scale_factor=2, mode="nearest")[:, :, :h, :w]
            near = F.unfold(up, 3, padding=1).view(B, 9, h, w).permute(0, 2, 3, 1)
        k = self.window
        win = F.unfold(y[:, None], k, padding=k // 2).view(B, k * k, h, w).permute(0, 2, 3, 1)
        reps = (math.ceil(h / 2), math.ceil(w / 2), 1)
        mask = self.mask.repeat(*reps)[:h, :w]
        onehot = self.onehot.repeat(*reps)[:h, :w].expand(B, h, w, -1)
        hidden = F.relu(self.l1(torch.cat([near, win * mask, onehot], -1)))
        hidden = F.relu(self.l2(hidden)) + hidden
        out = self.out(hidden) + self.level[level]
        return out[..., 0], torch.exp(out[..., 1].clamp(-4, 5)) + 1e-3


class Decoder(nn.Module):
    """Upsampler, synthesis and ARM over a latent pyramid (what a file would carry the
    weights of)."""

    def __init__(self, levels: int, first: int, width: int = 16, out_conv: bool = False,
                 upsample: str = "bilinear", syn_ch: int = 3, syn_convs: int = 1,
                 window: int = 3, passes: int = 2):
        super().__init__()
        self.levels, self.first = levels, first
        self.syn = Synthesis(levels, width, out_conv, syn_ch, syn_convs)
        self.arm = ARM(levels, width, window, passes)
        self.up = Upsampler(first + levels - 1) if upsample == "learned" else None

    def forward(self, rate: list[torch.Tensor], synth: list[torch.Tensor], size: tuple[int, int]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) image from ``synth`` latents and the bits of ``rate`` latents
        (lists of (B, h_l, w_l))."""
        bits = rate[0].new_zeros(())
        for level in range(self.levels):
            coarse = rate[level + 1] if level + 1 < self.levels else None
            bits = bits + laplace_bits(rate[level], *self.arm(rate[level], coarse, level))
        if self.up is not None:
            z = self.up(synth, self.first, size)
        else:
            z = torch.stack([F.interpolate(y[:, None], scale_factor=2 ** (self.first + level),
                                           mode="bilinear", align_corners=False)
                             [:, 0, :size[0], :size[1]] for level, y in enumerate(synth)], -1)
        return self.syn(z), bits


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


DECODER_OPTIONS = ("out_conv", "upsample", "syn_ch", "syn_convs", "window", "passes")


def decoder_options(args: argparse.Namespace) -> dict:
    """The Decoder's keyword arguments given on the command line."""
    return {k: getattr(args, k) for k in DECODER_OPTIONS}


def old_weights(state: dict) -> dict:
    """A decoder saved by the first prototype mapped onto this one: its ARM's first layer saw
    the coarse 3x3, the four neighbours up, down, left, right and the pass (now window 3, 2
    passes); its RGB convolution was ``syn.conv``."""
    old = state["arm.l1.weight"]
    if old.shape[1] != 14:
        return state
    new = old.new_zeros(old.shape[0], 19)
    new[:, :9] = old[:, :9]
    new[:, [10, 16, 12, 14, 18]] = old[:, 9:14]  # up, down, left, right (3x3 unfold), pass
    state = {k.replace("syn.conv.", "syn.res.0."): v for k, v in state.items()}
    return {**state, "arm.l1.weight": new}


def train_init(args: argparse.Namespace) -> None:
    """Train analysis, synthesis and ARM together on random crops of the training photos."""
    from nicodec.models.data import DEFAULT_TRAIN, CropSampler, load_images, split_paths

    torch.manual_seed(0)
    sampler = CropSampler(load_images(split_paths(Path(args.data or DEFAULT_TRAIN))[0],
                                      args.crop), args.crop)
    ana = Analysis(args.levels, args.first)
    dec = Decoder(args.levels, args.first, **decoder_options(args))
    opt = torch.optim.Adam([*ana.parameters(), *dec.parameters()], lr=args.lr)
    start, step, ema = time.perf_counter(), 0, None
    while (spent := time.perf_counter() - start) < args.minutes * 60:
        if args.cosine:
            opt.param_groups[0]["lr"] = args.lr * lr_factor("cosine", spent / (args.minutes * 60))
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


class LowRankDelta(nn.Module):
    """Weight = shared weight + A @ B, A (out, rank) from zero, B (rank, in): what is sent."""

    def __init__(self, shape: torch.Size, rank: int):
        super().__init__()
        self.shape = shape
        self.a = nn.Parameter(torch.zeros(shape[0], rank))
        self.b = nn.Parameter(torch.randn(rank, math.prod(shape[1:])) * 0.1)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.a @ self.b).view(self.shape)


class Fit(nn.Module):
    """One image's latents (parameters) and decoder."""

    def __init__(self, img: torch.Tensor, levels: int, first: int, init: str | None = None,
                 **options):
        super().__init__()
        h, w = img.shape[1:]
        if init:
            saved = torch.load(init, weights_only=True)
            levels, first = saved["args"]["levels"], saved["args"]["first"]
            # the initialization's own decoder (the first ones saved none of its options)
            options = {k: saved["args"][k] for k in DECODER_OPTIONS if k in saved["args"]}
        self.levels, self.first = levels, first
        self.dec = Decoder(levels, first, **options)
        starts = [torch.zeros(s) for s in pyramid_sizes(h, w, levels, first)]
        if init:
            self.dec.load_state_dict(old_weights(saved["dec"]))
            ana = Analysis(levels, first)
            ana.load_state_dict(saved["ana"])
            align = 2 ** (first + levels - 1)
            with torch.no_grad():
                padded = F.pad(img[None], (0, -w % align, 0, -h % align), mode="replicate")
                starts = [y[0, :s.shape[0], :s.shape[1]] for y, s in zip(ana(padded), starts)]
        self.latents = nn.ParameterList([nn.Parameter(s.clone()) for s in starts])

    def sent(self, tune: str, rank: int) -> list[nn.Parameter]:
        """The decoder parameters trained and sent for ``tune`` (adds the low-rank deltas)."""
        if tune == "all":
            return list(self.dec.parameters())
        for p in self.dec.parameters():
            p.requires_grad_(False)
        if tune == "bias":
            chosen = [p for n, p in self.dec.named_parameters() if n.endswith("bias")]
            chosen.append(self.dec.arm.level)
        elif tune == "out":
            chosen = [p for m in (self.dec.syn.out, self.dec.syn.res, self.dec.arm.out)
                      for p in m.parameters()]
        elif tune == "lowrank":
            chosen = []
            for m in self.dec.modules():
                if isinstance(m, (nn.Linear, nn.Conv2d)):
                    parametrize.register_parametrization(m, "weight",
                                                         LowRankDelta(m.weight.shape, rank))
                    chosen += list(m.parametrizations.weight[0].parameters())
        else:
            chosen = []
        for p in chosen:
            p.requires_grad_(True)
        return chosen

    def forward(self, box: tuple[int, int, int, int], rate_mode: str, synth_mode: str,
                temp: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and bits of the crop ``box`` = (top, left, h, w), aligned to the coarsest
        level."""
        top, left, h, w = box
        crops = []
        for level, y in enumerate(self.latents):
            s = 2 ** (self.first + level)
            crops.append(y[top // s:top // s + math.ceil(h / s),
                           left // s:left // s + math.ceil(w / s)][None])
        xh, bits = self.dec([quantize(y, rate_mode, temp) for y in crops],
                            [quantize(y, synth_mode, temp) for y in crops], (h, w))
        return xh[0], bits

    def measure(self, img: torch.Tensor, sent: int, synth_mode: str = "round",
                temp: float = 0.3) -> tuple[float, float]:
        """(bpp, PSNR) of the whole image with rounded latents (or the synthesis fed as in
        training, ``synth_mode``), ``sent`` decoder parameters counted."""
        h, w = img.shape[1:]
        with torch.no_grad():
            xh, bits = self((0, 0, h, w), "round", synth_mode, temp)
            mse = F.mse_loss(xh.clamp(0, 1), img).item()
        return (bits.item() + sent * WEIGHT_BITS) / (h * w), 10 * math.log10(1 / mse)


def make_optimizer(latents: list[nn.Parameter], decoder: list[nn.Parameter],
                   args: argparse.Namespace) -> list[torch.optim.Optimizer]:
    """Adam for the latents; Adam or SOAP (``heavyball``) for the decoder."""
    opts = [torch.optim.Adam(latents, lr=args.lat_lr)]
    if decoder and args.opt == "soap":
        import heavyball

        heavyball.utils.compile_mode = None  # eager: compiling its step for a CPU takes minutes
        opts.append(heavyball.ForeachSOAP(decoder, lr=args.lr, weight_decay=0))
    elif decoder:
        opts.append(torch.optim.Adam(decoder, lr=args.lr))
    return opts


def lr_factor(shape: str, progress: float) -> float:
    """The learning rate's factor at ``progress`` (0..1) of the budget: ``switch``: 1, then a
    tenth for the last 20%; ``cosine``: half a cosine from 1 to 0; ``step``: 1, 0.3, 0.1, 0.03
    by quarters."""
    if shape == "cosine":
        return 0.5 + 0.5 * math.cos(math.pi * progress)
    if shape == "step":
        return (1.0, 0.3, 0.1, 0.03)[min(int(progress * 4), 3)]
    return 0.1 if progress > 0.8 else 1.0


def schedule(args: argparse.Namespace, progress: float, step: int
             ) -> tuple[str, str, float, float]:
    """(rate mode, synthesis mode, soft-rounding temperature, learning-rate factor) at
    ``progress`` (0..1) of the budget, after ``step`` steps."""
    if args.schedule != "soft":
        late = progress > 0.8
        return ("ste" if late else "noise"), "ste", 0.3, lr_factor(args.schedule, progress)
    if progress < 0.85:
        p = progress / 0.85
        fall = min(p, step / args.anneal_steps) if args.anneal_steps else p
        temp = 0.3 * (0.05 / 0.3) ** fall
        return "soft_noise", "soft_twice", temp, 0.55 + 0.45 * math.cos(math.pi * p)
    return "ste", "ste", 0.05, 0.1 * (1 - (progress - 0.85) / 0.15)


def fit(args: argparse.Namespace) -> dict:
    """Fit one image for ``args.seconds`` (wall time, logging included)."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    img = load_rgb(args.image)
    h, w = img.shape[1:]
    model = Fit(img, args.levels, args.first, args.init, **decoder_options(args))
    decoder = model.sent(args.tune, args.rank)
    sent = sum(p.numel() for p in decoder)
    opts = make_optimizer(list(model.latents.parameters()), decoder, args)
    base = [[g["lr"] for g in o.param_groups] for o in opts]
    if args.compile:
        model.dec = torch.compile(model.dec)
    align = 2 ** (model.first + model.levels - 1)
    history = [(0.0, 0, *model.measure(img, sent))]
    print(f"start: {history[-1][2]:.4f} bpp {history[-1][3]:.2f} dB  "
          f"({sent} decoder parameters sent)", flush=True)
    start, step, shown, ema, gap, previous = time.perf_counter(), 0, 0.0, None, None, None
    while (spent := time.perf_counter() - start) < args.seconds:
        rate_mode, synth_mode, temp, factor = schedule(args, spent / args.seconds, step)
        if gap is None and rate_mode == "ste" and previous:
            # the final rounding phase starts: training-time against rounded PSNR
            trained = model.measure(img, sent, previous[1], previous[2])[1]
            gap = (round(trained, 2), round(model.measure(img, sent)[1], 2))
        previous = (rate_mode, synth_mode, temp)
        if args.crop:
            top = int(rng.integers(0, (h - args.crop) // align + 1)) * align
            left = int(rng.integers(0, (w - args.crop) // align + 1)) * align
            box = (top, left, args.crop, args.crop)
        else:
            box = (0, 0, h, w)
        xh, bits = model(box, rate_mode, synth_mode, temp)
        target = img[:, box[0]:box[0] + box[2], box[1]:box[1] + box[3]]
        mse = F.mse_loss(xh, target)
        loss = mse + args.lam * bits / (box[2] * box[3])
        for o, lrs in zip(opts, base):
            o.zero_grad(set_to_none=True)
            for g, lr in zip(o.param_groups, lrs):
                g["lr"] = lr * factor
        loss.backward()
        for o in opts:
            o.step()
        step += 1
        now = 10 * math.log10(1 / max(mse.item(), 1e-10))
        ema = now if ema is None else 0.95 * ema + 0.05 * now
        if spent - shown > args.log_every:
            shown = spent
            history.append((round(spent, 1), step, *model.measure(img, sent)))
            print(f"{spent:6.1f} s  step {step}  {history[-1][2]:.4f} bpp  "
                  f"{history[-1][3]:.2f} dB  (training {ema:.2f} dB, {synth_mode})", flush=True)
    bpp, psnr = model.measure(img, sent)
    return {"image": Path(args.image).name, "seconds": args.seconds, "steps": step,
            "bpp": round(bpp, 4), "psnr": round(psnr, 2), "sent": sent,
            "switch_psnr": gap, "init": args.init, "tune": args.tune, "crop": args.crop,
            "lam": args.lam, "lr": args.lr, "lat_lr": args.lat_lr, "opt": args.opt,
            "schedule": args.schedule, "anneal_steps": args.anneal_steps,
            "levels": model.levels, "first": model.first,
            **({} if args.init else decoder_options(args))}


def time_steps(args: argparse.Namespace) -> None:
    """Seconds per forward+backward step at a few crop sizes and on the whole image (the first
    steps, compilation included with ``--compile``, are timed apart)."""
    img = load_rgb(args.image)
    h, w = img.shape[1:]
    model = Fit(img, args.levels, args.first, **decoder_options(args))
    if args.channels_last:  # the convolutions' weights, hence their outputs, in NHWC
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model.dec = torch.compile(model.dec)
    for box in [(0, 0, 128, 128), (0, 0, 256, 256), (0, 0, h, w)]:
        start = time.perf_counter()
        for _ in range(2):
            xh, bits = model(box, "noise", "ste")
            (xh.mean() + bits).backward()
        warm = time.perf_counter()
        for _ in range(args.repeat):
            xh, bits = model(box, "noise", "ste")
            (xh.mean() + bits).backward()
        print(f"{box[2]}x{box[3]}: {(time.perf_counter() - warm) / args.repeat:.3f} s per step "
              f"(first two: {warm - start:.1f} s)", flush=True)


def webp_curve(csv_path: Path, image: str) -> tuple[np.ndarray, np.ndarray]:
    """WebP's (bpp, PSNR) points for ``image`` from a ``per_image.csv``, by rising bpp."""
    import csv

    with open(csv_path, newline="") as f:
        points = sorted((float(r["bpp"]), float(r["psnr"])) for r in csv.DictReader(f)
                        if r["codec"] == "webp" and r["image"] == image)
    if len(points) < 2:
        raise SystemExit(f"error: no WebP curve for {image} in {csv_path}")
    return np.array([p[0] for p in points]), np.array([p[1] for p in points])


def against_webp(bpp: float, psnr: float, webp: tuple[np.ndarray, np.ndarray]
                 ) -> tuple[float, float | None]:
    """WebP's PSNR at ``bpp`` and our rate over WebP's at our ``psnr`` (None outside WebP's
    range), interpolated in log bpp."""
    rates, quality = np.log(webp[0]), webp[1]
    at_bpp = float(np.interp(math.log(bpp), rates, quality))
    if not quality[0] <= psnr <= quality[-1]:
        return at_bpp, None
    return at_bpp, bpp / math.exp(float(np.interp(psnr, quality, rates)))


def compare(args: argparse.Namespace) -> None:
    """Print the table rows of the fits in ``args.logs`` (the last JSON line of each log is
    its result) against WebP, and each configuration's BD-rate and BD-PSNR over its rate weights."""
    from nicodec.eval.bd import bd_psnr, bd_rate

    groups: dict[tuple, list[dict]] = {}
    for log in args.logs:
        results = [line for line in Path(log).read_text().splitlines() if line.startswith("{")]
        if not results:
            raise SystemExit(f"error: {log} holds no fit result (a JSON line)")
        result = json.loads(results[-1])
        label = result["schedule"] + (f", anneal {result['anneal_steps']} steps"
                                      if result.get("anneal_steps") else "")
        label += ", learned init" if result["init"] else ", zero start"
        label += f", lr {result['lr']:g}, latents {result['lat_lr']:g}"
        groups.setdefault((result["image"], label, result["seconds"]), []).append(result)
    for (image, label, seconds), results in groups.items():
        webp = webp_curve(args.webp, image)
        for r in sorted(results, key=lambda r: -r["lam"]):
            at_bpp, rate = against_webp(r["bpp"], r["psnr"], webp)
            ratio = "n/a" if rate is None else f"{100 * (rate - 1):+.0f}%"
            print(f"| {Path(image).stem} | {label}, lam {r['lam']:g} | {seconds:g} | "
                  f"{r['steps']} | {r['bpp']:.3f} | {r['psnr']:.2f} | {at_bpp:.2f} | "
                  f"{r['psnr'] - at_bpp:+.2f} | {ratio} |")
        if len(results) > 1:
            ours = ([r["bpp"] for r in results], [r["psnr"] for r in results])
            print(f"{Path(image).stem}, {label}, {seconds:g} s: BD-rate against WebP "
                  f"{bd_rate(*webp, *ours):+.1f}%, BD-PSNR {bd_psnr(*webp, *ours):+.2f} dB")


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
        p.add_argument("--out-conv", action="store_true",
                       help="hidden layer to the 3x3 part through a 3x3 convolution")
        p.add_argument("--upsample", choices=["bilinear", "learned"], default="bilinear",
                       help="latents to full resolution")
        p.add_argument("--syn-ch", type=int, default=3, help="channels of the 3x3 layers")
        p.add_argument("--syn-convs", type=int, default=1, help="3x3 layers in the synthesis")
        p.add_argument("--window", type=int, default=3, help="ARM's same-level window side")
        p.add_argument("--passes", type=int, choices=[2, 4], default=2,
                       help="ARM decoding passes per level")
        if name == "init":
            p.add_argument("--minutes", type=float, default=50, help="training time")
            p.add_argument("--batch", type=int, default=8, help="crops per step")
            p.add_argument("--crop", type=int, default=128, help="crop side")
            p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
            p.add_argument("--cosine", action="store_true",
                           help="the learning rate falls by half a cosine to 0 over the minutes")
            p.add_argument("--data", help="training photos (default: ../shared/data/train)")
            p.add_argument("--out", default="fit-init.pt", help="where the weights go")
            continue
        p.add_argument("--image", required=True, help="the image to fit")
        p.add_argument("--compile", action="store_true", help="torch.compile the step")
        if name == "time":
            p.add_argument("--repeat", type=int, default=5, help="timed steps per size")
            p.add_argument("--channels-last", action="store_true",
                           help="the model in channels-last memory format")
            continue
        p.add_argument("--seconds", type=float, default=60, help="fitting time")
        p.add_argument("--crop", type=int, default=256, help="crop side (0: whole image)")
        p.add_argument("--lr", type=float, default=0.005, help="decoder learning rate")
        p.add_argument("--lat-lr", type=float, default=0.01, help="latents' learning rate")
        p.add_argument("--opt", choices=["adam", "soap"], default="adam",
                       help="the decoder's optimizer (latents: Adam)")
        p.add_argument("--schedule", choices=["switch", "cosine", "step", "soft"],
                       default="switch", help="quantization and learning-rate schedule "
                       "(see above)")
        p.add_argument("--anneal-steps", type=int, default=0,
                       help="soft: the temperature takes at least this many steps to fall "
                       "(0: it follows the clock only)")
        p.add_argument("--init", help="a learned initialization from 'init' (its decoder)")
        p.add_argument("--tune", choices=["all", "latents", "bias", "out", "lowrank"],
                       default="all", help="decoder parameters fitted and sent")
        p.add_argument("--rank", type=int, default=2, help="rank of the deltas (lowrank)")
        p.add_argument("--seed", type=int, default=0, help="random seed")
        p.add_argument("--log-every", type=float, default=10, help="seconds between lines")
    p = sub.add_parser("compare", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("logs", nargs="+", help="fit logs (the last JSON line is the result)")
    p.add_argument("--webp", type=Path,
                   default=Path(__file__).parent / "results" / "kodak" / "per_image.csv",
                   help="per-image results holding WebP's curve")
    args = parser.parse_args(argv)
    if args.command == "compare":
        compare(args)
        return
    torch.set_num_threads(args.threads)
    if args.command == "init":
        train_init(args)
    elif args.command == "time":
        time_steps(args)
    else:
        print(json.dumps(fit(args)))


if __name__ == "__main__":
    main()
