"""Saving and loading model checkpoints, for every model of the zoo.

A medseg checkpoint is one ``torch.save`` file holding a dict of tensors and plain data only, so it loads with
``torch.load(..., weights_only=True)`` and can never run code::

    {
        "format": "medseg-checkpoint",
        "version": 1,
        "medseg_version": "0.1.0",
        "model_name": "R50-ViT-B_16",
        "model_config": {"num_classes": 9, "img_size": 224, "in_channels": 1, "overrides": {...}},
        "label_set": {"name": "synapse8", "organs": [...], "raw_to_class": {...}} or None,
        "preprocessing": {...},                      # e.g. HU window, scaling, model input size
        "extra": {...},                              # plain data: epoch, metrics, ...
        "training_state": {...} or None,             # optimizer / scheduler / RNG state for resuming
        "state_dict": {parameter name: tensor},
    }

:func:`load_checkpoint` rebuilds the model through :func:`medseg.models.create` and loads the weights strictly. It
also accepts a bare state_dict (e.g. a ``.pth`` saved by the reference TransUNet code, with or without the
``module.`` prefix of DataParallel) when the architecture is named; the number of classes is then read from the
weights. A file that carries pickled code or objects is refused.
"""
from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medseg import __version__
from medseg.errors import CheckpointError, ConfigError, MedsegError
from medseg.io import atomic_path, check_input_file
from medseg.labels import LabelSet, get_label_set
from medseg.models.pretrained import adapt_input_channels, convert_official
from medseg.models.registry import create, get_spec
from medseg.models.wrappers import strip_wrapper_prefix, unwrap_model
from medseg.preprocessing import PreprocessingParams

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "medseg-checkpoint"
CHECKPOINT_VERSION = 1

# Keys under which other training scripts commonly nest the state_dict.
_NESTED_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
_SHOWN_KEYS = 3


@dataclass
class CheckpointInfo:
    """What a checkpoint file says about itself.

    Attributes:
        path: the file.
        kind: ``"medseg"`` for a medseg checkpoint, ``"state_dict"`` for a bare state_dict.
        model_name: registry name (``None`` for a bare state_dict read without naming the architecture).
        model_config: ``{"num_classes", "img_size", "in_channels", "overrides"}``, the arguments of
            :func:`medseg.models.create` (for a bare state_dict, those used to build it; empty before that).
        label_set: the classes the model predicts, or ``None`` when unknown.
        preprocessing: preprocessing parameters the model expects (HU window, scaling, input size, ...).
        extra: plain data stored with the weights (epoch, metrics, ...).
        training_state: optimizer / scheduler / RNG state for resuming training, or ``None``.
        version: checkpoint format version (``None`` for a bare state_dict).
        medseg_version: medseg version that wrote the file (``None`` for a bare state_dict).
        input_adaptation: how an RGB checkpoint was made to take 1-channel CT, e.g. ``"first kernel
            stem.weight (16, 3, 3, 3) summed over RGB: the RGB model on the grey image repeated 3 times"``;
            ``None`` when the weights were loaded as they are.
    """

    path: Path
    kind: str
    model_name: "str | None"
    model_config: dict = field(default_factory=dict)
    label_set: "LabelSet | None" = None
    preprocessing: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    training_state: "dict | None" = None
    version: "int | None" = None
    medseg_version: "str | None" = None
    input_adaptation: "str | None" = None


# --------------------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------------------
def save_checkpoint(
    path: "str | Path",
    model: nn.Module,
    *,
    model_name: str,
    model_config: dict,
    label_set: "LabelSet | dict | str | None",
    preprocessing: "dict | None",
    extra: "dict | None" = None,
    training_state: "dict | None" = None,
) -> Path:
    """Write ``model``'s weights with everything needed to rebuild and use it, atomically.

    Args:
        path: destination file (``.pt`` by convention); its folder is created.
        model: the model (a DataParallel / DDP / torch.compile wrapper is unwrapped).
        model_name: its registry name, e.g. ``"R50-ViT-B_16"``.
        model_config: the arguments it was created with: ``num_classes``, ``img_size``, ``in_channels`` and
            architecture overrides, either flat (``{"num_classes": 9, "hidden_size": 64}``) or under an
            ``"overrides"`` key.
        label_set: a :class:`~medseg.labels.LabelSet`, its dict, its name, or ``None``.
        preprocessing: plain-data preprocessing parameters, or ``None``.
        extra: plain data (epoch, metrics, ...); numpy scalars and arrays are converted to Python numbers and
            tensors.
        training_state: state for resuming training (``optimizer.state_dict()``, scheduler, RNG states, ...),
            stored as given after the same plain-data conversion.

    Returns:
        ``path``.

    Raises:
        ConfigError: unknown model name, a ``model_config`` that does not describe ``model``, or
            ``preprocessing`` that :class:`~medseg.preprocessing.PreprocessingParams` does not accept.
        CheckpointError: a value that cannot be stored as plain data (it would not load with
            ``weights_only=True``).
    """
    path = Path(path)
    get_spec(model_name)  # an unknown name is a ConfigError now, not at load time
    model = unwrap_model(model)
    config = normalise_model_config(model_config)
    labels = None
    if label_set is not None:
        labels = get_label_set(label_set)
        if labels.num_classes != config["num_classes"]:
            raise ConfigError(f"checkpoint: label set {labels.name} has {labels.num_classes} classes but the model "
                              f"has num_classes {config['num_classes']}")
    if preprocessing:  # what predict will read back: an unknown key or a bad value is refused now, not then
        PreprocessingParams.from_dict(preprocessing, source=f"{path}: preprocessing")
    state_dict = {key: value.detach().to("cpu") for key, value in model.state_dict().items()}
    _check_config_describes_model(model_name, config, state_dict)

    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "medseg_version": __version__,
        "model_name": model_name,
        "model_config": to_plain_data(config, "model_config"),
        "label_set": labels.to_dict() if labels is not None else None,
        "preprocessing": to_plain_data(dict(preprocessing or {}), "preprocessing"),
        "extra": to_plain_data(dict(extra or {}), "extra"),
        "training_state": to_plain_data(training_state, "training_state") if training_state is not None else None,
        "state_dict": state_dict,
    }
    with atomic_path(path, suffix=path.suffix) as tmp:
        torch.save(payload, tmp)
        _check_loads_safely(tmp, path)
    logger.debug("saved checkpoint %s (%s, %d tensors)", path, model_name, len(state_dict))
    return path


def _check_loads_safely(written: Path, path: Path) -> None:
    """Make sure the file just written loads with ``weights_only=True`` (tensors are memory-mapped, not read)."""
    try:
        torch.load(written, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), _first_line(exc))
        raise CheckpointError(f"{path}: not saved: the content would not load with weights_only=True "
                              f"({reason})") from None


def normalise_model_config(model_config: dict) -> dict:
    """``{"num_classes", "img_size", "in_channels", "overrides"}`` from a flat or nested create-kwargs dict."""
    config = dict(model_config)
    overrides = dict(config.pop("overrides", None) or {})
    if "num_classes" not in config:
        raise ConfigError("checkpoint: model_config needs num_classes")
    normalised = {
        "num_classes": int(config.pop("num_classes")),
        "img_size": int(config.pop("img_size", 224)),
        "in_channels": int(config.pop("in_channels", 1)),
    }
    overrides.update(config)  # every other flat key is an architecture override
    normalised["overrides"] = overrides
    return normalised


def _check_config_describes_model(model_name: str, config: dict, state_dict: dict) -> None:
    """Raise ConfigError when ``create(model_name, **config)`` would not give ``state_dict``'s keys and shapes.

    The model is built on the ``meta`` device (no memory, no time). Architectures that cannot be built there
    are not checked.
    """
    expected = _meta_shapes(model_name, config)
    if expected is None:
        return
    actual = {key: tuple(value.shape) for key, value in state_dict.items()}
    problem = describe_mismatch(expected, actual)
    if problem:
        raise ConfigError(f"checkpoint: model_config does not describe the model ({model_name}): {problem}")


def to_plain_data(value, where: str = "value"):
    """``value`` converted to what ``torch.load(weights_only=True)`` accepts: tensors and plain Python data.

    Numpy scalars become Python numbers, numpy arrays become tensors, paths become strings, label sets become
    dicts; dicts, lists and tuples are converted recursively. Anything else is a :class:`CheckpointError`
    naming where it was found.
    """
    if value is None or isinstance(value, (torch.dtype, torch.device)):
        return value
    if isinstance(value, np.generic):  # before the Python types: np.float64 is a float subclass
        return value.item()
    for plain_type in (bool, int, float, str):  # subclasses (IntEnum, ...) would pickle as their own class
        if isinstance(value, plain_type):
            return plain_type(value)
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu")
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value).copy())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, LabelSet):
        return value.to_dict()
    if isinstance(value, dict):
        plain = {}
        for key, item in value.items():
            if isinstance(key, np.generic):
                key = key.item()
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise CheckpointError(f"checkpoint: {where} has a key of type {type(key).__name__}; "
                                      "use str or int keys")
            plain[key] = to_plain_data(item, f"{where}[{key!r}]")
        return plain
    if isinstance(value, (list, tuple)):
        items = [to_plain_data(item, f"{where}[{index}]") for index, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise CheckpointError(f"checkpoint: {where} is a {type(value).__name__}; a checkpoint stores tensors and "
                          "plain data (numbers, strings, lists, dicts) only")


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------
def load_checkpoint(
    path: "str | Path",
    *,
    model_name: "str | None" = None,
    num_classes: "int | None" = None,
    img_size: "int | None" = None,
    in_channels: "int | None" = None,
    map_location: "str | torch.device" = "cpu",
) -> "tuple[nn.Module, CheckpointInfo]":
    """Rebuild a model from a checkpoint and load its weights strictly; the model is returned in eval mode.

    (Over 80 lines with this docstring: the two kinds of file, medseg checkpoint and bare state_dict, differ only
    in where the create-arguments come from and share the build-and-load tail, which reads best in one place.)

    Args:
        path: a medseg checkpoint, or a bare state_dict (e.g. the reference TransUNet's ``.pth``).
        model_name: registry name; required for a bare state_dict, checked against a medseg checkpoint.
        num_classes: for a bare state_dict, default read from the weights; checked against a medseg checkpoint.
        img_size: model input size; for a bare state_dict default the variant's published size; checked against
            a medseg checkpoint.
        in_channels: image channels; checked against a medseg checkpoint. For a bare state_dict default 1: an RGB
            official-codebase file (renamed by the family's key map) then gets its first kernel summed over RGB,
            which is exactly the RGB model applied to the grey image repeated three times, and
            ``info.input_adaptation`` says so; pass 3 to keep the RGB input.
        map_location: device the weights (and the model) go to.

    Returns:
        ``(model, info)``, ``info`` a :class:`CheckpointInfo` with the resolved ``model_config``.

    Raises:
        CheckpointError: missing, corrupt or unsafe file, a bare state_dict without ``model_name``, arguments that
            contradict the checkpoint, or weights that do not match the architecture (the first missing,
            unexpected and mis-shaped keys are named).
    """
    path = Path(path)
    data = _torch_load(path, map_location=map_location)
    info = _info_from_payload(path, data)
    state_dict = _state_dict_of(path, data)

    if info.kind == "medseg":
        config = dict(info.model_config)
        asked = {"model_name": model_name, "num_classes": num_classes, "img_size": img_size,
                 "in_channels": in_channels}
        stored = {"model_name": info.model_name, **config}
        for key, value in asked.items():
            if value is not None and value != stored[key]:
                raise CheckpointError(f"{path}: checkpoint holds {key} {stored[key]!r}, not {value!r}")
        name = info.model_name
    else:
        if model_name is None:
            raise CheckpointError(f"{path}: a bare state_dict without medseg metadata; name the architecture "
                                  "(model_name, or --model on the command line)")
        name = model_name
        try:
            spec = get_spec(name)
        except ConfigError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        state_dict = strip_wrapper_prefix(state_dict)
        official = _official_layout(name, spec.family, state_dict)  # an official codebase's checkpoint, renamed
        file_channels = _infer_in_channels(name, official) if official is not None else None
        config = {
            "num_classes": num_classes if num_classes is not None else
            _infer_num_classes(path, name, official if official is not None else state_dict),
            "img_size": img_size if img_size is not None else spec.default_img_size,
            "in_channels": in_channels if in_channels is not None else 1,
            "overrides": {},
        }
        info.model_name = name
        info.model_config = config

    try:
        model = create(name, num_classes=config["num_classes"], img_size=config["img_size"],
                       in_channels=config["in_channels"], **config.get("overrides", {}))
    except MedsegError as exc:
        raise CheckpointError(f"{path}: cannot build {name} ({exc})") from None
    if info.kind != "medseg" and official is not None:
        state_dict = convert_official(get_spec(name).family, state_dict, model)
        logger.info("%s: official %s checkpoint, keys mapped to medseg's", path, get_spec(name).family)
    if info.kind != "medseg" and file_channels not in (None, config["in_channels"]):
        state_dict, info.input_adaptation = fold_input_channels(state_dict, model)
        logger.info("%s: %s", path, info.input_adaptation)
    load_model_weights(model, state_dict, source=str(path), hint_img_size=img_size is None)
    if isinstance(map_location, (str, torch.device)):
        model = model.to(map_location)
    model.eval()
    return model, info


def load_model_weights(model: nn.Module, state_dict: dict, *, source: str = "state_dict",
                       hint_img_size: bool = False) -> None:
    """Load ``state_dict`` into ``model`` strictly, with a one-line error when they do not match.

    A ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile) prefix on every key is removed first.

    Args:
        model: the model (a wrapper is unwrapped).
        state_dict: parameter name -> tensor.
        source: file name (or description) used in error messages.
        hint_img_size: add a hint about ``img_size`` when only shapes differ (size-dependent position embeddings).

    Raises:
        CheckpointError: naming the first missing, unexpected and mis-shaped keys.
    """
    model = unwrap_model(model)
    state_dict = strip_wrapper_prefix(state_dict)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    actual = {key: tuple(value.shape) for key, value in state_dict.items()}
    problem = describe_mismatch(expected, actual)
    if problem:
        hint = ""
        if hint_img_size and set(expected) == set(actual):
            hint = " (trained at another img_size or with other options? pass them when loading)"
        raise CheckpointError(f"{source}: weights do not match {type(model).__name__}: {problem}{hint}")
    model.load_state_dict(state_dict, strict=True)


def fold_input_channels(state_dict: dict, model: nn.Module) -> "tuple[dict, str | None]":
    """``state_dict`` with its RGB first-layer kernel adapted to ``model``'s input channels, and what was done.

    The kernel is the 4-D tensor whose input-channel axis (axis 1) is 3 in the file but ``model`` has another
    count there (every other axis equal); it is adapted by :func:`medseg.models.pretrained.adapt_input_channels`
    (for 1 channel: summed over RGB, so ``conv(x) == conv_rgb(x.repeat(1, 3, 1, 1))`` for a grey image ``x``).
    Returns the state_dict unchanged and ``None`` when no tensor is such a kernel.
    """
    targets = unwrap_model(model).state_dict()
    adapted = dict(state_dict)
    notes = []
    for key, value in state_dict.items():
        target = targets.get(key)
        if (target is None or value.ndim != 4 or target.ndim != 4 or value.shape[1] != 3
                or target.shape[1] == 3 or value.shape[0] != target.shape[0] or value.shape[2:] != target.shape[2:]):
            continue
        adapted[key] = adapt_input_channels(value, int(target.shape[1]))
        how = ("summed over RGB: the RGB model on the grey image repeated 3 times" if target.shape[1] == 1
               else f"RGB repeated to {target.shape[1]} channels, scaled by 3/{target.shape[1]}")
        notes.append(f"first kernel {key} {tuple(value.shape)} {how}")
    return adapted, ("; ".join(notes) or None)


def describe_mismatch(expected: dict, actual: dict) -> str:
    """One line naming the first missing, unexpected and mis-shaped keys of ``actual`` vs ``expected`` ('' if none).

    Both arguments map key -> shape tuple.
    """
    missing = [key for key in expected if key not in actual]
    unexpected = [key for key in actual if key not in expected]
    shapes = [f"{key} (file {_shape_text(actual[key])}, model {_shape_text(expected[key])})"
              for key in expected if key in actual and tuple(actual[key]) != tuple(expected[key])]
    parts = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes)):
        if keys:
            more = f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
            parts.append(f"{label} {', '.join(keys[:_SHOWN_KEYS])}{more}")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------------------------
def _torch_load(path: Path, *, map_location):
    """``torch.load(weights_only=True)`` with one-line errors that name the file."""
    check_input_file(path, CheckpointError)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # weights_only=True met something other than tensors and plain data: a class, a function, a reducer.
        raise CheckpointError(f"{path}: refused: the file carries pickled code/objects; medseg loads tensors "
                              "and plain data only") from None
    except Exception as exc:  # a truncated or foreign file can fail in many ways inside torch.load
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: "
                              f"{_first_line(exc)})") from None


def _info_from_payload(path: Path, data) -> CheckpointInfo:
    """Metadata of a loaded payload: a medseg checkpoint or a bare state_dict."""
    if isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT:
        version = data.get("version")
        if not isinstance(version, int) or version > CHECKPOINT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format version {version!r} is newer than this medseg "
                                  f"understands ({CHECKPOINT_VERSION}); upgrade medseg")
        try:
            label_set = get_label_set(data["label_set"]) if data.get("label_set") is not None else None
            state_dict = data["state_dict"]
            info = CheckpointInfo(
                path=path,
                kind="medseg",
                model_name=str(data["model_name"]),
                model_config=normalise_model_config(data["model_config"]),
                label_set=label_set,
                preprocessing=dict(data.get("preprocessing") or {}),
                extra=dict(data.get("extra") or {}),
                training_state=data.get("training_state"),
                version=version,
                medseg_version=data.get("medseg_version"),
            )
        except (KeyError, TypeError, ValueError, MedsegError) as exc:
            raise CheckpointError(f"{path}: malformed medseg checkpoint ({_first_line(exc)})") from None
        return info
    _state_dict_of(path, data)  # a file that is no state_dict is an error here too
    return CheckpointInfo(path=path, kind="state_dict", model_name=None)


def _state_dict_of(path: Path, data) -> dict:
    """The parameter dict of a loaded payload; CheckpointError naming ``path`` if there is none."""
    if isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT:
        return data["state_dict"]
    if isinstance(data, dict) and not _is_tensor_dict(data):
        for key in _NESTED_STATE_DICT_KEYS:
            if _is_tensor_dict(data.get(key)):
                return data[key]
    if _is_tensor_dict(data):
        return data
    raise CheckpointError(f"{path}: holds neither a medseg checkpoint nor a state_dict of tensors")


def _is_tensor_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _meta_shapes(model_name: str, config: dict) -> "dict | None":
    """state_dict key -> shape of ``create(model_name, **config)``, built on the meta device; None if impossible."""
    try:
        with torch.device("meta"):
            model = create(model_name, num_classes=config["num_classes"], img_size=config["img_size"],
                           in_channels=config["in_channels"], **config.get("overrides", {}))
    except MedsegError:
        raise
    except Exception as exc:  # an architecture that cannot be built on meta: skip the check
        logger.debug("cannot build %s on the meta device (%s); shapes not checked", model_name, exc)
        return None
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _official_layout(model_name: str, family: str, state_dict: dict) -> "dict | None":
    """``state_dict`` renamed by the family's official key map when it is an official codebase's checkpoint.

    The key maps (one per family, beside each model) turn e.g. a CoinCheung BiSeNet or an mmseg SETR checkpoint
    into medseg's keys; None when the family has none or the keys are not the official ones. Renaming needs only
    the model's structure, so a meta-device build serves.
    """
    try:
        with torch.device("meta"):
            model = create(model_name, num_classes=2, img_size=get_spec(model_name).default_img_size, in_channels=1)
    except Exception as exc:  # cannot build on meta: no official mapping attempted
        logger.debug("cannot build %s on the meta device (%s)", model_name, exc)
        return None
    if set(state_dict) <= set(model.state_dict()):
        return None
    return convert_official(family, state_dict, model)


def _infer_in_channels(model_name: str, state_dict: dict) -> "int | None":
    """Image channels of a state_dict: read from the first tensor whose shape depends on them (None if none does,
    e.g. models that repeat a grey image to RGB themselves)."""
    one = _meta_shapes(model_name, {"num_classes": 2, "img_size": 64 * 7, "in_channels": 1, "overrides": {}})
    three = _meta_shapes(model_name, {"num_classes": 2, "img_size": 64 * 7, "in_channels": 3, "overrides": {}})
    if one is None or three is None:
        return None
    for key, shape in one.items():
        if three.get(key) != shape and key in state_dict and len(shape) > 1:
            return int(state_dict[key].shape[1])
    return None


def _infer_num_classes(path: Path, model_name: str, state_dict: dict) -> int:
    """Number of classes of a bare state_dict, read from the tensors whose shape depends on it.

    The variant is built (on the meta device) with 2 and with 3 classes; a tensor whose size differs between the
    two grows as ``a * num_classes + b`` along that axis, which the file's size then solves for.
    """
    size = get_spec(model_name).default_img_size
    base = {"img_size": size, "in_channels": 1, "overrides": {}}
    two = _meta_shapes(model_name, {**base, "num_classes": 2})
    three = _meta_shapes(model_name, {**base, "num_classes": 3})
    if two is None or three is None:
        raise CheckpointError(f"{path}: cannot read the number of classes for {model_name}; pass num_classes")
    for key, shape_two in two.items():
        shape_three = three.get(key)
        if shape_three is None or shape_three == shape_two or key not in state_dict:
            continue
        file_shape = tuple(state_dict[key].shape)
        if len(file_shape) != len(shape_two):
            break
        for axis, (a2, a3) in enumerate(zip(shape_two, shape_three)):
            if a2 != a3:
                slope = a3 - a2
                offset = a2 - 2 * slope
                classes, remainder = divmod(file_shape[axis] - offset, slope)
                if remainder == 0 and classes >= 1:
                    return int(classes)
        break
    raise CheckpointError(f"{path}: cannot read the number of classes from the weights for {model_name} "
                          "(wrong architecture?); pass num_classes")


def _shape_text(shape) -> str:
    return "x".join(str(s) for s in shape) if len(shape) else "scalar"


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (torch's can run to a paragraph)."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text.split(". ")[0].rstrip(".")
