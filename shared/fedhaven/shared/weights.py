"""Model weights as named numpy arrays: the only form in which anything leaves a site."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

_OPACUS_PREFIX = "_module."


def clean_name(name: str) -> str:
    """A parameter name without Opacus' wrapper prefix (`_module.`), however deeply wrapped."""
    while name.startswith(_OPACUS_PREFIX):
        name = name[len(_OPACUS_PREFIX):]
    return name


def clean_state_dict(state: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """`state` with every key cleaned, refusing two keys that clean to the same name."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        name = clean_name(key)
        if name in out:
            raise ValueError(f"state dict has both {name!r} and a wrapped copy of it")
        out[name] = value
    return out


def weight_names(model: nn.Module) -> list[str]:
    """The exchange order: the model's state-dict keys, cleaned."""
    return list(clean_state_dict(model.state_dict()).keys())


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """The model's state as float32/int numpy arrays in exchange order (copies, on the CPU)."""
    return [t.detach().cpu().numpy().copy() for t in clean_state_dict(model.state_dict()).values()]


def set_weights(model: nn.Module, weights: Sequence[np.ndarray]) -> None:
    """Load arrays in exchange order into `model`, checking count and shapes first."""
    names = weight_names(model)
    target = clean_state_dict(model.state_dict())
    problems = []
    if len(weights) != len(names):
        problems.append(f"expected {len(names)} arrays, got {len(weights)}")
    else:
        for name, arr in zip(names, weights, strict=True):
            if tuple(arr.shape) != tuple(target[name].shape):
                problems.append(f"{name}: expected shape {tuple(target[name].shape)}, got {tuple(arr.shape)}")
    if problems:
        raise ValueError("weights do not fit the model: " + "; ".join(problems)
                         + ". Site and coordinator must build the same model for the same data shape.")
    state = OrderedDict((n, torch.as_tensor(np.asarray(a)).to(target[n].dtype)) for n, a in zip(names, weights,
                                                                                                 strict=True))
    model.load_state_dict(state)


def state_dict_from_weights(model: nn.Module, weights: Sequence[np.ndarray]) -> OrderedDict[str, torch.Tensor]:
    """A clean, CPU state dict for `weights` (e.g. to save the global model with `torch.save`)."""
    set_weights(model, weights)
    return OrderedDict((k, v.detach().cpu().clone()) for k, v in clean_state_dict(model.state_dict()).items())
