"""Training configuration: one dataclass with the TransUNet recipe's defaults, filled from YAML and overrides.

Order of precedence (later wins): the defaults below, a YAML file (``--config FILE``), ``--set key=value`` pairs
and the explicit command-line flags (``--epochs``, ``--batch-size``, ...). Every key is checked: an unknown key or a
value of the wrong type is a :class:`~medseg.errors.ConfigError` naming the key (and the file it came from).

Defaults follow the TransUNet Synapse recipe (``shared/reference/README.md``): batch 24, SGD lr 0.01, momentum 0.9,
weight decay 1e-4, poly decay ``lr = base * (1 - it / max_it) ** 0.9`` per iteration, 0.5 CE + 0.5 Dice, 150 epochs
over every training slice, 224 x 224 input, seed 1234. Models with auxiliary heads (DS-TransUNet) weight their
outputs by the model's ``aux_loss_weights`` (0.6 / 0.2 / 0.2) unless ``aux_weights`` is given.

Example YAML::

    model: TransUNet-Tiny
    data: prepared/phantom
    out: runs/tiny
    img_size: 128
    epochs: 20
    batch_size: 8
    model_options: {hidden_size: 128}
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from medseg.errors import ConfigError
from medseg.io import read_yaml_mapping

#: How each key's value is checked: the accepted Python type and whether None is allowed.
_KINDS: dict[str, tuple[type, bool]] = {
    "model": (str, False),
    "data": (str, False),
    "out": (str, False),
    "model_options": (dict, False),
    "pretrained": (str, True),
    "img_size": (int, False),
    "batch_size": (int, False),
    "epochs": (int, False),
    "lr": (float, False),
    "momentum": (float, False),
    "weight_decay": (float, False),
    "poly_power": (float, False),
    "ce_weight": (float, False),
    "dice_weight": (float, False),
    "aux_weights": (list, True),
    "augment": (bool, False),
    "augmentation": (str, False),
    "domain_randomisation": (bool, False),
    "drop_empty": (bool, False),
    "seed": (int, False),
    "workers": (int, False),
    "val_every": (int, False),
    "val_batch_size": (int, False),
    "val_max_cases": (int, True),
    "device": (str, False),
    "amp": (str, False),
    "channels_last": (bool, False),
    "deterministic": (bool, False),
    "threads": (int, True),
    "progress": (bool, False),
    "tensorboard": (bool, False),
    "stop_after": (int, True),
    "resume": (bool, False),
}

#: Keys that define the optimisation itself: a resumed run must keep them (see :func:`check_resume_compatible`).
SCHEDULE_KEYS = ("model", "model_options", "pretrained", "img_size", "batch_size", "epochs", "lr", "momentum",
                 "weight_decay", "poly_power", "ce_weight", "dice_weight", "aux_weights", "augment", "augmentation",
                 "domain_randomisation", "drop_empty", "seed")

AMP_CHOICES = ("auto", "bf16", "off")
AUGMENTATION_CHOICES = ("fused", "paper")  # medseg.data.transforms.AUGMENTATION_MODES


@dataclass
class TrainConfig:
    """Everything ``medseg train`` needs; the defaults are the TransUNet recipe.

    Attributes:
        model: registry name (``medseg models``), e.g. ``R50-ViT-B_16`` or ``TransUNet-Tiny``.
        data: slice cache folder written by ``medseg prepare`` (training split = ``train`` cases).
        out: run folder: ``last.pt``, ``best.pt``, ``metrics.csv``, ``config.json``, ``train.log``.
        model_options: architecture overrides passed to :func:`medseg.models.create` (e.g. ``hidden_size``).
        pretrained: optional official ImageNet weights loaded before training, any family (see
            :func:`medseg.models.pretrained.load_pretrained`).
        img_size: model input height and width in pixels.
        batch_size: slices per optimiser step over all processes together (the recipe's 24); under torchrun
            each of the N processes takes ``batch_size / N`` slices, so the schedule does not depend on N.
        epochs: passes over all training slices; ``max_iterations = epochs x batches per epoch``.
        lr, momentum, weight_decay: SGD settings; lr is the poly schedule's base value.
        poly_power: exponent of the poly decay (0.9).
        ce_weight, dice_weight: mix of cross-entropy and soft Dice (0.5 / 0.5).
        aux_weights: loss weight of each model output for models returning a tuple; None uses the model's
            ``aux_loss_weights``.
        augment: TransUNet's augmentation (rot90 + flip, or a rotation within +-20 degrees).
        augmentation: its mode: ``fused`` (the fast default: a continuous angle, one torch resampling together
            with the resize) or ``paper`` (the reference's draws, integer angles -20..19, and its np.rot90/flip or
            ndimage.rotate then ndimage.zoom steps: the reference's exact arrays).
        domain_randomisation: with ``augment``, also randomise intensity, contrast, noise, blur and in-plane scale
            per slice (:mod:`medseg.data.domain_randomisation`; for training on phantoms or one scanner).
        drop_empty: train only on slices that hold an organ (the reference trains on all slices).
        seed: seeds weights, shuffling, augmentation and dropout.
        workers: data-loader worker processes (0 loads in the training process).
        val_every: validate on the held-out (``test`` split) cases every N epochs and at the end (0 = never).
        val_batch_size: slices per forward pass during validation.
        val_max_cases: validate on at most this many held-out cases (None = all).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        amp: ``auto`` (bf16 autocast on CUDA, off on CPU), ``bf16`` or ``off``.
        channels_last: use the channels-last memory format on CUDA (ignored on CPU).
        deterministic: deterministic algorithms and a fixed thread count (a resumed run then reproduces the
            uninterrupted loss curve exactly on CPU).
        threads: torch CPU threads (None keeps torch's default).
        progress: show a progress bar.
        tensorboard: also log to TensorBoard when the ``tensorboard`` package is installed.
        stop_after: stop after this many iterations in this invocation, saving ``last.pt`` as an interruption
            would (time-boxed jobs; continue with ``resume``).
        resume: continue from ``out/last.pt`` (same schedule, optimiser and RNG state).
    """

    model: str = "R50-ViT-B_16"
    data: str = ""
    out: str = ""
    model_options: dict = field(default_factory=dict)
    pretrained: "str | None" = None
    img_size: int = 224
    batch_size: int = 24
    epochs: int = 150
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    ce_weight: float = 0.5
    dice_weight: float = 0.5
    aux_weights: "list | None" = None
    augment: bool = True
    augmentation: str = "fused"
    domain_randomisation: bool = False
    drop_empty: bool = False
    seed: int = 1234
    workers: int = 2
    val_every: int = 0
    val_batch_size: int = 16
    val_max_cases: "int | None" = None
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
    deterministic: bool = False
    threads: "int | None" = None
    progress: bool = True
    tensorboard: bool = True
    stop_after: "int | None" = None
    resume: bool = False

    def to_dict(self) -> dict:
        """Plain data (JSON/YAML-safe) of every key."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "TrainConfig":
        """Build and validate a config from plain data; ``source`` names the origin in error messages."""
        config = cls()
        config.update(data, source)
        return config

    def update(self, data: dict, source: str = "config") -> "TrainConfig":
        """Set the keys of ``data`` (checked one by one) and validate the whole config; returns ``self``."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
        for key, value in data.items():
            setattr(self, key, check_value(key, value, source))
        self.validate(source)
        return self

    def validate(self, source: str = "config") -> None:
        """Check value ranges and the combinations of keys; raises :class:`ConfigError` naming the key."""
        positive = ("img_size", "batch_size", "epochs", "val_batch_size")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"{source}: {key} must be at least 1, got {getattr(self, key)}")
        for key in ("workers", "val_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{source}: {key} must be 0 or more, got {getattr(self, key)}")
        for key in ("threads", "stop_after", "val_max_cases"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{source}: {key} must be at least 1 (or null), got {value}")
        if self.lr <= 0:
            raise ConfigError(f"{source}: lr must be positive, got {self.lr}")
        for key in ("momentum", "weight_decay", "poly_power", "ce_weight", "dice_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{source}: {key} must be 0 or more, got {getattr(self, key)}")
        if self.ce_weight == 0 and self.dice_weight == 0:
            raise ConfigError(f"{source}: ce_weight and dice_weight cannot both be 0")
        if self.aux_weights is not None:
            if not self.aux_weights or not all(_is_number(w) and w >= 0 for w in self.aux_weights):
                raise ConfigError(f"{source}: aux_weights must be a list of numbers >= 0, got {self.aux_weights}")
            self.aux_weights = [float(w) for w in self.aux_weights]
        if self.augmentation not in AUGMENTATION_CHOICES:
            raise ConfigError(f"{source}: augmentation must be one of {', '.join(AUGMENTATION_CHOICES)}, "
                              f"got {self.augmentation!r}")
        if self.domain_randomisation and not self.augment:
            raise ConfigError(f"{source}: domain_randomisation needs augment: true (it is part of the augmentation)")
        if self.amp not in AMP_CHOICES:
            raise ConfigError(f"{source}: amp must be one of {', '.join(AMP_CHOICES)}, got {self.amp!r}")
        device = self.device
        if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
            raise ConfigError(f"{source}: device must be auto, cpu, cuda or cuda:N, got {device!r}")

    def check_ready(self) -> None:
        """Raise :class:`ConfigError` when the keys a run cannot do without (model, data, out) are missing."""
        for key in ("model", "data", "out"):
            if not getattr(self, key):
                raise ConfigError(f"config: {key} is required (set it in the YAML file or on the command line)")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_value(key: str, value, source: str = "config"):
    """Check one key's value against its type and return it (ints are accepted where floats are expected).

    Raises:
        ConfigError: ``key`` is unknown or ``value`` has the wrong type.
    """
    if key not in _KINDS:
        known = ", ".join(sorted(_KINDS))
        raise ConfigError(f"{source}: unknown key {key!r} (known keys: {known})")
    kind, nullable = _KINDS[key]
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"{source}: {key} cannot be null")
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return int(value)
    if kind is float:
        if not _is_number(value):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        return float(value)
    if kind is str:
        if isinstance(value, Path):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return value
    if kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        return dict(value)
    if kind is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        return list(value)
    raise AssertionError(f"no checker for {kind}")  # pragma: no cover


def read_yaml_config(path: "str | Path") -> dict:
    """Read a YAML config file into a dict; a missing or malformed file is a :class:`ConfigError` naming it."""
    return read_yaml_mapping(path, "config file")


def parse_set_options(items) -> dict:
    """``["epochs=10", "model_options={hidden_size: 64}"]`` -> ``{"epochs": 10, ...}`` (values parsed as YAML).

    Dotted keys set one entry of a mapping: ``model_options.hidden_size=64``.
    """
    import yaml

    result: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set: expected key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: cannot parse value {text!r}") from None
        if "." in key:
            parent, child = key.split(".", 1)
            if parent != "model_options":
                raise ConfigError(f"--set: only model_options.NAME may use a dotted key, got {key!r}")
            result.setdefault(parent, {})[child] = value
        else:
            result[key] = value
    return result


def load_config(path: "str | Path | None" = None, sets=None, overrides: "dict | None" = None) -> TrainConfig:
    """Defaults <- YAML file <- ``--set`` items <- explicit overrides (None values in ``overrides`` are ignored).

    Returns:
        A validated :class:`TrainConfig`.
    """
    config = TrainConfig()
    if path is not None:
        config.update(read_yaml_config(path), source=str(path))
    set_values = parse_set_options(sets)
    if "model_options" in set_values:
        set_values["model_options"] = {**config.model_options, **set_values["model_options"]}
    config.update(set_values, source="--set")
    explicit = {key: value for key, value in (overrides or {}).items() if value is not None}
    config.update(explicit, source="command line")
    return config


def check_resume_compatible(saved: dict, current: TrainConfig) -> None:
    """Raise :class:`ConfigError` when ``current`` changes a schedule key of the run being resumed."""
    for key in SCHEDULE_KEYS:
        if key in saved and saved[key] != getattr(current, key):
            raise ConfigError(f"resume: {key} was {saved[key]!r} in the interrupted run but is now "
                              f"{getattr(current, key)!r}; keep the run's settings or start a new run folder")


def config_fields() -> list[str]:
    """Every config key, in declaration order."""
    return [f.name for f in fields(TrainConfig)]
