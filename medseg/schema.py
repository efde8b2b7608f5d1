"""Typed settings: a dataclass is the schema of one configuration (training, a pipeline stage, preprocessing).

A settings class is a plain dataclass whose fields carry their type annotation, their default and, through
:func:`setting`, a help text, a lower bound and an optional command-line flag. Everything else comes from it:

* :func:`check_mapping` / :func:`build` validate a mapping (a YAML file, a pipeline stage, a stored config):
  an unknown key, a value of the wrong type, a value below the field's minimum or outside its ``Literal`` choices is
  a one-line :class:`~medseg.errors.ConfigError` naming where it came from and the key;
* :func:`parse_assignment` is the one ``--set KEY=VALUE`` parser of ``medseg train`` and ``medseg run`` (the value
  is read as YAML; text that is not valid YAML is an error, never a silent string);
* :func:`add_arguments` turns the fields that name a ``flag`` into argparse options (type, choices and help text
  from the field);
* stored settings carry :data:`VERSION_KEY`; :func:`check_mapping` accepts it, refuses a version newer than the
  class's ``SCHEMA_VERSION`` and reads files written before versions existed (no key) as version 1.

Supported annotations: ``bool``, ``int``, ``float`` (an int is accepted and converted), ``str`` (a path is accepted
and converted), ``dict``, ``list``, ``typing.Literal[...]`` of strings, and any of these ``| None``.

The settings of the ``synth``, ``prepare`` and ``evaluate`` stages (:class:`SynthStage`, :class:`PrepareStage`,
:class:`EvaluateStage`) live here, at the bottom of the import graph, because both the command line (their flags,
built by :func:`add_arguments` without importing torch) and the pipeline (:mod:`medseg.pipeline`) read them.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from functools import lru_cache
from pathlib import Path

from medseg.errors import ConfigError
from medseg.labels import LABEL_SETS

#: Key under which a stored configuration records the version of its schema.
VERSION_KEY = "schema_version"

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping",
               list: "a list"}


def setting(default=dataclasses.MISSING, *, help: str = "", minimum=None, flag: "str | None" = None,
            metavar: "str | None" = None, default_factory=dataclasses.MISSING):
    """A dataclass field with its help text, an optional lower bound and an optional command-line ``flag``
    (shown with ``metavar`` in the usage line)."""
    metadata = {"help": help, "minimum": minimum, "flag": flag, "metavar": metavar}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class FieldKind:
    """What one field accepts: its base type, whether None is allowed, its choices (for ``Literal``), its minimum."""

    base: type
    nullable: bool
    choices: "tuple | None"
    minimum: "float | None"

    def describe(self) -> str:
        if self.choices:
            text = "one of " + ", ".join(str(c) for c in self.choices)
        else:
            text = _TYPE_NAMES.get(self.base, self.base.__name__)
        return text + (" or null" if self.nullable else "")


@lru_cache(maxsize=None)
def field_kinds(cls) -> dict[str, FieldKind]:
    """Field name -> :class:`FieldKind` of a settings dataclass, read from its (resolved) annotations."""
    hints = typing.get_type_hints(cls)
    kinds = {}
    for f in dataclasses.fields(cls):
        kinds[f.name] = _kind(hints[f.name], f.metadata.get("minimum"), f"{cls.__name__}.{f.name}")
    return kinds


def _kind(annotation, minimum, where: str) -> FieldKind:
    args = typing.get_args(annotation)
    nullable = False
    if type(None) in args:  # X | None, Optional[X]
        nullable = True
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"{where}: only 'X | None' unions are supported")
        annotation = rest[0]
        args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return FieldKind(type(args[0]), nullable, tuple(args), minimum)
    base = typing.get_origin(annotation) or annotation
    if base not in _TYPE_NAMES:
        raise TypeError(f"{where}: unsupported annotation {annotation!r}")
    return FieldKind(base, nullable, None, minimum)


def check_value(kind: FieldKind, value, where: str):
    """``value`` checked against ``kind`` (and converted: int -> float, path -> str); ConfigError naming ``where``."""
    if value is None:
        if kind.nullable:
            return None
        raise ConfigError(f"{where}: cannot be null (expected {kind.describe()})")
    base = kind.base
    if base is float and is_number(value):
        value = float(value)
    elif base is str and isinstance(value, Path):
        value = str(value)
    elif base is list and isinstance(value, tuple):
        value = list(value)
    valid = isinstance(value, base) and not (base in (int, float) and isinstance(value, bool))
    if base is float:
        valid = valid and math.isfinite(value)
    if not valid:
        raise ConfigError(f"{where}: expected {kind.describe()}, got {value!r}")
    if kind.choices is not None and value not in kind.choices:
        raise ConfigError(f"{where}: expected {kind.describe()}, got {value!r}")
    if kind.minimum is not None and value < kind.minimum:
        raise ConfigError(f"{where}: must be at least {kind.minimum}, got {value!r}")
    return dict(value) if base is dict else value


def check_mapping(cls, data, where: str, *, prefix: str = "", exclude=()) -> dict:
    """The keys of ``data`` checked against ``cls`` (a settings dataclass); returns the checked values.

    Args:
        cls: the settings dataclass.
        data: a mapping of field names to values (may hold :data:`VERSION_KEY`, which is checked and dropped).
        where: the origin used in messages: a file name, ``--set``, ``command line`` ...
        prefix: put before each key in messages (``stages.train.`` names ``stages.train.epochs``).
        exclude: field names this origin may not set (e.g. the fields a pipeline fills in itself).

    Raises:
        ConfigError: ``"{where}: {prefix}{key}: unknown key (did you mean ...?)"``, a wrong type or value, a
            schema version newer than the class's.
    """
    if not isinstance(data, dict):
        section = f" {prefix.rstrip('.')}:" if prefix else ""
        raise ConfigError(f"{where}:{section} expected a mapping of keys to values, got {type(data).__name__}")
    kinds = field_kinds(cls)
    allowed = [name for name in kinds if name not in exclude]
    checked = {}
    for key, value in data.items():
        if key == VERSION_KEY:
            check_version(value, getattr(cls, "SCHEMA_VERSION", 1), f"{where}: {prefix}{key}")
            continue
        if key not in allowed:
            raise ConfigError(f"{where}: {prefix}{key}: unknown key{suggest(str(key), allowed)}")
        checked[key] = check_value(kinds[key], value, f"{where}: {prefix}{key}")
    return checked


def build(cls, data, where: str, *, prefix: str = "", exclude=()):
    """An instance of ``cls`` from ``data`` (checked by :func:`check_mapping`), defaults for the keys not given."""
    values = check_mapping(cls, data, where, prefix=prefix, exclude=exclude)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: {prefix}{missing[0]}: required")
    return cls(**values)


def check_version(version, current: int, where: str) -> int:
    """The stored schema version, checked: an integer from 1 to ``current`` (``where`` names the key)."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"{where}: expected a positive integer, got {version!r}")
    if version > current:
        raise ConfigError(f"{where}: {version} is newer than this medseg understands ({current}); upgrade medseg")
    return version


def to_stored(instance) -> dict:
    """Plain data of a settings instance with its :data:`VERSION_KEY`, as files store it."""
    return {VERSION_KEY: getattr(type(instance), "SCHEMA_VERSION", 1), **dataclasses.asdict(instance)}


def parse_assignment(item: str, where: str = "--set") -> tuple[list[str], object]:
    """``"train.epochs=3"`` -> ``(["train", "epochs"], 3)``: the dotted key and the value read as YAML.

    An empty value is None. Text that is not valid YAML (e.g. ``[1, 2``) is a ConfigError, not a string.
    """
    import yaml

    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"{where} {item}: expected key=value")
    key, text = item.split("=", 1)
    parts = [part.strip() for part in key.split(".")]
    if not all(parts):
        raise ConfigError(f"{where} {item}: expected key=value with a key like name or section.name")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"{where} {key.strip()}: cannot read value {text!r} (quote it to pass a string)") from None
    return parts, value


def add_arguments(parser, cls, *, defaults: bool = False) -> None:
    """Add one argparse option per field of ``cls`` that names a ``flag`` (dest = the field name).

    Booleans become switches that set True; the other types convert their text (``int``, ``float``, ``str``) and a
    ``Literal`` field offers its choices. With ``defaults`` an option left out takes the field's default; without,
    it is None, so that :func:`flag_values` can tell what the command line gave (to override a file's values).
    """
    kinds = field_kinds(cls)
    for f in dataclasses.fields(cls):
        flag = f.metadata.get("flag")
        if not flag:
            continue
        kind = kinds[f.name]
        help_text = f.metadata.get("help", "")
        default = f.default if defaults and f.default is not dataclasses.MISSING else None
        if kind.base is bool:
            parser.add_argument(flag, dest=f.name, action="store_true", default=default, help=help_text)
            continue
        shown = "" if f.default in (dataclasses.MISSING, "", None) else f" (default {f.default})"
        parser.add_argument(flag, dest=f.name, type=kind.base, choices=kind.choices, default=default,
                            metavar=f.metadata.get("metavar"), help=help_text + shown)


def flag_values(args, cls) -> dict:
    """The values the command line gave for ``cls``'s flagged fields (those left at None are not included)."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("flag") and getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
    return values


def check_flags(args, cls) -> dict:
    """The command line's values for ``cls``'s flagged fields, checked like a file's (messages name the flag, e.g.
    ``--batch-size: must be at least 1, got 0``)."""
    kinds = field_kinds(cls)
    values = flag_values(args, cls)
    flags = {f.name: f.metadata["flag"] for f in dataclasses.fields(cls) if f.name in values}
    return {name: check_value(kinds[name], value, flags[name]) for name, value in values.items()}


def suggest(key: str, known) -> str:
    """`` (did you mean X?)`` for a near miss, else `` (known: a, b, ...)``."""
    known = list(known)
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(sorted(known))})"


def is_number(value) -> bool:
    """A real int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ----------------------------------------------------------------------------------------------------------------
# Stage settings shared by the command line and the pipeline: one definition of each field's default, choices and
# help. ``medseg synth`` / ``prepare`` / ``evaluate`` add their flags with ``add_arguments(parser, cls,
# defaults=True)`` and read them back with ``build(cls, check_flags(args, cls), "command line")``; a pipeline's
# ``stages.<name>`` mapping is checked against the same class. Options that only one of the two has (output
# folders, ``--no-preview``, ``--format``, ``--thumbnails`` ...) stay with it.

#: Label set names (:data:`medseg.labels.LABEL_SETS`).
LABEL_SET_NAMES = tuple(LABEL_SETS)


@dataclasses.dataclass
class SynthStage:
    """Write a synthetic phantom cohort (:func:`medseg.phantom.write_cohort`)."""

    cases: int = setting(20, minimum=1, flag="--cases", metavar="N", help="number of cases")
    seed: int = setting(0, minimum=0, flag="--seed", help="seed of the cohort, an integer >= 0")
    size: typing.Literal["small", "full"] = setting(
        "small", flag="--size", help="small: 128x128x44-56 with 2.5-3 mm pixels (CPU tests); full: 512x512x85-198 "
                                     "like Synapse (benchmarks)")
    workers: int = setting(1, minimum=1, flag="--workers", metavar="N",
                           help="processes generating cases in parallel")


@dataclasses.dataclass
class PrepareStage:
    """Prepare the slice cache (:func:`medseg.data.slice_cache.prepare_cohort`)."""

    labels: typing.Literal[LABEL_SET_NAMES] = setting(
        "synapse8", flag="--labels", help="label set (synapse8: the TransUNet paper's 8 organs)")
    split: typing.Literal["auto", "paper", "seeded", "all-train", "all-test"] = setting(
        "auto", flag="--split", help="train/test split: the paper's Synapse ids (auto when all 30 are present) or "
                                     "seeded")
    test_fraction: float = setting(0.4, minimum=0, flag="--test-fraction", metavar="FRACTION",
                                   help="test share of a seeded split")
    seed: int = setting(1234, flag="--seed", help="seed of a seeded split")
    workers: int = setting(1, minimum=1, flag="--workers", metavar="N", help="cases processed in parallel")


@dataclasses.dataclass
class EvaluateStage:
    """Score predictions against references (:func:`medseg.evaluation.cohort.evaluate_folders`)."""

    protocol: typing.Literal["standard", "transunet", "both"] = setting(
        "both", flag="--protocol", help="standard (mm, explicit empty-mask policy), transunet (the paper's), or both")
    tolerance_mm: float = setting(2.0, minimum=0, flag="--tolerance", metavar="MM", help="NSD tolerance in mm")
    workers: "int | None" = setting(None, minimum=1, flag="--workers", metavar="N",
                                    help="cases evaluated in parallel processes (default: CPU count, at most 8)")
