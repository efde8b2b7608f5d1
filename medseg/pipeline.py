"""YAML pipelines: synth (or a data folder) -> prepare -> train -> predict -> evaluate -> report.

A pipeline file names its stages and their parameters::

    name: demo
    run_dir: runs/demo          # relative paths are relative to the working directory
    data: null                  # a cohort folder (real Synapse/BTCV); null -> the synth stage makes a phantom one
                                # (a data folder given with --set data=... replaces the synth stage)
    stages:
      synth:    {cases: 20, seed: 0, size: small}
      prepare:  {labels: synapse8, split: seeded, test_fraction: 0.3}
      train:    {model: TransUNet-Tiny, img_size: 128, epochs: 8, batch_size: 16}
      predict:  {batch_size: 32}
      evaluate: {protocol: both, tolerance_mm: 2.0}   # tolerance_by_organ: {liver: 5} per organ
      report:   {}

Each stage writes into ``run_dir/<stage>/`` and records a key (a hash of its parameters and of the keys of the
stages it reads) in ``run_dir/<stage>/stage.json`` when it finishes, with the files it wrote and their sizes. A stage
whose key is unchanged and whose files are all there at their size is skipped; a changed key (or a missing or
truncated output) re-runs it and everything after it; re-running removes only the files its record lists. A stage interrupted with the same key resumes where it can
(prepare skips finished cases, train continues from its last checkpoint).

Every stage calls the same Python API a notebook would (:mod:`medseg.data`, :mod:`medseg.engine`,
:mod:`medseg.evaluation`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from medseg import __version__, schema
from medseg.data.slice_cache import load_manifest, prepare_cohort
from medseg.dicom import read_image
from medseg.engine.config import TrainConfig, load_config
from medseg.engine.inference import load_predictor, predict_volume
from medseg.engine.train import LAST, METRICS_FILE, read_metrics, train
from medseg.errors import ConfigError, MedsegError, OutputError, TrainingStopped
from medseg.evaluation.cohort import evaluate_folders
from medseg.evaluation.postprocess import choose_rules
from medseg.evaluation.plots import training_curve_png
from medseg.evaluation.report import write_reports
from medseg.io import (file_sha256, read_json, read_volume, read_yaml_mapping, strip_nifti_suffix, write_json,
                       write_volume)
from medseg.labels import remap_labels
from medseg.models import get_spec
from medseg.ownership import LOCK_FILE, folder_lock, remove_owned
from medseg.phantom import GENERATOR_VERSION, write_cohort
from medseg.postprocess import rules_path, save_rules
from medseg.prediction import predict_cases
from medseg.prediction.record import checkpoint_sha256
from medseg.progress import progress_bar
from medseg.schema import EvaluateStage, PrepareStage, SynthStage, setting

log = logging.getLogger(__name__)

STAGE_ORDER = ("synth", "prepare", "train", "postprocess", "predict", "evaluate", "report")
STAGE_FILE = "stage.json"
STARTED_FILE = "stage.started.json"


@dataclass
class Pipeline:
    """A validated pipeline.

    Attributes:
        name: pipeline name (shown in the summary).
        run_dir: folder that holds every stage's output.
        data: cohort folder for real data, or None when the synth stage makes the cohort.
        stages: stage name -> parameters (validated, defaults filled in), in execution order.
        source: the YAML file it came from (for messages).
    """

    name: str
    run_dir: Path
    data: "Path | None"
    stages: dict[str, dict]
    source: str = "<pipeline>"
    description: str = ""


@dataclass
class StageResult:
    name: str
    status: str  # "ran", "cached" or "dry-run"
    seconds: float
    outputs: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# Schemas: the pipeline file and each stage's parameters, as typed dataclasses (see medseg.schema, which holds the
# stages whose settings the command line shares: SynthStage, PrepareStage, EvaluateStage).


@dataclass
class PipelineFile:
    """The top level of a pipeline file."""

    name: "str | None" = setting(None, help="pipeline name (default: the file name)")
    description: str = setting("", help="one line shown with the pipeline")
    run_dir: "str | None" = setting(None, help="folder for every stage's output (default runs/NAME)")
    data: "str | None" = setting(None, help="cohort folder (real data); null: the synth stage makes a phantom one")
    stages: dict = setting(default_factory=dict, help="stage name -> parameters")


#: Train stage keys the pipeline sets itself: the slice cache, the run folder, resuming and the progress bar.
TRAIN_STAGE_EXCLUDED = ("data", "out", "resume", "progress")


@dataclass
class PostprocessStage:
    """Choose post-processing rules on validation cases (:func:`medseg.evaluation.postprocess.choose_rules`); the predict
    stage applies them."""

    checkpoint: Literal["best", "last"] = setting("last", help="the checkpoint the rules are chosen for (the "
                                                  "predict stage's)")
    validation: Literal["auto", "phantoms", "train"] = setting(
        "auto", help="validation cases: phantoms (fresh ones from the synth stage's generator, never trained on), "
        "train (the training split: optimistic, for real data without other cases) or auto (phantoms when the "
        "synth stage makes the cohort, else train)")
    cases: int = setting(6, minimum=1, help="number of validation cases")
    seed: int = setting(1000, help="seed of the validation phantoms (other than the synth stage's)")
    thresholds_ml: list = setting(default_factory=lambda: [0.5, 2.0, 10.0],
                                  help="component volumes (ml) under which removing components is tried")
    batch_size: int = setting(32, minimum=1, help="slices per forward pass")


@dataclass(kw_only=True)
class PredictStage(schema.PredictOptions):
    """Predict the held-out cases with the trained model (:func:`medseg.prediction.predict_cases`): every option of
    ``medseg predict`` with the same name (:class:`medseg.schema.PredictOptions`: device, batch_size, tta, amp,
    resize, output_types, organs, preview, statistics, save_probabilities, split_masks, viewer_tables, overwrite),
    and which checkpoint of the train stage. The inputs, output folder and checkpoint file are the pipeline's."""

    checkpoint: Literal["best", "last"] = setting("last", help="last.pt, or best.pt (needs train.val_every > 0)")


@dataclass
class ReportStage:
    """Write report.md / report.html with the figures (:func:`medseg.evaluation.report.write_reports`)."""

    title: str = setting("", help="report title (default: medseg pipeline NAME)")


def _stage_schemas() -> dict:
    return {"synth": SynthStage, "prepare": PrepareStage, "train": TrainConfig, "postprocess": PostprocessStage,
            "predict": PredictStage, "evaluate": EvaluateStage, "report": ReportStage}


def stage_params(name: str, params: dict, source: str) -> dict:
    """A stage's parameters checked against its schema, with every default filled in (plain data)."""
    cls = _stage_schemas()[name]
    prefix = f"stages.{name}."
    if name == "train":
        values = schema.check_mapping(cls, params, source, prefix=prefix, exclude=TRAIN_STAGE_EXCLUDED)
        config = cls.from_dict(values, source=f"{source}: stages.train")  # the combinations of keys, as train does
        return {key: value for key, value in dataclasses.asdict(config).items() if key not in TRAIN_STAGE_EXCLUDED}
    return dataclasses.asdict(schema.build(cls, params, source, prefix=prefix))


# ----------------------------------------------------------------------------------------------------------------
# Loading and validation


def load_pipeline(path, overrides: "list[str] | None" = None) -> Pipeline:
    """Read and validate a pipeline file.

    Args:
        path: the YAML file.
        overrides: ``key=value`` strings applied before validation, e.g. ``data=/data/Synapse``,
            ``train.epochs=3`` or ``stages.train.epochs=3``; values are read as YAML
            (:func:`medseg.schema.parse_assignment`, the parser of ``medseg train --set`` too).

    Raises:
        ConfigError: a one-line message naming the file and key (unknown key, wrong type, missing path,
            unknown model, malformed YAML or override).
    """
    path = Path(path)
    raw = read_yaml_mapping(path, "pipeline file")
    for override in overrides or []:
        _apply_override(raw, override)
    return validate_pipeline(raw, source=str(path))


def _apply_override(raw: dict, override: str) -> None:
    parts, value = schema.parse_assignment(override)
    if parts[0] in STAGE_ORDER:
        parts = ["stages"] + parts
    node = raw
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"--set {'.'.join(parts)}: {part} is not a section")
    node[parts[-1]] = value


def validate_pipeline(raw: dict, source: str = "<pipeline>") -> Pipeline:
    """Check keys and types, fill in defaults, and return a :class:`Pipeline` (see :func:`load_pipeline`)."""
    top = schema.build(PipelineFile, raw, source)
    if not top.stages:
        raise ConfigError(f"{source}: stages: no stages given")
    schemas = _stage_schemas()
    for name in top.stages:
        if name not in schemas:
            raise ConfigError(f"{source}: stages.{name}: unknown stage{schema.suggest(str(name), schemas)}")
    stages = {name: stage_params(name, top.stages[name] or {}, source) for name in STAGE_ORDER if name in top.stages}

    data = top.data
    if data is not None:
        data_path = Path(data).expanduser()
        if not data_path.is_dir():
            raise ConfigError(f"{source}: data: {data}: folder not found")
        if "synth" in stages:  # a data folder replaces the phantom cohort: the pipeline runs unchanged on it
            del stages["synth"]
    elif "prepare" in stages and "synth" not in stages:
        raise ConfigError(f"{source}: data: required (a cohort folder) when there is no synth stage")
    if "train" in stages:
        try:
            get_spec(stages["train"]["model"])
        except ConfigError as exc:
            raise ConfigError(f"{source}: stages.train.model: {str(exc).split(': ', 1)[-1]}") from None
    _check_chain(stages, source)
    if "predict" in stages and stages["predict"]["checkpoint"] == "best" and not stages["train"]["val_every"]:
        raise ConfigError(f"{source}: stages.predict.checkpoint: best needs validation (set train.val_every > 0) "
                          "or use last")
    _check_postprocess(stages, source)
    name = top.name or Path(source).stem
    return Pipeline(
        name=str(name),
        run_dir=Path(top.run_dir or f"runs/{name}"),
        data=Path(data).expanduser() if data is not None else None,
        stages=stages,
        source=source,
        description=top.description,
    )


def _check_chain(stages: dict, source: str) -> None:
    """Every stage needs the one before it (report needs evaluate, ...), except that synth/data start a chain."""
    needs = {"train": "prepare", "postprocess": "train", "predict": "train", "evaluate": "predict",
             "report": "evaluate"}
    for stage, required in needs.items():
        if stage in stages and required not in stages:
            raise ConfigError(f"{source}: stages.{stage}: needs the {required} stage")


def _check_postprocess(stages: dict, source: str) -> None:
    """The rules must be chosen for the checkpoint the predict stage uses, on cases that exist."""
    post = stages.get("postprocess")
    if post is None:
        return
    if "predict" in stages and stages["predict"]["checkpoint"] != post["checkpoint"]:
        raise ConfigError(f"{source}: stages.postprocess.checkpoint: {post['checkpoint']}, but the predict stage "
                          f"uses {stages['predict']['checkpoint']}; rules are chosen for one checkpoint")
    if post["validation"] == "phantoms" and "synth" not in stages:
        raise ConfigError(f"{source}: stages.postprocess.validation: phantoms needs the synth stage (with a data "
                          "folder use train or auto)")
    thresholds = post["thresholds_ml"]
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0 for t in thresholds):
        raise ConfigError(f"{source}: stages.postprocess.thresholds_ml: expected positive volumes in ml, got "
                          f"{thresholds}")
    if post["checkpoint"] == "best" and not stages["train"]["val_every"]:
        raise ConfigError(f"{source}: stages.postprocess.checkpoint: best needs train.val_every > 0")


# ----------------------------------------------------------------------------------------------------------------
# Running


#: Settings left out of a stage's key while they hold these values (added later: runs made before stay cached).
KEY_OMITTED_DEFAULTS = {"prepare": {"input_mode": "resize", "target_spacing_mm": None, "label_map": None},
                        "evaluate": {"label_map": None}}


def stage_keys(pipeline: Pipeline) -> dict[str, str]:
    """The cache key of every stage: a hash of its parameters, the data folder and the keys of earlier stages."""
    keys: dict[str, str] = {}
    upstream = {"medseg": __version__, "data": _data_fingerprint(pipeline.data)}
    for name, params in pipeline.stages.items():
        if name == "synth":  # a new phantom generator makes a different cohort from the same parameters
            upstream = {**upstream, "phantom_generator": GENERATOR_VERSION}
        omitted = KEY_OMITTED_DEFAULTS.get(name, {})
        params = {key: value for key, value in params.items() if key not in omitted or omitted[key] != value}
        content = {"stage": name, "params": params, "upstream": upstream}
        if params.get("label_map") and Path(params["label_map"]).is_file():  # an edited map re-runs the stage
            content["label_map_sha256"] = file_sha256(params["label_map"])
        payload = json.dumps(content, sort_keys=True, default=str)
        keys[name] = hashlib.sha256(payload.encode()).hexdigest()[:16]
        upstream = {"previous": keys[name]}
    return keys


def _data_fingerprint(data: "Path | None") -> "list | None":
    """Relative names and SHA-256 of every file of a data folder (NIfTI, DICOM slices, TransUNet files, label
    maps; hidden files skipped), so a file edited in place re-runs prepare even with the same size and time."""
    if data is None:
        return None
    files = sorted(p for p in data.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(data).parts))
    return [[p.relative_to(data).as_posix(), file_sha256(p)] for p in files]


def run_pipeline(pipeline: Pipeline, dry_run: bool = False, force: "tuple[str, ...] | list[str]" = (),
                 progress: bool = True) -> list[StageResult]:
    """Run the stages in order, skipping those whose key is unchanged.

    Args:
        pipeline: a validated pipeline (:func:`load_pipeline`).
        dry_run: only validate and report which stages would run.
        force: stage names to re-run even when cached (later stages then re-run too).
        progress: show progress bars inside stages.

    Returns:
        One :class:`StageResult` per stage.
    """
    keys = stage_keys(pipeline)
    if dry_run:
        return _run_stages(pipeline, keys, dry_run, force, progress)
    with folder_lock(pipeline.run_dir, "run folder"):
        return _run_stages(pipeline, keys, dry_run, force, progress)


def _run_stages(pipeline: Pipeline, keys: dict, dry_run: bool, force, progress: bool) -> list[StageResult]:
    results: list[StageResult] = []
    outputs: dict[str, dict] = {}
    rerun = False
    for name, params in pipeline.stages.items():
        stage_dir = pipeline.run_dir / name
        record_path = stage_dir / STAGE_FILE
        record = read_json(record_path) if record_path.exists() else None
        cached = (record is not None and record.get("key") == keys[name] and not rerun and name not in force)
        if cached:
            changed = changed_outputs(stage_dir, record)
            if changed:
                log.warning("[%s] %s since the stage finished; running it again", name, changed)
                cached = False
        if cached:
            outputs[name] = record["outputs"]
            results.append(StageResult(name, "cached", 0.0, record["outputs"]))
            log.info("[%s] unchanged, skipped", name)
            continue
        rerun = True
        if dry_run:
            results.append(StageResult(name, "dry-run", 0.0))
            continue
        started_path = stage_dir / STARTED_FILE
        started_record = read_json(started_path) if started_path.exists() else None
        resumable = (started_record is not None and started_record.get("key") == keys[name] and name not in force)
        if resumable:
            foreign = list(started_record.get("foreign", []))
        else:
            foreign = clear_stage_dir(stage_dir, name, also_owned=written_by_other_stages(pipeline, name))
        stage_dir.mkdir(parents=True, exist_ok=True)
        write_json(started_path, {"key": keys[name], "params": params, "foreign": foreign})
        record_path.unlink(missing_ok=True)
        log.info("[%s] running", name)
        started = time.perf_counter()
        stage_outputs = STAGES[name](pipeline, params, stage_dir, outputs, progress)
        seconds = time.perf_counter() - started
        outputs[name] = stage_outputs
        written = sorted(set(stage_files(stage_dir)) - set(foreign))
        write_json(record_path, {"key": keys[name], "params": params, "outputs": stage_outputs,
                                 "seconds": round(seconds, 2), "medseg_version": __version__, "files": written,
                                 "sizes": file_sizes(stage_dir, written),
                                 "sha256": file_hashes(stage_dir, written)})
        started_path.unlink(missing_ok=True)
        results.append(StageResult(name, "ran", seconds, stage_outputs))
    return results


def file_sizes(stage_dir: Path, files: list[str]) -> dict[str, int]:
    """``{relative path: size in bytes}`` of a stage's files (a link: its target's size)."""
    return {name: (stage_dir / name).stat().st_size for name in files if (stage_dir / name).exists()}


def file_hashes(stage_dir: Path, files: list[str]) -> dict[str, str]:
    """``{relative path: SHA-256}`` of a stage's files (a link: its target's contents)."""
    return {name: file_sha256(stage_dir / name) for name in files if (stage_dir / name).is_file()}


def changed_outputs(stage_dir: Path, record: dict) -> "str | None":
    """What is no longer as a finished stage left it (a recorded file missing, of another size or other contents),
    or None. Sizes are compared first (cheap), then the SHA-256 recorded when the stage finished.

    A stage record without sizes or hashes (an older medseg) is taken as it is.
    """
    for name, size in (record.get("sizes") or {}).items():
        path = stage_dir / name
        if not path.exists():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} changed size ({path.stat().st_size} bytes, {size} when written)"
    for name, digest in (record.get("sha256") or {}).items():
        path = stage_dir / name
        if not path.is_file():
            return f"{path} is missing"
        if file_sha256(path) != digest:
            return f"{path} changed since it was written (SHA-256 differs)"
    return None


def stage_files(stage_dir: Path) -> list[str]:
    """Relative paths of the files under a stage folder, without medseg's own records and lock."""
    if not stage_dir.is_dir():
        return []
    return [p.relative_to(stage_dir).as_posix() for p in sorted(stage_dir.rglob("*"))
            if not p.is_dir() and p.name not in (STAGE_FILE, STARTED_FILE, LOCK_FILE)]


def written_by_other_stages(pipeline: Pipeline, name: str) -> list[str]:
    """Relative paths inside stage ``name``'s folder of the files that other stages recorded as their outputs (the
    postprocess stage writes its rules beside the train stage's checkpoint): a re-run of ``name`` makes them stale,
    and they are medseg's, so they are removed with the stage's own files."""
    stage_dir = (pipeline.run_dir / name).resolve()
    found = []
    for other in pipeline.stages:
        record = _read_record(pipeline.run_dir / other / STAGE_FILE) if other != name else None
        for value in ((record or {}).get("outputs") or {}).values():
            if isinstance(value, str) and value:
                path = Path(value).resolve()
                if path.is_file() and stage_dir in path.parents:
                    found.append(path.relative_to(stage_dir).as_posix())
    return found


def clear_stage_dir(stage_dir: Path, name: str, also_owned=()) -> list[str]:
    """Remove what an earlier run of a stage wrote, before the stage runs again; return the files kept.

    Only files medseg's record lists are removed: ``stage.json``'s ``files`` (a finished stage), or, for an
    interrupted one, everything but the ``foreign`` files its ``stage.started.json`` found when it started. A stage
    record of an older medseg without either list counts the whole folder as medseg's (as that version did); a
    folder with no stage record is not medseg's at all. Files that are not medseg's are kept (and logged) when they
    lie directly in the stage folder; inside the stage's output folders they would be taken for its output, so the
    run is refused before anything is removed. ``also_owned``: files another stage recorded writing into this
    stage's folder (:func:`written_by_other_stages`), removed too.

    Raises:
        OutputError: a file medseg did not write lies inside the stage's output folders.
    """
    if not stage_dir.exists():
        return []
    present = stage_files(stage_dir)
    finished = _read_record(stage_dir / STAGE_FILE)
    started = _read_record(stage_dir / STARTED_FILE)
    if finished is not None and "files" in finished:
        owned = set(finished["files"])
    elif started is not None and "foreign" in started:
        owned = set(present) - set(started["foreign"])
    elif finished is not None or started is not None:
        owned = set(present)
    else:
        owned = set()
    owned |= set(also_owned) & set(present)
    foreign = [f for f in present if f not in owned]
    nested = [f for f in foreign if "/" in f]
    if nested:
        raise OutputError(f"{stage_dir / nested[0]}: not written by medseg, but inside the {name} stage's output "
                          f"(it would be taken for the stage's own file); move it out of {stage_dir} and run again")
    remove_owned(stage_dir, sorted(owned))
    for record in (STAGE_FILE, STARTED_FILE):
        (stage_dir / record).unlink(missing_ok=True)
    for kept in foreign:
        log.warning("%s: kept (not written by medseg)", stage_dir / kept)
    return foreign


def _read_record(path: Path) -> "dict | None":
    if not path.exists():
        return None
    try:
        record = read_json(path)
    except MedsegError:
        return {}  # a damaged record of medseg's: the folder is medseg's, with no list of files
    return record if isinstance(record, dict) else {}


# ----------------------------------------------------------------------------------------------------------------
# Stages: each takes (pipeline, params, stage_dir, outputs of earlier stages, progress) and returns plain data.


def _stage_synth(pipeline, params, stage_dir: Path, outputs, progress) -> dict:
    cohort = stage_dir / "cohort"
    write_cohort(cohort, cases=params["cases"], seed=params["seed"], size=params["size"],
                 workers=params["workers"], progress=progress)
    return {"cohort": str(cohort)}


def _stage_prepare(pipeline, params, stage_dir: Path, outputs, progress) -> dict:
    cohort = pipeline.data if pipeline.data is not None else Path(outputs["synth"]["cohort"])
    prepared = stage_dir / "slices"
    summary = prepare_cohort(cohort, prepared, labels=params["labels"], split=params["split"],
                             test_fraction=params["test_fraction"], seed=params["seed"],
                             workers=params["workers"], progress=progress, label_map=params.get("label_map"),
                             input_mode=params["input_mode"], target_spacing_mm=params["target_spacing_mm"])
    if not (summary.written or summary.already_done):
        raise ConfigError(f"prepare: no usable case in {cohort}")
    for where, reason in {**summary.failed, **summary.skipped_files}.items():
        log.warning("%s: skipped: %s", where, reason)
    return {"cohort": str(cohort), "prepared": str(prepared), "cases": len(summary.written + summary.already_done),
            "skipped": summary.failed, "skipped_files": summary.skipped_files}


def _stage_train(pipeline, params, stage_dir: Path, outputs, progress) -> dict:
    run_dir = stage_dir / "run"
    overrides = dict(params, data=outputs["prepare"]["prepared"], out=str(run_dir), progress=progress,
                     resume=(run_dir / LAST).exists())
    result = train(load_config(overrides=overrides))
    if not result.finished:
        raise TrainingStopped(f"train: stopped ({result.stop_reason}) at iteration {result.iterations} of "
                              f"{result.max_iterations}; saved {result.last_checkpoint}; run the pipeline again to "
                              "resume", exit_code=result.exit_code)
    return {"run_dir": str(run_dir), "last": str(result.last_checkpoint),
            "best": str(result.best_checkpoint) if result.best_checkpoint else None,
            "epochs": result.epochs_completed, "final_loss": result.final_loss,
            "best_val_dice": result.best_val_dice, "train_seconds": round(result.wall_time_s, 1)}


def _stage_postprocess(pipeline, params, stage_dir: Path, outputs, progress) -> dict:

    checkpoint = outputs["train"][params["checkpoint"]]
    if checkpoint is None:
        raise ConfigError(f"{pipeline.source}: stages.postprocess.checkpoint: the train stage wrote no best.pt; "
                          "use last")
    source, pairs = _validation_pairs(pipeline, params, stage_dir, outputs, progress)
    predictor = load_predictor(checkpoint, "auto")
    sha = checkpoint_sha256(checkpoint)
    cases = []
    for image, label in progress_bar(pairs, desc="postprocess", unit="case", disable=not progress):
        prediction = predict_volume(image, predictor, batch_size=params["batch_size"])
        reference = read_volume(label)
        cases.append((prediction.array, remap_labels(reference.array, predictor.label_set, str(label)),
                      reference.spacing))
    rules = choose_rules(cases, predictor.label_set, thresholds_ml=params["thresholds_ml"], checkpoint_sha256=sha)
    rules.validation["source"] = source
    path = save_rules(rules_path(checkpoint), rules)
    for organ, rule in rules.describe().items():
        log.info("[postprocess] %s: %s", organ, rule)
    return {"rules": str(path), "rules_sha256": file_sha256(path), "checkpoint": str(checkpoint),
            "checkpoint_sha256": sha, "chosen": rules.describe(), "validation_cases": len(cases), "source": source}


def _validation_pairs(pipeline, params, stage_dir: Path, outputs, progress) -> tuple[str, list[tuple[str, str]]]:
    """(what the validation cases are, [(image, label) paths]) for the postprocess stage."""

    mode = params["validation"]
    if mode == "auto":
        mode = "phantoms" if "synth" in pipeline.stages else "train"
    if mode == "phantoms":
        synth = pipeline.stages["synth"]
        if params["seed"] == synth["seed"]:
            raise ConfigError(f"{pipeline.source}: stages.postprocess.seed: {params['seed']} is the synth stage's "
                              "seed (the validation phantoms would be training cases)")
        cohort = stage_dir / "validation"
        write_cohort(cohort, cases=params["cases"], seed=params["seed"], size=synth["size"], progress=progress)
        images = sorted((cohort / "img").glob("*.nii.gz"))
        pairs = [(str(p), str(cohort / "label" / p.name.replace("img", "label", 1))) for p in images]
        return f"{len(pairs)} fresh phantoms (seed {params['seed']}, size {synth['size']})", pairs
    entries = [e for e in load_manifest(outputs["prepare"]["prepared"])["cases"]
               if e["split"] == "train" and e.get("source_label")][:params["cases"]]
    if not entries:
        raise ConfigError("postprocess: the training split has no labelled case to choose rules on")
    return (f"{len(entries)} training-split cases (seen in training: optimistic)",
            [(e["source_image"], e["source_label"]) for e in entries])


def _test_cases(outputs) -> list[dict]:
    """Manifest entries of the held-out (test split) cases of the prepared cohort."""
    entries = [e for e in load_manifest(outputs["prepare"]["prepared"])["cases"] if e["split"] == "test"]
    if not entries:
        raise ConfigError("prepare: the split has no test cases to predict and evaluate (raise test_fraction)")
    return entries


def _stage_predict(pipeline, params, stage_dir: Path, outputs, progress) -> dict:
    """The held-out cases, linked into ``predict/inputs/`` under their case ids, predicted into ``predict/labels/``
    by :func:`medseg.prediction.predict_cases` (the reuse rule and records of ``medseg predict``)."""
    checkpoint = outputs["train"][params["checkpoint"]]
    if checkpoint is None:  # validation was on but found no labelled held-out case to choose best.pt by
        raise ConfigError(f"{pipeline.source}: stages.predict.checkpoint: the train stage wrote no best.pt (no "
                          "labelled test-split case to validate on); use last")
    inputs = _link_test_images(_test_cases(outputs), stage_dir / "inputs")
    options = {key: value for key, value in params.items() if key != "checkpoint"}
    # The postprocess stage's rules (beside the checkpoint; predict_cases refuses rules of another checkpoint),
    # with the model's own output kept in labels_raw/ for the figures without post-processing.
    options["postprocess"] = bool(params["postprocess"] and "postprocess" in outputs)
    labels_dir, raw_dir = stage_dir / "labels", stage_dir / "labels_raw"
    summary = predict_cases(schema.PredictRequest(input=inputs, output=labels_dir, checkpoint=checkpoint,
                                                  progress=progress,
                                                  raw_output=raw_dir if options["postprocess"] else None,
                                                  **options))
    if not (summary.predicted or summary.reused):
        name, error = next(iter(summary.failed.items()))
        raise ConfigError(f"predict: no held-out case could be predicted ({name}: {error})")
    for name, error in summary.failed.items():
        log.warning("predict: %s failed (evaluate scores it as a missing prediction): %s", name, error)
    result = {"predictions": str(labels_dir), "checkpoint": str(checkpoint),
              "checkpoint_sha256": summary.checkpoint_sha256, "cases": len(summary.cases),
              "failed": summary.failed, "summary": summary.summary_path,
              "postprocess": summary.postprocess["organs"] if summary.postprocess else None,
              "quality_flags": str(labels_dir / "quality_flags.csv"), "flagged_cases": summary.flagged_cases}
    if summary.postprocess:
        result["predictions_raw"] = str(raw_dir)
    return result


def _link_test_images(entries: list[dict], folder: Path) -> Path:
    """``folder/<case_id>.nii.gz`` (the source's own suffix) linked to each held-out case's CT; returns ``folder``.

    A case whose CT is a DICOM series (a folder or ``.zip``, as ``medseg prepare`` accepts) is written there as a
    NIfTI of the series (same voxels and geometry), so its prediction is named by its case id like the others.
    """

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for entry in entries:
        source = Path(entry["source_image"])
        if source.is_dir() or source.suffix.lower() == ".zip":
            write_volume(folder / f"{entry['case_id']}.nii.gz", read_image(source))
            continue
        suffix = ".nii.gz" if source.name.lower().endswith(".nii.gz") else source.suffix
        (folder / f"{entry['case_id']}{suffix}").symlink_to(source.resolve())
    return folder


def _stage_evaluate(pipeline, params, stage_dir: Path, outputs, progress) -> dict:
    # The references are the held-out cases' label files, linked (not copied) into one folder.
    references = stage_dir / "references"
    references.mkdir(parents=True, exist_ok=True)
    for entry in _test_cases(outputs):
        if entry.get("source_label"):
            source = Path(entry["source_label"])
            link = references / (entry["case_id"] + source.name[len(strip_nifti_suffix(source.name)):])
            link.unlink(missing_ok=True)
            link.symlink_to(source.resolve())
    label_set = load_manifest(outputs["prepare"]["prepared"])["label_set"]

    unprepared = _unprepared_cases(outputs["prepare"])

    def evaluate(predictions: str, name: str) -> dict:
        summary = evaluate_folders(references, predictions, labels=label_set, protocol=params["protocol"],
                                   tolerance_mm=params["tolerance_mm"],
                                   tolerance_by_organ=params["tolerance_by_organ"], workers=params["workers"],
                                   reference_format="raw", progress=progress, label_map=params.get("label_map"))
        if unprepared:
            summary["unprepared_cases"] = unprepared
            summary["warnings"].append(
                f"{len(unprepared)} cohort file(s) could not be prepared, so they are in no split and not scored: "
                + "; ".join(f"{where}: {why}" for where, why in list(unprepared.items())[:3])
                + ("; ..." if len(unprepared) > 3 else ""))
        write_json(stage_dir / name, summary)
        return summary

    summary = evaluate(outputs["predict"]["predictions"], "summary.json")
    result = {"summary": str(stage_dir / "summary.json"), "headline": headline(summary),
              "failed": summary["counts"]["failed"], "unprepared": len(unprepared)}
    if outputs["predict"].get("predictions_raw"):  # post-processing on: the model's own output scored as well
        raw = evaluate(outputs["predict"]["predictions_raw"], "summary_without_postprocessing.json")
        result["headline"] = [f"with post-processing: {line}" for line in result["headline"]]
        result["headline"] += [f"without post-processing: {line}" for line in headline(raw)
                               if not line.startswith("warning:")]
        result["summary_without_postprocessing"] = str(stage_dir / "summary_without_postprocessing.json")
    return result


def _unprepared_cases(prepared: dict) -> dict:
    """``{case or file: reason}`` of the cohort that the prepare stage skipped (unreadable, unlabelled, ...)."""
    return {**prepared.get("skipped", {}), **prepared.get("skipped_files", {})}


def headline(summary: dict) -> list[str]:
    """One line per protocol with the foreground mean Dice and HD95 of an evaluation summary."""
    lines = []
    if "standard" in summary:
        means = summary["standard"]["foreground_mean"]
        lines.append(f"mean Dice {means['dice']:.4f}, HD95 {means['hd95_mm']:.2f} mm (standard protocol, "
                     f"{summary['counts']['evaluated']} held-out cases)")
    if "transunet" in summary:
        means = summary["transunet"]["foreground_mean"]
        lines.append(f"mean Dice {means['dice']:.4f}, HD95 {means['hd95_voxels']:.2f} voxels "
                     "(TransUNet paper protocol)")
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    return lines


def _stage_report(pipeline, params, stage_dir: Path, outputs, progress) -> dict:
    summary = read_json(outputs["evaluate"]["summary"])
    curve = _training_curve(outputs)
    paths = write_reports(summary, stage_dir, title=params["title"] or f"medseg pipeline {pipeline.name}",
                          extra_figures={"training_curve": curve} if curve else None,
                          provenance=dict(_report_provenance(pipeline, outputs),
                                          pipeline_record=str(stage_dir / "pipeline.json")),
                          images={e["case_id"]: e["source_image"] for e in _test_cases(outputs)})
    stage_info = {name: {"params": pipeline.stages[name]} for name in pipeline.stages}
    write_json(stage_dir / "pipeline.json", {"pipeline": pipeline.name, "source": pipeline.source,
                                             "stages": stage_info, "outputs": outputs})
    result = {"report": str(paths["html"]), "markdown": str(paths["markdown"]),
              "headline": outputs["evaluate"]["headline"]}
    if curve is not None:
        result["training_curve"] = str(paths["training_curve"])
    return result


def _report_provenance(pipeline, outputs) -> dict:
    """What the report evaluates: model, checkpoint (with its sha256), training settings, data, pipeline record."""
    train = pipeline.stages.get("train", {})
    predicted = outputs.get("predict") or {}
    checkpoint = predicted.get("checkpoint")
    # The hash the predict stage took when it made the predictions (a predict record written before it kept one
    # falls back to hashing the file now).
    sha = predicted.get("checkpoint_sha256")
    if sha is None and checkpoint and Path(checkpoint).is_file():
        sha = file_sha256(checkpoint)
    trained = outputs.get("train") or {}
    settings = {key: train[key] for key in ("epochs", "batch_size", "lr", "img_size", "seed", "augmentation")
                if key in train}
    if trained.get("epochs") is not None:
        settings["epochs completed"] = trained["epochs"]
    if trained.get("final_loss") is not None:
        settings["last batch loss"] = round(float(trained["final_loss"]), 4)
    prepare = pipeline.stages.get("prepare", {})
    data = str(pipeline.data) if pipeline.data else f"phantom cohort {(outputs.get('synth') or {}).get('cohort')}"
    if prepare:
        data += f" (label set {prepare.get('labels')}, split {prepare.get('split')})"
    result = {"model": train.get("model"), "checkpoint": checkpoint, "checkpoint_sha256": sha, "training": settings,
              "data": data}
    post = outputs.get("postprocess")
    if post is not None:
        applied = predicted.get("postprocess") is not None
        result["post_processing"] = (post["chosen"] or "no rule chosen") if applied else "off"
        result["post_processing_chosen_on"] = post["source"]
    if (outputs.get("evaluate") or {}).get("summary_without_postprocessing"):
        result["scores_without_post_processing"] = " / ".join(
            line.split(": ", 1)[1] for line in outputs["evaluate"]["headline"]
            if line.startswith("without post-processing"))
    return result


def _training_curve(outputs) -> "bytes | None":
    """PNG of the training loss (and validation Dice, when recorded) from the run's metrics.csv, or None."""
    metrics_path = Path(outputs["train"]["run_dir"]) / METRICS_FILE
    return training_curve_png(read_metrics(metrics_path)) if metrics_path.exists() else None


STAGES: dict[str, Callable] = {
    "synth": _stage_synth,
    "prepare": _stage_prepare,
    "train": _stage_train,
    "postprocess": _stage_postprocess,
    "predict": _stage_predict,
    "evaluate": _stage_evaluate,
    "report": _stage_report,
}
