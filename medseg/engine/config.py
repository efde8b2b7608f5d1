"""Training configuration: one dataclass with the TransUNet recipe's defaults, filled from YAML and overrides.

Order of precedence (later wins): the defaults below, a YAML file (``--config FILE``), ``--set key=value`` pairs
and the explicit command-line flags (``--epochs``, ``--batch-size``, ...). Every key is checked: an unknown key or a
value of the wrong type is a :class:`~medseg.errors.ConfigError` naming the key (and the file it came from).

Defaults follow the TransUNet Synapse recipe (Chen et al. 2021, arXiv:2102.04306, and the official code's
``trainer.py``, github.com/Beckschen/TransUNet): batch 24, SGD lr 0.01, momentum 0.9,
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

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from medseg import schema
from medseg.errors import ConfigError
from medseg.io import read_yaml_mapping
from medseg.schema import setting

#: Keys that define the optimisation itself: a resumed run must keep them (see :func:`check_resume_compatible`).
SCHEDULE_KEYS = ("model", "model_options", "pretrained", "img_size", "batch_size", "epochs", "lr", "momentum",
                 "weight_decay", "poly_power", "ce_weight", "dice_weight", "aux_weights", "augment", "augmentation",
                 "domain_randomisation", "drop_empty", "seed")



@dataclass
class TrainConfig:
    """Everything ``medseg train`` needs; the defaults are the TransUNet recipe.

    Each field's type, default, lower bound and help text below are the whole schema: YAML files, ``--set``, the
    pipeline's train stage, the command-line flags and the stored ``config.json`` are all checked against them
    (:mod:`medseg.schema`). ``batch_size`` is the global batch over all processes together: under torchrun each of
    the N processes takes ``batch_size / N`` slices, so the schedule does not depend on N.
    """

    SCHEMA_VERSION = 1

    model: str = setting("R50-ViT-B_16", flag="--model",
                         help="registry name (see `medseg models`), e.g. R50-ViT-B_16, TransUNet-Tiny")
    data: str = setting("", flag="--data", help="slice cache written by `medseg prepare` (trains on its train split)")
    out: str = setting("", flag="--out", help="run folder: last.pt, best.pt, metrics.csv, config.json, train.log")
    model_options: dict = setting(default_factory=dict,
                                  help="architecture overrides passed to medseg.models.create (e.g. hidden_size)")
    pretrained: "str | None" = setting(
        None, flag="--pretrained", metavar="FILE",
        help="the family's official ImageNet weights, loaded before training (medseg.models.pretrained."
             "load_pretrained): TransUNet R50+ViT-B_16.npz; DS-TransUNet Swin-B and Swin-T .pth (two files, fine "
             "first: 'swin_b.pth,swin_t.pth'); SegFormer mit_b*.pth or a Hugging Face folder; SETR timm ViT "
             ".pth/.npz; BiSeNet torchvision resnet18 .pth; TopFormer topformer-{T,S,B}-224 .pth (see 'medseg "
             "models')")
    img_size: int = setting(224, minimum=1, flag="--img-size", help="model input height and width in pixels")
    batch_size: int = setting(24, minimum=1, flag="--batch-size",
                              help="slices per optimiser step over all processes together")
    epochs: int = setting(150, minimum=1, flag="--epochs",
                          help="passes over all training slices (max_iterations = epochs x batches per epoch)")
    lr: float = setting(0.01, flag="--lr", help="base learning rate of the poly schedule (SGD)")
    momentum: float = setting(0.9, minimum=0, help="SGD momentum")
    weight_decay: float = setting(1e-4, minimum=0, help="SGD weight decay")
    poly_power: float = setting(0.9, minimum=0, help="exponent of the poly decay")
    ce_weight: float = setting(0.5, minimum=0, help="weight of the cross-entropy loss")
    dice_weight: float = setting(0.5, minimum=0, help="weight of the soft Dice loss")
    aux_weights: "list | None" = setting(None, help="loss weight of each output of a model returning a tuple "
                                                    "(null: the model's aux_loss_weights)")
    augment: bool = setting(True, help="TransUNet's augmentation (rot90 + flip, or a rotation within +-20 degrees)")
    augmentation: Literal["fused", "paper"] = setting(
        "fused", help="its mode: fused (the fast default: a continuous angle, one torch resampling together with the "
                      "resize) or paper (the reference's draws, integer angles -20..19, and its np.rot90/flip or "
                      "ndimage.rotate then ndimage.zoom steps: the reference's exact arrays)")
    domain_randomisation: bool = setting(
        False, help="with augment, also randomise intensity, contrast, noise, blur and in-plane scale per slice "
                    "(medseg.data.domain_randomisation; for training on phantoms or one scanner)")
    drop_empty: bool = setting(False, flag="--drop-empty",
                               help="train only on slices that hold an organ (the recipe uses all slices)")
    seed: int = setting(1234, flag="--seed", help="seeds weights, shuffling, augmentation and dropout")
    workers: int = setting(2, minimum=0, flag="--workers",
                           help="data-loader worker processes (0 loads in the training process)")
    val_every: int = setting(0, minimum=0, flag="--val-every",
                             help="validate on the held-out (test-split) cases every N epochs and at the end, "
                                  "keep best.pt (0 = never)")
    val_batch_size: int = setting(16, minimum=1, help="slices per forward pass during validation")
    val_max_cases: "int | None" = setting(None, minimum=1, help="validate on at most this many held-out cases")
    device: str = setting("auto", flag="--device", help="auto (CUDA when available), cpu, cuda or cuda:N")
    amp: Literal["auto", "bf16", "off"] = setting("auto", flag="--amp",
                                                  help="bf16 autocast (auto: on CUDA only)")
    channels_last: bool = setting(True, help="channels-last memory format on CUDA (ignored on CPU)")
    deterministic: bool = setting(False, flag="--deterministic",
                                  help="deterministic algorithms (a resumed CPU run reproduces the loss curve "
                                       "exactly)")
    threads: "int | None" = setting(None, minimum=1, flag="--threads", help="torch CPU threads for this run")
    progress: bool = setting(True, help="show a progress bar")
    tensorboard: bool = setting(True, help="also log to TensorBoard when the tensorboard package is installed")
    stop_after: "int | None" = setting(None, minimum=1,
                                       help="stop after this many iterations in this invocation, saving last.pt as "
                                            "an interruption would (continue with resume)")
    resume: bool = setting(False, flag="--resume",
                           help="continue the run in --out from last.pt (starts a new run if there is none)")

    def to_dict(self) -> dict:
        """Plain data (JSON/YAML-safe) of every key, with the schema version (as ``config.json`` stores it)."""
        return schema.to_stored(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "TrainConfig":
        """Build and validate a config from plain data; ``source`` names the origin in error messages."""
        config = cls()
        config.update(data, source)
        return config

    def update(self, data: dict, source: str = "config") -> "TrainConfig":
        """Set the keys of ``data`` (checked against the schema) and validate the whole config; returns ``self``."""
        for key, value in schema.check_mapping(type(self), data, source).items():
            setattr(self, key, value)
        self.validate(source)
        return self

    def validate(self, source: str = "config") -> None:
        """Check what one field's type cannot say; raises :class:`ConfigError` naming the key."""
        if self.lr <= 0:
            raise ConfigError(f"{source}: lr: must be positive, got {self.lr}")
        if self.ce_weight == 0 and self.dice_weight == 0:
            raise ConfigError(f"{source}: ce_weight and dice_weight cannot both be 0")
        if self.aux_weights is not None:
            if not self.aux_weights or not all(schema.is_number(w) and w >= 0 for w in self.aux_weights):
                raise ConfigError(f"{source}: aux_weights: must be a list of numbers >= 0, got {self.aux_weights}")
            self.aux_weights = [float(w) for w in self.aux_weights]
        if self.domain_randomisation and not self.augment:
            raise ConfigError(f"{source}: domain_randomisation needs augment: true (it is part of the augmentation)")
        device = self.device
        if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
            raise ConfigError(f"{source}: device: must be auto, cpu, cuda or cuda:N, got {device!r}")

    def check_ready(self) -> None:
        """Raise :class:`ConfigError` when the keys a run cannot do without (model, data, out) are missing."""
        for key in ("model", "data", "out"):
            if not getattr(self, key):
                raise ConfigError(f"config: {key} is required (set it in the YAML file or on the command line)")


def read_yaml_config(path: "str | Path") -> dict:
    """Read a YAML config file into a dict; a missing or malformed file is a :class:`ConfigError` naming it."""
    return read_yaml_mapping(path, "config file")


def parse_set_options(items) -> dict:
    """``["epochs=10", "model_options.hidden_size=64"]`` -> ``{"epochs": 10, "model_options": {...}}``.

    Values are read as YAML by :func:`medseg.schema.parse_assignment` (the parser ``medseg run --set`` uses too);
    a dotted key sets one entry of ``model_options``.
    """
    result: dict = {}
    for item in items or []:
        parts, value = schema.parse_assignment(item)
        if len(parts) == 1:
            result[parts[0]] = value
        elif len(parts) == 2 and parts[0] == "model_options":
            result.setdefault("model_options", {})[parts[1]] = value
        else:
            raise ConfigError(f"--set {'.'.join(parts)}: only model_options.NAME may use a dotted key")
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
