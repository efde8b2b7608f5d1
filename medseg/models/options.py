"""The one check every model builder applies to its keyword options (``medseg.models.create(name, **overrides)``).

An unknown option is a :class:`~medseg.errors.ConfigError` naming the model, the option and the known ones, so a
typo in a pipeline's ``model.overrides`` is a one-line error, never silently ignored.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from medseg.errors import ConfigError


def check_options(model_name: str, options: Mapping, known: Iterable[str]) -> None:
    """Raise :class:`ConfigError` if ``options`` has a key not in ``known``.

    Args:
        model_name: the registry name, for the message.
        options: the overrides given to the builder.
        known: the option names the builder accepts.
    """
    known = set(known)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"model {model_name}: unknown option(s) {', '.join(map(repr, unknown))} "
                          f"(known: {', '.join(sorted(known))})")


def check_counts(num_classes: int, in_channels: int) -> None:
    """Raise :class:`ConfigError` unless ``num_classes`` (output classes) and ``in_channels`` are at least 1."""
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}: must be at least 1, got {value!r}")


def constructor_options(cls, fixed: Iterable[str] = ("self", "num_classes", "img_size", "in_channels")) -> set[str]:
    """The keyword options of ``cls.__init__`` a builder passes through (all but the ``fixed`` ones)."""
    import inspect

    fixed = set(fixed)
    return {name for name, parameter in inspect.signature(cls.__init__).parameters.items()
            if name not in fixed and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)}


def dataclass_options(config_cls) -> set[str]:
    """The field names of a configuration dataclass (TransUNet, DS-TransUNet)."""
    from dataclasses import fields

    return {f.name for f in fields(config_cls)}
