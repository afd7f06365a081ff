"""Image quality metrics for rate-distortion evaluation.

PSNR and MS-SSIM come from torchmetrics, on RGB in the 0-255 range. SSIMULACRA2 is used when its
package (weights-free) is installed. Perceptual metrics with learned weights (LPIPS, DISTS) are
never downloaded: pass your own with ``--metric module:function`` when the weights are on disk; the
function takes two (H, W, 3) uint8 arrays (reference, distorted) and returns a float.
"""

from __future__ import annotations

import importlib
import io
from typing import Callable

import numpy as np
import torch
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
)

Metric = Callable[[np.ndarray, np.ndarray], float]


def _tensor(img: np.ndarray) -> torch.Tensor:
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    # float32: as exact as float64 for 8-bit inputs here (1e-7) and 6x faster for MS-SSIM
    return torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1)[None]


def psnr(reference: np.ndarray, distorted: np.ndarray) -> float:
    """PSNR in dB over all RGB samples, peak 255."""
    return float(peak_signal_noise_ratio(_tensor(distorted), _tensor(reference), data_range=255.0))


def ms_ssim(reference: np.ndarray, distorted: np.ndarray) -> float:
    """MS-SSIM (5 scales, Gaussian window 11) on RGB, peak 255."""
    return float(multiscale_structural_similarity_index_measure(
        _tensor(distorted), _tensor(reference), data_range=255.0))


def _ssimulacra2() -> Metric | None:
    try:
        from ssimulacra2 import compute_ssimulacra2
    except ImportError:
        return None
    from PIL import Image

    def png(pixels: np.ndarray) -> io.BytesIO:
        buffer = io.BytesIO()
        Image.fromarray(pixels.squeeze()).save(buffer, format="PNG")
        buffer.seek(0)
        return buffer

    def metric(reference: np.ndarray, distorted: np.ndarray) -> float:
        # the package opens its inputs with Image.open: hand it lossless in-memory files
        return float(compute_ssimulacra2(png(reference), png(distorted)))
    return metric


def load_metric(spec: str) -> Metric:
    """``module:function`` -> the function (a user-supplied metric, e.g. LPIPS with local weights)."""
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"metric must be given as module:function, got {spec!r}")
    return getattr(importlib.import_module(module), name)


def metric_set(extra: list[str] = (), ssimulacra2: bool = False) -> dict[str, Metric]:
    """PSNR and MS-SSIM, plus SSIMULACRA2 when asked for and installed, plus user metrics."""
    metrics: dict[str, Metric] = {"psnr": psnr, "ms_ssim": ms_ssim}
    if ssimulacra2:
        found = _ssimulacra2()
        if found is None:
            raise ValueError("SSIMULACRA2 asked for but the 'ssimulacra2' package is not installed")
        metrics["ssimulacra2"] = found
    for spec in extra:
        metrics[spec.partition(":")[2]] = load_metric(spec)
    return metrics
