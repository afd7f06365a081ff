"""Shipped weight files: safetensors with the network's config in the metadata.

Float tensors of the transforms and codebooks are stored as float32 or float16 (the model
family's choice; computation is float32 either way), the integer priors as the integers they
are. Reading never unpickles anything.
"""

from __future__ import annotations

import json
from typing import Callable

import torch
from torch import nn

from nicodec.models import WEIGHTS  # noqa: F401  (the shipped weight files and cards; kept here too)


def write(path: str, model: nn.Module, keep: Callable[[str], bool],
          extra: dict[str, torch.Tensor], config: dict, metadata: dict,
          dtype: torch.dtype = torch.float32) -> None:
    """Save the state entries that ``keep`` accepts (as ``dtype``), plus ``extra`` tensors,
    config, metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()
               if keep(k)}
    tensors.update(extra)
    meta = {"config": json.dumps(config), **{k: str(v) for k, v in metadata.items()}}
    save_file(tensors, path, metadata=meta)


@torch.no_grad()
def round_to_half(model: nn.Module, keep: Callable[[str], bool]) -> None:
    """Round the float state entries that ``keep`` accepts to float16 values, in place (they stay
    float32 tensors): whatever is measured or fitted afterwards (prior, validation, index counts)
    is then exactly what a float16 file of the model gives."""
    for k, v in model.state_dict().items():
        if keep(k) and v.is_floating_point():
            v.copy_(v.half())


def read(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, tensors) of a weight file."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return json.loads(f.metadata()["config"]), {k: f.get_tensor(k) for k in f.keys()}


def load_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Copy the file's tensors that belong to ``model`` into it; return it in eval mode. An
    integer tensor stored under the name of a float parameter (an integer prior beside the
    float one it was exported from) is left out: its values are fixed-point, not the float's."""
    state = model.state_dict()
    state.update({k: v for k, v in tensors.items()
                  if k in state and v.is_floating_point() == state[k].is_floating_point()})
    model.load_state_dict(state)
    return model.eval()
