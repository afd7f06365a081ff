"""The index transformer in integers, evaluated exactly: what the coder runs.

:class:`IntIndexTransformer` is :class:`models.vq.transformer.IndexTransformer` with every weight
rounded to an integer (int16 with a power-of-two scale per tensor, biases int32) and every
activation an integer with ``ACT_FRAC`` fractional bits. Matrix products are integer products
summed in float64, which is exact below 2**53 and so independent of summation order
(``models/fixedpoint.py``); rescales are power-of-two floors; the RMS norm uses an exact integer
square root; attention weights come from the same integer table of 2**(-f/256) as the coder's
integer softmax (``bitstream/entropy.py``) and are normalised by integer division. The logits
are therefore the same integers on every machine, thread count, batch composition and device,
which the range coder needs: the decoder must see exactly the encoder's tables.

Tables per ladder quality (input embeddings of every index and of the mask, output embeddings,
output biases including the static table's log-frequencies) are precomputed at export, so the
shipped file holds only integers.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from nicodec.bitstream.entropy import _EXP2, LOGIT_FRAC, freqs_from_logits
from nicodec.models.fixedpoint import EXACT_LIMIT, INT_LIMIT, check_exact, to_fixed
from nicodec.models.vq.transformer import IndexTransformer, PriorConfig, neighbour_offsets

ACT_FRAC = 10  # fractional bits of every activation
WEIGHT_FRAC_MAX = 14
_EXP16 = _EXP2 >> 14  # 2**16 * 2**(-i/256): attention weights stay below 2**16
_MAX_DROP = 30 << LOGIT_FRAC
LOG2E = 1.0 / math.log(2.0)


def _frac_for(values: torch.Tensor) -> int:
    """The largest power-of-two scale (at most WEIGHT_FRAC_MAX bits) that fits int16."""
    top = float(values.detach().abs().max())
    return WEIGHT_FRAC_MAX if top == 0 else min(WEIGHT_FRAC_MAX,
                                                int(math.floor(math.log2(INT_LIMIT / top))))


def _fixed32(values: torch.Tensor, frac: int) -> np.ndarray:
    """Values in units of 2**-frac as int32 (biases and gains: no int16 cap)."""
    return np.rint(values.detach().double().cpu().numpy() * (1 << frac)).astype(np.int32)


class IntIndexTransformer:
    """Integer weights and the exact forward pass; ``schedule`` names the coding schedule."""

    def __init__(self, config: PriorConfig, schedule: str, tensors: dict[str, np.ndarray],
                 fracs: dict[str, int]) -> None:
        self.config, self.schedule = config, schedule
        self.t = {k: np.asarray(v).astype(np.int64) for k, v in tensors.items()}
        self.fracs = fracs
        self.sizes = [len(self.t[f"head.{q}.bias"]) for q in range(1, config.qualities + 1)]
        self._cache: dict[str, torch.Tensor] = {}

    # --- conversion -------------------------------------------------------------------------

    @classmethod
    @torch.no_grad()
    def from_float(cls, model: IndexTransformer, schedule: str) -> "IntIndexTransformer":
        """Round a trained float network; log2 conversion and attention scale are folded in."""
        c = model.config
        tensors: dict[str, np.ndarray] = {}
        fracs: dict[str, int] = {}

        def weight(name: str, w: torch.Tensor) -> None:
            fracs[name] = _frac_for(w)
            tensors[name] = to_fixed(w, fracs[name]).astype(np.int16)

        for q in range(1, c.qualities + 1):
            weight(f"embed.{q}", model.input_table(q))
            emb, bias = model.output_table(q)
            weight(f"head.{q}.emb", emb * LOG2E)
            tensors[f"head.{q}.bias"] = _fixed32(bias * LOG2E, LOGIT_FRAC)
        scale = torch.ones(3 * c.dim, 1)
        scale[: c.dim] = LOG2E / math.sqrt(c.head_dim)  # q * k is then in log2 units
        for i, block in enumerate(model.blocks):
            p = f"block.{i}."
            tensors[p + "norm1"] = _fixed32(block.norm1.gain, ACT_FRAC)
            tensors[p + "norm2"] = _fixed32(block.norm2.gain, ACT_FRAC)
            weight(p + "qkv.w", block.attn.qkv.weight * scale)
            tensors[p + "qkv.b"] = _fixed32(block.attn.qkv.bias * scale[:, 0], ACT_FRAC)
            tensors[p + "attn_bias"] = _fixed32(block.attn.bias * LOG2E, LOGIT_FRAC)
            for name, layer in (("proj", block.attn.proj), ("fc1", block.fc1),
                                ("fc2", block.fc2)):
                weight(p + name + ".w", layer.weight)
                tensors[p + name + ".b"] = _fixed32(layer.bias, ACT_FRAC)
        tensors["norm"] = _fixed32(model.norm.gain, ACT_FRAC)
        return cls(c, schedule, tensors, fracs)

    def tensors(self) -> dict[str, torch.Tensor]:
        """As stored: weights and tables int16, biases and gains int32."""
        return {k: torch.from_numpy(v.astype(np.int16 if k in self.fracs else np.int32))
                for k, v in self.t.items()}

    # --- exact forward pass -----------------------------------------------------------------
    # Activations are integer-valued float64 tensors: products, sums, power-of-two floors and
    # comparisons of integers below 2**53 are exact in float64, in any order, on any device.

    def _w(self, name: str) -> torch.Tensor:
        if name not in self._cache:
            self._cache[name] = torch.from_numpy(self.t[name].astype(np.float64))
        return self._cache[name]

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        w = self._w(name + ".w")
        _check(x, w, x.shape[-1])
        return _floor_shift(x @ w.T, self.fracs[name + ".w"]).add_(self._w(name + ".b"))

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        _check(x, x, x.shape[-1])
        ms = _floor_div(x.square().sum(-1, keepdim=True), x.shape[-1])
        return _floor_div(x * self._w(name), isqrt(ms).clamp(min=1))

    def _attention(self, x: torch.Tensor, i: int, h: int, w: int,
                   rows: torch.Tensor | None = None) -> torch.Tensor:
        """Neighbourhood attention, one window offset at a time (no gathered copies); fused
        products (``vecdot``, ``addcmul_``) save a temporary per offset. With ``rows`` (raster
        positions), only those positions query: (V, len(rows), dim) instead of (V, h*w, dim)."""
        c, r = self.config, self.config.radius
        v_ = x.shape[0]
        qkv = self._linear(x, f"block.{i}.qkv").view(v_, h, w, 3, c.heads, c.head_dim)
        q, k, v = qkv.unbind(3)
        pad = (0, 0, 0, 0, r, r, r, r)  # zero keys and values outside the grid
        kp, vp = torch.nn.functional.pad(k, pad), torch.nn.functional.pad(v, pad)
        valid = _window_valid(h, w, r)  # (h, w, W)
        if rows is None:
            def window(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
                return t[:, r + dy:r + dy + h, r + dx:r + dx + w]
        else:  # the window of each query row, gathered from the padded grid
            base = (rows // w + r) * (w + 2 * r) + rows % w + r

            def window(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
                return t.flatten(1, 2)[:, base + dy * (w + 2 * r) + dx]
            q, valid = q.flatten(1, 2)[:, rows], valid.flatten(0, 1)[rows]
        offsets = neighbour_offsets(r)
        _check(q, k, c.head_dim)
        scores = torch.stack([torch.linalg.vecdot(q, window(kp, dy, dx)) for dy, dx in offsets],
                             -1)  # (V, h, w, heads, W) or (V, rows, heads, W)
        scores = _floor_shift(scores, 2 * ACT_FRAC - LOGIT_FRAC)
        scores = scores + self._w(f"block.{i}.attn_bias").view(c.heads, -1)
        valid = valid.unsqueeze(-2)[None]  # (1, ..., 1, W)
        scores = torch.where(valid, scores, -EXACT_LIMIT / 4)
        drop = (scores.amax(-1, keepdim=True) - scores).clamp(max=_MAX_DROP).long()
        weights = (_EXP16_T[drop & 0xFF] >> (drop >> LOGIT_FRAC)) * valid
        weights = weights.double()
        _check(weights, v, len(offsets))
        out = torch.zeros_like(q)
        for o, (dy, dx) in enumerate(offsets):
            out.addcmul_(weights[..., o, None], window(vp, dy, dx))
        out = _floor_div(out, weights.sum(-1, keepdim=True))
        return self._linear(out.reshape(v_, -1, c.dim), f"block.{i}.proj")

    def features(self, idx: np.ndarray, visible: np.ndarray, q: int,
                 rows: np.ndarray | None = None) -> torch.Tensor:
        """Final normalised integer features (V, h*w, dim), as float64, of index grids
        (V, h, w) under the visibility masks (V, h, w); with ``rows`` (raster positions), the
        features of those positions only, (V, len(rows), dim). Every position feeds the
        earlier blocks; the last one runs only for the requested rows, which is what the coder
        needs (the positions of one stage, or the lost ones) and gives the same integers."""
        v_, h, w = idx.shape
        table = self._w(f"embed.{q}")
        tokens = torch.from_numpy(np.where(visible, idx, len(table) - 1).reshape(v_, -1))
        x = _floor_shift(table[tokens], self.fracs[f"embed.{q}"] - ACT_FRAC)
        query = None if rows is None else torch.from_numpy(np.asarray(rows, np.int64))
        for i in range(self.config.layers):
            p = f"block.{i}."
            last = query if i == self.config.layers - 1 else None
            attended = self._attention(self._norm(x, p + "norm1"), i, h, w, last)
            x = (x if last is None else x[:, last]) + attended
            x = x + self._linear(self._linear(self._norm(x, p + "norm2"), p + "fc1").relu(),
                                 p + "fc2")
        return self._norm(x, "norm")

    def logits(self, features: torch.Tensor, q: int) -> np.ndarray:
        """Integer log2-logits (n, K) in units of 2**-LOGIT_FRAC from features (n, dim)."""
        name = f"head.{q}.emb"
        emb = self._w(name)
        _check(features, emb, features.shape[-1])
        out = _floor_shift(features @ emb.T, ACT_FRAC + self.fracs[name] - LOGIT_FRAC)
        return (out + self._w(f"head.{q}.bias")).numpy().astype(np.int64)

    def freqs(self, features: torch.Tensor, q: int) -> np.ndarray:
        """Frequency tables (n, K) for the coder."""
        return freqs_from_logits(self.logits(features, q))


_EXP16_T = torch.from_numpy(_EXP16)


def _check(a: torch.Tensor, b: torch.Tensor, terms: int) -> None:
    """Refuse a product whose sums could leave float64's exact integer range."""
    check_exact(_max_abs(a), _max_abs(b), terms)


def _max_abs(x: torch.Tensor) -> float:
    if not x.numel():
        return 0.0
    low, high = torch.aminmax(x)
    return max(-float(low), float(high))


def _floor_shift(x: torch.Tensor, bits: int) -> torch.Tensor:
    """floor(x / 2**bits) (x * 2**-bits for negative bits), in place: exact on integer-valued
    float64. Only ever applied to fresh products."""
    return x.mul_(2.0 ** -bits).floor_()


def _floor_div(a: torch.Tensor, b: torch.Tensor | int) -> torch.Tensor:
    """Integer floor division of integer-valued float64 tensors (through int64: exact)."""
    b = b.long() if isinstance(b, torch.Tensor) else b
    return torch.div(a.long(), b, rounding_mode="floor").double()


def isqrt(values: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(v)) of non-negative integer-valued float64 values below 2**52, exactly."""
    if values.numel() and float(values.max()) >= 1 << 52:
        raise OverflowError("integer square root input out of the exact range")
    v = values.long()
    root = torch.sqrt(values).floor().long()  # sqrt is correctly rounded (IEEE 754)
    root -= (root * root > v).long()
    root += ((root + 1) * (root + 1) <= v).long()
    return root.double()


@lru_cache(maxsize=32)
def _window_valid(h: int, w: int, r: int) -> torch.Tensor:
    """(h, w, (2r+1)^2) whether each window offset of each position lies inside the grid."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    offsets = torch.tensor(neighbour_offsets(r))
    ny, nx = y[..., None] + offsets[:, 0], x[..., None] + offsets[:, 1]
    return (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)


def save_prior(model: IntIndexTransformer, path: str, ladder: Path, metadata: dict) -> None:
    """Write the integer network; the ladder file's SHA-256 binds it to the grids it models."""
    import hashlib

    from safetensors.torch import save_file

    meta = {"config": json.dumps({**model.config.__dict__, "schedule": model.schedule,
                                  "fracs": model.fracs}),
            "ladder": Path(ladder).name,
            "ladder_sha256": hashlib.sha256(Path(ladder).read_bytes()).hexdigest(),
            **{k: str(v) for k, v in metadata.items()}}
    save_file({k: v.contiguous() for k, v in model.tensors().items()}, path, metadata=meta)


def load_prior(path: str) -> tuple[IntIndexTransformer, dict]:
    """(integer network, file metadata) of a file written by :func:`save_prior`."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k).numpy() for k in f.keys()}
    config = json.loads(meta["config"])
    schedule, fracs = config.pop("schedule"), config.pop("fracs")
    return IntIndexTransformer(PriorConfig(**config), schedule, tensors, fracs), meta
