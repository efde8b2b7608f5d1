"""``predict_cases(request) -> PredictSummary``: predict a set of cases, reuse what is up to date, say what happened.

The one prediction path of ``medseg predict``, the pipeline's predict stage and notebooks::

    from medseg import PredictRequest, predict_cases
    summary = predict_cases(PredictRequest(input="images/", output="predictions/", checkpoint="run/best.pt"))

Steps: open the inputs (:mod:`medseg.prediction.cases`), pair each with its output, take this part's share
(``num_parts`` / ``part_id``), decide per case (:func:`medseg.prediction.record.plan_case`: reuse, predict or refuse
the run before anything is written), load the model only when a case needs it, predict each case (a failed case is
recorded and skipped, unless it is the only output), then rewrite the folder's shared files from the records of all
its cases (``labels.json``, viewer tables, ``statistics.csv``) and write ``predict_summary.json`` (folder outputs).

Per case, in this order: the previous case record is removed, the extras and outputs are written (each atomically),
files of the previous record that this one does not write are removed, and ``NAME_record.json`` is written last.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from medseg import __version__
from medseg.dicom import read_series, write_dicom_seg, write_rtstruct
from medseg.engine.inference import Predictor, load_predictor, predict_volume, read_input, resolve_amp, resolve_device
from medseg.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_SOME_FAILED, ConfigError, InputError, MedsegError, OutputError
from medseg.io import (Volume, file_sha256, atomic_path, check_output_path, is_nifti, read_json, read_provenance,
                       remove_stale_temps, write_json)
from medseg.labels import BTCV13, SYNAPSE8, get_label_set
from medseg.postprocess import finish_case, load_rules_for, rules_path
from medseg.prediction import outputs
from medseg.prediction.cases import (DicomCase, extra_paths, input_text, main_output, open_inputs, output_paths,
                                     plan_outputs, sidecar, source_files)
from medseg.prediction.record import (CasePlan, checkpoint_sha256, expected_record, folder_records, plan_case,
                                      read_case_record, record_path, stem, write_case_record)
from medseg.quality import write_flags_csv
from medseg.schema import OUTPUT_TYPES, PredictRequest

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PredictSummary:
    """What :func:`predict_cases` did.

    Attributes:
        cases: input name -> ``{"status": "predicted" | "exists" | "failed", "output": path, ...}`` (``error`` for a
            failed case, ``reason`` why a case was predicted again, ``seconds``, ``shape``, written files).
        output: the output file or folder.
        checkpoint / checkpoint_sha256: the checkpoint of this run and its SHA-256.
        label_set / model_name: of the model (None when every case was reused and the model was not loaded:
            then the label set is the records').
        organs: the organs kept (None: all); output_types: the output types written.
        folder_checkpoints: SHA-256 -> ``{"checkpoint", "cases"}`` over every case record in the output folder
            (more than one entry: the folder holds predictions of several checkpoints).
        total_inputs: cases of all parts; seconds: wall time of the run; summary_path: ``predict_summary.json``
            (None for a single output file); request: what was asked.
    """

    cases: dict
    output: str
    checkpoint: str
    checkpoint_sha256: "str | None" = None
    label_set: "str | None" = None
    model_name: "str | None" = None
    organs: "list | None" = None
    output_types: list = dataclasses.field(default_factory=lambda: ["nifti"])
    folder_checkpoints: dict = dataclasses.field(default_factory=dict)
    total_inputs: int = 0
    seconds: float = 0.0
    summary_path: "str | None" = None
    request: "PredictRequest | None" = None
    postprocess: "dict | None" = None

    def names(self, status: str) -> list[str]:
        """Input names of the cases with ``status`` (``predicted``, ``exists`` or ``failed``)."""
        return [name for name, case in self.cases.items() if case["status"] == status]

    @property
    def predicted(self) -> list[str]:
        return self.names("predicted")

    @property
    def reused(self) -> list[str]:
        return self.names("exists")

    @property
    def failed(self) -> dict[str, str]:
        """Input name -> the one-line error of each failed case."""
        return {name: case["error"] for name, case in self.cases.items() if case["status"] == "failed"}

    @property
    def counts(self) -> dict[str, int]:
        return {status: len(self.names(status)) for status in ("predicted", "exists", "failed")}

    @property
    def exit_code(self) -> int:
        """0 every case predicted or reused (or nothing to do in this part), 1 some failed, 2 none done."""
        counts = self.counts
        if not self.cases:
            return EXIT_OK
        if not (counts["predicted"] or counts["exists"]):
            return EXIT_BAD_INPUT
        return EXIT_SOME_FAILED if counts["failed"] else EXIT_OK

    @property
    def flagged_cases(self) -> list[str]:
        """Input names of the cases predicted in this run with quality flags (:mod:`medseg.quality`)."""
        return [name for name, case in self.cases.items() if case.get("flags")]

    @property
    def mixed_checkpoints(self) -> bool:
        """True when the output folder holds predictions of more than one checkpoint."""
        return len(self.folder_checkpoints) > 1


def predict_cases(request: PredictRequest) -> PredictSummary:
    """Predict every case of ``request.input`` (this part of it) into ``request.output``; see the module docstring.

    Raises:
        MedsegError: nothing could run (bad input, checkpoint or output; outputs of another model or settings in
            the way without ``overwrite``; a folder holding another label set's predictions; the only case failed).
    """
    with contextlib.ExitStack() as stack:
        return _predict_cases(request, stack)


def _predict_cases(request: PredictRequest, stack: contextlib.ExitStack) -> PredictSummary:
    """The run (see :func:`predict_cases`); ``stack`` removes a zip input's extracted series when it ends."""
    started = time.perf_counter()
    source, output = Path(request.input), Path(request.output)
    inputs = open_inputs(source, stack)
    dicom_input = bool(inputs) and isinstance(inputs[0], DicomCase)
    single_output = check_outputs(request, inputs, dicom_input)
    all_pairs = plan_outputs(inputs, output, single_output)
    pairs = all_pairs[request.part_id::request.num_parts]
    summary = PredictSummary(cases={}, output=str(output), checkpoint=str(request.checkpoint),
                             organs=request.organs, output_types=list(request.output_types),
                             total_inputs=len(all_pairs), request=request)
    if not pairs:
        return summary
    folder = output.parent if single_output else output
    remove_stale_temps(folder)
    settings = run_settings(request, checkpoint_sha256(request.checkpoint))
    summary.checkpoint_sha256 = settings["checkpoint_sha256"]
    rules, settings["postprocess"] = postprocess_rules(request, settings["checkpoint_sha256"])
    if rules is not None:
        summary.postprocess = {"rules": str(rules_path(request.checkpoint)), "rules_sha256": settings["postprocess"],
                               "organs": rules.describe(), "chosen_on": rules.validation.get("source")}
    expected = read_inputs(settings, pairs, summary, single_output)
    pairs_read = [(src, target) for src, target in pairs if src.name in expected]
    plans = plan_all(request, pairs_read, expected)
    todo = [(src, target) for src, target in pairs_read if plans[src.name].action == "predict"]
    for src, target in pairs_read:
        if plans[src.name].action == "reuse":
            summary.cases[src.name] = {"status": "exists", "output": str(target)}
    predictor = predict_todo(request, todo, expected, plans, folder, single_output, summary, rules) if todo else None
    summary.cases = {src.name: summary.cases[src.name] for src, _ in pairs}  # input order
    records = refresh_folder_files(folder, request, predictor)
    summary.folder_checkpoints = checkpoints_of(records)
    if summary.label_set is None and records:
        summary.label_set = next(iter(records.values()))["provenance"].get("label_set")
    summary.seconds = round(time.perf_counter() - started, 3)
    if not single_output:
        summary.summary_path = str(write_summary(summary, request, pairs, settings, dicom_input))
    return summary


def read_inputs(settings: dict, pairs: list, summary: PredictSummary, single_output: bool) -> dict:
    """Each readable input's expected record (:func:`medseg.prediction.record.expected_record`: its SHA-256 with
    the run's settings); an input that cannot be read (a broken symbolic link, no permission) becomes a failed case
    in ``summary`` (an error for a single output)."""
    expected = {}
    for src, target in pairs:
        try:
            expected[src.name] = expected_record(settings, source_files(src))
        except InputError as exc:
            if single_output:
                raise
            summary.cases[src.name] = {"status": "failed", "error": str(exc), "output": str(target)}
    return expected


def postprocess_rules(request: PredictRequest, checkpoint_hash: str) -> tuple:
    """``(rules, the rules file's SHA-256)`` of the checkpoint (:func:`medseg.postprocess.load_rules_for`), or
    ``(None, None)`` when it has none or ``postprocess`` is off. Rules chosen for another checkpoint are an
    InputError, never applied."""
    if not request.postprocess:
        return None, None
    rules = load_rules_for(request.checkpoint, checkpoint_hash)
    if rules is None:
        return None, None
    log.info("post-processing rules %s: %s", rules_path(request.checkpoint),
             ", ".join(f"{organ} {rule}" for organ, rule in rules.describe().items()) or "none chosen")
    return rules, file_sha256(rules_path(request.checkpoint))


def predict_todo(request: PredictRequest, todo: list, expected: dict, plans: dict, folder: Path, single_output: bool,
                 summary: PredictSummary, rules=None) -> Predictor:
    """Load the model, check the organs and the folder's label set, predict each (source, target) pair of ``todo``
    into ``summary.cases``; returns the predictor."""
    predictor = load_predictor(request.checkpoint, request.device, model_name=request.model, labels=request.labels,
                               img_size=request.img_size, amp=request.amp)
    log.info("model %s (%s, %d classes, input %d px) on %s, amp %s; %d case(s) to predict", predictor.model_name,
             predictor.label_set.name, predictor.num_classes, predictor.img_size, predictor.device, predictor.amp,
             len(todo))
    if rules is not None and rules.label_set != predictor.label_set.name:
        raise InputError(f"{rules_path(request.checkpoint)}: post-processing rules of label set {rules.label_set}, "
                         f"but the checkpoint predicts {predictor.label_set.name}: a rule would act on another "
                         "organ's class; choose the rules again or use --no-postprocess")
    organs = outputs.check_organs(request.organs, predictor.label_set)
    check_folder_label_set(folder, predictor.label_set.name, {stem(target) for _, target in todo})
    summary.label_set, summary.model_name = predictor.label_set.name, predictor.model_name
    for number, (src, target) in enumerate(todo, start=1):
        summary.cases[src.name] = predict_one(src, target, predictor, request, organs, expected[src.name],
                                              plans[src.name], single_output, rules)
        log.info("[%d/%d] %s -> %s: %s", number, len(todo), src.name, target, summary.cases[src.name]["status"])
    return predictor


def check_outputs(request: PredictRequest, inputs: list, dicom_input: bool) -> bool:
    """Check the output against the inputs and the output types; returns whether it is a single output file."""
    output = Path(request.output)
    dicom_outputs = [t for t in request.output_types if t != "nifti"]
    if dicom_outputs and not dicom_input:
        raise ConfigError(f"--output-type {dicom_outputs[0]}: needs a DICOM series input; {request.input} holds "
                          "NIfTI or h5 volumes")
    if dicom_outputs and is_nifti(output):
        raise ConfigError(f"{output}: --output-type {dicom_outputs[0]} needs an output folder")
    single = Path(request.input).is_file() and not dicom_input
    single_output = single or (dicom_input and len(inputs) == 1 and is_nifti(output))
    check_output_path(output, "output file" if single_output else "output folder", folder=not single_output)
    return single_output


def run_settings(request: PredictRequest, checkpoint_hash: str) -> dict:
    """The settings of this run that change the predicted labels (compared with each existing case's record)."""
    return {"checkpoint_sha256": checkpoint_hash, "tta": bool(request.tta), "resize": request.resize,
            "amp": resolve_amp(request.amp, resolve_device(request.device)), "model": request.model,
            "labels": request.labels, "img_size": request.img_size, "organs": request.organs}


def requested_kinds(request: PredictRequest) -> list[str]:
    """The kinds of output each case of ``request`` gets (output types, then the extras asked for)."""
    extras = {"preview": request.preview, "statistics": request.statistics,
              "probabilities": request.save_probabilities, "masks": request.split_masks}
    return list(request.output_types) + [kind for kind, wanted in extras.items() if wanted]


def plan_all(request: PredictRequest, pairs: list, expected: dict) -> dict[str, CasePlan]:
    """Each case's :class:`CasePlan`; outputs made otherwise (a conflict) stop the run before anything is written.

    Raises:
        OutputError: naming the first conflicting file, what differs, how many more, and ``--overwrite``.
    """
    kinds = requested_kinds(request)
    plans = {src.name: plan_case(target, main_output(target, request.output_types), kinds, expected[src.name],
                                 request.overwrite) for src, target in pairs}
    conflicts = [plan for plan in plans.values() if plan.action == "conflict"]
    if conflicts:
        more = f" (and {len(conflicts) - 1} more output(s) there)" if len(conflicts) > 1 else ""
        raise OutputError(f"{conflicts[0].marker}: exists and {conflicts[0].reason}{more}; pass --overwrite to "
                          "replace it, or choose another output folder")
    for name, plan in plans.items():
        if plan.action == "predict" and plan.reason not in ("not predicted yet", "--overwrite"):
            log.warning("%s: predicted again: %s", name, plan.reason)
    return plans


def check_folder_label_set(folder: Path, label_set: str, replacing: set) -> None:
    """Refuse to predict ``label_set`` into a folder whose other predictions (not replaced by this run) hold another
    label set's values: ``labels.json`` can describe only one.

    Raises:
        OutputError: naming ``labels.json``, the other label set and up to three of its files.
    """
    others = []
    records = folder_records(folder)
    for name, record in records.items():
        held = record.get("provenance", {}).get("label_set")
        if name not in replacing and held not in (None, label_set):
            others.append((name, held))
    for path in sorted(folder.glob("*.nii.gz")) if folder.is_dir() else []:
        name = stem(path)
        if name in replacing or name in records:
            continue
        held = (read_provenance(path) or {}).get("label_set")
        if held not in (None, label_set):
            others.append((name, held))
    if others:
        names = ", ".join(f"{name}.nii.gz" for name, _ in others[:3]) + (" ..." if len(others) > 3 else "")
        raise OutputError(f"{folder / 'labels.json'}: the folder holds {others[0][1]} predictions ({names}) and this "
                          f"model predicts {label_set}; predict into another folder or remove those files first")


def predict_one(source, target: Path, predictor: Predictor, request: PredictRequest, organs, expected: dict,
                plan: CasePlan, single_output: bool, rules=None) -> dict:
    """Predict one case and write its files; a MedsegError becomes a failed case (re-raised for a single output)."""
    provenance = dict(expected, checkpoint=str(request.checkpoint), input=input_text(source),
                      medseg_version=__version__, model_name=predictor.model_name,
                      label_set=predictor.label_set.name, preprocessing=predictor.preprocessing.to_dict())
    try:
        record = predict_case(source, target, predictor, request, organs, provenance, rules)
    except MedsegError as exc:
        if single_output:
            raise
        log.warning("skipped %s: %s", source.name, exc)
        return {"status": "failed", "error": str(exc), "output": str(target)}
    if plan.reason != "not predicted yet":
        record["reason"] = plan.reason
    return dict(record, output=str(target))


def read_case(source) -> tuple[Volume, bool]:
    """``(volume, is_h5)`` of an input file or DICOM series (:func:`medseg.engine.inference.read_input`)."""
    if isinstance(source, DicomCase):
        return read_series(source.series), False
    return read_input(source)


def predict_case(source, target: Path, predictor: Predictor, request: PredictRequest, organs, provenance: dict,
                 rules=None) -> dict:
    """Predict one input and write its files (extras first, the outputs next, the main output last, the case
    record after them); returns what was written. The post-processing ``rules`` (when given) and the quality flags
    (:func:`medseg.postprocess.finish_case`) come before the organ selection; ``request.raw_output`` gets the
    labels as the model made them."""
    started = time.perf_counter()
    volume, h5_input = read_case(source)
    prediction = predict_volume(volume, predictor, batch_size=request.batch_size, tta=request.tta,
                                return_probabilities=request.save_probabilities, resize=request.resize,
                                scaled=h5_input, reorient=not h5_input, progress=request.progress)
    probabilities = None
    if request.save_probabilities:
        prediction, probabilities = prediction
    raw = prediction.array
    prediction.array, case = finish_case(raw, prediction.affine, predictor.label_set, rules,
                                         image=None if h5_input else volume.array, flags=not h5_input)
    if request.raw_output and rules is not None:
        raw_labels = Volume(outputs.keep_organs(raw, predictor.label_set, organs), prediction.affine)
        outputs.write_labels_nifti(Path(request.raw_output) / target.name, raw_labels, predictor.label_set,
                                   provenance=dict(provenance, postprocess=None))
    prediction.array = outputs.keep_organs(prediction.array, predictor.label_set, organs)
    if any(kind != "nifti" for kind in request.output_types) and not prediction.array.any():
        raise InputError(f"{source.name}: no organ predicted, and a DICOM-SEG / RTSTRUCT needs at least one; "
                         "nothing written for this case")
    previous = read_case_record(target)
    record_path(target).unlink(missing_ok=True)  # from here on the case is not done until its new record exists
    written, info = {}, {}
    if probabilities is not None:
        written["probabilities"] = write_probabilities(target, probabilities, predictor.label_set)
        del probabilities
    if request.statistics:
        written["statistics"] = write_case_statistics(target, source, volume, prediction, predictor.label_set,
                                                      organs, h5_input)
    if request.preview:
        written["preview"] = outputs.write_preview(sidecar(target, "preview", ".png"), volume, prediction,
                                                   predictor.label_set, title=stem(target), hu=not h5_input)
    files = list(written.values())
    if request.split_masks:
        written["masks"] = target.with_name(stem(target))
        files += outputs.write_split_masks(written["masks"], prediction, predictor.label_set, organs)
    info.update(write_main_outputs(source, target, prediction, predictor.label_set, request.output_types, organs,
                                   provenance, written))
    files += [written[kind] for kind in request.output_types]
    remove_stale_files(target, previous, files)
    write_case_record(target, provenance, written, files, quality=case)
    if isinstance(source, DicomCase):
        info["dicom"] = source.series.summary()
    return {"status": "predicted", "seconds": round(time.perf_counter() - started, 3), "shape": list(prediction.shape),
            **info, **case, "outputs": {kind: str(path) for kind, path in written.items() if kind in OUTPUT_TYPES},
            **({"preview": str(written["preview"])} if "preview" in written else {}),
            **({"masks": str(written["masks"])} if "masks" in written else {})}


def write_probabilities(target: Path, probabilities: np.ndarray, label_set) -> Path:
    """``NAME_probabilities.npz``: ``probabilities`` float16 ``(i, j, k, C)`` and ``organs`` (class names)."""
    path = sidecar(target, "probabilities", ".npz")
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, probabilities=probabilities, organs=np.array(["background", *label_set.organs]))
    return path


def write_case_statistics(target: Path, source, volume: Volume, prediction: Volume, label_set, organs,
                          h5_input: bool) -> Path:
    """``NAME_statistics.json`` (:func:`medseg.prediction.outputs.organ_statistics` of the kept organs)."""
    stats = outputs.organ_statistics(prediction, volume, label_set, hu=not h5_input)
    if organs is not None:
        stats["organs"] = {o: v for o, v in stats["organs"].items() if o in organs}
    stats.update({"input": input_text(source), "prediction": str(target), "label_set": label_set.name,
                  "shape": list(prediction.shape), "geometry": "unknown (h5 input)" if h5_input else "affine"})
    return write_json(sidecar(target, "statistics", ".json"), stats)


def write_main_outputs(source, target: Path, prediction: Volume, label_set, types: list[str], organs, provenance,
                       written: dict) -> dict:
    """Each requested output type, the first one last (adds them to ``written``); returns the DICOM outputs'
    segment / ROI lists."""
    info: dict = {}
    files = output_paths(target, types)
    for kind in reversed(types):
        if kind == "nifti":
            outputs.write_labels_nifti(files[kind], prediction, label_set, provenance=provenance)
        elif kind == "dicom-seg":
            result = write_dicom_seg(prediction, source.series, label_set, files[kind], organs=organs,
                                     software_version=__version__)
            info.update(dicom_seg_segments=result["segments"], dicom_seg_empty=result["empty"])
        elif kind == "rtstruct":
            result = write_rtstruct(prediction, source.series, label_set, files[kind], organs=organs)
            info.update(rtstruct_rois=result["rois"], rtstruct_empty=result["empty"])
        written[kind] = files[kind]
    return info


#: Organ keys of every built-in label set: the names a split-mask folder may hold.
MASK_NAMES = {f"{organ}.nii.gz" for organ in (*SYNAPSE8.organs, *BTCV13.organs)}


def remove_stale_files(target: Path, previous: "dict | None", written: list[Path]) -> list[Path]:
    """Remove the files of a case's previous outputs that its new ``written`` files do not include: those its
    previous record lists, and any output or extra named after the case (older medseg versions wrote no record)."""
    keep = {Path(path).resolve() for path in written}
    candidates = [target.parent / name for name in (previous or {}).get("files", {})]
    candidates += list(output_paths(target, list(OUTPUT_TYPES)).values())
    extras = extra_paths(target)
    masks = extras.pop("masks")
    candidates += list(extras.values())
    if masks.is_dir():
        candidates += [path for path in masks.iterdir() if path.name in MASK_NAMES]
    removed = []
    for path in candidates:
        if path.is_file() and path.resolve() not in keep:
            path.unlink()
            removed.append(path)
    if masks.is_dir() and not any(masks.iterdir()):
        masks.rmdir()
    if removed:
        log.info("%s: removed %d file(s) of its previous outputs: %s", target.name, len(removed),
                 ", ".join(p.name for p in removed))
    return removed


def refresh_folder_files(folder: Path, request: PredictRequest, predictor: "Predictor | None") -> dict:
    """Rewrite a folder's shared files from the records of all its cases: ``labels.json`` (the organs any case
    kept), the viewer tables (when asked for or already there) and ``statistics.csv`` (removed when no case has
    statistics any more); returns the records."""
    records = folder_records(folder)
    if not records:
        return records
    names = {record["provenance"].get("label_set") for record in records.values()}
    if len(names) == 1:
        name = names.pop()
        label_set = predictor.label_set if predictor is not None and predictor.label_set.name == name else \
            _known_label_set(name)
        if label_set is not None:
            organs = kept_organs(records, label_set)
            outputs.write_label_map(folder, label_set, organs)
            if request.viewer_tables or (folder / "labels.ctbl").exists():
                outputs.write_viewer_tables(folder, label_set, organs)
    per_case = {name: read_json(folder / record["outputs"]["statistics"]) for name, record in records.items()
                if "statistics" in record.get("outputs", {}) and (folder / record["outputs"]["statistics"]).is_file()}
    if per_case:
        outputs.write_statistics_csv(folder / "statistics.csv", per_case)
    else:
        (folder / "statistics.csv").unlink(missing_ok=True)
    return records


def _known_label_set(name):
    try:
        return get_label_set(name)
    except (MedsegError, KeyError, TypeError, ValueError):
        return None


def kept_organs(records: dict, label_set) -> "list[str] | None":
    """The organs the folder's cases kept (as given when every case kept the same ones, else in the label set's
    order), or None when a case kept all."""
    kept = [record["provenance"].get("organs") for record in records.values()]
    if any(organs is None for organs in kept):
        return None
    if all(organs == kept[0] for organs in kept):
        return list(kept[0])
    union = {organ for organs in kept for organ in organs}
    return [organ for organ in label_set.organs if organ in union]


def checkpoints_of(records: dict) -> dict:
    """SHA-256 -> ``{"checkpoint": path, "cases": [stems]}`` over case records."""
    found: dict = {}
    for name, record in records.items():
        provenance = record.get("provenance", {})
        entry = found.setdefault(provenance.get("checkpoint_sha256"), {"checkpoint": provenance.get("checkpoint"),
                                                                       "cases": []})
        entry["cases"].append(name)
    return found


def write_summary(summary: PredictSummary, request: PredictRequest, pairs: list, settings: dict,
                  dicom_input: bool) -> Path:
    """``predict_summary.json`` (``predict_summary.partKofN.json`` for a part) in the output folder.

    ``checkpoint`` / ``checkpoint_sha256`` name this run's checkpoint when every case record in the folder comes
    from it; a folder holding several checkpoints' predictions names them all (``checkpoints``) instead, with a
    warning, so it is never reported as one model's.
    """
    output = Path(request.output)
    name = "predict_summary.json" if request.num_parts == 1 else \
        f"predict_summary.part{request.part_id}of{request.num_parts}.json"
    checkpoint, sha, warnings = str(request.checkpoint), settings["checkpoint_sha256"], []
    if summary.mixed_checkpoints:
        described = "; ".join(f"{entry['checkpoint']} ({len(entry['cases'])} case(s))"
                              for entry in summary.folder_checkpoints.values())
        checkpoint, sha = f"{len(summary.folder_checkpoints)} checkpoints: {described}", None
        warnings.append(f"{output} holds predictions of {len(summary.folder_checkpoints)} checkpoints: {described}")
        log.warning(warnings[-1])
    return write_json(output / name, {
        "checkpoint": checkpoint, "checkpoint_sha256": sha, "checkpoints": summary.folder_checkpoints,
        "settings": settings, "input": str(request.input), "output": str(output), "num_parts": request.num_parts,
        "part_id": request.part_id, "counts": summary.counts, "output_types": list(request.output_types),
        "organs": request.organs, "label_set": summary.label_set, "model_name": summary.model_name,
        "dicom_series": [s.series.summary() | {"name": s.name} for s, _ in pairs] if dicom_input else [],
        "seconds": summary.seconds, "warnings": warnings, "cases": summary.cases,
        "postprocess": summary.postprocess,
        "postprocess_off": None if summary.postprocess else (
            "--no-postprocess" if not request.postprocess else "the checkpoint has no rules file"),
        "flagged_cases": summary.flagged_cases,
        "quality_flags": write_folder_flags(output),
    })


def write_folder_flags(output: Path) -> "str | None":
    """``quality_flags.csv`` of every case in the folder, rebuilt from the case records (so reused cases keep their
    rows); None, and no file, when no case of the folder has quality flags computed (TransUNet h5 input, or
    nothing predicted)."""
    flags_by_case = {name: record["quality"]["flags"] for name, record in folder_records(output).items()
                     if isinstance(record.get("quality"), dict) and "flags" in record["quality"]}
    path = output / "quality_flags.csv"
    if not flags_by_case:
        path.unlink(missing_ok=True)
        return None
    return str(write_flags_csv(path, flags_by_case))
