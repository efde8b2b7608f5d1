"""The model zoo's registry: every architecture is built by name through :func:`create`.

An architecture module (one per file in :mod:`medseg.models`) registers its variants with
:func:`register_model`. Each builder takes ``(num_classes, img_size, in_channels, **overrides)`` and returns a
``torch.nn.Module`` whose forward maps ``(B, in_channels, H, W)`` float images to ``(B, num_classes, H, W)``
logits in eval mode. Models with auxiliary (deep-supervision) heads return a tuple ``(main, aux1, ...)`` in
training mode, every element at the input resolution, and say how to weight them in ``aux_loss_weights``.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from medseg.errors import ConfigError
from medseg.models.options import check_counts

# This package, whose modules register their architectures when imported, and those that hold none.
_PACKAGE = __name__.rpartition(".")[0]
_NOT_ARCHITECTURES = {"registry", "checkpoint", "layers", "pretrained", "options", "wrappers"}
# Architectures built on MONAI's network blocks: imported after the others (importing MONAI takes seconds).
_IMPORTS_MONAI = {"ds_transunet"}


@dataclass(frozen=True)
class OfficialCount:
    """The parameter count of a variant in its official implementation, at the published configuration.

    Attributes:
        parameters: what the official code's model has (``sum(p.numel())`` of the instantiated official class).
        num_classes, in_channels: the configuration it was counted at (e.g. 150 ADE20K classes, RGB).
        img_size: the input size it was built for (only position embeddings depend on it).
        not_built: official parameters medseg has no counterpart for, by construction: mmseg's ``conv_seg`` that
            those heads build but never use, conv biases that medseg folds into the BatchNorm after them
            (mathematically the same), SETR-MLA's unused class token. ``medseg + not_built == parameters``.
        scope: ``"model"``, or ``"backbone"`` where only the official backbone could be counted.
        counted: with scope ``"backbone"``, the medseg module prefixes that make up the backbone.
        source: the official code it was counted with.
    """

    parameters: int
    num_classes: int
    in_channels: int
    img_size: int
    not_built: int = 0
    scope: str = "model"
    counted: tuple[str, ...] = ()
    source: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """What the zoo knows about one registered variant.

    Attributes:
        name: the registry name (``R50-ViT-B_16``).
        family: architecture family (``transunet``, ``ds_transunet``, ...).
        builder: callable ``(num_classes, img_size, in_channels, **overrides) -> nn.Module``.
        description: one line on what the variant is for.
        default_img_size: the input size the variant was published at.
        published: True for the sizes of the paper; False for small variants (tests, CPU demo).
        img_size_multiple: input height and width must be multiples of this.
        official: the official implementation's parameter count at the published size, where known.
    """

    name: str
    family: str
    builder: Callable = field(repr=False)
    description: str = ""
    default_img_size: int = 224
    published: bool = False
    img_size_multiple: int = 16
    official: OfficialCount | None = None


_REGISTRY: dict[str, ModelSpec] = {}
_LOADED = False


def register_model(name: str, *, family: str, description: str = "", default_img_size: int = 224,
                   published: bool = False, img_size_multiple: int = 16, official: OfficialCount | None = None):
    """Decorator that registers a builder under ``name``."""

    def decorator(builder: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].builder is not builder:
            raise ValueError(f"model name {name!r} registered twice")
        _REGISTRY[name] = ModelSpec(name, family, builder, description, default_img_size, published,
                                    img_size_multiple, official)
        return builder

    return decorator


def architecture_modules() -> list[str]:
    """The architecture modules of :mod:`medseg.models` in import order: by name, those that import MONAI last."""
    names = [module.name for module in pkgutil.iter_modules([str(Path(__file__).parent)])
             if not module.name.startswith("_") and module.name not in _NOT_ARCHITECTURES]
    return sorted(names, key=lambda name: (name in _IMPORTS_MONAI, name))


def _load_architectures(until: "str | None" = None) -> None:
    """Import the architecture modules of :mod:`medseg.models`, so that their variants register: all of them, or
    (with ``until``) only until one has registered that name, so that building a TransUNet does not import MONAI."""
    global _LOADED
    if _LOADED:
        return
    for module in architecture_modules():
        if until is not None and until in _REGISTRY:
            return
        importlib.import_module(f"{_PACKAGE}.{module}")
    _LOADED = True


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` registered as ``name``; an unknown name is a :class:`ConfigError`."""
    _load_architectures(until=name)
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ConfigError(f"model: unknown model {name!r} (known: {known})") from None


def list_models() -> list[ModelSpec]:
    """Every registered variant, sorted by family then name."""
    _load_architectures()
    return sorted(_REGISTRY.values(), key=lambda spec: (spec.family, spec.name))


def create(name: str, num_classes: int, img_size: int = 224, in_channels: int = 1, **overrides):
    """Build the model registered as ``name``.

    Args:
        name: registry name, see ``medseg models``.
        num_classes: output classes including background (9 for Synapse 8-organ).
        img_size: input height and width in pixels (square inputs).
        in_channels: image channels (1 for CT).
        **overrides: architecture-specific config values (e.g. ``hidden_size``); unknown keys are an error.
    """
    spec = get_spec(name)
    check_counts(num_classes, in_channels)
    if img_size % spec.img_size_multiple:
        raise ConfigError(f"img_size: {name} needs a multiple of {spec.img_size_multiple}, got {img_size}")
    # Each builder checks its options with medseg.models.options.check_options (one ConfigError for all).
    return spec.builder(num_classes=num_classes, img_size=img_size, in_channels=in_channels, **overrides)
