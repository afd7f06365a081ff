"""Experiment record (2026-12-01): refit the shipped mcq's residual stages by entropy-constrained
k-means, decoder and coarse level unchanged, and write a checkpoint for ``models.train --init``.

    python eval/results/experiments/mcq_ecvq_refit.py runs/refit-ec05.pt 0.05
    python -m models.train mcq --out runs/refit-ec05 --steps 0 --batch 4 --crop 256 --threads 1 \
        --set quantizer=rvq --set groups=8 --set group_dim=64 --set sibling_groups=1 \
        --prior-steps 800 --rate-weights 0,0.3,0.2,0.1,0.1,0.05,0.05,0.03,0.02 \
        --init runs/refit-ec05.pt

Each stage in turn: plain k-means (``models.quantizers.kmeans``, 20 iterations) on the residuals
of 64 training crops (256x256, seed 1), then 20 Lloyd iterations whose assignment is squared
error minus ``rate_weight`` x log2 of the codeword's share (entropy-constrained VQ); the next
stage fits what this one leaves. Weight 0 is plain k-means. (The reported runs drew the
float prior's starting values unseeded; codebooks and transforms are the same on a rerun.) Results: models/weights/mcq.md.
"""
import math
import sys

import torch

from models.data import DEFAULT_TRAIN, CropSampler, load_images, split_paths
from models.layers import channels_last
from models.mcq import load_weights
from models.quantizers import kmeans, squared_distances


def ec_kmeans(points, k, rate_weight, iters=20):
    words = kmeans(points, k, iters=iters)
    logp = torch.full((k,), -math.log2(k))
    for _ in range(iters if rate_weight else 0):
        idx = (squared_distances(points, words) - rate_weight * logp).argmin(-1)
        count = torch.bincount(idx, minlength=k).float()
        sums = torch.zeros_like(words).index_add_(0, idx, points)
        words = torch.where(count[:, None] > 0, sums / count.clamp(min=1)[:, None], words)
        logp = torch.log2((count + 0.5) / (count.sum() + 0.5 * k))
    return words, logp


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the float prior (shipped as integers) starts from a random draw
    out = sys.argv[1]
    weights = [float(v) for v in sys.argv[2].split(",")]  # one for all stages, or one per stage
    net, _ = load_weights("models/weights/mcq.safetensors")
    net.eval()
    pool = CropSampler(load_images(split_paths(DEFAULT_TRAIN)[0], 256), 256, seed=1).batch(64)
    cv = net.coarse_vq
    with torch.no_grad():
        f = torch.cat([net.g_a(channels_last(x)) for x in pool.split(8)])
        r = net.fine_head(f) - net.h_s(channels_last(cv.embed(cv.indices(net.h_a(f)))))
        r = r.permute(0, 2, 3, 1).reshape(-1, r.shape[1])
        for s, stage in enumerate(net.fine_vq.stages):
            rate_weight = weights[s] if len(weights) > 1 else weights[0]
            words, logp = ec_kmeans(r, 256, rate_weight)
            stage.codebooks[0] = words
            r = r - words[(squared_distances(r, words) - rate_weight * logp).argmin(-1)]
    torch.save({"model": net.state_dict()}, out)
    print("wrote", out)
