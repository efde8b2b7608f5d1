"""Evaluate a folder of predictions against a folder of references, in parallel over cases, and aggregate.

Pairing is by case id (:func:`medseg.data.cohort.case_id_from_path`: ``label0001.nii.gz``, ``img0001.nii.gz`` and
``case0001.nii.gz`` all belong to ``case0001``).

* REF_DIR may be a cohort folder (raw BTCV ``img/`` + ``label/``, nnU-Net ``imagesTr/`` + ``labelsTr/``, or
  ``images/`` + ``labels/``; its label files are the references), a folder holding only such a label folder, or a
  flat folder of label files (when a flat folder also holds images, only the files named ``*_label``/``*_seg``/...
  are used).
* PRED_DIR is a flat folder of NIfTI label maps, one per case, in the classes of the label set.

Reference values: with ``reference_format="raw"`` references hold raw BTCV values (0..13) and are mapped onto the
label set (:func:`medseg.labels.remap_labels`); with ``"classes"`` they already hold the label set's classes;
``"auto"`` means raw for a ``label/`` or ``labelsTr/`` cohort folder, otherwise per file: raw when a value exceeds
the label set's highest class, classes otherwise. The format used is recorded per case.

Per case: the spacing is the reference NIfTI's (from its affine, mm, array axis order); prediction and reference
must have the same shape and affines equal within 1e-4 (mm), and a prediction may only hold the label set's
classes. A case that breaks a rule is listed in ``errors`` and the other cases complete. A reference case without a
prediction is scored as an empty prediction: status ``missing_prediction`` for every organ the reference holds,
with Dice 0, HD95 = ASSD = image diagonal, NSD 0 in the standard protocol and the paper's (0, 0) in the TransUNet
protocol; the case is listed in ``missing_predictions``.

The summary (a plain dict, written as ``summary.json`` by :func:`medseg.evaluation.report.write_reports`)::

    {
      "format": "medseg-evaluation", "format_version": 1, "medseg_version": "0.1.0",
      "protocol": "standard" | "transunet" | "both",
      "label_set": {...LabelSet.to_dict()...}, "organs": [organ keys in class order],
      "display_names": {organ: "Aorta", ...},
      "tolerance_mm": 2.0, "spacing_source": "reference NIfTI affine",
      "worst_case_distance": "image diagonal in mm ...",
      "reference_dir": "...", "prediction_dir": "...", "reference_format": "auto",
      "counts": {"cases": n reference cases, "evaluated": n cases compared with a prediction,
                 "missing_predictions": n, "errors": n,
                 "organ_status": {"scored": n, "both_empty": n, "pred_empty": n, "ref_empty": n,
                                  "missing_prediction": n}},   # over case x organ, standard protocol if run
      "missing_predictions": [case ids], "unmatched_predictions": [file names without a reference],
      "errors": [{"case_id": ..., "message": ...}],
      "case_info": {case_id: {"reference", "prediction", "status": "evaluated|missing_prediction|error",
                              "shape", "spacing_mm", "reference_format"}},
      "standard": {                                               # present for protocol standard / both
        "metrics": ["dice", "hd95_mm", "assd_mm", "nsd", "pred_volume_ml", "ref_volume_ml"],
        "cases": {case_id: {organ: {"status": ..., "dice": ..., "hd95_mm": ..., ...}}},
        "organs": {organ: {metric: {"mean", "std", "median", "n"}, "status_counts": {status: n}}},
        "foreground_mean": {metric: mean of the organ means}
      },
      "transunet": {... the same with metrics ["dice", "hd95_voxels"] ...}   # present for transunet / both
    }

Aggregation: per organ, over the cases whose value is not None (``both_empty`` organs are not scored in the
standard protocol; failures are scored with their worst-case values, so none leaves a mean); ``std`` is the
population standard deviation (numpy's ddof=0). ``foreground_mean`` is the mean over organs of the organ means,
as in the TransUNet paper's table. Cases with errors are not scored; they are counted and listed.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.data.cohort import (IMAGE_DIR_NAMES, LABEL_DIR_NAMES, LABEL_SUFFIXES,
                                discover_cases, index_by_case, nifti_files)
from medseg.errors import ConfigError, InputError, MedsegError
from medseg.io import read_volume, strip_nifti_suffix
from medseg.labels import LabelSet, get_label_set, remap_labels
from medseg.evaluation.metrics import (
    BOTH_EMPTY,
    DEFAULT_TOLERANCE_MM,
    MISSING_PREDICTION,
    PRED_EMPTY,
    STANDARD_METRICS,
    STATUSES,
    TRANSUNET_METRICS,
    check_tolerance,
    evaluate_case,
    protocols_of,
    to_class_map,
)

logger = logging.getLogger(__name__)

#: Maximum difference (mm) between a prediction's and its reference's affine entries.
AFFINE_TOLERANCE_MM = 1e-4

REFERENCE_FORMATS = ("auto", "raw", "classes")
SPACING_SOURCE = "reference NIfTI affine"
WORST_CASE_DISTANCE = "image diagonal in mm, sqrt(sum((shape * spacing)^2)), for HD95 and ASSD when one mask is empty"

_RAWLABEL_DIR_NAMES = ("label", "labelsTr")


@dataclass(frozen=True)
class CasePair:
    """One reference case and its prediction.

    Attributes:
        case_id: ``case0001`` style id.
        reference: reference label file.
        prediction: prediction file, or None when missing.
        reference_format: ``raw``, ``classes`` or ``auto`` (decided from the file's values).
    """

    case_id: str
    reference: Path
    prediction: "Path | None"
    reference_format: str


def default_workers() -> int:
    """Worker processes used when none is given: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def find_references(ref_dir: "str | Path") -> tuple[dict[str, Path], bool]:
    """Reference label files of REF_DIR by case id.

    Returns:
        ``(references, raw_layout)``; ``raw_layout`` is True for a ``label/`` or ``labelsTr/`` cohort folder, whose
        files hold raw BTCV values.

    Raises:
        InputError: the folder is missing, holds no label files, or two files map to one case id.
    """
    root = Path(ref_dir)
    if not root.is_dir():
        raise InputError(f"{root}: reference folder not found" if not root.exists() else f"{root}: not a folder")
    search_root = root / "RawData" / "Training" if (root / "RawData" / "Training").is_dir() else root
    label_dir = next((search_root / n for n in LABEL_DIR_NAMES if (search_root / n).is_dir()), None)
    image_dir = next((search_root / n for n in IMAGE_DIR_NAMES if (search_root / n).is_dir()), None)
    if label_dir is not None:
        if image_dir is not None:
            references = {c.case_id: c.label for c in discover_cases(root) if c.label is not None}
        else:
            references = index_by_case(nifti_files(label_dir), label_dir)
        if not references:
            raise InputError(f"{label_dir}: no reference label files (.nii or .nii.gz) found")
        return references, label_dir.name in _RAWLABEL_DIR_NAMES
    files = nifti_files(root)
    labelled = [p for p in files if strip_nifti_suffix(p.name).lower().endswith(LABEL_SUFFIXES)]
    references = index_by_case(labelled or files, root)
    if not references:
        raise InputError(f"{root}: no reference label files (.nii or .nii.gz) and no label/ folder found")
    return references, False


def find_predictions(pred_dir: "str | Path") -> dict[str, Path]:
    """Prediction files of the flat folder PRED_DIR by case id (InputError for a missing folder or an id clash)."""
    root = Path(pred_dir)
    if not root.is_dir():
        raise InputError(f"{root}: prediction folder not found" if not root.exists() else f"{root}: not a folder")
    return index_by_case(nifti_files(root), root)


def pair_cases(ref_dir, pred_dir, reference_format: str = "auto") -> tuple[list[CasePair], list[str]]:
    """Pair every reference case with its prediction.

    Returns:
        ``(pairs, unmatched)``: one :class:`CasePair` per reference case (prediction None when missing), sorted by
        case id, and the names of prediction files without a reference.

    Raises:
        InputError: a folder is unusable, or no prediction matches any reference case.
        ConfigError: unknown ``reference_format``.
    """
    if reference_format not in REFERENCE_FORMATS:
        raise ConfigError(
            f"reference-format: unknown value {reference_format!r} (choose from {', '.join(REFERENCE_FORMATS)})"
        )
    references, raw_layout = find_references(ref_dir)
    predictions = find_predictions(pred_dir)
    if not set(references) & set(predictions):
        raise InputError(
            f"{pred_dir}: no prediction matches a reference case of {ref_dir} "
            f"(references: {_first_ids(references)}; predictions: {_first_ids(predictions) or 'none'})"
        )
    fmt = "raw" if reference_format == "auto" and raw_layout else reference_format
    pairs = [CasePair(cid, references[cid], predictions.get(cid), fmt) for cid in sorted(references)]
    unmatched = sorted(predictions[cid].name for cid in set(predictions) - set(references))
    return pairs, unmatched


def evaluate_pair(pair: CasePair, label_set: "LabelSet | str", protocol: str = "both",
                  tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> dict:
    """Read and score one case; never raises for a bad case (the error goes into the record).

    Returns:
        ``{"case_id", "status": "evaluated" | "missing_prediction" | "error", "results": evaluate_case output or
        None, "info": {...}, "error": message or None}``.
    """
    label_set = get_label_set(label_set)
    info = {"reference": str(pair.reference), "prediction": str(pair.prediction) if pair.prediction else None}
    try:
        ref_volume = read_volume(pair.reference)
        reference, used_format = _reference_classes(ref_volume.array, pair, label_set)
        info.update(shape=list(reference.shape), spacing_mm=list(ref_volume.spacing), reference_format=used_format)
        if pair.prediction is None:
            empty = np.zeros(reference.shape, dtype=np.uint8)
            results = evaluate_case(empty, reference, ref_volume.spacing, label_set, protocol, tolerance_mm)
            for protocol_results in results.values():
                for record in protocol_results.values():
                    if record["status"] == PRED_EMPTY:
                        record["status"] = MISSING_PREDICTION
            status = MISSING_PREDICTION
        else:
            pred_volume = read_volume(pair.prediction)
            _check_geometry(pred_volume, ref_volume, pair)
            prediction = to_class_map(pred_volume.array, label_set, str(pair.prediction))
            results = evaluate_case(prediction, reference, ref_volume.spacing, label_set, protocol, tolerance_mm)
            status = "evaluated"
    except MedsegError as exc:
        return {"case_id": pair.case_id, "status": "error", "results": None, "info": info, "error": str(exc)}
    except Exception as exc:  # an unexpected failure of one case must not stop the others
        logger.debug("case %s failed", pair.case_id, exc_info=True)
        message = f"{pair.prediction or pair.reference}: unexpected {type(exc).__name__}: {exc}"
        return {"case_id": pair.case_id, "status": "error", "results": None, "info": info, "error": message}
    return {"case_id": pair.case_id, "status": status, "results": results, "info": info, "error": None}


def evaluate_folders(ref_dir, pred_dir, *, labels: "str | LabelSet" = "synapse8", protocol: str = "both",
                     tolerance_mm: float = DEFAULT_TOLERANCE_MM, workers: "int | None" = None,
                     reference_format: str = "auto", progress: bool = True) -> dict:
    """Evaluate every prediction of PRED_DIR against the references of REF_DIR.

    Args:
        ref_dir: references (cohort folder or flat folder of label files; see the module docstring).
        pred_dir: flat folder of predicted label maps (NIfTI), one per case.
        labels: label set of the predictions (and of the references after any remapping).
        protocol: ``standard``, ``transunet`` or ``both``.
        tolerance_mm: NSD tolerance in mm.
        workers: processes evaluating cases in parallel (1 = in this process); default :func:`default_workers`.
        reference_format: ``auto``, ``raw`` or ``classes``.
        progress: show a progress bar over cases (tqdm, on stderr).

    Returns:
        The summary dict described in the module docstring.

    Raises:
        InputError: a folder is missing or unusable, or no prediction matches a reference.
        ConfigError: bad protocol, tolerance, workers or reference format.
    """
    from medseg.progress import progress_bar as tqdm

    label_set = get_label_set(labels)
    protocols_of(protocol)
    tolerance_mm = check_tolerance(tolerance_mm)
    workers = default_workers() if workers is None else workers
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers: must be a whole number >= 1, got {workers!r}")
    pairs, unmatched = pair_cases(ref_dir, pred_dir, reference_format)
    if reference_format == "auto" and pairs[0].reference_format == "raw":
        logger.info("%s: a label/ or labelsTr/ cohort; references read as raw BTCV values and mapped to %s "
                    "(use --reference-format classes if they already hold %s classes)", ref_dir, label_set.name,
                    label_set.name)
    for name in unmatched:
        logger.warning("%s: prediction has no reference case; ignored", Path(pred_dir) / name)
    for pair in pairs:
        if pair.prediction is None:
            logger.warning("%s: no prediction; scored as a failure (missing_prediction)", pair.case_id)

    records = []
    bar = tqdm(total=len(pairs), desc="evaluate", unit="case", disable=not progress)
    workers = min(workers, len(pairs))
    if workers == 1:
        for pair in pairs:
            records.append(evaluate_pair(pair, label_set, protocol, tolerance_mm))
            bar.update(1)
    else:
        # "spawn" starts clean interpreters: safe when the caller has threads (torch, a notebook kernel).
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {pool.submit(evaluate_pair, pair, label_set, protocol, tolerance_mm): pair for pair in pairs}
            for future in as_completed(futures):
                try:
                    records.append(future.result())
                except BrokenProcessPool:  # a worker died: the case is an error, not a crash of the whole run
                    pair = futures[future]
                    logger.debug("worker for %s died", pair.case_id, exc_info=True)
                    records.append({"case_id": pair.case_id, "status": "error", "results": None,
                                    "info": {"reference": str(pair.reference), "prediction": str(pair.prediction)},
                                    "error": f"{pair.prediction or pair.reference}: worker process ended abruptly "
                                             "(killed for memory? try fewer workers, or workers=1 when calling "
                                             "from a script read from stdin)"})
                bar.update(1)
    bar.close()
    for record in records:
        if record["error"]:
            logger.warning("%s: %s", record["case_id"], record["error"])
    return summarize(records, label_set, protocol, tolerance_mm, unmatched_predictions=unmatched,
                     reference_dir=ref_dir, prediction_dir=pred_dir, reference_format=reference_format)


def summarize(records: list[dict], label_set: "LabelSet | str", protocol: str,
              tolerance_mm: float = DEFAULT_TOLERANCE_MM, *, unmatched_predictions=(), reference_dir=None,
              prediction_dir=None, reference_format: str = "auto") -> dict:
    """Build the summary dict (see the module docstring) from :func:`evaluate_pair` records."""
    from medseg import __version__

    label_set = get_label_set(label_set)
    records = sorted(records, key=lambda r: r["case_id"])
    summary = {
        "format": "medseg-evaluation",
        "format_version": 1,
        "medseg_version": __version__,
        "protocol": protocol,
        "label_set": label_set.to_dict(),
        "organs": list(label_set.organs),
        "display_names": dict(zip(label_set.organs, label_set.display_names)),
        "tolerance_mm": float(tolerance_mm),
        "spacing_source": SPACING_SOURCE,
        "worst_case_distance": WORST_CASE_DISTANCE,
        "reference_dir": str(reference_dir) if reference_dir is not None else None,
        "prediction_dir": str(prediction_dir) if prediction_dir is not None else None,
        "reference_format": reference_format,
        "counts": {},
        "missing_predictions": [r["case_id"] for r in records if r["status"] == MISSING_PREDICTION],
        "unmatched_predictions": list(unmatched_predictions),
        "errors": [{"case_id": r["case_id"], "message": r["error"]} for r in records if r["status"] == "error"],
        "case_info": {r["case_id"]: {**r["info"], "status": r["status"]} for r in records},
    }
    metrics_of = {"standard": STANDARD_METRICS, "transunet": TRANSUNET_METRICS}
    for name in protocols_of(protocol):
        cases = {r["case_id"]: r["results"][name] for r in records if r["results"] is not None}
        summary[name] = {
            "metrics": list(metrics_of[name]),
            "cases": cases,
            **aggregate(cases, label_set.organs, metrics_of[name]),
        }
    status_counts = dict.fromkeys(STATUSES, 0)
    first = protocols_of(protocol)[0]
    for case in summary[first]["cases"].values():
        for record in case.values():
            status_counts[record["status"]] += 1
    summary["counts"] = {
        "cases": len(records),
        "evaluated": sum(r["status"] == "evaluated" for r in records),
        "missing_predictions": len(summary["missing_predictions"]),
        "errors": len(summary["errors"]),
        "organ_status": status_counts,
    }
    return summary


def aggregate(cases: dict, organs, metrics) -> dict:
    """Per-organ statistics and the foreground mean of one protocol's ``{case: {organ: record}}``.

    Returns:
        ``{"organs": {organ: {metric: {"mean", "std", "median", "n"}, "status_counts": {...}}},
        "foreground_mean": {metric: mean of organ means (None if no organ has a value)}}``.
    """
    per_organ = {}
    for organ in organs:
        records = [case[organ] for case in cases.values() if organ in case]
        entry = {}
        for metric in metrics:
            values = [r[metric] for r in records if r["status"] != BOTH_EMPTY and r.get(metric) is not None]
            entry[metric] = describe(values)
        counts = dict.fromkeys(STATUSES, 0)
        for record in records:
            counts[record["status"]] += 1
        entry["status_counts"] = counts
        per_organ[organ] = entry
    foreground = {}
    for metric in metrics:
        means = [per_organ[o][metric]["mean"] for o in organs if per_organ[o][metric]["mean"] is not None]
        foreground[metric] = float(np.mean(means)) if means else None
    return {"organs": per_organ, "foreground_mean": foreground}


def describe(values) -> dict:
    """``{"mean", "std" (ddof=0), "median", "n"}`` of a list of numbers; None statistics for an empty list."""
    if not values:
        return {"mean": None, "std": None, "median": None, "n": 0}
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std()), "median": float(np.median(array)),
            "n": int(array.size)}


def _reference_classes(raw: np.ndarray, pair: CasePair, label_set: LabelSet) -> tuple[np.ndarray, str]:
    """The reference in the label set's classes and the format used (``raw`` or ``classes``)."""
    source = str(pair.reference)
    fmt = pair.reference_format
    if fmt == "auto":
        highest = label_set.num_classes - 1
        fmt = "raw" if raw.size and float(np.max(raw)) > highest else "classes"
    if fmt == "raw":
        return remap_labels(raw, label_set, source), "raw"
    try:
        return to_class_map(raw, label_set, source), "classes"
    except InputError as exc:
        raise InputError(f"{exc} (raw BTCV labels? use reference format raw)") from None


def _check_geometry(pred, ref, pair: CasePair) -> None:
    if pred.shape != ref.shape:
        raise InputError(f"{pair.prediction}: shape {pred.shape} differs from the reference {ref.shape} "
                         f"({pair.reference.name})")
    difference = float(np.max(np.abs(pred.affine - ref.affine)))
    if difference > AFFINE_TOLERANCE_MM:
        raise InputError(f"{pair.prediction}: affine differs from the reference {pair.reference.name} "
                         f"(largest difference {difference:.4g} mm > {AFFINE_TOLERANCE_MM} mm)")


def _first_ids(index: dict, limit: int = 3) -> str:
    ids = sorted(index)
    return ", ".join(ids[:limit]) + (", ..." if len(ids) > limit else "")
