"""Training images: loaded once into memory, served as random crops.

The split between training and held-back validation images is fixed by a hash of each file name,
so it is the same on every machine and never depends on the listing order. Kodak is the evaluation
set and is refused here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from nicodec.codec.image import IMAGE_SUFFIXES

DEFAULT_TRAIN = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "train"


def list_images(root: Path) -> list[Path]:
    """All image files under ``root``, sorted."""
    root = Path(root)
    if "kodak" in root.resolve().as_posix().lower():
        raise ValueError("refusing to train on Kodak: it is the evaluation set")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def is_held_out(path: Path, fraction: float = 0.05) -> bool:
    """Whether ``path`` belongs to the validation split (stable hash of its file name)."""
    digest = hashlib.sha256(path.name.encode()).digest()
    return int.from_bytes(digest[:4], "big") < fraction * 2**32


def split_paths(root: Path) -> tuple[list[Path], list[Path]]:
    """(training, held-back) image paths under ``root``, split by :func:`is_held_out`."""
    paths = list_images(root)
    return [p for p in paths if not is_held_out(p)], [p for p in paths if is_held_out(p)]


def whole_image(img: np.ndarray, unit: int) -> torch.Tensor:
    """An image cropped to a multiple of ``unit`` as a (1, 3, H, W) tensor in [0, 1]."""
    h, w = img.shape[0] // unit * unit, img.shape[1] // unit * unit
    return torch.from_numpy(img[:h, :w].copy()).permute(2, 0, 1)[None].float().div(255)


def load_images(paths: list[Path], min_side: int) -> list[np.ndarray]:
    """Decode images to RGB uint8 arrays; images smaller than ``min_side`` are skipped."""
    images = []
    for path in tqdm(paths, desc="loading images", leave=False, disable=None):
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
        if min(array.shape[:2]) >= min_side:
            images.append(array)
    return images


class CropSampler:
    """Random crops with random horizontal flips, as (B, 3, S, S) float tensors in [0, 1]."""

    def __init__(self, images: list[np.ndarray], crop: int, seed: int = 0) -> None:
        if not images:
            raise ValueError(f"no training images of at least {crop}x{crop} pixels")
        self.images, self.crop = images, crop
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int) -> torch.Tensor:
        out = np.empty((size, self.crop, self.crop, 3), dtype=np.uint8)
        for i in range(size):
            img = self.images[self.rng.integers(len(self.images))]
            y = self.rng.integers(img.shape[0] - self.crop + 1)
            x = self.rng.integers(img.shape[1] - self.crop + 1)
            patch = img[y : y + self.crop, x : x + self.crop]
            out[i] = patch[:, ::-1] if self.rng.random() < 0.5 else patch
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div(255)


def load_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format, optionally gzipped) as a numpy array of its dtype/shape."""
    import gzip

    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * k:8 + 4 * k], "big") for k in range(dims))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * dims)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: truncated IDX file")
    return data.reshape(shape)
