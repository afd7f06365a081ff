"""Classical codecs to compare against, each swept over its quality range.

Every codec is a function ``(pixels, setting) -> (file bytes, decoded pixels)`` working in memory
(or through temporary files for command-line tools). A codec whose library or tool is missing is
reported by :func:`available_baselines` and skipped, never a failure.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, features


@dataclass(frozen=True)
class Baseline:
    """A classical codec and the settings it is swept over (low rate first)."""

    name: str
    settings: tuple[float, ...]
    run: Callable[[np.ndarray, float], tuple[bytes, np.ndarray]]
    setting_name: str = "quality"


def _pillow(fmt: str, **options) -> Callable[[np.ndarray, float], tuple[bytes, np.ndarray]]:
    def run(pixels: np.ndarray, setting: float) -> tuple[bytes, np.ndarray]:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt, quality=int(setting), **options)
        data = buffer.getvalue()
        with Image.open(io.BytesIO(data)) as img:
            return data, np.asarray(img.convert("RGB"))
    return run


def _jpeg2000(pixels: np.ndarray, bpp: float) -> tuple[bytes, np.ndarray]:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG2000", quality_mode="rates",
                                 quality_layers=[24.0 / bpp], irreversible=True, mct=1)
    data = buffer.getvalue()
    with Image.open(io.BytesIO(data)) as img:
        return data, np.asarray(img.convert("RGB"))


def _cjxl(pixels: np.ndarray, quality: float) -> tuple[bytes, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        src, enc, dec = Path(tmp, "in.png"), Path(tmp, "out.jxl"), Path(tmp, "out.png")
        Image.fromarray(pixels).save(src)
        subprocess.run(["cjxl", str(src), str(enc), "-q", str(int(quality)), "--quiet"],
                       check=True, capture_output=True)
        subprocess.run(["djxl", str(enc), str(dec), "--quiet"], check=True, capture_output=True)
        with Image.open(dec) as img:
            return enc.read_bytes(), np.asarray(img.convert("RGB"))


def _jxl_runner() -> tuple[Callable | None, str]:
    try:
        import pillow_jxl  # noqa: F401  (registers the JXL format with Pillow)
        return _pillow("JXL", effort=7), "pillow-jxl-plugin"
    except ImportError:
        pass
    if shutil.which("cjxl") and shutil.which("djxl"):
        return _cjxl, "cjxl/djxl"
    return None, "neither pillow-jxl-plugin nor cjxl/djxl is installed"


QUALITIES = (2, 5, 10, 20, 30, 40, 50, 60, 75, 85, 95)


def available_baselines() -> tuple[dict[str, Baseline], dict[str, str]]:
    """(usable codecs by name, missing codecs with the reason)."""
    found: dict[str, Baseline] = {}
    missing: dict[str, str] = {}
    found["jpeg"] = Baseline("jpeg", QUALITIES, _pillow("JPEG", optimize=True))
    if features.check("webp"):
        found["webp"] = Baseline("webp", (0,) + QUALITIES, _pillow("WEBP", method=6))
    else:
        missing["webp"] = "Pillow was built without WebP"
    if features.check("avif"):
        found["avif"] = Baseline("avif", (2, 10, 20, 30, 40, 50, 60, 70, 80, 90),
                                 _pillow("AVIF", speed=6))
    else:
        missing["avif"] = "Pillow was built without AVIF"
    jxl, how = _jxl_runner()
    if jxl:
        found["jxl"] = Baseline("jxl", (5, 10, 20, 30, 40, 50, 60, 70, 80, 90), jxl)
    else:
        missing["jxl"] = how
    if features.check("jpg_2000"):
        found["jpeg2000"] = Baseline("jpeg2000", (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0),
                                     _jpeg2000, setting_name="target bpp")
    else:
        missing["jpeg2000"] = "Pillow was built without OpenJPEG"
    return found, missing
