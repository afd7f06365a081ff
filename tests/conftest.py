"""Shared fixtures: Kodak paths (the data folder beside the repository) and small images;
no test leaves ctx-photo's kept second process to the next."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nicodec.models.ctx import partner

KODAK = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "kodak"


@pytest.fixture(autouse=True)
def _no_kept_second_process():
    """ctx-photo's second process kept from tile to tile (``partner.kept``) ends with the test
    that forked it: it knows the coder as it was then (a constant a test changed included)."""
    yield
    partner.release()


def kodak_images() -> list[Path]:
    return sorted(KODAK.glob("kodim*.png"))


@pytest.fixture(scope="session")
def kodak_path() -> Path:
    images = kodak_images()
    if not images:
        pytest.skip("Kodak images not found beside the repository (../shared/data/kodak)")
    return images[0]


@pytest.fixture(scope="session")
def kodak_pixels(kodak_path) -> np.ndarray:
    """The first Kodak image as an (H, W, 3) uint8 array."""
    with Image.open(kodak_path) as img:
        return np.asarray(img.convert("RGB"))


@pytest.fixture(scope="session")
def small_rgb() -> np.ndarray:
    """A 37x53 RGB image with smooth gradients and an edge (odd sides on purpose)."""
    y, x = np.mgrid[0:37, 0:53]
    img = np.stack([x * 4, y * 6, (x + y) * 2], axis=-1) % 256
    img[10:20, 20:30] = [200, 30, 60]
    return img.astype(np.uint8)


@pytest.fixture
def small_tiles(monkeypatch):
    """ctx-photo with 32-pixel tiles: a multi-packet image in a test."""
    from nicodec.codec import registry
    from nicodec.models.ctx import codec as ctx_codec

    monkeypatch.setattr(ctx_codec.ContextNet, "unit", 32)
    registry.load_model.cache_clear()
    yield
    registry.load_model.cache_clear()
