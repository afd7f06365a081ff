"""A bidirectional masked transformer over the VQ index grid (after MaskGIT, Chang et al. 2022).

It predicts the codebook index of every masked position of an index grid from the visible ones.
The VQ mode uses it twice (``models/vq/masked.py``):

* as the **entropy model**: the grid is coded in a fixed number of stages (:data:`SCHEDULES`);
  the indices of stage s are coded with the probabilities the network predicts when the stages
  before s are visible;
* as the **restorer**: indices lost with a damaged packet are masked and filled in, most
  confident first.

One network serves every rate of the codebook ladder. It is conditioned on the codebook through
the codewords themselves: a token's input embedding is a linear map of its codeword (plus a
learned embedding of the quality), and the output logit of index i is the dot product of the
final feature with an embedding computed from codeword i by a small MLP, plus the log-frequency
of i in the static table of that codebook (so an untrained network predicts the static table).

Attention is *neighbourhood attention* (Hassani et al., 2022): every position attends to the
(2r+1)^2 positions around it, with a learned relative-position bias per head (the 2-D position
embedding). The receptive field grows by r per layer, the cost is linear in the number of
positions, and grids of any size (whole photos) are handled the same way as training crops.
Normalisation is RMSNorm and the MLP uses ReLU: both have exact integer counterparts
(``models/vq/exact.py``), which is what the coder runs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Coding schedules: the stage of position (y, x) is tile[y % 4][x % 4]. Each stage is spread over
# the whole image; later stages (more context) hold more positions.
SCHEDULES: dict[str, tuple[tuple[int, ...], ...]] = {
    "s4": ((0, 2, 0, 2), (3, 1, 3, 1), (0, 2, 0, 2), (3, 1, 3, 1)),  # 4 x 25%
    "s6": ((0, 4, 2, 4), (5, 3, 5, 3), (2, 4, 1, 4), (5, 3, 5, 3)),  # 1, 1, 2, 4, 4, 4 / 16
    "s8": ((0, 6, 3, 6), (7, 4, 7, 5), (2, 6, 1, 6), (7, 5, 7, 4)),  # 1, 1, 1, 1, 2, 2, 4, 4 / 16
}


def stage_map(h: int, w: int, schedule: str) -> np.ndarray:
    """(h, w) stage of every grid position under a named schedule."""
    tile = np.asarray(SCHEDULES[schedule])
    return np.tile(tile, (-(-h // 4), -(-w // 4)))[:h, :w]


def num_stages(schedule: str) -> int:
    return int(np.max(SCHEDULES[schedule])) + 1


def neighbour_offsets(radius: int) -> list[tuple[int, int]]:
    """The (dy, dx) of a neighbourhood window in raster order (its centre included)."""
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]


@dataclass(frozen=True)
class PriorConfig:
    """Shape of the index transformer; stored in checkpoints and weight files."""

    dim: int = 128
    layers: int = 4
    heads: int = 4
    radius: int = 3  # each position attends to a (2r+1)^2 window
    mlp: int = 2  # MLP hidden width = mlp * dim
    code_dim: int = 16  # dimension of the VQGAN lookup space (codewords)
    qualities: int = 10  # rungs of the codebook ladder the network is conditioned on

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


class RMSNorm(nn.Module):
    """x / rms(x) * gain (no mean subtraction, no bias): exact in integers with one isqrt."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.gain


class NeighbourhoodAttention(nn.Module):
    """Multi-head attention restricted to a (2r+1)^2 window, with relative-position bias."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.heads, self.radius = config.heads, config.radius
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)
        side = 2 * config.radius + 1
        self.bias = nn.Parameter(torch.zeros(config.heads, side, side))

    def window(self, h: int, w: int) -> torch.Tensor:
        """Additive attention bias (heads, N, N) of an h x w grid: the relative-position bias
        inside each position's window, -inf outside it."""
        y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        y, x = y.flatten(), x.flatten()
        dy, dx = y[None] - y[:, None], x[None] - x[:, None]  # key minus query
        inside = (dy.abs() <= self.radius) & (dx.abs() <= self.radius)
        r = self.radius
        bias = self.bias[:, (dy + r).clamp(0, 2 * r), (dx + r).clamp(0, 2 * r)]
        return bias.masked_fill(~inside, float("-inf"))

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.window(h, w))
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(config.dim)
        self.attn = NeighbourhoodAttention(config)
        self.norm2 = RMSNorm(config.dim)
        self.fc1 = nn.Linear(config.dim, config.mlp * config.dim)
        self.fc2 = nn.Linear(config.mlp * config.dim, config.dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), h, w)
        return x + self.fc2(F.relu(self.fc1(self.norm2(x))))


class IndexTransformer(nn.Module):
    """p(index at each masked position | visible indices, codebook of quality q).

    ``codebooks[q-1]`` (K, code_dim) are the ladder's codewords and ``static_logits[q-1]`` (K,)
    the log2-frequencies of its static table; both are fixed buffers, not trained.
    """

    def __init__(self, config: PriorConfig, codebooks: list[torch.Tensor],
                 static_logits: list[torch.Tensor]) -> None:
        super().__init__()
        if len(codebooks) != config.qualities or len(static_logits) != config.qualities:
            raise ValueError(f"expected {config.qualities} codebooks and static tables")
        self.config = config
        for q, (cb, logits) in enumerate(zip(codebooks, static_logits), start=1):
            self.register_buffer(f"codebook{q}", cb.float().clone(), persistent=False)
            self.register_buffer(f"static{q}", logits.float().clone(), persistent=False)
        self.embed_in = nn.Linear(config.code_dim, config.dim)
        self.quality = nn.Embedding(config.qualities, config.dim)
        self.mask_token = nn.Parameter(torch.zeros(config.dim))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.norm = RMSNorm(config.dim)
        self.out1 = nn.Linear(config.code_dim, config.dim)  # codeword -> output embedding
        self.out2 = nn.Linear(config.dim, config.dim + 1)  # (embedding, bias)
        nn.init.normal_(self.quality.weight, std=0.02)

    def codebook(self, q: int) -> torch.Tensor:
        return getattr(self, f"codebook{q}")

    def input_table(self, q: int) -> torch.Tensor:
        """(K + 1, dim) input embedding of every index of quality q; the last row is the mask."""
        table = torch.cat([self.embed_in(self.codebook(q)), self.mask_token[None]])
        return table + self.quality.weight[q - 1]

    def output_table(self, q: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, dim) output embeddings and (K,) logit biases (natural log) of quality q."""
        out = self.out2(F.relu(self.out1(self.codebook(q))))
        return out[:, :-1], out[:, -1] + getattr(self, f"static{q}") * math.log(2)

    def features(self, idx: torch.Tensor, visible: torch.Tensor, q: int) -> torch.Tensor:
        """Final normalised features (B, h*w, dim) of index grids (B, h, w) with a visibility
        mask (B, h, w); indices under the mask are ignored."""
        b, h, w = idx.shape
        tokens = torch.where(visible, idx, torch.full_like(idx, len(self.codebook(q))))
        x = self.input_table(q)[tokens.flatten(1)]
        for block in self.blocks:
            x = block(x, h, w)
        return self.norm(x)

    def logits(self, features: torch.Tensor, q: int) -> torch.Tensor:
        """Natural-log logits (..., K) of quality q from final features (..., dim)."""
        emb, bias = self.output_table(q)
        return features @ emb.T + bias

    def forward(self, idx: torch.Tensor, visible: torch.Tensor, q: int) -> torch.Tensor:
        """Natural-log logits (B, h, w, K) at every position."""
        return self.logits(self.features(idx, visible, q), q).view(*idx.shape, -1)

    def loss(self, idx: torch.Tensor, visible: torch.Tensor, q: int) -> torch.Tensor:
        """Mean cross-entropy in bits over the masked positions (logits computed only there)."""
        hidden = ~visible.flatten(1)
        logits = self.logits(self.features(idx, visible, q)[hidden], q)
        return F.cross_entropy(logits, idx.flatten(1)[hidden]) / math.log(2)

    def config_dict(self) -> dict:
        return asdict(self.config)


def training_masks(shape: tuple[int, int, int], schedule: str, gen: torch.Generator
                   ) -> torch.Tensor:
    """Visibility masks (B, h, w) for training: half the grids show the stages before a random
    stage of the coding schedule (at a random tile phase), the other half a random fraction
    (uniform in 0..1) of the positions, as MaskGIT and as lost packets do."""
    b, h, w = shape
    stages = num_stages(schedule)
    masks = torch.empty(shape, dtype=torch.bool)
    for i in range(b):
        if torch.rand((), generator=gen) < 0.5:
            oy, ox = torch.randint(0, 4, (2,), generator=gen).tolist()
            stage = torch.from_numpy(stage_map(h + 4, w + 4, schedule)[oy:oy + h, ox:ox + w])
            masks[i] = stage < int(torch.randint(0, stages, (), generator=gen))
        else:
            masks[i] = torch.rand(h, w, generator=gen) >= torch.rand((), generator=gen)
    return masks
