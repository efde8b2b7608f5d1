"""The cases of a prediction run and the files each one gets.

An input (``PredictRequest.input``) is a ``.nii``/``.nii.gz`` file, a TransUNet ``.npy.h5`` volume, a folder of
them, or DICOM: a folder holding one or several CT series (at any depth; one case per SeriesInstanceUID) or a
``.zip`` of such a folder. A folder holding both volume files and DICOM series is refused (naming one of each), so
that neither is silently left out. Each case's outputs are named after its input (``img0001.nii.gz`` ->
``img0001.nii.gz``; ``BTCV_01_0000.nii.gz`` -> ``BTCV_01.nii.gz``; ``case0001.npy.h5`` -> ``case0001.nii.gz``; a
DICOM series -> ``PatientID_StudyDate_SeriesNumber.nii.gz``), with the extras beside it (``NAME_<what>.<ext>``).
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from medseg.dicom import Series, is_dicom_file, is_dicom_input, open_dicom_input
from medseg.engine.inference import is_h5
from medseg.errors import ConfigError, InputError
from medseg.io import is_nifti
from medseg.prediction.record import stem

log = logging.getLogger(__name__)

#: File-name endings of each output type after the case stem.
OUTPUT_SUFFIXES = {"nifti": ".nii.gz", "dicom-seg": "_seg.dcm", "rtstruct": "_rtstruct.dcm"}
#: File-name endings of the per-case extras after the case stem (``masks`` is a folder named after the stem).
EXTRA_SUFFIXES = {"preview": "_preview.png", "statistics": "_statistics.json", "probabilities": "_probabilities.npz"}


class DicomCase:
    """One DICOM series to predict; ``name`` is its output stem (used like an input file's name)."""

    def __init__(self, series: Series):
        self.series = series
        self.name = series.name

    def __repr__(self) -> str:
        return f"DicomCase({self.name})"


def output_name(path: "Path | DicomCase") -> str:
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
    if len(name) > 5 and name[-5] == "_" and name[-4:] == "0000":
        name = name[:-5]
    return name + ".nii.gz"


def is_volume_file(path: Path) -> bool:
    """A NIfTI or TransUNet h5 file (by name), not hidden; a broken symbolic link (missing target, or a loop) with
    such a name counts too, so that it is listed as a failed case rather than silently left out."""
    named = not path.name.startswith(".") and (is_nifti(path) or is_h5(path))
    return named and (path.is_file() or (path.is_symlink() and not path.exists()))


def list_inputs(path: Path) -> list[Path]:
    """The input files: ``path`` itself, or the NIfTI / h5 files of a folder sorted by name.

    Raises:
        InputError: missing path, unsupported file type, or a folder without inputs.
    """
    if not path.exists():
        raise InputError(f"{path}: input not found")
    if path.is_file():
        if not (is_nifti(path) or is_h5(path)):
            raise InputError(f"{path}: not a NIfTI (.nii, .nii.gz) or TransUNet h5 (.npy.h5) file")
        return [path]
    files = sorted(p for p in path.iterdir() if is_volume_file(p))
    if not files:
        raise InputError(f"{path}: no .nii, .nii.gz, .h5 or DICOM files in the folder")
    return files


def first_dicom_file(folder: Path) -> "Path | None":
    """The first DICOM file below ``folder`` (any depth, sorted), or None."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith(".") and is_dicom_file(path):
            return path
    return None


def open_inputs(path: Path, stack: contextlib.ExitStack) -> list:
    """The cases of an input: files (:func:`list_inputs`) or :class:`DicomCase` series of a DICOM folder / zip.

    A zip is extracted into a temporary folder that ``stack`` removes when the run ends.

    Raises:
        InputError: a missing input, a folder without inputs, or a folder holding both volume files and DICOM
            series (both named: predict them from separate folders).
    """
    if not path.exists():
        raise InputError(f"{path}: input not found")
    if path.is_dir():
        volumes = sorted(p for p in path.iterdir() if is_volume_file(p))
        if volumes:
            dicom = first_dicom_file(path)
            if dicom is not None:
                raise InputError(f"{path}: holds both volume files ({volumes[0].name}) and DICOM series "
                                 f"({dicom.parent}); predict them from separate folders")
            return volumes
    if (path.is_file() and path.suffix.lower() == ".zip") or (path.is_dir() and is_dicom_input(path)):
        series = stack.enter_context(open_dicom_input(path))
        log.info("%s: %d DICOM series: %s", path, len(series),
                 ", ".join(f"{s.name} ({len(s.files)} slices)" for s in series))
        return [DicomCase(s) for s in series]
    return list_inputs(path)


def source_files(source: "Path | DicomCase") -> list[Path]:
    """The files an input is read from (a DICOM series' slices, or the input file)."""
    return list(source.series.files) if isinstance(source, DicomCase) else [source]


def input_text(source: "Path | DicomCase") -> str:
    """The input as recorded: the file, or a DICOM series' folder."""
    return str(source.series.files[0].parent) if isinstance(source, DicomCase) else str(source)


def plan_outputs(inputs: list, output: Path, single: bool) -> list[tuple]:
    """Pair each input with its output file; refuses to write onto an input or two outputs onto one file."""
    if single and is_nifti(output):
        pairs = [(inputs[0], output)]
    else:
        if is_nifti(output):
            raise ConfigError(f"{output}: a folder input needs an output folder, not a file name")
        if output.exists() and not output.is_dir():
            raise ConfigError(f"{output}: exists and is not a folder")
        pairs = [(path, output / output_name(path)) for path in inputs]
    resolved_inputs = {os.path.realpath(p) for p in inputs if isinstance(p, Path)}  # a link loop resolves too
    seen: dict = {}
    for source, target in pairs:
        if os.path.realpath(target) in resolved_inputs:
            raise ConfigError(f"{target}: output would overwrite an input file; choose another output folder")
        if target in seen:
            raise ConfigError(f"{target}: both {seen[target].name} and {source.name} would be written there")
        seen[target] = source
    return pairs


def sidecar(target: Path, what: str, suffix: str) -> Path:
    """``out/img0001.nii.gz`` -> ``out/img0001_<what><suffix>``."""
    return target.with_name(f"{stem(target)}_{what}{suffix}")


def output_paths(target: Path, types: list[str]) -> dict[str, Path]:
    """``{output type: file}`` of a case whose NIfTI would be ``target`` (``NAME_seg.dcm``, ``NAME_rtstruct.dcm``)."""
    return {kind: target if kind == "nifti" else target.with_name(stem(target) + OUTPUT_SUFFIXES[kind])
            for kind in types}


def extra_paths(target: Path) -> dict[str, Path]:
    """``{extra: path}`` of every per-case extra a case may have (``masks`` is the folder of split masks)."""
    paths = {kind: target.with_name(stem(target) + suffix) for kind, suffix in EXTRA_SUFFIXES.items()}
    paths["masks"] = target.with_name(stem(target))
    return paths


def main_output(target: Path, types: list[str]) -> Path:
    """The file whose record decides whether a case is done: the NIfTI when one is written, else the first output."""
    files = output_paths(target, types)
    return files["nifti"] if "nifti" in files else files[types[0]]
