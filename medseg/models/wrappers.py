"""Model wrappers (DataParallel, DistributedDataParallel, ``torch.compile``) and the key prefixes they add.

A leaf module: checkpoint reading, the pretrained loaders and the architectures all unwrap a model or strip a
state_dict's prefix, so these two functions live below all of them (importing only torch).
"""
from __future__ import annotations

from torch import nn

WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def strip_wrapper_prefix(state_dict: dict) -> dict:
    """``state_dict`` without the ``module.`` / ``_orig_mod.`` prefix that every key carries (if any)."""
    for prefix in WRAPPER_PREFIXES:
        if state_dict and all(isinstance(k, str) and k.startswith(prefix) for k in state_dict):
            state_dict = {key[len(prefix):]: value for key, value in state_dict.items()}
    return state_dict
