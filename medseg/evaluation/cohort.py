"""Evaluate a folder of predictions against a folder of references, in parallel over cases, and aggregate.

Pairing is by case id (:func:`medseg.data.cohort.case_id_from_path`: ``label0001.nii.gz``, ``img0001.nii.gz`` and
``case0001.nii.gz`` all belong to ``case0001``).

* REF_DIR may be a cohort folder (raw BTCV ``img/`` + ``label/``, nnU-Net ``imagesTr/`` + ``labelsTr/``, or
  ``images/`` + ``labels/``; its label files are the references), a folder holding only such a label folder, or a
  flat folder of label files (when a flat folder also holds images, only the files named ``*_label``/``*_seg``/...
  are used).
* PRED_DIR is a flat folder of NIfTI label maps, one per case, in the classes of the label set.

Reference values are decided once for the whole cohort, never per file: with ``reference_format="raw"`` references
hold raw BTCV values (0..13) and are mapped onto the label set (:func:`medseg.labels.remap_labels`); with
``"classes"`` they already hold the label set's classes; ``"auto"`` means raw for a ``label/`` or ``labelsTr/``
cohort folder (the BTCV and nnU-Net layouts), otherwise the values of all reference files decide: raw when every file holds a value above the label set's highest class, classes when none does, and a
folder where some files do and some do not is an error (pass the format explicitly). The format used is recorded.
Raw references in another numbering (AMOS, WORD, TotalSegmentator, ...) are read through a label map: ``label_map``,
else the ``dataset.json`` of REF_DIR (or of the dataset root above a ``labelsTr/`` or ``label/`` folder); the format
is then raw (:func:`reference_label_set`).

Per case: the spacing is the reference NIfTI's (from its affine, mm, array axis order). The prediction must lie on
the reference's voxel grid: the same shape and affine within :data:`medseg.io.GRID_TOLERANCE_MM` (the largest
distance between the corner voxels, in mm, the same rule ``medseg prepare`` applies to image and label). A
prediction stored in another voxel order on the same physical grid (axes permuted or flipped, as other tools
write) is reoriented onto the reference grid first. A prediction may only hold the label set's classes.

A case whose prediction is missing, or exists but cannot be scored (unreadable, empty, 2D, another grid, values
outside the label set, non-integer values), is scored as an empty prediction: status ``missing_prediction`` or
``unscorable_prediction`` for every organ the reference holds, with Dice 0, HD95 = ASSD = image diagonal, NSD 0 in
the standard protocol and the paper's (0, 0) in the TransUNet protocol. Both stay in the means, exactly alike. A
case whose reference cannot be read cannot be scored at all. Every failed case is listed in ``failures`` with its
reason (``missing_prediction``, ``unscorable_prediction`` or ``reference_error``) and counted in
``counts["failed"]``; unscorable predictions and reference errors are also listed in ``errors`` with the message.
When predictions are empty for most organ-cases the reference holds, ``warnings`` says so (a collapsed model
otherwise reads as HD95 0 in the TransUNet protocol).

The summary (a plain dict, written as ``summary.json`` by :func:`medseg.evaluation.report.write_reports`)::

    {
      "format": "medseg-evaluation", "format_version": 1, "medseg_version": "0.1.0",
      "protocol": "standard" | "transunet" | "both",
      "label_set": {...LabelSet.to_dict()...}, "organs": [organ keys in class order],
      # label_set["label_map"]: the label map the raw references follow (source, sha256, value -> name, organ,
      # class; the values mapped to background and why), absent for BTCV numbering
      "display_names": {organ: "Aorta", ...},
      "tolerance_mm": 2.0 (NSD tolerance of organs without their own), "spacing_source": "reference NIfTI affine",
      "tolerance_mm_by_organ": {organ: mm}, "tolerance_overrides": {organ: mm given per organ},
      "label_set_source": "prediction headers" | "--labels" | "default (the predictions name none)",
      "organs_kept": [organs the predictions' records kept with --organs] or None (all organs scored),
      "prediction_origin": [{"model": {checkpoint_sha256, tta, resize, amp, model, img_size} or None, "files": [...]}],
      "worst_case_distance": "image diagonal in mm ...",
      "reference_dir": "...", "prediction_dir": "...", "reference_format": "auto",
      "counts": {"cases": n reference cases, "evaluated": n cases compared with a prediction,
                 "failed": n cases scored as failures or not scorable (missing + unscorable + reference errors),
                 "missing_predictions": n, "unscorable_predictions": n, "reference_errors": n,
                 "errors": n (unscorable predictions + reference errors),
                 "organ_status": {"scored": n, "both_empty": n, "pred_empty": n, "ref_empty": n,
                                  "missing_prediction": n, "unscorable_prediction": n},
                 # over case x organ, standard protocol if run
                 "empty_predictions": {"empty": n organ-cases the reference holds with an empty prediction,
                                       "of": n organ-cases the reference holds}},
      "missing_predictions": [case ids], "unmatched_predictions": [file names without a reference],
      "failures": [{"case_id": ..., "reason": "missing_prediction|unscorable_prediction|reference_error",
                    "message": ...}],
      "errors": [{"case_id": ..., "message": ...}],
      "warnings": ["predictions empty for 46 of 48 organ-cases ...", ...],
      "case_info": {case_id: {"reference", "prediction",
                              "status": "evaluated|missing_prediction|unscorable_prediction|error",
                              "shape", "spacing_mm", "reference_format", "reoriented"}},
      "flags": {case_id: [{"organ", "flag", "detail"}]},        # medseg.quality flags of each evaluated prediction
      "flag_comparison": {"organ_results": {"flagged": {"n", "mean_dice"}, "unflagged": {...}},
                          "cases": {...}},                        # medseg.quality.flag_comparison
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
as in the TransUNet paper's table. Cases whose reference cannot be read have no organs to score; they are
counted and listed as failures.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import nibabel.orientations as nio
import numpy as np

from medseg import __version__
from medseg.data.cohort import (IMAGE_DIR_NAMES, LABEL_DIR_NAMES, LABEL_SUFFIXES,
                                discover_cohort, index_by_case, nifti_files)
from medseg.errors import ConfigError, InputError, MedsegError
from medseg.io import GRID_TOLERANCE_MM, grid_difference_mm, read_volume, strip_nifti_suffix, voxel_order_onto
from medseg.labels import LabelSet, describe_label_map, find_label_map, get_label_set, remap_labels, with_label_map
from medseg.evaluation.origin import (coarse_tolerance_warning, mixed_models_warning, model_groups,
                                      parse_tolerances, read_origin, resolve_label_set, resolve_organs)
from medseg.quality import flag_comparison, quality_flags
from medseg.schema import parse_mm_by_organ
from medseg.evaluation.metrics import (
    BOTH_EMPTY,
    DEFAULT_TOLERANCE_MM,
    MISSING_PREDICTION,
    PRED_EMPTY,
    STANDARD_METRICS,
    SCORED,
    STATUSES,
    TRANSUNET_METRICS,
    UNSCORABLE_PREDICTION,
    evaluate_case,
    organ_tolerance_map,
    protocols_of,
    to_class_map,
)
from medseg.progress import progress_bar

logger = logging.getLogger(__name__)

#: Largest distance (mm) between where a prediction's and its reference's affines put a corner voxel.
AFFINE_TOLERANCE_MM = GRID_TOLERANCE_MM
#: Share of the organ-cases a reference holds above which empty predictions raise the collapsed-model warning.
COLLAPSE_WARNING_FRACTION = 0.5

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
        reference_format: ``raw`` or ``classes`` (decided once for the cohort by :func:`pair_cases`).
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
            references = {c.case_id: c.label for c in discover_cohort(root, allow_unlabelled=True).cases
                          if c.label is not None}
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


def pair_cases(ref_dir, pred_dir, reference_format: str = "auto",
               label_set: "LabelSet | str" = "synapse8") -> tuple[list[CasePair], list[str]]:
    """Pair every reference case with its prediction, and decide the references' format once for the cohort.

    Returns:
        ``(pairs, unmatched)``: one :class:`CasePair` per reference case (prediction None when missing), sorted by
        case id, all with the same ``reference_format`` (``raw`` or ``classes``), and the names of prediction files
        without a reference.

    Raises:
        InputError: a folder is unusable, or no prediction matches any reference case.
        ConfigError: unknown ``reference_format``, or ``auto`` on a folder mixing raw and class-index files.
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
    fmt = reference_format
    if fmt == "auto":
        fmt = "raw" if raw_layout else cohort_reference_format(references, get_label_set(label_set), ref_dir)
    pairs = [CasePair(cid, references[cid], predictions.get(cid), fmt) for cid in sorted(references)]
    unmatched = sorted(predictions[cid].name for cid in set(predictions) - set(references))
    return pairs, unmatched


def cohort_reference_format(references: dict, label_set: LabelSet, ref_dir="references") -> str:
    """``raw`` or ``classes`` for a folder of reference files without layout metadata, from all their values.

    Raw when every readable file holds a value above the label set's highest class, classes when none does.

    Raises:
        ConfigError: some files hold such values and others do not (a mixed folder, or raw files whose highest
            value happens to be a class number): the format must be given explicitly.
    """
    highest = label_set.num_classes - 1
    above, within = [], []
    for case_id in sorted(references):
        try:
            array = read_volume(references[case_id]).array
        except MedsegError:
            continue  # reported as that case's failure when it is scored
        (above if array.size and float(np.max(array)) > highest else within).append(references[case_id].name)
    if above and within:
        raise ConfigError(
            f"{ref_dir}: reference-format auto: {len(above)} file(s) hold values above {highest} (raw BTCV, e.g. "
            f"{above[0]}) and {len(within)} do not (e.g. {within[0]}); pass --reference-format raw or classes"
        )
    return "raw" if above else "classes"


def evaluate_pair(pair: CasePair, label_set: "LabelSet | str", protocol: str = "both",
                  tolerance_mm: "float | dict" = DEFAULT_TOLERANCE_MM) -> dict:
    """Read and score one case; never raises for a bad case (the error goes into the record).

    A missing or unscorable prediction is scored as an empty one (status ``missing_prediction`` /
    ``unscorable_prediction`` for the organs the reference holds); an unreadable reference leaves nothing to score.

    Returns:
        ``{"case_id", "status": "evaluated" | "missing_prediction" | "unscorable_prediction" | "error",
        "results": evaluate_case output or None, "info": {...}, "error": message or None}``.
    """
    label_set = get_label_set(label_set)
    info = {"reference": str(pair.reference), "prediction": str(pair.prediction) if pair.prediction else None}
    try:
        ref_volume = read_volume(pair.reference)
        reference, used_format = _reference_classes(ref_volume.array, pair, label_set)
        info.update(shape=list(reference.shape), spacing_mm=list(ref_volume.spacing), reference_format=used_format)
    except Exception as exc:  # the reference cannot be read: nothing to score
        return {"case_id": pair.case_id, "status": "error", "results": None, "info": info,
                "error": _case_message(exc, pair.reference, pair)}
    error = None
    try:
        if pair.prediction is None:
            prediction, status = None, MISSING_PREDICTION
        else:
            pred_volume = read_volume(pair.prediction)
            array, info["reoriented"] = _on_reference_grid(pred_volume, ref_volume, pair)
            prediction = to_class_map(array, label_set, str(pair.prediction))
            status = "evaluated"
    except Exception as exc:  # exists but cannot be scored: a failure, counted exactly like a missing prediction
        prediction, status, error = None, UNSCORABLE_PREDICTION, _case_message(exc, pair.prediction, pair)
    try:
        if prediction is None:
            empty = np.zeros(reference.shape, dtype=np.uint8)
            results = evaluate_case(empty, reference, ref_volume.spacing, label_set, protocol, tolerance_mm)
            for protocol_results in results.values():
                for record in protocol_results.values():
                    if record["status"] == PRED_EMPTY:
                        record["status"] = status
        else:
            results = evaluate_case(prediction, reference, ref_volume.spacing, label_set, protocol, tolerance_mm)
            info["flags"] = [f.to_dict() for f in quality_flags(prediction, ref_volume.affine, label_set)]
    except Exception as exc:
        return {"case_id": pair.case_id, "status": "error", "results": None, "info": info,
                "error": _case_message(exc, pair.prediction or pair.reference, pair)}
    return {"case_id": pair.case_id, "status": status, "results": results, "info": info, "error": error}


def _case_message(exc: Exception, path, pair: CasePair) -> str:
    if isinstance(exc, MedsegError):
        return str(exc)
    logger.debug("case %s failed", pair.case_id, exc_info=True)
    return f"{path}: unexpected {type(exc).__name__}: {exc}"


def reference_label_set(labels: "str | LabelSet | dict", ref_dir, label_map: "str | Path | None" = None,
                        reference_format: str = "auto") -> tuple[LabelSet, str, "str | None"]:
    """The label set the references are read with, the reference format, and a warning (or None).

    A label map (``label_map``, else ``REF_DIR/dataset.json`` when present) describes raw references: the label
    set then reads their values in its numbering and the format is ``raw``. References in classes follow no label
    map: an explicit one is then a ConfigError, a found ``dataset.json`` is not used (the warning says so).
    """
    label_set = get_label_set(labels)
    found = find_label_map(ref_dir, label_map)
    if found is None:
        return label_set, reference_format, None
    if reference_format == "classes":
        if label_map is not None:
            raise ConfigError(f"--label-map: {label_map}: references in {label_set.name} classes "
                              "(--reference-format classes) follow no label map")
        return label_set, reference_format, (f"{found}: label map not used: the references hold {label_set.name} "
                                             "classes (--reference-format classes)")
    return with_label_map(label_set, found), "raw", None


def evaluate_folders(ref_dir, pred_dir, *, labels: "str | LabelSet | None" = None, protocol: str = "both",
                     tolerance_mm: "float | str | dict" = DEFAULT_TOLERANCE_MM,
                     tolerance_by_organ: "dict | str | None" = None, workers: "int | None" = None,
                     reference_format: str = "auto", progress: bool = True,
                     label_map: "str | Path | None" = None) -> dict:
    """Evaluate every prediction of PRED_DIR against the references of REF_DIR.

    Args:
        ref_dir: references (cohort folder or flat folder of label files; see the module docstring).
        pred_dir: flat folder of predicted label maps (NIfTI), one per case.
        labels: label set of the predictions (and of the references after any remapping); None (default): the
            one the predictions' headers name (synapse8 when they name none). A set other than the headers' is an
            error (:mod:`medseg.evaluation.origin`).
        protocol: ``standard``, ``transunet`` or ``both``.
        tolerance_mm: NSD tolerance in mm: a number, ``"liver=5,spleen=3"`` / ``"3,liver=5"`` (a default plus
            per-organ values), or ``{organ: mm}``.
        tolerance_by_organ: per-organ NSD tolerances in mm (``{organ: mm}`` or ``"liver=5,spleen=3"``) over those of
            ``tolerance_mm`` (the evaluate stage's ``tolerance_by_organ``, ``--tolerance-by-organ``).
        workers: processes evaluating cases in parallel (1 = in this process); default :func:`default_workers`.
        reference_format: ``auto``, ``raw`` or ``classes``.
        progress: show progress over cases on stderr (a bar on a terminal, log lines elsewhere; medseg.progress).
        label_map: the references' label numbering (an nnU-Net ``dataset.json`` or a JSON of organ name -> value);
            default ``REF_DIR/dataset.json`` when present, else BTCV numbering (see :func:`reference_label_set`).

    Returns:
        The summary dict described in the module docstring.

    Raises:
        InputError: a folder is missing or unusable, no prediction matches a reference, or the predictions name
            another label set than ``labels``, more than one label set, or different kept organs.
        ConfigError: bad protocol, tolerance, workers or reference format.
    """
    protocols_of(protocol)
    default_mm, overrides = parse_tolerances(tolerance_mm, DEFAULT_TOLERANCE_MM)
    if tolerance_by_organ:
        overrides.update(parse_mm_by_organ(tolerance_by_organ, "tolerance_by_organ"))
    workers = default_workers() if workers is None else workers
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers: must be a whole number >= 1, got {workers!r}")
    origins = _matched_origins(ref_dir, pred_dir)
    requested = None if labels is None else get_label_set(labels)
    header_set = resolve_label_set(origins, None if requested is None else requested.name)
    # the headers' set (a LabelSet object given with the same name keeps its own fields), then the references' map
    chosen = header_set if requested is None else requested
    label_set, reference_format, map_warning = reference_label_set(chosen, ref_dir, label_map, reference_format)
    if label_set.label_map is not None:
        logger.info("%s", describe_label_map(label_set))
    tolerances = organ_tolerance_map({**dict.fromkeys(label_set.organs, default_mm), **overrides}, label_set)
    organs = resolve_organs(origins, label_set)
    not_kept = [organ for organ in overrides if organs is not None and organ not in organs]
    if not_kept:
        raise ConfigError(f"NSD tolerance for {', '.join(not_kept)}: not scored (the predictions kept only "
                          f"{', '.join(organs)}); drop the tolerance or predict that organ")
    pairs, unmatched = pair_cases(ref_dir, pred_dir, reference_format, label_set)
    if reference_format == "auto":
        logger.info("%s: references read as %s (decided for the whole cohort; pass --reference-format to choose)",
                    ref_dir, ("raw values of the label map" if label_set.label_map else "raw BTCV values")
                    + " mapped to " + label_set.name if pairs[0].reference_format == "raw"
                    else label_set.name + " classes")
    for name in unmatched:
        logger.warning("%s: prediction has no reference case; ignored", Path(pred_dir) / name)
    for pair in pairs:
        if pair.prediction is None:
            logger.warning("%s: no prediction; scored as a failure (missing_prediction)", pair.case_id)

    records = []
    bar = progress_bar(total=len(pairs), desc="evaluate", unit="case", disable=not progress)
    workers = min(workers, len(pairs))
    if workers == 1:
        for pair in pairs:
            records.append(evaluate_pair(pair, label_set, protocol, tolerances))
            bar.update(1)
    else:
        # "spawn" starts clean interpreters: safe when the caller has threads (torch, a notebook kernel).
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool, _cancel_on_interrupt(pool):
            futures = {pool.submit(evaluate_pair, pair, label_set, protocol, tolerances): pair for pair in pairs}
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
    summary = summarize(records, label_set, protocol, default_mm, unmatched_predictions=unmatched,
                        reference_dir=ref_dir, prediction_dir=pred_dir, reference_format=reference_format,
                        organs=organs)
    if map_warning:
        summary["warnings"].append(map_warning)
    add_origin(summary, origins, labels_given=requested is not None, tolerances=tolerances, overrides=overrides)
    return summary


def _matched_origins(ref_dir, pred_dir) -> list:
    """:func:`medseg.evaluation.origin.read_origin` of every prediction that has a reference case."""
    references, _ = find_references(ref_dir)
    predictions = find_predictions(pred_dir)
    return [read_origin(predictions[case_id]) for case_id in sorted(set(references) & set(predictions))]


def add_origin(summary: dict, origins: list, *, labels_given: bool, tolerances: dict, overrides: dict) -> None:
    """Record in ``summary`` what made the predictions and which tolerances scored them, with the warnings.

    Adds ``label_set_source`` (``prediction headers`` or ``--labels``), ``organs_kept`` (None: all),
    ``prediction_origin`` (the files grouped by the model and settings that made them),
    ``tolerance_mm_by_organ`` (mm, scored organs) and ``tolerance_overrides``; warns when the folder mixes models
    or settings, when only kept organs were scored, and when a tolerance is below the grids' voxel spacing.
    """
    groups = model_groups(origins)
    summary["label_set_source"] = ("prediction headers" if any(o.label_set for o in origins)
                                   else "--labels" if labels_given else "default (the predictions name none)")
    summary["organs_kept"] = summary["organs"] if origins and origins[0].organs is not None else None
    summary["prediction_origin"] = groups
    summary["tolerance_mm_by_organ"] = {organ: tolerances[organ] for organ in summary["organs"]}
    summary["tolerance_overrides"] = dict(overrides)
    notes = []
    if summary["organs_kept"] is not None:
        notes.append(f"the predictions kept only {', '.join(summary['organs_kept'])} (--organs in their record): "
                     "only these organs are scored")
    mixed = mixed_models_warning(groups)
    if mixed:
        notes.append(mixed)
    spacings = [info.get("spacing_mm") for info in summary["case_info"].values() if info.get("spacing_mm")]
    coarse = coarse_tolerance_warning(summary["tolerance_mm_by_organ"], spacings) if "standard" in summary else None
    if coarse:
        notes.append(coarse)
    summary["warnings"][:0] = notes


@contextlib.contextmanager
def _cancel_on_interrupt(pool):
    """On Ctrl-C / SIGTERM, drop the queued cases instead of waiting for all of them."""
    try:
        yield
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise


def summarize(records: list[dict], label_set: "LabelSet | str", protocol: str,
              tolerance_mm: float = DEFAULT_TOLERANCE_MM, *, unmatched_predictions=(), reference_dir=None,
              prediction_dir=None, reference_format: str = "auto", organs=None) -> dict:
    """Build the summary dict (see the module docstring) from :func:`evaluate_pair` records.

    ``organs``: the organ keys to score (None: every organ of the label set); the others are dropped from the
    per-case results before aggregating.
    """
    label_set = get_label_set(label_set)
    organs = list(label_set.organs) if organs is None else [o for o in label_set.organs if o in organs]
    records = sorted(records, key=lambda r: r["case_id"])
    summary = {
        "format": "medseg-evaluation",
        "format_version": 1,
        "medseg_version": __version__,
        "protocol": protocol,
        "label_set": label_set.to_dict(),
        "organs": organs,
        "display_names": dict(zip(label_set.organs, label_set.display_names)),
        "tolerance_mm": float(tolerance_mm),
        "spacing_source": SPACING_SOURCE,
        "worst_case_distance": WORST_CASE_DISTANCE,
        "reference_dir": str(reference_dir) if reference_dir is not None else None,
        "prediction_dir": str(prediction_dir) if prediction_dir is not None else None,
        "reference_format": reference_format,
        "reference_format_used": next((r["info"].get("reference_format") for r in records
                                       if r["info"].get("reference_format")), None),
        "counts": {},
        "missing_predictions": [r["case_id"] for r in records if r["status"] == MISSING_PREDICTION],
        "unmatched_predictions": list(unmatched_predictions),
        "failures": [{"case_id": r["case_id"], "reason": _failure_reason(r),
                      "message": r["error"] or "no prediction file"} for r in records if r["status"] != "evaluated"],
        "errors": [{"case_id": r["case_id"], "message": r["error"]} for r in records if r["error"]],
        "warnings": [],
        "case_info": {r["case_id"]: {**{k: v for k, v in r["info"].items() if k != "flags"}, "status": r["status"]}
                      for r in records},
        # medseg.quality flags of each evaluated prediction, and whether flagged results score worse
        "flags": {r["case_id"]: r["info"]["flags"] for r in records if "flags" in r["info"]},
    }
    metrics_of = {"standard": STANDARD_METRICS, "transunet": TRANSUNET_METRICS}
    for name in protocols_of(protocol):
        cases = {r["case_id"]: {organ: r["results"][name][organ] for organ in organs}
                 for r in records if r["results"] is not None}
        summary[name] = {
            "metrics": list(metrics_of[name]),
            "cases": cases,
            **aggregate(cases, organs, metrics_of[name]),
        }
    first = protocols_of(protocol)[0]
    summary["flag_comparison"] = flag_comparison(summary[first]["cases"], summary["flags"])
    status_counts = dict.fromkeys(STATUSES, 0)
    for case in summary[first]["cases"].values():
        for record in case.values():
            status_counts[record["status"]] += 1
    held = sum(status_counts[s] for s in (SCORED, PRED_EMPTY, MISSING_PREDICTION, UNSCORABLE_PREDICTION))
    empty = sum(status_counts[s] for s in (PRED_EMPTY, MISSING_PREDICTION, UNSCORABLE_PREDICTION))
    summary["counts"] = {
        "cases": len(records),
        "evaluated": sum(r["status"] == "evaluated" for r in records),
        "failed": len(summary["failures"]),
        "missing_predictions": len(summary["missing_predictions"]),
        "unscorable_predictions": sum(r["status"] == UNSCORABLE_PREDICTION for r in records),
        "reference_errors": sum(r["status"] == "error" for r in records),
        "errors": len(summary["errors"]),
        "organ_status": status_counts,
        "empty_predictions": {"empty": empty, "of": held},
    }
    if held and empty > COLLAPSE_WARNING_FRACTION * held:
        summary["warnings"].append(
            f"predictions empty for {empty} of {held} organ-cases the references hold: the model may have "
            "collapsed (the TransUNet protocol scores an empty prediction as HD95 0)")
    if summary["failures"]:
        summary["warnings"].append(failure_line(summary))
    return summary


def failure_line(summary: dict) -> str:
    """One line saying how many cases failed and why, e.g. ``2 of 4 cases failed (1 missing prediction(s), ...)``."""
    counts = summary["counts"]
    parts = [f"{n} {what}" for n, what in ((counts["missing_predictions"], "missing prediction(s)"),
                                           (counts["unscorable_predictions"], "unscorable prediction(s)"),
                                           (counts["reference_errors"], "unreadable reference(s)")) if n]
    ids = ", ".join(f["case_id"] for f in summary["failures"][:5]) + (", ..." if len(summary["failures"]) > 5 else "")
    return (f"{counts['failed']} of {counts['cases']} cases failed ({', '.join(parts)}: {ids}); failed predictions "
            "are scored as empty, so they stay in the means")


def _failure_reason(record: dict) -> str:
    return "reference_error" if record["status"] == "error" else record["status"]


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


def _on_reference_grid(pred, ref, pair: CasePair) -> tuple[np.ndarray, bool]:
    """The prediction's array on the reference's voxel grid, and whether it had to be reoriented.

    A prediction on the same physical grid in another voxel order (permuted or flipped axes) is permuted/flipped
    onto the reference grid (exact, no resampling).

    Raises:
        InputError: the prediction lies on another grid (shape, spacing, origin or direction differ by more than
            :data:`AFFINE_TOLERANCE_MM` at a corner voxel).
    """
    if pred.shape == ref.shape and grid_difference_mm(pred.affine, ref.affine, ref.shape) <= AFFINE_TOLERANCE_MM:
        return pred.array, False
    transform, shape, affine = voxel_order_onto(pred.shape, pred.affine, ref.affine)
    if shape == ref.shape and grid_difference_mm(affine, ref.affine, ref.shape) <= AFFINE_TOLERANCE_MM:
        return np.ascontiguousarray(nio.apply_orientation(pred.array, transform)), True
    if shape != ref.shape:
        raise InputError(f"{pair.prediction}: shape {pred.shape} differs from the reference {ref.shape} "
                         f"({pair.reference.name})")
    difference = grid_difference_mm(affine, ref.affine, ref.shape)
    raise InputError(f"{pair.prediction}: affine differs from the reference {pair.reference.name} "
                     f"(a corner voxel is {difference:.4g} mm away > {AFFINE_TOLERANCE_MM:g} mm): another voxel grid")


def _first_ids(index: dict, limit: int = 3) -> str:
    ids = sorted(index)
    return ", ".join(ids[:limit]) + (", ..." if len(ids) > limit else "")
