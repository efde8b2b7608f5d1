"""What made a prediction and which files it wrote: the record of each case, and the one rule for reusing it.

Every predicted case has two records:

* inside each label NIfTI, a header extension (:func:`medseg.io.read_provenance`): the checkpoint's and the input's
  SHA-256 and the settings that change the labels (:data:`PREDICTION_KEYS`), plus the model, label set and
  preprocessing;
* ``NAME_record.json`` beside the outputs (written last, atomically): the same provenance, the kinds of output the
  case has (``nifti``, ``dicom-seg``, ``rtstruct``, ``preview``, ``statistics``, ``probabilities``, ``masks``) and
  every file it wrote with its size in bytes and SHA-256.

The reuse rule (:func:`plan_case`), the same for ``medseg predict``, the pipeline and notebooks: an existing case is
reused only when its record matches the run exactly, it holds every kind of output the run asks for, and every file
it lists is whole (same size and SHA-256 as when written). Outputs made by another checkpoint, other settings or
another version of the input stop the run (unless ``overwrite``); a damaged or incomplete case is predicted again.
"""
from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from medseg.errors import CheckpointError, InputError
from medseg.io import file_sha256, read_provenance, write_json

#: Keys of a prediction's record that must match for an existing output to be reused.
PREDICTION_KEYS = ("checkpoint_sha256", "input_sha256", "tta", "resize", "amp", "model", "labels", "img_size",
                   "organs", "postprocess")
#: ``format`` of a case record file.
RECORD_FORMAT = "medseg-prediction-record"
#: File-name ending of a case record after the case stem (``img0001_record.json``).
RECORD_SUFFIX = "_record.json"


def checkpoint_sha256(path: "str | Path") -> str:
    """SHA-256 of a checkpoint file (CheckpointError naming it when it is missing or unreadable)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found" if not path.exists() else f"{path}: not a file")
    try:
        return file_sha256(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None


def expected_record(settings: dict, source: "str | Path | list") -> dict:
    """``settings`` (checkpoint hash and label-changing options) plus the input's SHA-256: of the file, or for a
    list of files (a DICOM series) of their hashes in order."""
    files = source if isinstance(source, (list, tuple)) else [source]
    try:
        hashes = [file_sha256(path) for path in files]
    except OSError as exc:
        raise InputError(f"{exc.filename or files[0]}: cannot read ({exc.strerror or type(exc).__name__})") from None
    if len(hashes) == 1:
        return dict(settings, input_sha256=hashes[0])
    return dict(settings, input_sha256=hashlib.sha256("".join(hashes).encode()).hexdigest())


def provenance_mismatch(recorded: "dict | None", expected: dict) -> "str | None":
    """None when a recorded provenance matches ``expected`` on every :data:`PREDICTION_KEYS`, else what differs."""
    if recorded is None:
        return "it holds no medseg provenance record"
    for key in PREDICTION_KEYS:
        if recorded.get(key) != expected.get(key):
            named = {"checkpoint_sha256": "another checkpoint", "input_sha256": "another version of the input"}
            return f"it was made with {named.get(key, f'other {key!r}')}"
    return None


def record_mismatch(target: "str | Path", expected: dict) -> "str | None":
    """None when the existing NIfTI ``target`` was made exactly as ``expected`` says (its header record), else what
    differs."""
    return provenance_mismatch(read_provenance(target), expected)


# ----------------------------------------------------------------------------------------------------------------
# Case records: every file a case wrote, with its size and hash


def record_path(target: Path) -> Path:
    """``out/img0001.nii.gz`` -> ``out/img0001_record.json`` (the case record of the prediction ``target``)."""
    return target.with_name(stem(target) + RECORD_SUFFIX)


def stem(target: Path) -> str:
    """``img0001.nii.gz`` -> ``img0001`` (the case's output stem)."""
    name = target.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def file_fingerprint(path: Path) -> dict:
    """``{"size": bytes, "sha256": hex}`` of a file."""
    return {"size": path.stat().st_size, "sha256": file_sha256(path)}


def write_case_record(target: Path, provenance: dict, outputs: dict[str, Path], written: list[Path],
                      quality: "dict | None" = None) -> Path:
    """Write ``NAME_record.json`` for the case predicted to ``target``.

    Args:
        target: the case's main output path (its NIfTI name, also when only DICOM outputs are written).
        provenance: what made it (the NIfTI header's record).
        outputs: kind -> file (the folder for ``masks``).
        written: every file the case wrote (each split mask among them).
        quality: the case's post-processing result and quality flags (:func:`medseg.postprocess.finish_case`),
            kept so that the folder's ``quality_flags.csv`` can be rebuilt from every case's record.
    """
    folder = target.parent
    files = {}
    for path in written:
        files[Path(path).relative_to(folder).as_posix()] = file_fingerprint(Path(path))
    record = {"format": RECORD_FORMAT, "version": 1, "provenance": provenance,
              "outputs": {kind: Path(path).relative_to(folder).as_posix() for kind, path in outputs.items()},
              "files": files, "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if quality is not None:
        record["quality"] = quality
    return write_json(record_path(target), record)


def read_case_record(target: Path) -> "dict | None":
    """The case record of ``target``, or None when there is none (or it is unreadable: the case is then redone)."""
    path = record_path(target)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return None
    return record


def damaged_files(record: dict, folder: Path) -> list[str]:
    """Names (relative to ``folder``) of the files a case record lists that are missing or not as written."""
    damaged = []
    for name, fingerprint in record.get("files", {}).items():
        path = folder / name
        try:
            whole = path.is_file() and path.stat().st_size == fingerprint["size"] \
                and file_sha256(path) == fingerprint["sha256"]
        except (OSError, KeyError, TypeError):
            whole = False
        if not whole:
            damaged.append(name)
    return damaged


@dataclass(frozen=True)
class CasePlan:
    """What to do with one case: ``action`` is ``reuse``, ``predict`` or ``conflict``; ``reason`` says why."""

    action: str
    reason: str
    marker: Path


def plan_case(target: Path, marker: Path, kinds: list[str], expected: dict, overwrite: bool) -> CasePlan:
    """The reuse rule: reuse, predict (again) or refuse one case whose main output would be ``target``.

    Args:
        target: the case's NIfTI name (its record is ``NAME_record.json`` beside it).
        marker: the case's main output file (the NIfTI, or the first DICOM output when no NIfTI is asked for).
        kinds: the kinds of output the run asks for (see the module docstring).
        expected: the provenance this run would record (:func:`expected_record`).
        overwrite: predict again whatever exists.
    """
    record = read_case_record(target)
    if overwrite:
        return CasePlan("predict", "--overwrite", marker)
    if record is None and not marker.exists():
        return CasePlan("predict", "not predicted yet", marker)
    nifti_marker = marker.exists() and marker.name.endswith((".nii.gz", ".nii"))
    why = record_mismatch(marker, expected) if nifti_marker else None
    if why is None and (record is not None or not nifti_marker):  # a DICOM output without a record: not ours to say
        why = provenance_mismatch(record.get("provenance") if record else None, expected)
    if why is not None:
        return CasePlan("conflict", why, marker)
    if record is None:  # the labels (with this run's provenance) were written, the record was not: interrupted
        return CasePlan("predict", "no case record (interrupted before it finished)", marker)
    missing = [kind for kind in kinds if kind not in record.get("outputs", {})]
    if missing:
        return CasePlan("predict", f"the run asks for {', '.join(missing)}, which the case does not have yet", marker)
    damaged = damaged_files(record, target.parent)
    if damaged:
        return CasePlan("predict", f"{', '.join(damaged)} changed or missing since written (damaged)", marker)
    return CasePlan("reuse", "made exactly so before", marker)


def folder_records(folder: Path) -> dict[str, dict]:
    """Case stem -> case record of every ``NAME_record.json`` in ``folder`` (unreadable ones left out)."""
    records = {}
    if not folder.is_dir():
        return records
    for path in sorted(folder.glob("*" + RECORD_SUFFIX)):
        name = path.name[: -len(RECORD_SUFFIX)]
        record = read_case_record(folder / (name + ".nii.gz"))
        if record is not None:
            records[name] = record
    return records
