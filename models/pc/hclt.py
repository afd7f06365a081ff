"""Hidden Chow-Liu trees (HCLT): the probabilistic circuit of the lossless mode.

After Liu, Mandt and Van den Broeck, "Lossless Compression with Probabilistic Circuits" (ICLR
2022). Every observed variable X_i (a pixel value in 0..V-1) gets a categorical latent Z_i with H
states; the latents form a tree, the Chow-Liu tree of the observed variables (maximum spanning
tree of their pairwise mutual information):

    p(x) = sum_z p(z_root) prod_{i != root} p(z_i | z_parent(i)) prod_i p(x_i | z_i)

As a circuit this is a sum node per (latent, parent state) and a product node per latent state;
its size |p| is about D * H * (H + V). Likelihoods come from one upward pass (levels of the tree,
deepest first, each a batched matrix product); parameters are learned by mini-batch EM, the
expected counts ("circuit flows") being the gradients of the log-likelihood with respect to the
log-parameters.

The float model here is for training; coding uses the integer twin in ``models/pc/coder.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.sparse.csgraph import minimum_spanning_tree


@dataclass(frozen=True)
class HCLTConfig:
    """Shape of an HCLT; stored in the weight file's metadata."""

    variables: int
    values: int = 256
    hidden: int = 32


def mutual_information(data: np.ndarray, values: int = 256, bins: int = 4, sample: int = 20000,
                       seed: int = 0) -> np.ndarray:
    """Pairwise mutual information (D, D) of the columns of ``data`` (N, D), values 0..values-1,
    estimated on ``bins`` equal-width bins of at most ``sample`` rows (structure only needs the
    ranking of the pairs, and the joint histograms of all pairs are one matrix product)."""
    rng = np.random.default_rng(seed)
    if len(data) > sample:
        data = data[rng.choice(len(data), sample, replace=False)]
    n, d = data.shape
    binned = (data.astype(np.int64) * bins) // values
    onehot = np.zeros((n, d * bins), np.float32)
    onehot[np.arange(n)[:, None], np.arange(d)[None] * bins + binned] = 1
    joint = (onehot.T @ onehot).reshape(d, bins, d, bins).transpose(0, 2, 1, 3) / n + 1e-12
    marginal = joint[np.arange(d), np.arange(d)].diagonal(axis1=1, axis2=2)  # (D, bins)
    ratio = joint / (marginal[:, None, :, None] * marginal[None, :, None, :])
    return (joint * np.log(ratio)).sum((2, 3))


def chow_liu_tree(mi: np.ndarray) -> np.ndarray:
    """Parent of every variable (-1 for the root) in the maximum spanning tree of ``mi``, rooted
    at the tree's centre so that the tree is as shallow as it can be."""
    d = len(mi)
    weight = mi.max() + 1.0 - mi  # positive weights: the maximum-MI tree is the minimum one here
    np.fill_diagonal(weight, 0)
    tree = minimum_spanning_tree(weight).toarray()
    adjacency = [[] for _ in range(d)]
    for a, b in zip(*np.nonzero(tree)):
        adjacency[a].append(int(b))
        adjacency[b].append(int(a))

    def bfs(start: int) -> tuple[np.ndarray, np.ndarray]:
        parent, dist, queue = np.full(d, -1), np.full(d, -1), [start]
        dist[start] = 0
        for node in queue:
            for nb in adjacency[node]:
                if dist[nb] < 0:
                    dist[nb], parent[nb] = dist[node] + 1, node
                    queue.append(nb)
        return parent, dist

    # centre = middle of a longest path (two sweeps find a diameter's ends)
    _, dist = bfs(0)
    end_a = int(dist.argmax())
    parent, dist = bfs(end_a)
    node = int(dist.argmax())
    for _ in range(dist[node] // 2):
        node = int(parent[node])
    return bfs(node)[0]


@dataclass
class TreeOrder:
    """Orders derived from a parent array: depth, levels for the upward pass, pre-order."""

    parent: np.ndarray
    root: int
    depth: np.ndarray
    levels: list[np.ndarray]  # nodes per depth, deepest first (the root's level last)
    preorder: np.ndarray  # coding order: every node after its parent, subtrees contiguous
    subtree_end: np.ndarray  # pre-order position of each node's last descendant

    @classmethod
    def of(cls, parent: np.ndarray) -> "TreeOrder":
        parent = np.asarray(parent, np.int64)
        d = len(parent)
        root = int(np.nonzero(parent < 0)[0][0])
        children = [[] for _ in range(d)]
        for node in range(d):
            if parent[node] >= 0:
                children[parent[node]].append(node)
        depth, preorder, stack = np.zeros(d, np.int64), [], [root]
        while stack:
            node = stack.pop()
            preorder.append(node)
            for child in reversed(children[node]):
                depth[child] = depth[node] + 1
                stack.append(child)
        preorder = np.array(preorder, np.int64)
        position = np.empty(d, np.int64)
        position[preorder] = np.arange(d)
        subtree_end = position.copy()
        for node in preorder[::-1]:  # children come later in pre-order: fold them upwards
            if parent[node] >= 0:
                subtree_end[parent[node]] = max(subtree_end[parent[node]], subtree_end[node])
        levels = [np.nonzero(depth == k)[0] for k in range(int(depth.max()), -1, -1)]
        return cls(parent, root, depth, levels, preorder, subtree_end)


class HCLT(torch.nn.Module):
    """Float HCLT: normalized log-parameters as buffers (EM updates them, not an optimizer).

    ``log_root`` (H,), ``log_trans`` (D, H, H) = log p(z_i = column | z_parent = row) (the root's
    slot unused), ``log_emit`` (D, H, V) = log p(x_i = v | z_i).
    """

    def __init__(self, config: HCLTConfig, parent: np.ndarray, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        d, h, v = config.variables, config.hidden, config.values
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("parent", torch.as_tensor(np.asarray(parent), dtype=torch.int64))
        self.register_buffer("log_root", torch.full((h,), -float(np.log(h))))
        self.register_buffer("log_trans", torch.log_softmax(
            torch.randn(d, h, h, generator=gen), -1))
        self.register_buffer("log_emit", torch.log_softmax(
            torch.randn(d, h, v, generator=gen), -1))
        self._order()

    def _order(self) -> None:
        self.order = TreeOrder.of(self.parent.numpy())
        # for each level (deepest first): where each node's parent sits in the next level
        self._up = []
        for lower, upper in zip(self.order.levels[:-1], self.order.levels[1:]):
            slot = {int(node): k for k, node in enumerate(upper)}
            target = torch.tensor([slot[int(p)] for p in self.order.parent[lower]])
            self._up.append((torch.from_numpy(lower), target, len(upper)))

    def init_emissions(self, data: np.ndarray, noise: float = 1.0, seed: int = 0) -> None:
        """Emissions around each variable's smoothed histogram, perturbed per latent state so
        that the states start different (EM cannot break an exact symmetry)."""
        v = self.config.values
        counts = np.stack([np.bincount(col, minlength=v) for col in data.T.astype(np.int64)])
        hist = torch.from_numpy((counts + 0.5) / (counts + 0.5).sum(1, keepdims=True)).float()
        gen = torch.Generator().manual_seed(seed)
        logits = hist.log()[:, None, :] + noise * torch.randn(
            self.config.variables, self.config.hidden, v, generator=gen)
        self.log_emit.copy_(torch.log_softmax(logits, -1))

    def log_likelihood(self, x: torch.Tensor, params: tuple[torch.Tensor, ...] | None = None
                       ) -> torch.Tensor:
        """Natural-log likelihood (B,) of integer data (B, D); ``params`` optionally replaces
        (log_root, log_trans, log_emit), e.g. by leaves that require gradients."""
        log_root, log_trans, log_emit = params or (self.log_root, self.log_trans, self.log_emit)
        d = self.config.variables
        emit = log_emit.permute(0, 2, 1)[torch.arange(d), x.long()]  # (B, D, H)
        trans = log_trans.exp()
        below = None  # summed log-messages from the children, for the current level's nodes
        for nodes, target, n_upper in self._up:
            b = emit[:, nodes] if below is None else emit[:, nodes] + below
            top = b.amax(-1, keepdim=True)
            msg = torch.einsum("bnj,nij->bni", (b - top).exp(), trans[nodes]).log() + top
            below = msg.new_zeros(msg.shape[0], n_upper, msg.shape[2]).index_add(1, target, msg)
        root = emit[:, self.order.root] + (below[:, 0] if below is not None else 0)
        return torch.logsumexp(root + log_root, -1)

    def expected_counts(self, x: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
        """(total log-likelihood, expected counts of every parameter) on a batch: the flows of
        the circuit, as gradients of log p(x) with respect to the log-parameters."""
        leaves = [p.detach().clone().requires_grad_(True)
                  for p in (self.log_root, self.log_trans, self.log_emit)]
        ll = self.log_likelihood(x, tuple(leaves)).sum()
        ll.backward()
        return float(ll.detach()), [leaf.grad for leaf in leaves]

    @torch.no_grad()
    def em_update(self, counts: list[torch.Tensor], step: float, pseudocount: float) -> None:
        """Move every distribution towards its normalized expected counts (mini-batch EM)."""
        for buf, count in zip((self.log_root, self.log_trans, self.log_emit), counts):
            target = (count + pseudocount) / (count + pseudocount).sum(-1, keepdim=True)
            mixed = (1 - step) * buf.exp() + step * target
            buf.copy_(mixed.clamp_min(1e-30).log())

    def config_dict(self) -> dict:
        return asdict(self.config)


def bits_per_dim(model: HCLT, data: np.ndarray, batch: int = 2000) -> float:
    """Average -log2 p(x) / D of the float model over ``data`` (N, D)."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(data), batch):
            x = torch.from_numpy(data[start:start + batch].astype(np.int64))
            total -= float(model.log_likelihood(x).sum())
    return total / (len(data) * data.shape[1] * np.log(2))
