"""The MCQ model as the codec sees it: the shipped weight file and what the registry loads.

``load_weights`` gives the network (``models/mcq/network.py``: ``analyze``, ``analyze_coded``,
``synthesize``) and its integer prior (``models/mcq/prior.py``), the pair that
``codec/registry.py`` calls a model. ``mcq-tiny``, the family's first and smallest network, keeps
its weight file beside its network in ``models/mcq/tiny.py``.
"""

from __future__ import annotations

import torch

from nicodec.models import weightfile
from nicodec.models.mcq.network import MCQ, MCQConfig
from nicodec.models.mcq.prior import IntChannelPrior, IntMCQPrior


def shipped_float(name: str) -> bool:
    """Whether a state entry is shipped as a float tensor: transforms and codebooks, not the
    priors (shipped as integers) nor the codebooks' EMA training statistics."""
    return (not name.startswith(("coarse_prior.", "fine_prior."))
            and not name.endswith(("usage", "ema_count", "ema_sum")))


def save_weights(model: MCQ, prior: IntMCQPrior, path: str, metadata: dict) -> None:
    """Write shipped weights: transforms and codebooks in float16 (rounding them measured no
    change: +-0.003 dB, +-0.05% bits on held-back photos), integer priors, config. Call
    ``weightfile.round_to_half(model, shipped_float)`` before fitting and measuring the prior."""
    weightfile.write(path, model, shipped_float, prior.tensors(), model.config_dict(), metadata,
                     dtype=torch.float16)


def load_weights(path: str) -> tuple[MCQ, IntMCQPrior]:
    """Read weights written by :func:`save_weights`."""
    config, tensors = weightfile.read(path)
    model = weightfile.load_state(MCQ(MCQConfig(**config)), tensors)
    prior = IntMCQPrior(IntChannelPrior.from_tensors(tensors, "coarse_prior"),
                        IntChannelPrior.from_tensors(tensors, "fine_prior"),
                        model.config.coarse_groups, model.config.sibling_groups)
    return model, prior
