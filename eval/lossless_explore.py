"""Measure lossless designs before building one: ``python -m nicodec.eval.lossless_explore``.

For every Kodak image it computes the exact code length a design would produce (the ideal code
length -log2 p of each sample under the integer tables its coder would use, plus the side
information it sends), vectorised: the encoder knows every pixel, so every context can be
computed at once. No sequential decode is needed to compare designs.

Designs differ in
* order: ``raster`` (causal W/N/NW/NE... context, needs a wavefront decode) or ``levels`` (a
  coarse grid, then per level the centres (D), the horizontal (A1) and vertical (A2) midpoints,
  each predicted from known neighbours on all sides: one vectorised step per pass);
* colour: ``rgb`` (G first, then R and B, each seeing the channels coded before it at the same
  pixel) or ``none`` (channels alone);
* prediction: least squares per pass and channel, coefficients in fixed point (12 bits) and sent;
* distribution: context classes from a fitted local-activity estimate (quantized on a log
  ladder), each class coded with one table: ``empirical`` (the class's own histogram, the bound
  with no side cost), ``laplace`` / ``logistic`` (one scale per class from a ladder, 6 bits each),
  optionally through hybrid-uint tokens (a token per exponent and top mantissa bits, the low bits
  raw) as a 16-bit-capable coder would; ``adaptive`` (token counts shared by a channel's passes,
  updated in chunks) or ``bank`` (a bank of tables learned with ``--learn-bank``).

``--wls 8`` (rows weighted by 1/(gradient + 8)) and ``--groups 4`` (one predictor per activity
quartile, four times the weights to send), each with ``--nonlinear --more-act``, were measured
on the first 4 Kodak images and lost: 8.87 and 8.94 bpp, where ``--nonlinear`` alone gave 8.81
and ``--more-act`` alone 8.82. The table of the full runs: ``eval/results/lossless/explore.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FRAC = 12  # fixed-point bits of the prediction coefficients
COEF_BITS = 16  # sent per coefficient
SCALES = np.exp(np.linspace(np.log(0.15), np.log(3000.0), 64))  # the scale ladder, 6 bits
PRECISION = 16
NTOK = 42  # hybrid tokens (split 16, one mantissa bit) of zigzagged 16-bit residuals


# ---------------------------------------------------------------------------------------------
# distributions and tables

def _cdf(kind: str, x: np.ndarray, scale: float) -> np.ndarray:
    if kind == "laplace":
        return np.where(x < 0, 0.5 * np.exp(np.minimum(x, 0) / scale),
                        1 - 0.5 * np.exp(-np.maximum(x, 0) / scale))
    return 1 / (1 + np.exp(-x / scale))  # logistic


def value_probs(kind: str, scale: float, half: int) -> np.ndarray:
    """Probabilities of the folded residuals -half..half-1 under a discretized distribution."""
    edges = np.arange(-half, half + 1) - 0.5
    p = np.diff(_cdf(kind, edges, scale))
    return np.maximum(p, 0) / max(p.sum(), 1e-300)


def quantize(p: np.ndarray) -> np.ndarray:
    """Float probabilities to integer frequencies summing to 2**PRECISION, each >= 1."""
    total = 1 << PRECISION
    k = len(p)
    f = 1 + np.floor(p * (total - k)).astype(np.int64)
    f[np.argmax(f)] += total - f.sum()
    return f


def zigzag(r: np.ndarray) -> np.ndarray:
    return np.where(r >= 0, 2 * r, -2 * r - 1)


def hybrid(v: np.ndarray, split: int = 16, msb: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Hybrid-uint token and raw bit count of non-negative values (JPEG XL's scheme)."""
    v = v.astype(np.int64)
    n = np.floor(np.log2(np.maximum(v, 1))).astype(np.int64)
    e = split.bit_length() - 1
    m = (v >> np.maximum(n - msb, 0)) & ((1 << msb) - 1)
    token = np.where(v < split, v, split + (n - e) * (1 << msb) + m)
    raw = np.where(v < split, 0, n - msb)
    return token, raw


def class_bits(r: np.ndarray, kind: str, half: int, tokens: bool) -> tuple[float, float]:
    """Bits of one class's folded residuals ``r`` and the side bits of its table."""
    if len(r) == 0:
        return 0.0, 0.0
    if kind == "empirical":
        if tokens:
            t, raw = hybrid(zigzag(r))
            _, c = np.unique(t, return_counts=True)
            return float(-(c * np.log2(c / len(t))).sum() + raw.sum()), 0.0
        _, c = np.unique(r, return_counts=True)
        return float(-(c * np.log2(c / len(r))).sum()), 0.0
    values = np.arange(-half, half)
    best = np.inf
    # the scale nearest the sample's spread and its neighbours on the ladder
    spread = max(np.mean(np.abs(r)), 0.1)
    centre = int(np.argmin(np.abs(np.log(SCALES) - np.log(spread))))
    for i in range(max(centre - 6, 0), min(centre + 7, len(SCALES))):
        p = value_probs(kind, SCALES[i], half)
        if tokens:
            t_all, raw_all = hybrid(zigzag(values))
            tp = np.bincount(t_all, weights=p)
            f = quantize(tp)
            t, raw = hybrid(zigzag(r))
            bits = float(-np.log2(f[t] / (1 << PRECISION)).sum() + raw.sum())
        else:
            f = quantize(p)
            bits = float(-np.log2(f[r + half] / (1 << PRECISION)).sum())
        best = min(best, bits)
    return best, 6.0


def adaptive_bits(passes: list, opt: argparse.Namespace, half: int) -> float:
    """Bits of one channel's passes when each class's table is its counts so far (shared by all
    passes, updated after every chunk of a pass) plus a logistic prior at the class's scale."""
    nsym = 2 * half
    ntok = int(hybrid(np.array([2 * nsym]))[0][0]) + 1
    counts = np.zeros((opt.classes, ntok if opt.tokens else nsym))
    centres = 2.0 ** ((np.arange(opt.classes) + 0.5 - opt.classes / 12) * 12 / opt.classes) - 0.5
    values = np.arange(-half, half)
    prior = []
    for k in range(opt.classes):
        p = value_probs("logistic", max(centres[k], 0.2) / 1.386, half)
        if opt.tokens:
            p = np.bincount(hybrid(zigzag(values))[0], weights=p, minlength=ntok)
        prior.append(p)
    prior = np.array(prior) * opt.prior
    bits = 0.0
    for cls, r in passes:
        sym, raw = hybrid(zigzag(r)) if opt.tokens else (r + half, np.zeros(len(r)))
        bits += raw.sum()
        bounds = np.linspace(0, len(r), opt.chunks + 1).astype(int)
        for a, b in zip(bounds[:-1], bounds[1:]):
            cc, ss = cls[a:b], sym[a:b]
            for k in np.unique(cc):
                f = quantize_counts(counts[k] + prior[k])
                sk = ss[cc == k]
                bits += float(-np.log2(f[sk] / (1 << PRECISION)).sum())
            np.add.at(counts, (cc, ss), 1)
    return bits


def quantize_counts(c: np.ndarray) -> np.ndarray:
    return quantize(c / c.sum())


def fold(r: np.ndarray, half: int) -> np.ndarray:
    """Residual modulo the sample range, into -half..half-1 (CALIC's folding)."""
    return (r + half) % (2 * half) - half


# ---------------------------------------------------------------------------------------------
# orders and neighbourhoods

def level_passes(h_img: int, w_img: int, top: int):
    """(name, ys, xs, offsets) of the coarse grid and every pass of the level order."""
    y, x = np.meshgrid(np.arange(0, h_img, top), np.arange(0, w_img, top), indexing="ij")
    yield "base", y.ravel(), x.ravel(), [(-top, 0), (0, -top), (-top, -top), (-top, top)]
    s = top
    while s >= 2:
        h = s // 2
        near_d = [(-h, -h), (-h, h), (h, -h), (h, h)]
        far_d = [(-h, -3 * h), (-h, 3 * h), (h, -3 * h), (h, 3 * h),
                 (-3 * h, -h), (-3 * h, h), (3 * h, -h), (3 * h, h)]
        near_a = [(0, -h), (0, h), (-h, 0), (h, 0)]
        far_a = [(-2 * h, -h), (-2 * h, h), (2 * h, -h), (2 * h, h),
                 (-h, -2 * h), (-h, 2 * h), (h, -2 * h), (h, 2 * h)]
        for name, (oy, ox), offsets in (
                ("D", (h, h), near_d + far_d),
                ("A1", (0, h), near_a + far_a),
                ("A2", (h, 0), [(-h, 0), (h, 0), (0, -h), (0, h)] + far_a + near_d)):
            y, x = np.meshgrid(np.arange(oy, h_img, s), np.arange(ox, w_img, s), indexing="ij")
            yield f"{name}{s}", y.ravel(), x.ravel(), offsets
        s = h


def resolve(pos: np.ndarray, d: int, size: int, h: int) -> np.ndarray:
    """Neighbour coordinate pos+d along one axis, reflected / pulled in (keeping the parity in
    units of h) when it falls outside the image."""
    out = pos + d
    cand = [d, -d]
    step = 2 * h
    m = abs(d)
    while m - step >= 0:
        m -= step
        cand += [m, -m]
    res = np.full_like(pos, -1)
    for c in cand[::-1]:
        q = pos + c
        ok = (q >= 0) & (q < size)
        res = np.where(ok, q, res)
    # the first candidate in the chain that is inside wins: apply in reverse so it overwrites
    return np.where((out >= 0) & (out < size), out, res)


# ---------------------------------------------------------------------------------------------
# least squares in fixed point

def directional(f: list[np.ndarray]) -> list[np.ndarray]:
    """Nonlinear features of the 4 nearest neighbours (two opposite pairs): the mean of the
    smoother pair, a gradient-weighted mean, the median of the four."""
    a, b, c, d = f
    g1, g2 = np.abs(a - b), np.abs(c - d)
    pick = np.where(g1 <= g2, a + b, c + d)
    wmean = ((a + b) * (g2 + 1) + (c + d) * (g1 + 1)) // (g1 + g2 + 2)
    med = np.sort(np.stack(f), 0)
    return [pick, wmean, med[1] + med[2]]


def fit_predict(feats: np.ndarray, target: np.ndarray, maxval: int,
                weight: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Least-squares coefficients (fixed point, a bias included), the integer predictions."""
    a = np.concatenate([feats, np.ones((len(feats), 1))], 1).astype(np.float64)
    sub = slice(None) if len(a) < 200000 else slice(None, None, max(1, len(a) // 200000))
    w = np.ones(len(a)) if weight is None else weight
    coef, *_ = np.linalg.lstsq(a[sub] * w[sub, None], target[sub].astype(np.float64) * w[sub],
                               rcond=None)
    q = np.rint(coef * (1 << FRAC)).astype(np.int64)
    pred = (a.astype(np.int64) @ q + (1 << (FRAC - 1))) >> FRAC
    return np.clip(pred, 0, maxval), len(q) * COEF_BITS


def fit_scale(act: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Activity features -> estimated |residual| (least squares, weights would be sent)."""
    a = np.concatenate([act, np.ones((len(act), 1))], 1)
    coef, *_ = np.linalg.lstsq(a, target.astype(np.float64), rcond=None)
    return np.maximum(a @ coef, 0.0)


def classes(est: np.ndarray, n: int) -> np.ndarray:
    """Class index on a log ladder of the activity estimate."""
    return np.clip(np.floor(np.log2(est + 0.5) * n / 12 + n / 12), 0, n - 1).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# designs

def code_levels(img: np.ndarray, opt: argparse.Namespace) -> float:
    """Bits of ``img`` (H, W, C) under the level order."""
    hh, ww, nc = img.shape
    maxval = 255
    half = 128
    x = img.astype(np.int64)
    resid = np.zeros_like(x)
    known = np.zeros((hh, ww), bool)
    stream = [[] for _ in range(nc)]
    total = 0.0
    for name, ys, xs, offsets in level_passes(hh, ww, opt.top):
        if name == "base":  # causal on the coarse grid (N, W, NW, NE): missing ones -> N
            nb = []
            for dy, dx in offsets:
                ny, nx = ys + dy, xs + dx
                bad = (ny < 0) | (nx < 0) | (nx >= ww)
                ny = np.where(bad, np.maximum(ys - opt.top, 0), ny)
                nx = np.where(bad, xs, nx)
                nb.append((ny, nx))
        else:
            h = abs(offsets[0][0]) or abs(offsets[0][1])
            nb = [(resolve(ys, dy, hh, h), resolve(xs, dx, ww, h)) for dy, dx in offsets]
            assert all(known[ny, nx].all() for ny, nx in nb), name
        for c in range(nc):
            f = [x[ny, nx, c] for ny, nx in nb]
            act = [np.abs(f[0] - f[1]), np.abs(f[2] - f[3]), np.abs(f[0] - f[2]),
                   np.abs(f[1] - f[3])]
            if opt.nonlinear and name != "base":
                f += directional(f[:4])
            act += [np.abs(resid[ny, nx, c]) for ny, nx in nb[:4]]
            if opt.more_act:
                act += [np.abs(resid[ny, nx, c]) for ny, nx in nb[4:]]
            if opt.colour == "rgb":
                for c2 in range(c):
                    g = [x[ny, nx, c2] for ny, nx in nb[:4]]
                    f += [x[ys, xs, c2]] + g
                    if opt.nonlinear and name != "base":
                        f += [x[ys, xs, c2] - d for d in directional(g)]
                    act += [np.abs(resid[ys, xs, c2])]
            feats = np.stack(f, 1)
            if name == "base":
                pred = np.full(len(ys), half)
                side = 0
                pred = np.where(ys > 0, x[nb[0][0], nb[0][1], c], half)
            else:
                grad = sum(act[:4]).astype(np.float64)
                w = 1 / (grad + opt.wls) if opt.wls else None
                if opt.groups > 1:
                    edges = np.quantile(grad, np.linspace(0, 1, opt.groups + 1)[1:-1])
                    grp = np.searchsorted(edges, grad)
                    pred = np.zeros(len(ys), np.int64)
                    side = 0
                    for g in range(opt.groups):
                        m = grp == g
                        if m.sum() > feats.shape[1] * 4:
                            pred[m], sd = fit_predict(feats[m], x[ys, xs, c][m], maxval,
                                                      None if w is None else w[m])
                            side += sd
                        else:
                            pred[m] = f[0][m]
                else:
                    pred, side = fit_predict(feats, x[ys, xs, c], maxval, w)
            r = fold(x[ys, xs, c] - pred, half)
            resid[ys, xs, c] = r
            est = fit_scale(np.stack(act, 1).astype(np.float64), np.abs(r))
            cls = classes(est, opt.classes) if name != "base" else np.zeros(len(r), np.int64)
            side += len(act) * 12 if name != "base" else 0
            if opt.dist == "adaptive":
                stream[c].append((cls, r))
            elif opt.dist == "bank":
                tok, raw = hybrid(zigzag(r))
                hist = np.zeros((opt.classes, NTOK))
                np.add.at(hist, (cls, tok), 1)
                total += raw.sum()
                if opt.collect is not None:
                    opt.collect.append(hist[hist.sum(1) > 0])
                else:
                    cost = hist @ -np.log2(opt.bank / (1 << PRECISION)).T  # (classes, M)
                    used = hist.sum(1) > 0
                    total += cost[used].min(1).sum() + used.sum() * np.log2(len(opt.bank))
            else:
                for k in range(opt.classes):
                    b, s = class_bits(r[cls == k], opt.dist, half, opt.tokens)
                    total += b + s
            total += side
        known[ys, xs] = True
    if opt.dist == "adaptive":
        total += sum(adaptive_bits(stream[c], opt, half) for c in range(nc))
    return total


def code_raster(img: np.ndarray, opt: argparse.Namespace) -> float:
    """Bits of ``img`` under a causal raster context (the encoder side, vectorised)."""
    hh, ww, nc = img.shape
    half = 128
    p = 2
    x = np.pad(img.astype(np.int64), ((p, 0), (p, p), (0, 0)), mode="edge")
    resid = np.zeros_like(x)
    ys, xs = np.meshgrid(np.arange(p, hh + p), np.arange(p, ww + p), indexing="ij")
    ys, xs = ys.ravel(), xs.ravel()
    offsets = [(0, -1), (-1, 0), (-1, -1), (-1, 1), (0, -2), (-2, 0), (-2, 1), (-1, -2),
               (-1, 2), (-2, -1)]
    total = 0.0
    for c in range(nc):
        f = [x[ys + dy, xs + dx, c] for dy, dx in offsets]
        w, n, nw, ne = f[:4]
        act = [np.abs(w - nw), np.abs(n - nw), np.abs(n - ne), np.abs(f[4] - w),
               np.abs(f[5] - n)]
        act += [np.abs(resid[ys + dy, xs + dx, c]) for dy, dx in offsets[:4]]
        if opt.colour == "rgb":
            for c2 in range(c):
                f += [x[ys, xs, c2]] + [x[ys + dy, xs + dx, c2] for dy, dx in offsets[:4]]
                act += [np.abs(resid[ys, xs, c2])]
        pred, side = fit_predict(np.stack(f, 1), x[ys, xs, c], 255)
        r = fold(x[ys, xs, c] - pred, half)
        resid[ys, xs, c] = r  # residuals of earlier rows in the padded area stay 0
        est = fit_scale(np.stack(act, 1).astype(np.float64), np.abs(r))
        cls = classes(est, opt.classes)
        for k in range(opt.classes):
            b, s = class_bits(r[cls == k], opt.dist, half, opt.tokens)
            total += b + s
        total += side + len(act) * 12
    return total


def learn_bank(hists: np.ndarray, m: int, rounds: int = 30) -> np.ndarray:
    """Cluster class histograms (n, NTOK) into ``m`` integer tables minimising their code
    length (k-means under the cross-entropy)."""
    rng = np.random.default_rng(0)
    probs = (hists + 0.02) / (hists + 0.02).sum(1, keepdims=True)
    tables = probs[rng.choice(len(hists), m, replace=False, p=hists.sum(1) / hists.sum())]
    for _ in range(rounds):
        cost = hists @ -np.log2(tables).T
        pick = cost.argmin(1)
        for j in range(m):
            sel = hists[pick == j]
            if len(sel):
                tables[j] = (sel.sum(0) + 0.02) / (sel.sum() + 0.02 * NTOK)
        print(f"bank round: {cost.min(1).sum() / hists.sum():.4f} bits per sample", flush=True)
    return np.array([quantize(t) for t in tables])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=DATA / "kodak")
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--order", choices=["levels", "raster"], default="levels")
    parser.add_argument("--colour", choices=["rgb", "none"], default="rgb")
    parser.add_argument("--dist", default="empirical",
                        choices=["empirical", "laplace", "logistic", "adaptive", "bank"])
    parser.add_argument("--tokens", action="store_true", help="hybrid-uint tokens + raw bits")
    parser.add_argument("--classes", type=int, default=24)
    parser.add_argument("--nonlinear", action="store_true", help="directional features")
    parser.add_argument("--chunks", type=int, default=4, help="adaptive: updates per pass")
    parser.add_argument("--prior", type=float, default=16, help="adaptive: prior pseudo-counts")
    parser.add_argument("--wls", type=float, default=0, help="weights 1/(gradient + this)")
    parser.add_argument("--groups", type=int, default=1, help="LS fits per activity group")
    parser.add_argument("--more-act", action="store_true", help="residuals of all neighbours")
    parser.add_argument("--top", type=int, default=16, help="coarse grid step (level order)")
    parser.add_argument("--learn-bank", type=Path, help="collect from --images, save a bank")
    parser.add_argument("--bank-file", type=Path, help="the bank for --dist bank")
    parser.add_argument("--bank-size", type=int, default=128)
    opt = parser.parse_args()
    opt.collect = [] if opt.learn_bank else None
    if opt.bank_file:
        opt.bank = np.load(opt.bank_file)
    paths = sorted(opt.images.rglob("*.png"))[:opt.count]
    if opt.learn_bank:  # a spread of sources
        paths = sorted(opt.images.rglob("*.png"))[:opt.count]
    bpp = []
    start = time.perf_counter()
    for path in paths:
        img = np.asarray(Image.open(path).convert("RGB"))
        if opt.learn_bank:
            img = img[:512, :512]
        bits = (code_levels if opt.order == "levels" else code_raster)(img, opt)
        bpp.append(bits / (img.shape[0] * img.shape[1]))
    print(f"{opt.order} colour={opt.colour} dist={opt.dist} tokens={opt.tokens} "
          f"classes={opt.classes} top={opt.top}: {np.mean(bpp):.3f} bpp over {len(bpp)} images "
          f"({time.perf_counter() - start:.0f} s)")
    print(" ".join(f"{b:.3f}" for b in bpp))
    if opt.learn_bank:
        np.save(opt.learn_bank, learn_bank(np.concatenate(opt.collect), opt.bank_size))


if __name__ == "__main__":
    main()
