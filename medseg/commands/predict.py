"""``medseg predict -i INPUT -o OUTPUT -m CHECKPOINT``: segment CT volumes, one label NIfTI per input.

INPUT is a ``.nii``/``.nii.gz`` file, a TransUNet ``.npy.h5`` volume, or a folder of them; or DICOM: a folder
holding one or several CT series (at any depth; one case per SeriesInstanceUID, named
``PatientID_StudyDate_SeriesNumber`` or by the UID when those are missing or repeated), or a ``.zip`` of such a
folder (see :mod:`medseg.dicom`). OUTPUT is a file name
(``.nii.gz``/``.nii``, single input only) or a folder, where each prediction is named after its input
(``img0001.nii.gz`` -> ``img0001.nii.gz``; ``BTCV_01_0000.nii.gz`` -> ``BTCV_01.nii.gz``; ``case0001.npy.h5`` ->
``case0001.nii.gz``). Each prediction has exactly its input's shape and affine.

Every NIfTI prediction records what made it inside the file (a header extension, see
:func:`medseg.io.read_provenance`): the SHA-256 of the checkpoint and of the input (file, or a DICOM series' files),
and the settings that change the labels (``--tta``, ``--resize``, amp, ``--organs``, and the bare-state_dict
options). Folder runs: a bad case is reported and skipped, the others complete; an output that already exists is
skipped only when its record matches this run exactly, so an interrupted run can simply be restarted; an output made
by another checkpoint, other settings or another version of the input (or one without a record, such as a DICOM-only
output) stops the run before anything is written, with a one-line error naming ``--overwrite``. ``--num-parts N
--part-id K`` processes every N-th case of the sorted list from K (run the N parts on N machines or GPUs; a part
with no inputs says so and exits 0). A summary is printed and written to ``predict_summary.json``
(``predict_summary.partKofN.json`` for a part). Exit code 0 when every case was predicted or already done, 1 when
some cases failed (listed), 2 when nothing could be predicted.

Outputs a viewer understands (see :mod:`medseg.outputs`): ``--output-type nifti,dicom-seg,rtstruct`` (one or several;
DICOM outputs need a DICOM input), ``labels.json`` in every output folder (and the label set named in each NIfTI
header), ``--viewer-tables`` (3D Slicer and ITK-SNAP label tables), ``--split-masks`` (``NAME/<organ>.nii.gz``),
``--organs liver,spleen`` (keep a subset; the other organs become background in every output), ``--preview``
(``NAME_preview.png``).

Per case, next to the prediction:

* ``--statistics``: ``NAME_statistics.json`` with each organ's voxel count, volume (ml, voxel count x voxel volume
  from the affine) and mean and std (population, ddof=0) HU of the input inside it; a folder run also writes
  ``statistics.csv`` with one row per case and organ.
* ``--save-probabilities``: ``NAME_probabilities.npz`` with ``probabilities`` float16 ``(i, j, k, C)`` on the input
  grid (softmax, class ``c`` = ``[..., c]``) and ``organs`` (class 1..C-1 names). Memory: C x 2 bytes per voxel.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("-i", "--input", type=Path, required=True,
                        help=".nii/.nii.gz file, TransUNet .npy.h5 volume, or a folder of them; or a folder / .zip "
                             "of DICOM series (one output per series)")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="output .nii.gz file (single input) or folder")
    parser.add_argument("-m", "--checkpoint", type=Path, required=True,
                        help="medseg checkpoint (best.pt / last.pt) or a bare reference state_dict (with --model)")
    from medseg.engine.config import PredictConfig
    from medseg.schema import add_arguments as add_schema_arguments

    add_schema_arguments(parser, PredictConfig, defaults=True)  # --device, --batch-size, --tta, --amp, --resize
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write NAME_probabilities.npz (float16, (i, j, k, C))")
    parser.add_argument("--statistics", action="store_true",
                        help="also write NAME_statistics.json (organ volumes in ml, mean and std HU) and, for a "
                             "folder, statistics.csv")
    parser.add_argument("--output-type", action="append", metavar="TYPE",
                        help="nifti (default), dicom-seg, rtstruct; several as nifti,dicom-seg or by repeating the "
                             "option (DICOM outputs need a DICOM input)")
    parser.add_argument("--organs", metavar="LIST", help="keep only these organs, e.g. liver,spleen")
    parser.add_argument("--split-masks", action="store_true", help="also write NAME/<organ>.nii.gz binary masks")
    parser.add_argument("--preview", action="store_true",
                        help="also write NAME_preview.png (axial, coronal, sagittal views with the organs)")
    parser.add_argument("--viewer-tables", action="store_true",
                        help="also write labels.ctbl (3D Slicer) and labels_itksnap.txt (ITK-SNAP)")
    parser.add_argument("--model", help="architecture of a bare state_dict checkpoint (e.g. R50-ViT-B_16)")
    parser.add_argument("--labels", choices=["synapse8", "btcv13"],
                        help="label set of a bare state_dict (default synapse8)")
    parser.add_argument("--img-size", type=int, help="input size of a bare state_dict (default: the model's, 224)")
    parser.add_argument("--num-parts", type=int, default=1, help="split a folder into N parts (default 1)")
    parser.add_argument("--part-id", type=int, default=0, help="which part to run, 0..N-1 (default 0)")
    parser.add_argument("--no-postprocess", action="store_true",
                        help="do not apply the checkpoint's post-processing rules (NAME.postprocess.json beside it)")
    parser.add_argument("--overwrite", action="store_true", help="predict again when the output already exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def output_name(path: Path) -> str:
    """The prediction file name of an input: suffix replaced by ``.nii.gz``, nnU-Net's ``_0000`` dropped.

    A DICOM series (:class:`DicomCase`) gives its series name (``PatientID_StudyDate_SeriesNumber`` or the UID).
    """
    if isinstance(path, DicomCase):
        return path.name + ".nii.gz"
    name = path.name
    for suffix in (".nii.gz", ".nii", ".npy.h5", ".h5", ".hdf5"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    if len(name) > 5 and name[-5] == "_" and name[-4:].isdigit() and name[-4:] == "0000":
        name = name[:-5]
    return name + ".nii.gz"


def list_inputs(path: Path) -> list[Path]:
    """The input files: ``path`` itself, or the NIfTI / h5 files of a folder sorted by name.

    Raises:
        InputError: missing path, unsupported file type, or a folder without inputs.
    """
    from medseg.engine.inference import is_h5
    from medseg.errors import InputError
    from medseg.io import is_nifti

    if not path.exists():
        raise InputError(f"{path}: input not found")
    if path.is_file():
        if not (is_nifti(path) or is_h5(path)):
            raise InputError(f"{path}: not a NIfTI (.nii, .nii.gz) or TransUNet h5 (.npy.h5) file")
        return [path]
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and not p.name.startswith(".") and (is_nifti(p) or is_h5(p)))
    if not files:
        raise InputError(f"{path}: no .nii, .nii.gz, .h5 or DICOM files in the folder")
    return files


class DicomCase:
    """One DICOM series to predict; ``name`` is its output stem (used like an input file's name)."""

    def __init__(self, series):
        self.series = series
        self.name = series.name

    def __repr__(self) -> str:
        return f"DicomCase({self.name})"


def open_inputs(path: Path, stack: contextlib.ExitStack) -> list:
    """The cases of ``-i``: input files (:func:`list_inputs`) or :class:`DicomCase` series of a DICOM folder / zip.

    A zip is extracted into a temporary folder that ``stack`` removes when the run ends.
    """
    from medseg.dicom import is_dicom_input, open_dicom_input
    from medseg.errors import InputError

    if not path.exists():
        raise InputError(f"{path}: input not found")
    if path.is_dir() and _has_volume_files(path):
        return list_inputs(path)
    if (path.is_file() and path.suffix.lower() == ".zip") or (path.is_dir() and is_dicom_input(path)):
        series = stack.enter_context(open_dicom_input(path))
        log.info("%s: %d DICOM series: %s", path, len(series), ", ".join(f"{s.name} ({len(s.files)} slices)"
                                                                         for s in series))
        return [DicomCase(s) for s in series]
    return list_inputs(path)


def _has_volume_files(folder: Path) -> bool:
    from medseg.engine.inference import is_h5
    from medseg.io import is_nifti

    return any(p.is_file() and (is_nifti(p) or is_h5(p)) for p in folder.iterdir())


def plan_outputs(inputs: list[Path], output: Path, single: bool) -> list[tuple[Path, Path]]:
    """Pair each input with its output file; refuses to write onto an input or two outputs onto one file."""
    from medseg.errors import ConfigError
    from medseg.io import is_nifti

    if single and is_nifti(output):
        pairs = [(inputs[0], output)]
    else:
        if is_nifti(output):
            raise ConfigError(f"{output}: a folder input needs an output folder, not a file name")
        if output.exists() and not output.is_dir():
            raise ConfigError(f"{output}: exists and is not a folder")
        pairs = [(path, output / output_name(path)) for path in inputs]
    resolved_inputs = {p.resolve() for p in inputs if isinstance(p, Path)}
    seen = {}
    for source, target in pairs:
        if target.resolve() in resolved_inputs:
            raise ConfigError(f"{target}: output would overwrite an input file; choose another output folder")
        if target in seen:
            raise ConfigError(f"{target}: both {seen[target].name} and {source.name} would be written there")
        seen[target] = source
    return pairs


def sidecar(output: Path, what: str, suffix: str) -> Path:
    """``out/img0001.nii.gz`` -> ``out/img0001_<what><suffix>``."""
    name = output.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return output.with_name(f"{name}_{what}{suffix}")


def run_settings(args, checkpoint_sha256: str) -> dict:
    """The settings of this run that change the predicted labels (compared with each existing output's record)."""
    from medseg.engine.inference import resolve_amp, resolve_device

    return {"checkpoint_sha256": checkpoint_sha256, "tta": bool(args.tta), "resize": args.resize,
            "amp": resolve_amp(args.amp, resolve_device(args.device)), "model": args.model, "labels": args.labels,
            "img_size": args.img_size, "organs": getattr(args, "organs", None)}


def _source_files(source) -> list[Path]:
    """The files an input is read from (a DICOM series' slices, or the input file)."""
    return list(source.series.files) if isinstance(source, DicomCase) else [source]


def done_marker(target: Path, types: list[str]) -> Path:
    """The file whose record decides whether a case is done: the NIfTI when one is written, else the first output."""
    files = output_files(target, types)
    return files["nifti"] if "nifti" in files else files[types[0]]


def predict_one(source: Path, target: Path, predictor, args, provenance: "dict | None" = None) -> dict:
    """Predict one input and write its outputs (extras first, the main output last, each atomically)."""
    import numpy as np

    from medseg.engine.inference import predict_volume, read_input
    from medseg.errors import InputError
    from medseg.io import atomic_path, write_json
    from medseg.outputs import keep_organs, organ_statistics
    from medseg.postprocess import finish_case

    started = time.perf_counter()
    if isinstance(source, DicomCase):
        from medseg.dicom import read_series

        volume, h5_input = read_series(source.series), False
    else:
        volume, h5_input = read_input(source)
    prediction = predict_volume(volume, predictor, batch_size=args.batch_size, tta=args.tta,
                                return_probabilities=args.save_probabilities, resize=args.resize,
                                scaled=h5_input, reorient=not h5_input, progress=not args.no_progress)
    probabilities = None
    if args.save_probabilities:
        prediction, probabilities = prediction
    organs = getattr(args, "organ_list", None)
    # post-processing rules (when the checkpoint has them and they are on) and quality flags (medseg.quality)
    prediction.array, case = finish_case(prediction.array, prediction.affine, predictor.label_set,
                                         getattr(args, "rules", None), image=None if h5_input else volume.array,
                                         flags=not h5_input)
    prediction.array = keep_organs(prediction.array, predictor.label_set, organs)
    if any(kind != "nifti" for kind in getattr(args, "output_types", None) or []) and not prediction.array.any():
        raise InputError(f"{source.name}: no organ predicted, and a DICOM-SEG / RTSTRUCT needs at least one; "
                         "nothing written for this case")
    if probabilities is not None:
        path = sidecar(target, "probabilities", ".npz")
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, probabilities=probabilities,
                                    organs=np.array(["background", *predictor.label_set.organs]))
        del probabilities
    if args.statistics:
        stats = organ_statistics(prediction, volume, predictor.label_set, hu=not h5_input)
        if organs is not None:
            stats["organs"] = {o: v for o, v in stats["organs"].items() if o in organs}
        stats.update({"input": _input_text(source), "prediction": str(target), "label_set": predictor.label_set.name,
                      "shape": list(prediction.shape), "geometry": "unknown (h5 input)" if h5_input else "affine"})
        write_json(sidecar(target, "statistics", ".json"), stats)
    record = write_case_outputs(source, target, volume, prediction, predictor.label_set, args, hu=not h5_input,
                                provenance=provenance)
    return {"status": "predicted", "seconds": round(time.perf_counter() - started, 3),
            "shape": list(prediction.shape), **record, **case}


def _input_text(source) -> str:
    return str(source.series.files[0].parent) if isinstance(source, DicomCase) else str(source)


def _stem(target: Path) -> str:
    return target.name[: -len(".nii.gz")] if target.name.endswith(".nii.gz") else target.stem


def output_files(target: Path, types: list[str]) -> dict[str, Path]:
    """``{output type: file}`` of a case whose NIfTI would be ``target`` (``NAME_seg.dcm``, ``NAME_rtstruct.dcm``)."""
    from medseg.outputs import OUTPUT_SUFFIXES

    return {kind: target if kind == "nifti" else target.with_name(_stem(target) + OUTPUT_SUFFIXES[kind])
            for kind in types}


def write_case_outputs(source, target: Path, image, prediction, label_set, args, hu: bool = True,
                       provenance: "dict | None" = None) -> dict:
    """The optional per-case files (preview, split masks), then each requested output type, the first one last.

    The first output type is the file whose existence marks the case as done, so it is written after the others.
    """
    from medseg import outputs

    types = getattr(args, "output_types", None) or ["nifti"]
    organs = getattr(args, "organ_list", None)
    record: dict = {}
    if isinstance(source, DicomCase):
        record["dicom"] = source.series.summary()
    if getattr(args, "preview", False):
        path = sidecar(target, "preview", ".png")
        outputs.write_preview(path, image, prediction, label_set, title=_stem(target), hu=hu)
        record["preview"] = str(path)
    if getattr(args, "split_masks", False):
        folder = target.with_name(_stem(target))
        outputs.write_split_masks(folder, prediction, label_set, organs)
        record["masks"] = str(folder)
    files = output_files(target, types)
    for kind in reversed(types):
        if kind == "nifti":
            outputs.write_labels_nifti(files[kind], prediction, label_set, provenance=provenance)
        elif kind == "dicom-seg":
            from medseg import __version__
            from medseg.dicom import write_dicom_seg

            info = write_dicom_seg(prediction, source.series, label_set, files[kind], organs=organs,
                                   software_version=__version__)
            record["dicom_seg_segments"] = info["segments"]
            record["dicom_seg_empty"] = info["empty"]
        elif kind == "rtstruct":
            from medseg.dicom import write_rtstruct

            info = write_rtstruct(prediction, source.series, label_set, files[kind], organs=organs)
            record["rtstruct_rois"] = info["rois"]
            record["rtstruct_empty"] = info["empty"]
    record["outputs"] = {kind: str(path) for kind, path in files.items()}
    return record


def run(args) -> int:
    from medseg.engine.config import PredictConfig
    from medseg.errors import ConfigError
    from medseg.schema import check_flags

    check_flags(args, PredictConfig)  # --batch-size and the other schema options, checked as a file's keys are
    if args.num_parts < 1:
        raise ConfigError(f"--num-parts: must be at least 1, got {args.num_parts}")
    if not 0 <= args.part_id < args.num_parts:
        raise ConfigError(f"--part-id: must be in 0..{args.num_parts - 1}, got {args.part_id}")
    with contextlib.ExitStack() as stack:
        return _run(args, stack)


def _run(args, stack: contextlib.ExitStack) -> int:
    """The whole run: plan the outputs, sort out what is already done, predict the rest, write the summary."""
    from medseg.engine.provenance import checkpoint_sha256, expected_record
    from medseg.errors import EXIT_OK
    from medseg.io import remove_stale_temps
    from medseg.outputs import parse_output_types

    args.output_types = parse_output_types(getattr(args, "output_type", None))
    inputs = open_inputs(args.input, stack)
    dicom_input = bool(inputs) and isinstance(inputs[0], DicomCase)
    single_output = _check_outputs(args, inputs, dicom_input)
    all_pairs = plan_outputs(inputs, args.output, single_output)
    pairs = all_pairs[args.part_id::args.num_parts]
    if not pairs:
        print(f"part {args.part_id} of {args.num_parts} has no inputs ({len(all_pairs)} input(s) in all): "
              "nothing to do")
        return EXIT_OK
    remove_stale_temps(args.output.parent if single_output else args.output)
    settings = run_settings(args, checkpoint_sha256(args.checkpoint))
    args.rules, settings["postprocess"] = _postprocess_rules(args, settings["checkpoint_sha256"])
    expected = {source.name: expected_record(settings, _source_files(source)) for source, _ in pairs}
    todo, records = _sort_done(args, pairs, expected)
    started = time.perf_counter()
    records.update(_predict_cases(args, todo, expected, single_output))
    return _finish(args, pairs, todo, records, settings, dicom_input, single_output,
                   time.perf_counter() - started)


def _postprocess_rules(args, checkpoint_hash: str):
    """``(rules or None, the rules file's SHA-256 or None)``: the checkpoint's post-processing rules unless
    ``--no-postprocess`` (rules chosen for another checkpoint are an error, never applied)."""
    from medseg.io import file_sha256
    from medseg.postprocess import load_rules_for, rules_path

    if args.no_postprocess:
        return None, None
    rules = load_rules_for(args.checkpoint, checkpoint_hash)
    if rules is None:
        return None, None
    log.info("post-processing rules %s: %s", rules_path(args.checkpoint),
             ", ".join(f"{organ} {rule}" for organ, rule in rules.describe().items()) or "none chosen")
    return rules, file_sha256(rules_path(args.checkpoint))


def _check_outputs(args, inputs: list, dicom_input: bool) -> bool:
    """Check ``--output`` against the inputs and ``--output-type``; returns whether it is a single output file."""
    from medseg.errors import ConfigError
    from medseg.io import check_output_path, is_nifti

    dicom_outputs = [t for t in args.output_types if t != "nifti"]
    if dicom_outputs and not dicom_input:
        raise ConfigError(f"--output-type {dicom_outputs[0]}: needs a DICOM series input; {args.input} holds NIfTI "
                          "or h5 volumes")
    if dicom_outputs and is_nifti(args.output):
        raise ConfigError(f"{args.output}: --output-type {dicom_outputs[0]} needs an output folder")
    single = args.input.is_file() and not dicom_input
    single_output = single or (dicom_input and len(inputs) == 1 and is_nifti(args.output))
    check_output_path(args.output, "output file" if single_output else "output folder", folder=not single_output)
    return single_output


def _sort_done(args, pairs: list, expected: dict) -> tuple[list, dict]:
    """``(todo, records)``: the (source, target) pairs to predict and the records of those already done with the
    same settings; an output made with other settings is an error unless ``--overwrite``."""
    from medseg.engine.provenance import record_mismatch
    from medseg.errors import OutputError

    todo, records, conflicts = [], {}, []
    for source, target in pairs:
        marker = done_marker(target, args.output_types)
        if args.overwrite or not marker.exists():
            todo.append((source, target))
            continue
        why = record_mismatch(marker, expected[source.name])
        if why is None:
            records[source.name] = {"status": "exists", "output": str(target)}
        else:
            conflicts.append((marker, why))
    if conflicts:
        marker, why = conflicts[0]
        more = f" (and {len(conflicts) - 1} more output(s) there)" if len(conflicts) > 1 else ""
        raise OutputError(f"{marker}: exists and {why}{more}; pass --overwrite to replace it, or choose another "
                          "output folder")
    return todo, records


def _predict_cases(args, todo: list, expected: dict, single_output: bool) -> dict:
    """Load the model (only if there is something to do) and predict each (source, target) pair of ``todo``;
    returns each case's record. A case that fails is recorded and skipped, unless it is the only output."""
    from medseg import __version__
    from medseg.engine.inference import load_predictor
    from medseg.errors import MedsegError

    if not todo:
        return {}
    predictor = load_predictor(args.checkpoint, args.device, model_name=args.model, labels=args.labels,
                               img_size=args.img_size, amp=args.amp)
    log.info("model %s (%s, %d classes, input %d px) on %s, amp %s; %d case(s) to predict",
             predictor.model_name, predictor.label_set.name, predictor.num_classes, predictor.img_size,
             predictor.device, predictor.amp, len(todo))
    from medseg.outputs import parse_organs

    args.organ_list = parse_organs(getattr(args, "organs", None), predictor.label_set)
    records: dict = {}
    folders_done: set = set()
    for number, (source, target) in enumerate(todo, start=1):
        try:
            provenance = dict(expected[source.name], checkpoint=str(args.checkpoint), input=_input_text(source),
                              medseg_version=__version__, model_name=predictor.model_name,
                              label_set=predictor.label_set.name, preprocessing=predictor.preprocessing.to_dict())
            record = predict_one(source, target, predictor, args, provenance)
        except MedsegError as exc:
            if single_output:
                raise
            record = {"status": "failed", "error": str(exc)}
            print(f"medseg predict: skipped {source.name}: {exc}", file=sys.stderr)
        else:
            if target.parent not in folders_done:  # only once something is written there
                write_folder_files(args, predictor.label_set, target.parent)
                folders_done.add(target.parent)
            log.info("[%d/%d] %s -> %s (%.1f s)", number, len(todo), source.name, target, record["seconds"])
        record["output"] = str(target)
        records[source.name] = record
    return records


def _finish(args, pairs: list, todo: list, records: dict, settings: dict, dicom_input: bool, single_output: bool,
            elapsed: float) -> int:
    """Statistics table, ``predict_summary.json`` (folder outputs), the closing lines; returns the exit code."""
    from medseg.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_SOME_FAILED
    from medseg.io import write_json

    counts = {status: sum(r["status"] == status for r in records.values())
              for status in ("predicted", "exists", "failed")}
    if args.statistics and todo:
        write_statistics_table(args, pairs)
    if not single_output:
        from medseg.postprocess import rules_path
        from medseg.quality import write_flags_csv

        flags = {name: record["flags"] for name, record in records.items() if "flags" in record}
        if flags:
            write_flags_csv(args.output / "quality_flags.csv", flags)
        name = "predict_summary.json" if args.num_parts == 1 else \
            f"predict_summary.part{args.part_id}of{args.num_parts}.json"
        write_json(args.output / name, {
            "checkpoint": str(args.checkpoint), "checkpoint_sha256": settings["checkpoint_sha256"],
            "settings": settings, "input": str(args.input), "output": str(args.output),
            "num_parts": args.num_parts, "part_id": args.part_id, "counts": counts,
            "output_types": args.output_types, "organs": getattr(args, "organ_list", None),
            "dicom_series": [s.series.summary() | {"name": s.name} for s, _ in pairs] if dicom_input else [],
            "seconds": round(elapsed, 3), "cases": records,
            "postprocess": None if args.rules is None else {
                "rules": str(rules_path(args.checkpoint)), "rules_sha256": settings["postprocess"],
                "organs": args.rules.describe(), "chosen_on": args.rules.validation.get("source")},
            "postprocess_off": "--no-postprocess" if args.no_postprocess else (
                None if args.rules is not None else "the checkpoint has no rules file"),
            "flagged_cases": sorted(name for name, flags_of_case in flags.items() if flags_of_case),
        })
    print(f"predicted {counts['predicted']}, already done {counts['exists']}, failed {counts['failed']} "
          f"in {elapsed:.1f} s -> {args.output}")
    for name, record in records.items():
        if record["status"] == "failed":
            print(f"failed {name}: {record['error']}", file=sys.stderr)
    if not (counts["predicted"] or counts["exists"]):
        return EXIT_BAD_INPUT
    return EXIT_SOME_FAILED if counts["failed"] else EXIT_OK


def write_folder_files(args, label_set, folder: Path) -> None:
    """``labels.json`` (always) and the viewer tables (``--viewer-tables``) in an output folder of the run."""
    from medseg import outputs

    outputs.write_label_map(folder, label_set, getattr(args, "organ_list", None))
    if getattr(args, "viewer_tables", False):
        outputs.write_viewer_tables(folder, label_set, getattr(args, "organ_list", None))


def write_statistics_table(args, pairs) -> None:
    """``statistics.csv`` in each output folder from the ``NAME_statistics.json`` of its cases (also earlier runs')."""
    from medseg.io import read_json
    from medseg.outputs import write_statistics_csv

    by_folder: dict[Path, dict] = {}
    for _, target in pairs:
        path = sidecar(target, "statistics", ".json")
        if path.exists():
            by_folder.setdefault(target.parent, {})[_stem(target)] = read_json(path)
    for folder, per_case in by_folder.items():
        write_statistics_csv(folder / "statistics.csv", per_case, getattr(args, "organ_list", None))
