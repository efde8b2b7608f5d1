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
import re
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
            metavar: "str | None" = None, default_factory=dataclasses.MISSING, short: "str | None" = None,
            pattern: "str | None" = None, parse: "typing.Callable | None" = None):
    """A dataclass field with its help text, an optional lower bound and an optional command-line ``flag``
    (shown with ``metavar`` in the usage line; ``short`` adds a one-letter alias such as ``-i``).

    ``pattern`` is a regular expression a text value must match in full; ``parse(value, where)`` turns a value as
    users write it (``"liver,spleen"``) into the field's type before it is checked (``["liver", "spleen"]``).
    """
    metadata = {"help": help, "minimum": minimum, "flag": flag, "metavar": metavar, "short": short,
                "pattern": pattern, "parse": parse}
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
    pattern: "str | None" = None
    parse: "typing.Callable | None" = None
    pattern_text: "str | None" = None

    def describe(self) -> str:
        if self.choices:
            text = "one of " + ", ".join(str(c) for c in self.choices)
        elif self.pattern_text:
            text = self.pattern_text
        else:
            text = _TYPE_NAMES.get(self.base, self.base.__name__)
        return text + (" or null" if self.nullable else "")


@lru_cache(maxsize=None)
def field_kinds(cls) -> dict[str, FieldKind]:
    """Field name -> :class:`FieldKind` of a settings dataclass, read from its (resolved) annotations."""
    hints = typing.get_type_hints(cls)
    kinds = {}
    for f in dataclasses.fields(cls):
        kind = _kind(hints[f.name], f.metadata.get("minimum"), f"{cls.__name__}.{f.name}")
        pattern = f.metadata.get("pattern")
        kinds[f.name] = dataclasses.replace(kind, pattern=pattern, parse=f.metadata.get("parse"),
                                            pattern_text=f.metadata.get("metavar") if pattern else None)
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
    if kind.parse is not None and value is not None:
        value = kind.parse(value, where)
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
    if kind.pattern is not None and re.fullmatch(kind.pattern, value) is None:
        raise ConfigError(f"{where}: expected {kind.describe()}, got {value!r}")
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

    Booleans become switches that set True (a flag named ``--no-...`` sets False); a ``list`` field takes one or
    more values after its flag, and the flag may be repeated (``--output-type dicom-seg rtstruct``); the other types
    convert their text (``int``, ``float``, ``str``) and a ``Literal`` field offers its choices. A field without a
    default is a required option. With ``defaults`` an option left out takes the field's default; without, it is
    None, so that :func:`flag_values` can tell what the command line gave (to override a file's values).
    """
    kinds = field_kinds(cls)
    fields = sorted(dataclasses.fields(cls), key=lambda f: not _required(f))  # required options first
    for f in fields:
        flag = f.metadata.get("flag")
        if not flag:
            continue
        kind = kinds[f.name]
        names = [f.metadata["short"], flag] if f.metadata.get("short") else [flag]
        help_text = f.metadata.get("help", "")
        default = f.default if defaults and f.default is not dataclasses.MISSING else None
        if kind.base is bool:
            action = "store_false" if flag.startswith("--no-") else "store_true"
            parser.add_argument(*names, dest=f.name, action=action, default=default, help=help_text)
            continue
        required = _required(f)
        if kind.base is list:
            parser.add_argument(*names, dest=f.name, nargs="+", action="extend", default=None, required=required,
                                metavar=f.metadata.get("metavar"), help=help_text)
            continue
        shown = "" if f.default in (dataclasses.MISSING, "", None) else f" (default {f.default})"
        parser.add_argument(*names, dest=f.name, type=str if kind.base is dict else kind.base, choices=kind.choices, default=default,
                            required=required, metavar=f.metadata.get("metavar"), help=help_text + shown)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


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
# Prediction: one request for `medseg predict`, the pipeline's predict stage and notebooks (medseg.predict_cases).

#: Output types of a prediction (``--output-type``); DICOM outputs need a DICOM series input.
OUTPUT_TYPES = ("nifti", "dicom-seg", "rtstruct")


def split_items(value, where: str) -> list[str]:
    """``"a,b"``, ``["a", "b"]`` or ``["a,b"]`` -> ``["a", "b"]`` (stripped, order kept, repeats dropped).

    Raises:
        ConfigError: naming ``where`` when no item is left (``--organs ''``), or an item is not text.
    """
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{where}: expected a list or comma-separated text, got {value!r}")
    items: list[str] = []
    for text in values:
        if not isinstance(text, str):
            raise ConfigError(f"{where}: expected names, got {text!r}")
        for item in (part.strip() for part in text.split(",")):
            if item and item not in items:
                items.append(item)
    if not items:
        raise ConfigError(f"{where}: empty (name at least one, e.g. liver,spleen; leave it out for all)")
    return items


def parse_mm_by_organ(value, where: str) -> dict[str, float]:
    """``"liver=5,spleen=3"`` or ``{"liver": 5, "spleen": 3}`` -> ``{organ: mm}`` (finite numbers >= 0; the organ
    names are checked against the label set by the caller).

    Raises:
        ConfigError: naming ``where``: an empty text, an item without ``=``, a missing organ name, an organ given
            twice, or a value that is not a finite number >= 0.
    """
    if isinstance(value, dict):
        items = [(str(organ), mm) for organ, mm in value.items()]
    elif isinstance(value, str):
        parts = [part.strip() for part in value.split(",") if part.strip()]
        if not parts:
            raise ConfigError(f"{where}: no value given (ORGAN=MM pairs, e.g. liver=5,spleen=3)")
        items = []
        for part in parts:
            organ, sep, mm = part.partition("=")
            if not sep:
                raise ConfigError(f"{where}: {part!r} is not ORGAN=MM (e.g. liver=5)")
            items.append((organ.strip(), mm))
    else:
        raise ConfigError(f"{where}: expected ORGAN=MM pairs, got {value!r}")
    by_organ: dict[str, float] = {}
    for organ, mm in items:
        if not organ:
            raise ConfigError(f"{where}: an organ name is missing before '='")
        if organ in by_organ:
            raise ConfigError(f"{where}: organ {organ!r} given twice")
        try:
            number = float(mm)
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and number >= 0):
            raise ConfigError(f"{where}: {organ}: {mm!r} is not a finite number of mm >= 0")
        by_organ[organ] = number
    return by_organ


def parse_output_types(value, where: str) -> list[str]:
    """``"nifti,dicom-seg"`` or ``["dicom-seg", "rtstruct"]`` -> the output types, checked against
    :data:`OUTPUT_TYPES` (lower case, order kept)."""
    types = [item.lower() for item in split_items(value, where)]
    for item in types:
        if item not in OUTPUT_TYPES:
            raise ConfigError(f"{where}: unknown type {item!r} (choose from {', '.join(OUTPUT_TYPES)})")
    return list(dict.fromkeys(types))


def check_instance(instance) -> None:
    """Check every field of a settings dataclass instance (after parsing; values are replaced by the parsed ones);
    messages name ``ClassName.field``."""
    kinds = field_kinds(type(instance))
    for name, kind in kinds.items():
        value = check_value(kind, getattr(instance, name), f"{type(instance).__name__}.{name}")
        object.__setattr__(instance, name, value)


@dataclasses.dataclass(kw_only=True)
class PredictOptions:
    """How cases are predicted and which files a prediction folder gets: the options ``medseg predict`` and the
    pipeline's predict stage share (same names; the flags are generated from these fields)."""

    SCHEMA_VERSION = 1

    device: str = setting("auto", flag="--device", pattern=r"auto|cpu|cuda(:[0-9]+)?", metavar="auto|cpu|cuda[:N]",
                          help="auto (CUDA when available), cpu, cuda or cuda:N")
    batch_size: int = setting(16, minimum=1, flag="--batch-size", help="slices per forward pass")
    tta: bool = setting(False, flag="--tta", help="average over left-right and up-down flips")
    amp: typing.Literal["auto", "bf16", "off"] = setting("auto", flag="--amp",
                                                         help="bf16 autocast (auto: on CUDA only)")
    resize: typing.Literal["torch", "scipy"] = setting(
        "torch", flag="--resize", help="resize to the model size like training (torch) or like the reference test "
                                       "loop (scipy cubic zoom per slice, slower)")
    output_types: list = setting(default_factory=lambda: ["nifti"], flag="--output-type", metavar="TYPE",
                                 parse=parse_output_types,
                                 help="nifti (default), dicom-seg, rtstruct: several as 'dicom-seg rtstruct', "
                                      "nifti,dicom-seg or by repeating the option (DICOM outputs need a DICOM input)")
    organs: "list | None" = setting(None, flag="--organs", metavar="ORGAN", parse=split_items,
                                    help="keep only these organs (liver,spleen or liver spleen); the others become "
                                         "background in every output")
    preview: bool = setting(False, flag="--preview",
                            help="also write NAME_preview.png (axial, coronal, sagittal views with the organs)")
    statistics: bool = setting(False, flag="--statistics",
                               help="also write NAME_statistics.json (organ volumes in ml, mean and std HU) and, for "
                                    "a folder, statistics.csv")
    save_probabilities: bool = setting(False, flag="--save-probabilities",
                                       help="also write NAME_probabilities.npz (float16, (i, j, k, C))")
    split_masks: bool = setting(False, flag="--split-masks", help="also write NAME/<organ>.nii.gz binary masks")
    viewer_tables: bool = setting(False, flag="--viewer-tables",
                                  help="also write labels.ctbl (3D Slicer) and labels_itksnap.txt (ITK-SNAP)")
    overwrite: bool = setting(False, flag="--overwrite",
                              help="predict again when an output exists (made by another model or settings)")
    postprocess: bool = setting(True, flag="--no-postprocess",
                                help="do not apply the checkpoint's post-processing rules (NAME.postprocess.json "
                                     "beside it, medseg.postprocess)")

    def __post_init__(self):
        check_instance(self)


@dataclasses.dataclass(kw_only=True)
class PredictRequest(PredictOptions):
    """One prediction run (:func:`medseg.predict_cases`): what to predict, where, with which checkpoint, and the
    :class:`PredictOptions`. Paths are text or :class:`~pathlib.Path`; an invalid value is a ConfigError."""

    input: str = setting(flag="--input", short="-i",
                         help=".nii/.nii.gz file, TransUNet .npy.h5 volume, or a folder of them; or a folder / .zip "
                              "of DICOM series (one output per series)")
    output: str = setting(flag="--output", short="-o", help="output .nii.gz file (single input) or folder")
    checkpoint: str = setting(flag="--checkpoint", short="-m",
                              help="medseg checkpoint (best.pt / last.pt) or a bare reference state_dict (with "
                                   "--model)")
    model: "str | None" = setting(None, flag="--model",
                                  help="architecture of a bare state_dict checkpoint (e.g. R50-ViT-B_16)")
    labels: "typing.Literal['synapse8', 'btcv13'] | None" = setting(
        None, flag="--labels", help="label set of a bare state_dict (default synapse8)")
    img_size: "int | None" = setting(None, minimum=1, flag="--img-size",
                                     help="input size of a bare state_dict (default: the model's, 224)")
    raw_output: "str | None" = setting(None, flag="--raw-output", metavar="DIR",
                                       help="also write each case's labels before post-processing to this folder")
    num_parts: int = setting(1, minimum=1, flag="--num-parts", help="split a folder into N parts")
    part_id: int = setting(0, minimum=0, flag="--part-id", help="which part to run, 0..N-1")
    progress: bool = setting(True, flag="--no-progress", help="no progress bars")

    def __post_init__(self):
        check_instance(self)
        if self.part_id >= self.num_parts:
            raise ConfigError(f"--part-id: must be in 0..{self.num_parts - 1}, got {self.part_id}")


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
    size: typing.Literal["small", "full", "varied"] = setting(
        "small", flag="--size", help="small: 128x128x44-56 with 2.5-3 mm pixels (CPU tests); full: 512x512x85-198 "
                                     "like Synapse (benchmarks); varied: 512x512 at 0.6-1.0 mm, thin or thick "
                                     "slices, coverages from the lower chest to the pelvis (held-out tests)")
    workers: int = setting(1, minimum=1, flag="--workers", metavar="N",
                           help="processes generating cases in parallel")


@dataclasses.dataclass
class PrepareStage:
    """Prepare the slice cache (:func:`medseg.data.slice_cache.prepare_cohort`)."""

    labels: typing.Literal[LABEL_SET_NAMES] = setting(
        "synapse8", flag="--labels", help="label set (synapse8: the TransUNet paper's 8 organs)")
    label_map: "str | None" = setting(
        None, flag="--label-map", metavar="FILE", help="numbering of the label files: an nnU-Net dataset.json or a "
        "JSON of organ name -> value (default: the cohort's dataset.json when present, else BTCV's 1..13)")
    split: typing.Literal["auto", "paper", "seeded", "all-train", "all-test"] = setting(
        "auto", flag="--split", help="train/test split: the paper's Synapse ids (auto when all 30 are present) or "
                                     "seeded")
    test_fraction: float = setting(0.4, minimum=0, flag="--test-fraction", metavar="FRACTION",
                                   help="test share of a seeded split")
    seed: int = setting(1234, flag="--seed", help="seed of a seeded split")
    input_mode: typing.Literal["resize", "spacing"] = setting(
        "resize", flag="--input-mode", help="model input: resize each slice to the model size (the paper) or "
        "resample it to a fixed in-plane spacing first (spacing-aware, medseg.data.spacing; recorded in the cache "
        "and checkpoints)")
    target_spacing_mm: "float | None" = setting(None, minimum=0.01, flag="--target-spacing", metavar="MM",
                                                help="in-plane spacing of --input-mode spacing (default: the "
                                                     "training split's median)")
    workers: int = setting(1, minimum=1, flag="--workers", metavar="N", help="cases processed in parallel")


@dataclasses.dataclass
class EvaluateStage:
    """Score predictions against references (:func:`medseg.evaluation.cohort.evaluate_folders`)."""

    protocol: typing.Literal["standard", "transunet", "both"] = setting(
        "both", flag="--protocol", help="standard (mm, explicit empty-mask policy), transunet (the paper's), or both")
    label_map: "str | None" = setting(
        None, flag="--label-map", metavar="FILE", help="numbering of raw reference label files: an nnU-Net "
        "dataset.json or a JSON of organ name -> value (default: the references' dataset.json when present, else "
        "BTCV's 1..13; in a pipeline, the one the prepare stage used)")
    tolerance_mm: float = setting(2.0, minimum=0, flag="--tolerance", metavar="MM",
                                  help="NSD tolerance in mm (of the organs without their own)")
    tolerance_by_organ: dict = setting(default_factory=dict, flag="--tolerance-by-organ", metavar="ORGAN=MM,...",
                                       parse=parse_mm_by_organ,
                                       help="per-organ NSD tolerances in mm, e.g. liver=5,spleen=3 (in a pipeline "
                                            "{liver: 5, spleen: 3})")
    workers: "int | None" = setting(None, minimum=1, flag="--workers", metavar="N",
                                    help="cases evaluated in parallel processes (default: CPU count, at most 8)")
