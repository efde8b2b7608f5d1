"""The training loop: one process or torchrun DistributedDataParallel, resumable to the iteration.

``train(config) -> RunResult`` trains a registered model on the ``train`` split of a slice cache with the TransUNet
recipe (SGD, poly decay per iteration, 0.5 CE + 0.5 Dice; see :mod:`medseg.engine.config`) and writes into the run
folder ``config.out``::

    config.json     the full configuration of the run
    metrics.csv     one row per iteration (epoch, iteration, loss, lr, elapsed_s, samples_per_s) and one row per
                    validation (val_dice); rewritten atomically at every epoch end and when the run stops
    last.pt         medseg checkpoint after every epoch and when the run is interrupted (with training_state)
    best.pt         the weights with the best validation mean Dice (when validation is on; no optimiser state)
    train.log       the log messages of the run
    tensorboard/    scalars, when the ``tensorboard`` package is installed

Steps
-----
:func:`train` runs named steps, each a function of its own: :func:`load_training_data` (reads the cache and
checks every case it will read, before anything is written), :func:`build_model`, :func:`resume_position`, then per
epoch :func:`train_one_epoch`, :func:`validate_after_epoch` and :func:`save_run_checkpoint`, and
:func:`finish_run`. :func:`torch_settings` applies the run's global torch settings and restores them on return.

Reproducibility and resume
--------------------------
Everything random is a function of the seed and the position in the schedule:

* the order of the slices in epoch ``e`` is ``randperm(n, seed, e)`` (:class:`EpochSampler`); under torchrun every
  process takes an interleaved shard of that permutation;
* a slice's augmentation is drawn from ``(seed, epoch, index)`` (:class:`medseg.data.dataset.SliceDataset`), in
  whatever worker loads it;
* dropout uses torch's global generator, whose state is saved in ``last.pt``.

``last.pt`` stores the weights, SGD's momentum buffers, the generator states and the position (epoch, batch in
the epoch, iteration); ``resume`` restarts at exactly that batch. With ``deterministic: true`` on the CPU the resumed
run reproduces the loss curve of an uninterrupted run bit for bit.

SIGINT and SIGTERM finish the current iteration, save ``last.pt`` (marked interrupted) and return a result whose
``exit_code`` is 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM), as shells report a signalled job.

Devices
-------
On CUDA: bf16 autocast (``amp: auto``), channels-last tensors, pinned memory and ``workers`` loader processes
feeding the GPU. On the CPU: bf16 autocast where the CPU has native bf16 and the run uses one torch thread
(:func:`training_amp`), else fp32; the standard memory format (channels-last did not pay on the CPU, see
benchmarks/RESULTS.md).
"""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from medseg.data.dataset import SliceDataset
from medseg.data.slice_cache import MANIFEST, load_case_arrays, load_manifest, verify_case_arrays
from medseg.preprocessing import PreprocessingParams
from medseg.engine import distributed as D
from medseg.engine.config import TrainConfig, check_resume_compatible
from medseg.engine.inference import autocast, make_predictor, resolve_amp, resolve_device, segment_oriented
from medseg.engine.losses import combined_loss
from medseg.errors import CheckpointError, ConfigError, InputError, OutputError
from medseg.evaluation.metrics import evaluate_case
from medseg.io import write_json, write_text
from medseg.ownership import acquire_lock, release_lock, write_failure
from medseg.labels import LabelSet
from medseg.models import create, get_spec
from medseg.models.checkpoint import load_checkpoint, save_checkpoint
from medseg.models.pretrained import load_pretrained
from medseg.progress import logging_redirect, progress_bar

log = logging.getLogger(__name__)

LAST, BEST = "last.pt", "best.pt"
METRICS_FILE = "metrics.csv"
METRICS_COLUMNS = ("epoch", "iteration", "loss", "lr", "elapsed_s", "samples_per_s", "val_dice")


@dataclass
class RunResult:
    """What a call to :func:`train` did.

    Attributes:
        run_dir: the run folder.
        last_checkpoint: ``last.pt`` (None on ranks other than 0).
        best_checkpoint: ``best.pt`` when validation ran (None otherwise).
        epochs_completed: whole epochs done so far (including those of earlier, resumed invocations).
        iterations: optimiser steps done so far.
        max_iterations: steps of the whole schedule (epochs x batches per epoch).
        final_loss: loss of the last step of this invocation (mean over processes), or None.
        best_val_dice: best validation mean Dice so far, or None.
        val_history: one dict per validation: ``{"epoch", "iteration", "mean_dice", "organs": {organ: dice}}``.
        finished: the schedule is complete.
        stop_reason: ``finished``, ``SIGINT``, ``SIGTERM`` or ``stop_after``.
        exit_code: 0, or 128 + signal number after a signal.
        wall_time_s: seconds spent in this invocation.
        rank, world_size: this process in the torchrun job.
    """

    run_dir: Path
    last_checkpoint: "Path | None" = None
    best_checkpoint: "Path | None" = None
    epochs_completed: int = 0
    iterations: int = 0
    max_iterations: int = 0
    final_loss: "float | None" = None
    best_val_dice: "float | None" = None
    val_history: list = field(default_factory=list)
    finished: bool = False
    stop_reason: str = "finished"
    exit_code: int = 0
    wall_time_s: float = 0.0
    rank: int = 0
    world_size: int = 1


# ----------------------------------------------------------------------------------------------------------------
# Sampling


class EpochSampler(Sampler):
    """Reproducible shuffling by epoch, sharded over processes, able to start in the middle of an epoch.

    Epoch ``e``'s order is ``torch.randperm(num_samples)`` drawn from a generator seeded with ``(seed, e)``. It is
    padded (repeating its start) to a multiple of ``world_size`` and process ``rank`` takes every
    ``world_size``-th element from position ``rank``, as torch's DistributedSampler does.

    Iterating yields ``(epoch, index)`` pairs, which :class:`EpochIndexedDataset` turns into samples, so the
    augmentation of the epoch is right even in persistent loader workers.
    """

    def __init__(self, num_samples: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def indices(self, epoch: int) -> list[int]:
        """The dataset indices this process visits in ``epoch``, in order."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + int(epoch))
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        per_process = math.ceil(self.num_samples / self.world_size)
        padding = per_process * self.world_size - len(order)
        order += order[:padding]
        return order[self.rank::self.world_size]

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate ``epoch`` from its ``start``-th index (0 = the whole epoch)."""
        self.epoch = int(epoch)
        self.start = int(start)

    def __iter__(self):
        for index in self.indices(self.epoch)[self.start:]:
            yield (self.epoch, index)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.world_size) - self.start


class EpochIndexedDataset(Dataset):
    """Wrap a :class:`SliceDataset` so that a sample is addressed by ``(epoch, index)``.

    The sample dict gets an ``index`` entry (the dataset index).
    """

    def __init__(self, dataset: SliceDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        self.dataset.set_epoch(epoch)
        sample = self.dataset[index]
        sample["index"] = index
        return sample


def poly_lr(base_lr: float, iteration: int, max_iterations: int, power: float = 0.9) -> float:
    """The reference's poly decay: ``base_lr * (1 - iteration / max_iterations) ** power`` (iteration from 0)."""
    return base_lr * (1.0 - iteration / max_iterations) ** power


# ----------------------------------------------------------------------------------------------------------------
# Signals


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks after every iteration (a second Ctrl-C aborts at once)."""

    def __init__(self):
        self.signal_number: "int | None" = None
        self._previous = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (e.g. not inside a notebook worker)
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signal_number is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = signum
        log.warning("%s received: finishing the current iteration, then saving %s", signal.Signals(signum).name,
                    LAST)


# ----------------------------------------------------------------------------------------------------------------
# Metrics file


class MetricsLog:
    """Rows of ``metrics.csv`` kept in memory and rewritten atomically on :meth:`flush` (rank 0 only)."""

    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self.enabled = enabled
        self.rows: list[dict] = []

    def load_until(self, iteration: int, epoch: int) -> None:
        """Keep the rows of an earlier invocation up to ``iteration`` / ``epoch`` (resume).

        Raises:
            InputError: the file is damaged (not medseg's columns, or a row without a whole-number epoch and
                iteration), naming the file and the row.
        """
        if not self.enabled or not self.path.exists():
            return
        try:
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None or not {"epoch", "iteration"} <= set(reader.fieldnames):
                    raise ValueError(f"header {reader.fieldnames} lacks the epoch and iteration columns")
                for number, row in enumerate(reader, start=2):
                    try:
                        if row.get("val_dice"):
                            keep = int(row["epoch"]) <= epoch
                        else:
                            keep = int(row["iteration"]) <= iteration
                    except (TypeError, ValueError):
                        raise ValueError(f"line {number} is not a row of whole-number epoch and iteration") from None
                    if keep:
                        self.rows.append(row)
        except (ValueError, csv.Error, UnicodeDecodeError, OSError) as exc:
            raise InputError(f"{self.path}: damaged training metrics ({exc}); move it away to resume without the "
                             "earlier rows") from None

    def add(self, **values) -> None:
        if self.enabled:
            self.rows.append({key: values.get(key, "") for key in METRICS_COLUMNS})

    def flush(self) -> None:
        if not self.enabled:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRICS_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, buffer.getvalue())


def read_metrics(path: "str | Path") -> list[dict]:
    """The rows of a run's ``metrics.csv`` as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------------------------------------------
# Validation


def validation_entries(manifest: dict, max_cases: "int | None") -> list[dict]:
    """Manifest entries of the labelled held-out (``test`` split) cases, at most ``max_cases``."""
    entries = [e for e in manifest["cases"] if e["split"] == "test" and e.get("has_label", True)]
    return entries[:max_cases] if max_cases else entries


def validate(model: torch.nn.Module, prepared_dir, entries: list[dict], label_set: LabelSet,
             preprocessing: PreprocessingParams, device: torch.device, *, batch_size: int = 16,
             amp: str = "off") -> dict:
    """3D validation on held-out cases of the slice cache: predict each cached stack, score Dice per organ.

    Each case is predicted as inference does (slice batches resized to the model size, argmax, labels resized
    back), in the cache's oriented grid, and scored with :func:`medseg.evaluation.metrics.evaluate_case`
    (standard protocol; an organ absent from both maps is not scored).

    Returns:
        ``{"mean_dice": mean over organs of the per-organ mean over cases (None if nothing scored),
        "organs": {organ: mean dice or None}, "cases": {case_id: mean dice over its scored organs}}``.
    """
    was_training = model.training
    predictor = make_predictor(model, "validation", label_set, preprocessing, device, amp=amp)
    per_organ: dict[str, list[float]] = {organ: [] for organ in label_set.organs}
    cases = {}
    try:
        for entry in entries:
            image, label = load_case_arrays(prepared_dir, entry["case_id"], mmap=True)
            oriented = np.moveaxis(image, 0, -1)  # (H, W, D) view of the slice-first stack
            predicted, _ = segment_oriented(predictor, oriented, scaled=True, batch_size=batch_size,
                                            spacing_hw=entry["spacing"][:2])
            reference = np.ascontiguousarray(np.moveaxis(label, 0, -1))
            scores = evaluate_case(predicted, reference, entry["spacing"], label_set, protocol="standard")["standard"]
            values = []
            for organ, record in scores.items():
                if record["dice"] is not None:
                    per_organ[organ].append(float(record["dice"]))
                    values.append(float(record["dice"]))
            cases[entry["case_id"]] = float(np.mean(values)) if values else None
    finally:
        model.train(was_training)
    organs = {organ: (float(np.mean(v)) if v else None) for organ, v in per_organ.items()}
    scored = [v for v in organs.values() if v is not None]
    return {"mean_dice": float(np.mean(scored)) if scored else None, "organs": organs, "cases": cases}


# ----------------------------------------------------------------------------------------------------------------
# The steps of a run: settings, data, model, resume position, one epoch, validation, saving, the result


@contextlib.contextmanager
def torch_settings(deterministic: bool, threads: "int | None", device: torch.device):
    """Apply a run's global torch settings and restore every one of them when the run returns.

    ``deterministic`` turns on ``torch.use_deterministic_algorithms`` (warn only), turns off
    ``cudnn.benchmark`` and sets ``CUBLAS_WORKSPACE_CONFIG`` (unless already set); otherwise ``cudnn.benchmark``
    is on for CUDA. ``threads`` sets torch's CPU thread count.
    """
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"), torch.get_num_threads())
    try:
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if threads:
            torch.set_num_threads(threads)
        yield
    finally:
        enabled, warn_only, benchmark, workspace, num_threads = saved
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace
        torch.set_num_threads(num_threads)


@dataclass
class TrainingData:
    """The training split of a slice cache, batched for this process, and the held-out cases to validate on."""

    label_set: LabelSet
    preprocessing: PreprocessingParams
    dataset: SliceDataset
    sampler: EpochSampler
    loader: DataLoader
    local_batch: int
    batches_per_epoch: int
    max_iterations: int
    val_entries: list


def load_training_data(config: TrainConfig, context: D.DistContext, device: torch.device) -> TrainingData:
    """Read the slice cache ``config.data`` and check every case a run will read (nothing is written).

    Raises:
        InputError: a missing manifest, or a case whose arrays are missing, truncated or disagree with the manifest
            (found here, before the run folder exists, not in the middle of an epoch).
        ConfigError: a ``batch_size`` the processes cannot share, or stored preprocessing with unknown keys.
    """
    manifest = load_manifest(config.data)
    label_set = LabelSet.from_dict(manifest["label_set"])
    preprocessing = PreprocessingParams.from_dict({**manifest.get("preprocessing", {}), "img_size": config.img_size},
                                                  source=f"{Path(config.data) / MANIFEST}: preprocessing")
    dataset = SliceDataset(config.data, split="train", img_size=config.img_size, augment=config.augment,
                           drop_empty=config.drop_empty, seed=config.seed,
                           image_interpolation=preprocessing.image_interpolation, augmentation=config.augmentation,
                           domain_randomisation=config.domain_randomisation)
    val_entries = validation_entries(manifest, config.val_max_cases) if config.val_every else []
    training_ids = set(dataset.case_ids)
    check_cached_cases(config.data, [e for e in manifest["cases"] if e["case_id"] in training_ids] + val_entries,
                       label_set)
    if config.batch_size % context.world_size:
        raise ConfigError(f"batch_size: {config.batch_size} is not divisible by the {context.world_size} processes")
    local_batch = config.batch_size // context.world_size
    sampler = EpochSampler(len(dataset), config.seed, context.rank, context.world_size)
    batches_per_epoch = math.ceil(len(sampler) / local_batch)
    loader = DataLoader(
        EpochIndexedDataset(dataset), batch_size=local_batch, sampler=sampler, num_workers=config.workers,
        pin_memory=device.type == "cuda", persistent_workers=config.workers > 0, drop_last=False,
        generator=torch.Generator().manual_seed(config.seed),
    )
    if config.val_every and not val_entries and context.is_main:
        log.warning("%s: no labelled test-split cases; validation and best.pt are skipped", config.data)
    return TrainingData(label_set, preprocessing, dataset, sampler, loader, local_batch, batches_per_epoch,
                        config.epochs * batches_per_epoch, val_entries)


def training_amp(amp: str, device: torch.device) -> str:
    """The autocast of a training run: ``bf16`` or ``off`` (see :func:`medseg.engine.inference.resolve_amp`).

    ``auto`` on a CPU means bf16 only where the CPU multiplies bf16 natively (AVX512-BF16 or AMX) and torch runs
    one thread (``threads: 1``, as the demo trains): there one training step of TransUNet-Tiny at 96 px took
    0.8 times the fp32 time even on a loaded machine. With two or more threads oneDNN's bf16 weight-gradient
    convolutions wait for each other at spinning barriers, so on a machine shared with other jobs a bf16 step took
    up to 4.5 times the fp32 time (benchmarks/RESULTS.md); ``amp: bf16`` still asks for it.
    """
    return resolve_amp(amp, device, cpu_bf16=torch.get_num_threads() == 1)


def check_cached_cases(prepared_dir, entries: list[dict], label_set: "LabelSet | None" = None) -> None:
    """Open every listed case of a slice cache (memory-mapped) and compare it with its manifest entry; with
    ``label_set``, also read the labels and check that they hold only its classes.

    A case whose manifest entry records its array files (size and SHA-256, every cache medseg writes now) is also
    checked against that record, so a file altered after ``medseg prepare`` is not trained on.

    Raises:
        InputError: naming the case folder whose arrays are missing, truncated, altered since they were written, of
            another shape, or whose labels hold a value outside the label set (the loss would fail on it in the
            middle of an epoch).
    """
    for entry in entries:
        folder = Path(prepared_dir) / "cases" / entry["case_id"]
        if entry.get("arrays"):
            problem = verify_case_arrays(folder, entry)
            if problem:
                raise InputError(f"{folder}: {problem}; run medseg prepare again (it prepares a damaged case anew)")
        image, label = load_case_arrays(prepared_dir, entry["case_id"], mmap=True)
        expected = entry.get("num_slices")
        if image.ndim != 3 or (expected is not None and image.shape[0] != expected):
            raise InputError(f"{folder}: the image array has shape {image.shape}, the manifest says {expected} slices")
        if entry.get("has_label", True) and (label is None or label.shape != image.shape):
            shape = None if label is None else label.shape
            raise InputError(f"{folder}: label.npy has shape {shape}, the image {image.shape}")
        if label_set is not None and label is not None and label.size:
            highest = int(np.max(label))
            if highest >= label_set.num_classes:
                raise InputError(f"{folder}: label.npy holds value {highest}, not a class of label set "
                                 f"{label_set.name} (0..{label_set.num_classes - 1})")


def build_model(config: TrainConfig, label_set: LabelSet, device: torch.device):
    """The model (seeded, on ``device``), its SGD optimiser and its create-kwargs (pretrained weights are loaded
    by :func:`_train` once the log file is attached).

    Returns:
        ``(model, optimizer, model_config)``, ``model_config`` as checkpoints store it.
    """
    torch.manual_seed(config.seed)
    model = create(config.model, num_classes=label_set.num_classes, img_size=config.img_size, in_channels=1,
                   **config.model_options)
    model.to(device)
    if config.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    model_config = {"num_classes": label_set.num_classes, "img_size": config.img_size, "in_channels": 1,
                    "overrides": dict(config.model_options)}
    return model, optimizer, model_config


@dataclass
class Position:
    """Where a run stands: the schedule position and what the earlier invocations left (resume)."""

    epoch: int = 0
    batch_in_epoch: int = 0
    iteration: int = 0
    best_dice: "float | None" = None
    val_history: list = field(default_factory=list)
    elapsed_before: float = 0.0
    rng: "dict | None" = None
    resumed: bool = False


def resume_position(config: TrainConfig, last_path: Path, model: torch.nn.Module, optimizer,
                    batches_per_epoch: int) -> Position:
    """Load ``last.pt`` into ``model`` and ``optimizer`` when resuming and return where to continue.

    Raises:
        CheckpointError: ``last.pt`` is unreadable or holds no training state.
        ConfigError: the resumed run's schedule settings or batches per epoch differ from this one's.
    """
    if not (config.resume and last_path.exists()):
        return Position()
    loaded, info = load_checkpoint(last_path, map_location="cpu")
    state = info.training_state or {}
    if "optimizer" not in state:
        raise CheckpointError(f"{last_path}: holds no training state to resume from")
    saved = TrainConfig.from_dict(state.get("config", {}), source=f"{last_path}: training_state.config")
    check_resume_compatible(saved.to_dict(), config)
    if state.get("batches_per_epoch") not in (None, batches_per_epoch):
        raise ConfigError(f"resume: {last_path} was written with {state['batches_per_epoch']} batches per epoch, "
                          f"now {batches_per_epoch} (different data or number of processes)")
    model.load_state_dict(loaded.state_dict())
    optimizer.load_state_dict(state["optimizer"])
    return Position(epoch=int(state["epoch"]), batch_in_epoch=int(state["batch_in_epoch"]),
                    iteration=int(state["iteration"]), best_dice=state.get("best_val_dice"),
                    val_history=list(state.get("val_history", [])),
                    elapsed_before=float(state.get("elapsed_s", 0.0)), rng=state.get("rng"), resumed=True)


@dataclass
class TrainingRun:
    """Everything the steps of one invocation share (built by :func:`_train`)."""

    config: TrainConfig
    context: D.DistContext
    device: torch.device
    amp: str
    data: TrainingData
    model: torch.nn.Module  # DistributedDataParallel under torchrun
    unwrapped: torch.nn.Module
    optimizer: torch.optim.Optimizer
    model_config: dict
    position: Position
    metrics: "MetricsLog"
    run_dir: Path
    started: float
    writer: object = None
    steps_this_call: int = 0
    last_lr: float = 0.0
    final_loss: "float | None" = None
    epoch_losses: list = field(default_factory=list)

    @property
    def channels_last(self) -> bool:
        return self.config.channels_last and self.device.type == "cuda"


def train_one_epoch(run: TrainingRun, stop: StopRequest, bar) -> "str | None":
    """Train from the run's position to the end of its epoch, or until a stop; returns the stop reason or None.

    Every step sets the poly learning rate, runs forward / loss / backward / SGD, all-reduces the loss (and
    whether any process must stop), logs a ``metrics.csv`` row and advances ``run.position``.

    Raises:
        ConfigError: the loss is not finite (diverged), or ``aux_weights`` do not fit the model's outputs.
    """
    config, position, data = run.config, run.position, run.data
    start = position.batch_in_epoch * data.local_batch
    data.sampler.set_epoch(position.epoch, start)
    aux_weights = config.aux_weights or getattr(run.unwrapped, "aux_loss_weights", None)
    run.model.train()
    run.epoch_losses = []
    step_started = time.perf_counter()
    for batch in data.loader:
        lr = poly_lr(config.lr, position.iteration, data.max_iterations, config.poly_power)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        images = batch["image"].to(run.device, non_blocking=True)
        labels = batch["label"].to(run.device, non_blocking=True)
        if run.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(run.device, run.amp):
            outputs = run.model(images)
        weights = aux_weights if isinstance(outputs, (tuple, list)) else None
        try:
            loss = combined_loss(outputs, labels, weights, config.ce_weight, config.dice_weight)
        except ValueError as exc:  # aux_weights that do not fit the model's outputs
            raise ConfigError(f"aux_weights: {exc}") from None
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        position.iteration += 1
        position.batch_in_epoch += 1
        run.steps_this_call += 1
        run.last_lr = lr

        # One small all-reduce per step: the mean loss over processes and whether any process must stop.
        wants_stop = stop.signal_number is not None or (
            config.stop_after is not None and run.steps_this_call >= config.stop_after)
        reduced = D.all_reduce_sum(torch.tensor([loss.item(), float(wants_stop)], dtype=torch.float64), run.context)
        loss_value = float(reduced[0]) / run.context.world_size
        if not math.isfinite(loss_value):
            raise ConfigError(f"training diverged: loss is {loss_value} at iteration {position.iteration} "
                              "(lower lr or check the data)")
        run.epoch_losses.append(loss_value)
        run.final_loss = loss_value
        now = time.perf_counter()
        speed = images.shape[0] * run.context.world_size / max(now - step_started, 1e-9)
        step_started = now
        _log_step(run, bar, loss_value, lr, speed, elapsed=position.elapsed_before + now - run.started)
        if reduced[1] > 0:
            return _stop_reason(stop)
    return None


def _log_step(run: TrainingRun, bar, loss_value: float, lr: float, speed: float, elapsed: float) -> None:
    """One iteration's row in metrics.csv, TensorBoard scalars, the progress bar and a debug line."""
    position = run.position
    run.metrics.add(epoch=position.epoch + 1, iteration=position.iteration, loss=repr(loss_value), lr=repr(lr),
                    elapsed_s=f"{elapsed:.3f}", samples_per_s=f"{speed:.2f}")
    if run.writer is not None:
        run.writer.add_scalar("train/loss", loss_value, position.iteration)
        run.writer.add_scalar("train/lr", lr, position.iteration)
    bar.update(1)
    bar.set_postfix(epoch=position.epoch + 1, loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", img_s=f"{speed:.1f}")
    if run.context.is_main:
        log.debug("epoch %d iteration %d/%d loss %.5f lr %.3e", position.epoch + 1, position.iteration,
                  run.data.max_iterations, loss_value, lr)


def validate_after_epoch(run: TrainingRun) -> str:
    """Validate on the held-out cases (rank 0, shared with every process), record it, keep ``best.pt``.

    Returns:
        The text for the epoch's log line, e.g. ``", validation mean Dice 0.8123 (best)"``.
    """
    position, data = run.position, run.data
    scores = None
    if run.context.is_main:
        scores = validate(run.unwrapped, run.config.data, data.val_entries, data.label_set, data.preprocessing,
                          run.device, batch_size=run.config.val_batch_size, amp=run.amp)
    scores = D.broadcast_object(scores, run.context)
    mean_dice = scores["mean_dice"]
    position.val_history.append({"epoch": position.epoch, "iteration": position.iteration, "mean_dice": mean_dice,
                                 "organs": scores["organs"]})
    run.metrics.add(epoch=position.epoch, iteration=position.iteration, val_dice=repr(mean_dice))
    if run.writer is not None and mean_dice is not None:
        run.writer.add_scalar("val/mean_dice", mean_dice, position.iteration)
    text = f", validation mean Dice {_fmt(mean_dice)}"
    if mean_dice is not None and (position.best_dice is None or mean_dice > position.best_dice):
        position.best_dice = mean_dice
        save_run_checkpoint(run, run.run_dir / BEST, interrupted=False, resumable=False)
        text += " (best)"
    return text


def save_run_checkpoint(run: TrainingRun, path: Path, *, interrupted: bool, resumable: bool = True) -> None:
    """Write a checkpoint of the run; ``resumable`` adds the optimiser and generator states (last.pt, not best.pt).

    Under DDP every process must call it (the generator states are gathered); only rank 0 writes.
    """
    rng = _rng_state(run.context, run.device) if resumable else None
    if not run.context.is_main:
        return
    position, data = run.position, run.data
    training_state = {
        "epoch": position.epoch,
        "batch_in_epoch": position.batch_in_epoch,
        "iteration": position.iteration,
        "max_iterations": data.max_iterations,
        "batches_per_epoch": data.batches_per_epoch,
        "best_val_dice": position.best_dice,
        "val_history": position.val_history,
        "elapsed_s": position.elapsed_before + time.perf_counter() - run.started,
        "interrupted": interrupted,
        "world_size": run.context.world_size,
        "amp": run.amp,  # the precision ``amp: auto`` resolved to on this machine
        "config": run.config.to_dict(),
    }
    if resumable:
        training_state["optimizer"] = run.optimizer.state_dict()
        training_state["rng"] = rng
    history = position.val_history
    extra = {"epoch": position.epoch, "iteration": position.iteration, "best_val_dice": position.best_dice,
             "val_dice": history[-1]["mean_dice"] if history else None}
    try:
        save_checkpoint(path, run.unwrapped, model_name=run.config.model, model_config=run.model_config,
                        label_set=data.label_set, preprocessing=data.preprocessing.to_dict(), extra=extra,
                        training_state=training_state)
    except (OSError, RuntimeError) as exc:  # torch reports a failed write as RuntimeError
        raise OutputError(f"{path}: cannot save the checkpoint: {write_failure(exc)}; the previous {path.name}, "
                          "if any, is kept") from None


def finish_run(run: TrainingRun, stop: StopRequest, stop_reason: "str | None") -> RunResult:
    """Save an unfinished run's ``last.pt`` (marked interrupted), close the writers and say what was done."""
    config, position, data = run.config, run.position, run.data
    finished = position.epoch >= config.epochs
    if not finished:
        save_run_checkpoint(run, run.run_dir / LAST, interrupted=True)
        run.metrics.flush()
    if run.writer is not None:
        run.writer.close()
    result = RunResult(
        run_dir=run.run_dir, epochs_completed=position.epoch, iterations=position.iteration,
        max_iterations=data.max_iterations, final_loss=run.final_loss, best_val_dice=position.best_dice,
        val_history=position.val_history, finished=finished,
        stop_reason="finished" if finished else (stop_reason or "stop_after"),
        exit_code=128 + stop.signal_number if stop.signal_number is not None else 0,
        wall_time_s=time.perf_counter() - run.started, rank=run.context.rank, world_size=run.context.world_size)
    if run.context.is_main:
        best_path = run.run_dir / BEST
        result.last_checkpoint = run.run_dir / LAST
        result.best_checkpoint = best_path if best_path.exists() else None
        if finished:
            log.info("finished %d epochs (%d iterations) in %.1f s; best validation Dice %s; checkpoints in %s",
                     position.epoch, position.iteration, result.wall_time_s, _fmt(position.best_dice), run.run_dir)
        else:
            log.info("stopped (%s) at epoch %d, batch %d/%d, iteration %d; saved %s; continue with --resume",
                     result.stop_reason, position.epoch + 1, position.batch_in_epoch, data.batches_per_epoch,
                     position.iteration, result.last_checkpoint)
    return result


def train(config: TrainConfig) -> RunResult:
    """Train ``config.model`` on the slice cache ``config.data``; write checkpoints and metrics to ``config.out``.

    Runs in a single process, or as one process of a torchrun job (``WORLD_SIZE`` > 1: DistributedDataParallel,
    gloo on CPU / NCCL on GPU; only rank 0 logs and writes files). The global state a run changes (deterministic
    algorithms, ``cudnn.benchmark``, ``CUBLAS_WORKSPACE_CONFIG``, the thread count, signal handlers, the log
    file and level) is restored when it returns.

    Returns:
        A :class:`RunResult` (also when the run was stopped by a signal or ``stop_after``: see ``stop_reason``).

    Raises:
        ConfigError: bad or missing settings, an existing run folder without ``resume``, a resumed run whose
            schedule settings differ. InputError: unusable slice cache (nothing is written then).
            CheckpointError: unreadable ``last.pt``.
    """
    config.check_ready()
    started = time.perf_counter()
    device = resolve_device(config.device)
    if D.env_world_size() > 1 and config.device == "auto" and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    context = D.init_distributed(use_cuda=device.type == "cuda")
    if context.distributed and device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
    medseg_logger = logging.getLogger("medseg")
    previous_level = medseg_logger.level
    log_files: list[logging.Handler] = []  # train.log, attached by _train once the data has been checked
    locks: list[Path] = []  # the run folder's lock (rank 0), taken by _train once the data has been checked
    stop = StopRequest()
    try:
        stop.install()
        with torch_settings(config.deterministic, config.threads, device):
            if config.progress and context.is_main:
                with logging_redirect():  # log lines print above the progress bar instead of through it
                    return _train(config, context, device, stop, started, log_files, locks)
            return _train(config, context, device, stop, started, log_files, locks)
    finally:
        for lock in locks:
            release_lock(lock)
        stop.restore()
        for handler in log_files:
            medseg_logger.removeHandler(handler)
            handler.close()
        medseg_logger.setLevel(previous_level)
        D.cleanup_distributed(context)


def _check_new_or_resumed(run_dir: Path, config: TrainConfig) -> None:
    if (run_dir / LAST).exists() and not config.resume:
        raise ConfigError(f"{run_dir}: already holds a run ({LAST}); use --resume to continue it or choose a new "
                          "--out folder")


def _train(config: TrainConfig, context: D.DistContext, device: torch.device, stop: StopRequest,
           started: float, log_files: list, locks: list) -> RunResult:
    """The run, step by step: check, data, model, resume, epochs (train, validate, save), finish."""
    run_dir = Path(config.out)
    _check_new_or_resumed(run_dir, config)
    data = load_training_data(config, context, device)
    model, optimizer, model_config = build_model(config, data.label_set, device)
    if context.is_main:
        locks.append(acquire_lock(run_dir, "training folder"))  # the run folder exists from here on: one writer
        _check_new_or_resumed(run_dir, config)  # again, now that no other training can start here
        log_files.append(_attach_log_file(run_dir))
    if config.pretrained:  # after the log file is attached, so that the load report goes to train.log
        _load_pretrained(model, get_spec(config.model).family, config.pretrained)
    position = resume_position(config, run_dir / LAST, model, optimizer, data.batches_per_epoch)
    if context.is_main:
        if position.resumed:
            log.info("resuming %s at epoch %d, batch %d/%d (iteration %d of %d)", run_dir, position.epoch + 1,
                     position.batch_in_epoch, data.batches_per_epoch, position.iteration, data.max_iterations)
        elif config.resume:
            log.info("%s: no %s yet; starting a new run", run_dir, LAST)
    unwrapped = model
    if context.distributed:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if position.resumed:
        _restore_rng(position.rng, context, device)
    elif context.rank:
        torch.manual_seed(config.seed + context.rank)  # dropout differs between processes

    metrics = MetricsLog(run_dir / METRICS_FILE, enabled=context.is_main)
    metrics.load_until(position.iteration, position.epoch)
    run = TrainingRun(config=config, context=context, device=device, amp=training_amp(config.amp, device), data=data,
                      model=model, unwrapped=unwrapped, optimizer=optimizer, model_config=model_config,
                      position=position, metrics=metrics, run_dir=run_dir, started=started,
                      writer=_tensorboard_writer(run_dir, config.tensorboard and context.is_main))
    if context.is_main:
        write_json(run_dir / "config.json", config.to_dict())
        log.info("training %s (%s parameters) on %d slices of %d cases: %d epochs x %d iterations, batch %d "
                 "(%d process%s), device %s, amp %s", config.model, f"{_count_parameters(unwrapped):,}",
                 len(data.dataset), len(data.dataset.case_ids), config.epochs, data.batches_per_epoch,
                 config.batch_size, context.world_size, "es" if context.world_size > 1 else "", device, run.amp)

    bar = progress_bar(total=data.max_iterations, initial=position.iteration, desc="train", unit="it",
                       dynamic_ncols=True, disable=not (config.progress and context.is_main))
    stop_reason = None
    while position.epoch < config.epochs and stop_reason is None:
        stop_reason = train_one_epoch(run, stop, bar)
        if position.batch_in_epoch < data.batches_per_epoch:  # stopped inside the epoch
            break
        losses = run.epoch_losses
        position.epoch += 1
        position.batch_in_epoch = 0
        message = f"epoch {position.epoch}/{config.epochs}"
        if losses:
            message += f": loss {np.mean(losses):.4f}, lr {run.last_lr:.2e}"
        if data.val_entries and (position.epoch % config.val_every == 0 or position.epoch == config.epochs):
            message += validate_after_epoch(run)
        save_run_checkpoint(run, run_dir / LAST, interrupted=False)
        metrics.flush()
        if context.is_main:
            log.info(message)
    bar.close()
    return finish_run(run, stop, stop_reason)


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def _stop_reason(stop: StopRequest) -> str:
    if stop.signal_number is not None:
        return signal.Signals(stop.signal_number).name
    return "stop_after"


def _rng_state(context: D.DistContext, device: torch.device) -> dict:
    """Generator states of this process (and, under DDP, of every process, gathered to all)."""
    own = {"torch": torch.get_rng_state(), "numpy": _numpy_state(), "python": _python_state()}
    if device.type == "cuda":
        own["cuda"] = torch.cuda.get_rng_state(device)
    if not context.distributed:
        return {"ranks": [own]}
    import torch.distributed as dist

    gathered = [None] * context.world_size
    dist.all_gather_object(gathered, own)
    return {"ranks": gathered}


def _restore_rng(state: "dict | None", context: D.DistContext, device: torch.device) -> None:
    if not state or len(state.get("ranks", [])) != context.world_size:
        log.warning("no generator state for %d process(es) in the checkpoint; dropout will not repeat exactly",
                    context.world_size)
        return
    own = state["ranks"][context.rank]
    torch.set_rng_state(own["torch"].to("cpu", torch.uint8))
    if "cuda" in own and device.type == "cuda":
        torch.cuda.set_rng_state(own["cuda"].to("cpu", torch.uint8), device)
    numpy_state = own.get("numpy")
    if numpy_state:
        np.random.set_state((numpy_state[0], np.asarray(numpy_state[1], dtype=np.uint32), *numpy_state[2:]))
    python_state = own.get("python")
    if python_state:
        random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))


def _numpy_state():
    name, keys, position, has_gauss, cached = np.random.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)]


def _python_state():
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _load_pretrained(model: torch.nn.Module, family: str, path: str) -> None:
    """The family's official ImageNet weights into ``model``; the report (loaded, resized, missing, unexpected)
    goes to the log, hence to ``train.log``."""
    load_pretrained(model, family, path)


def _tensorboard_writer(run_dir: Path, wanted: bool):
    if not wanted:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.debug("tensorboard is not installed; metrics go to %s only", METRICS_FILE)
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _attach_log_file(run_dir: Path) -> logging.Handler:
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("medseg")
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler


def _count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
