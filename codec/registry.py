"""The shipped models: names, ids written into files, weight files, rate settings.

A model's id and its weights' digest go into every file it writes, so a decoder can refuse a file
made with a model (or a retrained version of it) that it does not have, instead of producing
garbage. When a model is retrained, its previous weight file stays shipped as a ``retired``
revision: files it wrote keep decoding, new files use the current weights. Older revisions are
dropped to keep the package small; their files are refused with a message that says so.

Reading the registry (``codec models``, ``codec info``) does not import torch: the loaded
:class:`Model` imports the entropy coder and its family's network when it is first used.
Loading is thread-safe: each (model, weights) pair is loaded once per process. A shipped weight
file that is missing, truncated or damaged raises :class:`WeightsError` (the installation is at
fault, not the data being coded).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Callable
from pathlib import Path

from nicodec.bitstream.format import Family
from nicodec.models import WEIGHTS

if TYPE_CHECKING:
    import numpy as np
    import torch

WEIGHTS_DIR = WEIGHTS
# the encoder keeps the tables its analysis computed (for a network with ``analyze_coded``) up
# to this many symbols (1 GB of uint16 tables at K = 256: mcq q4 up to 30 megapixels); beyond,
# the coder computes them again chunk by chunk (twice the prior's time, bounded memory)
KEEP_SYMBOLS = 1 << 21
REINSTALL = ("reinstall nicodec (pip install --force-reinstall nicodec; in a source checkout, "
             "restore models/weights/)")


class WeightsError(RuntimeError):
    """A shipped weight file is missing, truncated or damaged: this nicodec installation is
    broken and must be reinstalled.

    Not a :class:`bitstream.errors.BitstreamError`: the file being decoded (or the image being
    encoded) is not at fault, and a caller that skips bad files on ``BitstreamError`` must not
    skip every file because of its installation. The message names the weight file.
    """

    def __init__(self, name: str, path: Path, problem: str) -> None:
        super().__init__(f"the weights of model {name!r} ({path}) are {problem}: {REINSTALL}")
        self.path = path

    @classmethod
    def damaged(cls, name: str, path: Path, exc: Exception) -> "WeightsError":
        """The error for a weight file that exists but does not read: ``exc`` is what reading
        it raised (safetensors, json, torch)."""
        return cls(name, path, f"damaged ({type(exc).__name__}: {exc})")


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model before loading it."""

    name: str
    model_id: int
    family: Family
    weights: str
    module: str  # the models module with load_weights(path) -> (net, integer prior)
    qualities: tuple[int, ...]
    default_quality: int
    description: str
    retired: tuple[str, ...] = ()  # earlier weight files of this model, kept to decode their files
    # encoder only, per quality, for the current weights: the weight of bits against squared
    # latent error when a model picks its indices (models with ``analyze_coded``; empty: 0)
    rate_weights: tuple[float, ...] = ()
    # encoder effort levels (``--effort``): 1 is the single pass; higher levels search at encode
    # time (slower encoding, the same decoder and bitstream)
    efforts: tuple[int, ...] = (1,)
    # (quality, bpp, PSNR dB) on the 24 Kodak images as ``codec encode`` codes them (effort 1,
    # bpp from the file's bytes): what ``codec models`` shows; empty: not measured there
    kodak: tuple[tuple[int, float, float], ...] = ()


MODELS: dict[str, ModelInfo] = {
    info.name: info
    for info in [
        ModelInfo(
            name="mcq-tiny", model_id=1, family=Family.MCQ, weights="mcq-tiny.safetensors",
            module="nicodec.models.mcq.tiny",
            qualities=(1, 2, 3, 4), default_quality=4,
            description="one-level multi-codebook VQ trained on a CPU in minutes "
                        "(the first default; see models/weights/mcq-tiny.md)",
            # eval/results/kodak/summary.json
            kodak=((1, 0.1214, 23.88), (2, 0.2183, 25.58), (3, 0.3048, 26.54),
                   (4, 0.3930, 27.09))),
        ModelInfo(
            name="mcq", model_id=2, family=Family.MCQ, weights="mcq.safetensors",
            module="nicodec.models.mcq.codec", qualities=tuple(range(9)), default_quality=4,
            description="MCQ: coarse 1/16 codebooks and 8 residual VQ stages at 1/8 with a "
                        "cascaded prior, 0.06-0.52 bpp; small CPU-trained configuration "
                        "(models/weights/mcq.md)",
            retired=("mcq-r7.safetensors",),
            # python -m nicodec.eval.rate_weights (eval/results/mcq/rate_weights-r8.json): its choice,
            # but q3 and q7-q8 one grid step lower (within 0.03 dB of the best there), so that
            # the rate points stay evenly spaced and the top one keeps r7's rate
            rate_weights=(0, 0.5, 0.3, 0.2, 0.1, 0.1, 0.05, 0.03, 0.02),
            efforts=(1, 2, 3),
            # eval/results/mcq/summary.json (q0: the table of models/weights/mcq.md)
            kodak=((0, 0.0566, 23.19), (1, 0.0919, 25.06), (2, 0.1291, 26.10),
                   (3, 0.1850, 27.02), (4, 0.2266, 27.72), (5, 0.2753, 28.11),
                   (6, 0.3359, 28.75), (7, 0.4288, 29.29), (8, 0.5244, 29.68))),
        ModelInfo(
            name="pc-mnist", model_id=3, family=Family.LOSSLESS, weights="pc-mnist.safetensors",
            module="nicodec.models.pc.codec", qualities=(0,), default_quality=0,
            description="lossless probabilistic circuit (HCLT) for 28x28 grayscale digits; "
                        "a strip of many digits is one stream (models/weights/pc-mnist.md)"),
        ModelInfo(
            name="pc-fashion", model_id=4, family=Family.LOSSLESS,
            weights="pc-fashion.safetensors", module="nicodec.models.pc.codec", qualities=(0,),
            default_quality=0,
            description="lossless probabilistic circuit (HCLT) for 28x28 grayscale "
                        "Fashion-MNIST images (models/weights/pc-fashion.md)"),
        ModelInfo(
            name="pc-photo", model_id=5, family=Family.LOSSLESS, weights="pc-photo.safetensors",
            module="nicodec.models.pc.codec", qualities=(0,), default_quality=0,
            description="lossless photos: probabilistic circuit (HCLT) over colour-transformed "
                        "prediction residuals, 32x32 tiles (models/weights/pc-photo.md)"),
        ModelInfo(
            name="vq-static", model_id=6, family=Family.VQ, weights="vq-cpu.safetensors",
            module="nicodec.models.vq.codec", qualities=tuple(range(1, 11)), default_quality=8,
            description="the VQ ladder of `vq` with static index tables (no spatial context: "
                        "faster, about 25% larger files; models/weights/vq-cpu.md)",
            efforts=(1, 2, 3)),
        ModelInfo(
            name="vq", model_id=7, family=Family.VQ, weights="vq-prior.safetensors",
            module="nicodec.models.vq.masked", qualities=tuple(range(1, 11)), default_quality=8,
            description="extreme rates (<= 0.05 bpp): VQGAN, one index per 16x16 block from a "
                        "codebook of 8 (q1) .. 2048 (q9) or 4096 (q10) words, coded and "
                        "restored by a masked index transformer; small CPU-trained "
                        "configuration (models/weights/vq-prior.md, vq-cpu.md)",
            retired=("vq-prior-r3.safetensors",), efforts=(1, 2, 3)),
        ModelInfo(
            name="ctx-photo", model_id=8, family=Family.LOSSLESS, weights="ctx-photo.safetensors",
            module="nicodec.models.ctx.codec", qualities=(0,), default_quality=0,
            retired=("ctx-photo-r1.safetensors", "ctx-photo-r2.safetensors",
                     "ctx-photo-r3.safetensors", "ctx-photo-r4.safetensors"),
            description="lossless photos: coarse-to-fine passes, least-squares prediction "
                        "fitted per image, context classes with learned tables "
                        "(models/weights/ctx-photo.md)"),
    ]
}
DEFAULT_MODEL = "mcq"
LOSSLESS_MODEL = "ctx-photo"


def available_models(lossy_only: bool = False) -> list[str]:
    """Names of the models this installation ships (only the lossy ones: for RD curves)."""
    return [name for name, info in MODELS.items() if (WEIGHTS_DIR / info.weights).exists()
            and not (lossy_only and info.family == Family.LOSSLESS)]


def resolve_model(name: str | None, lossless: bool = False) -> str:
    """The model to encode with: ``name``, else the default (the lossless default when
    ``lossless``); asking for lossless coding with a lossy model is an error."""
    if not lossless:
        return name or DEFAULT_MODEL
    name = name or LOSSLESS_MODEL
    if model_info(name).family != Family.LOSSLESS:
        exact = ", ".join(n for n, i in MODELS.items() if i.family == Family.LOSSLESS)
        raise ValueError(f"model {name!r} is lossy; lossless models: {exact}")
    return name


def check_quality(name: str, quality: int | None) -> None:
    """A clear error when ``name`` has no quality ``quality`` (None: its default, always there)."""
    qualities = model_info(name).qualities
    if quality is not None and quality not in qualities:
        raise ValueError(f"model {name} has qualities {list(qualities)}")


def check_effort(name: str, effort: int) -> None:
    """A clear error when ``name`` has no effort level ``effort``."""
    efforts = model_info(name).efforts
    if effort not in efforts:
        searching = ", ".join(n for n, i in MODELS.items() if len(i.efforts) > 1)
        raise ValueError(f"model {name!r} has effort levels {min(efforts)}..{max(efforts)}, "
                         f"got {effort} (models with encoder search: {searching})")


def model_info(name: str) -> ModelInfo:
    """Registry entry of ``name``; a clear error lists the valid names."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    return MODELS[name]


def measured_rates(name: str) -> list[dict]:
    """Per-quality bpp and PSNR measured at export on held-back training photos (lossless
    models: one entry with bits per symbol, ``val_bpd``), from the weight file's metadata."""
    from safetensors import safe_open

    path = WEIGHTS_DIR / model_info(name).weights
    if not path.exists():
        return []
    try:
        with safe_open(str(path), framework="numpy") as f:  # metadata only: no torch needed
            measured = json.loads((f.metadata() or {}).get("validation", "[]"))
    except Exception as exc:  # noqa: BLE001 (safetensors, json: whatever a damaged file raises)
        raise WeightsError.damaged(name, path, exc) from exc
    return measured if isinstance(measured, list) else [measured]  # lossless: one {val_bpd}


def info_by_id(model_id: int) -> ModelInfo | None:
    """Registry entry with a given file id, or None."""
    return next((info for info in MODELS.values() if info.model_id == model_id), None)


def weights_digest(path: Path) -> int:
    """First 16 bits of the SHA-256 of a weight file: the digest written into each file."""
    return int.from_bytes(hashlib.sha256(path.read_bytes()).digest()[:2], "big")


class Model:
    """A loaded model: analysis, integer prior, synthesis, over a grid of units.

    ``analyze`` gives symbols (columns, h, w) for an image padded to a multiple of ``unit``;
    column j of a unit is coded with ``session(n).freqs(context, j)``, where context holds columns
    < j of the same units; ``synthesize`` inverts ``analyze``, concealing lost units.
    """

    def __init__(self, info: ModelInfo, path: Path) -> None:
        self.info = info
        self.digest = weights_digest(path)
        self.net, self.prior = importlib.import_module(info.module).load_weights(str(path))
        self.unit = self.net.unit
        self.current = path.name == info.weights  # not a retired revision

    def columns(self, quality: int) -> int:
        return self.net.columns(quality)

    def _at(self, quality: int | None):
        """(net, prior) at a quality: a model whose codewords and tables depend on the quality
        (the VQ ladder) gives them through ``at(quality)``."""
        if quality is None or not hasattr(self.net, "at"):
            return self.net, self.prior
        return self.net.at(quality), self.prior.at(quality)

    @property
    def tunable(self) -> bool:
        """Whether a rate weight steers this encoder's rate at every effort: a model with tuned
        ``rate_weights`` (``mcq``; the VQ search weighs bits only at effort 2-3). The target
        search of ``codec.target`` moves the rate between quality steps with it."""
        return bool(self.info.rate_weights) and hasattr(self.net, "analyze_coded")

    def rate_weight(self, quality: int) -> float:
        """The rate weight the encoder uses at ``quality`` by default: the registry's tuned
        value for the current weights, 0 (nearest codewords) for a retired revision."""
        weights = self.info.rate_weights if self.current else ()
        return weights[quality] if weights else 0.0

    def analysis(self, pixels: np.ndarray) -> object | None:
        """The part of the encoder's work on (H, W, 1 or 3) uint8 ``pixels`` that no quality,
        effort or rate weight changes (``mcq``: the latents), for :meth:`analyze_coded` of the
        same pixels several times (the target search of ``codec.target``); None for a network
        that does not split it off."""
        from nicodec.models.tiling import Pixels  # torch: once a model is used

        latents = getattr(self.net, "latents", None)
        return None if latents is None else latents(Pixels(pixels, self.unit))

    def analyze_coded(self, pixels: np.ndarray, quality: int, effort: int = 1,
                      rate_weight: float | None = None, analysis: object | None = None
                      ) -> tuple[np.ndarray, float, list[np.ndarray] | None]:
        """(symbols (columns, h, w), expected bits, the table of every column or None) of an
        image's (H, W, 1 or 3) uint8 pixels, as the encoder codes them; the network sees them
        edge-padded to a multiple of ``unit``, in tiles (``models/tiling.py``). A network that
        picks its indices with the prior in view (``analyze_coded``: rate-distortion optimised
        choice, at ``rate_weight``, by default this quality's :meth:`rate_weight`) computes the
        tables on the way, and keeps them for the coder while there are at most KEEP_SYMBOLS
        symbols (beyond, the coder computes them again in chunks, ``codec/columns.py``);
        otherwise they come from :meth:`tables`. ``analysis``: what :meth:`analysis` gave for
        these pixels (the same symbols, without computing it again)."""
        from nicodec.models.tiling import Pixels  # torch: once a model is used

        x = Pixels(pixels, self.unit)
        if not hasattr(self.net, "analyze_coded"):
            symbols = self.net.analyze(x, quality)
            return (symbols, *self.tables(symbols.reshape(len(symbols), -1), quality))
        weight = self.rate_weight(quality) if rate_weight is None else rate_weight
        keep = self.columns(quality) * (x.height // self.unit) * (x.width // self.unit) \
            <= KEEP_SYMBOLS
        reuse = {} if analysis is None else {"latents": analysis}
        symbols, tables, bits = self.net.analyze_coded(x, quality, self.prior, weight, effort,
                                                       keep, **reuse)
        return symbols, bits, tables

    def staged(self, quality: int):
        """The prior at ``quality`` if it codes stage by stage over the grid (spatial context,
        one column per unit: the masked index transformer), else None."""
        prior = self._at(quality)[1]
        return prior if getattr(prior, "spatial", False) else None

    @property
    def table_rows(self) -> int:
        """Rows of a column's tables per unit: 1, or the patches of a lossless tile."""
        return getattr(self.prior, "patches", 1)

    @property
    def streaming(self) -> bool:
        """Whether the prior keeps state across columns (tables only in column order)."""
        return hasattr(self.prior, "session")

    @property
    def symbol_dtype(self) -> type:
        """The integer type that holds this model's symbols (int16 for the lossless models,
        whose images have three symbols per pixel)."""
        import numpy as np

        return getattr(self.net, "symbol_dtype", np.int64)

    def session(self, n: int, quality: int | None = None):
        """Table source for n units: ``freqs(context, j)``, columns requested in order."""
        prior = self._at(quality)[1]
        return prior.session(n) if self.streaming else prior

    def tables(self, flat: np.ndarray, quality: int | None = None
               ) -> tuple[float, list[np.ndarray] | None]:
        """(expected bits, the table of every column, or None) for the units ``flat``
        (columns, n).

        A stateless prior's tables are computed here, chunk by chunk (``codec/columns.py``), and
        the estimate is their exact cost; they are returned when they are shared (K,) tables or
        fit in one chunk, else the coder computes them again chunk by chunk (all of them at once
        would not fit in memory). A streaming prior's tables come only in column order, in the
        coder; the estimate is then its measured rate.
        """
        from nicodec.bitstream.entropy import cost_bits
        from nicodec.codec.columns import chunks

        if self.streaming:
            return self.prior.bits_per_symbol * flat.size, None
        prior, bits, parts = self._at(quality)[1], 0.0, chunks(flat.shape[1], self.table_rows)
        for part in parts:
            tables = [prior.freqs(flat[:j, part], j) for j in range(len(flat))]
            bits += sum(cost_bits(f, t) for f, t in zip(flat[:, part], tables))
        whole = len(parts) == 1 or all(t.ndim == 1 for t in tables)
        return bits, tables if whole else None

    def synthesize(self, symbols: np.ndarray, lost: np.ndarray | None = None,
                   quality: int | None = None, mixture=None) -> torch.Tensor:
        """Image from symbols; ``lost`` units are concealed by the network, or (VQ) decoded
        from ``mixture`` = (where (h, w), probabilities (n, K)) as expected codewords."""
        net = self._at(quality)[0]
        return net.synthesize(symbols, lost) if mixture is None else \
            net.synthesize(symbols, lost, mixture)

    def render(self, symbols: np.ndarray, lost: np.ndarray | None, quality: int,
               mixture, out: np.ndarray, to_uint8: Callable[[torch.Tensor], np.ndarray]
               ) -> np.ndarray:
        """Decode symbols into ``out`` (H, W, channels) uint8 and return it; ``to_uint8`` turns
        a (1, 3, h, w) image in [0, 1] into uint8 (h, w, channels). A network with a latent
        (``conceal`` / ``decode_latent``) is decoded tile by tile from its concealed latent
        grid (``models/tiling.py``), computed in bands when nothing is lost and the network
        says how far its concealment reaches (``conceal_margin``, in units); otherwise the
        whole image is synthesized and cropped."""
        net = self._at(quality)[0]
        if not hasattr(net, "decode_latent"):
            image = self.synthesize(symbols, lost, quality, mixture)
            height, width = out.shape[:2]
            out[:] = to_uint8(image[:, :, :height, :width])
            return out
        from nicodec.models.tiling import conceal_in_bands, synthesize_in_tiles

        if lost is None and mixture is None and hasattr(net, "conceal_margin"):
            latent = conceal_in_bands(net.conceal, symbols, net.conceal_margin, self.unit)
        else:  # concealment fills lost units from any distance: on the whole grid
            latent = net.conceal(symbols, lost) if mixture is None else \
                net.conceal(symbols, lost, mixture)

        return synthesize_in_tiles(latent, net.decode_latent, net.latent_scale,
                                   net.synthesis_margin, to_uint8, out)

_LOADING = threading.Lock()  # lru_cache alone lets two threads load the same model at once


def load_model(name: str, weights: str | None = None) -> Model:
    """Load (once per process, whichever threads ask) the shipped model ``name`` with its current
    weights, or with the weight file ``weights`` (one of its retired revisions). A weight file
    that is missing or does not load raises :class:`WeightsError`."""
    with _LOADING:
        return _load_model(name, weights)


@lru_cache(maxsize=None)
def _load_model(name: str, weights: str | None) -> Model:
    info = model_info(name)
    path = WEIGHTS_DIR / (weights or info.weights)
    if not path.is_file():
        raise WeightsError(name, path, "missing")
    try:
        return Model(info, path)
    except Exception as exc:  # noqa: BLE001 (safetensors, json, torch: a damaged file)
        raise WeightsError.damaged(name, path, exc) from exc


load_model.cache_clear = _load_model.cache_clear  # tests: a fresh process


def load_revision(name: str, digest: int) -> Model | None:
    """The model ``name`` with whichever shipped weights (current or retired) have the digest a
    file's header names; None when no shipped revision has it."""
    current = load_model(name)
    if current.digest == digest:
        return current
    for weights in model_info(name).retired:
        path = WEIGHTS_DIR / weights
        if path.exists() and _file_digest(str(path)) == digest:
            return load_model(name, weights)
    return None


@lru_cache(maxsize=None)  # a race only hashes a file twice, to the same result
def _file_digest(path: str) -> int:
    return weights_digest(Path(path))
