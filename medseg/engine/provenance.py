"""What made a prediction: the record stored inside each predicted NIfTI file, and the rule for reusing one.

A prediction is reused (an interrupted folder run restarted) only when its record matches the new run exactly:
the same checkpoint (SHA-256 of the file), the same input (SHA-256), and the same settings that change labels.
Any other existing output is never taken for a finished case.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from medseg.errors import CheckpointError, InputError
from medseg.io import file_sha256, read_provenance

#: Keys of a prediction's record that must match for an existing output to be reused.
PREDICTION_KEYS = ("checkpoint_sha256", "input_sha256", "tta", "resize", "amp", "model", "labels", "img_size",
                   "organs", "postprocess")


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


def record_mismatch(target: "str | Path", expected: dict) -> "str | None":
    """None when the existing output ``target`` was made exactly as ``expected`` says, else what differs."""
    recorded = read_provenance(target)
    if recorded is None:
        return "it holds no medseg provenance record"
    for key in PREDICTION_KEYS:
        if recorded.get(key) != expected.get(key):
            named = {"checkpoint_sha256": "another checkpoint", "input_sha256": "another version of the input"}
            return f"it was made with {named.get(key, f'other {key!r}')}"
    return None
