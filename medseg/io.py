"""Reading and writing volumes with their geometry, atomically, with input validation.

Axis convention (used everywhere in medseg):
    A volume in memory is a numpy array indexed ``[i, j, k]`` in the voxel axes of its NIfTI file, together with
    the file's 4x4 voxel-to-world affine (RAS+ millimetres, as nibabel reports it). Spacing is given in the same
    axis order as the array, ``(di, dj, dk)`` in mm. After medseg's orientation step (see
    :mod:`medseg.data.orientation`) the last axis ``k`` is the axial slice axis (inferior -> superior), rows ``i``
    run anterior -> posterior and columns ``j`` run patient right -> left, so ``volume[:, :, k]`` shown with
    ``imshow`` is an axial slice in radiological convention.
"""
from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from medseg.errors import InputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class Volume:
    """A 3D array with its voxel-to-world affine.

    Attributes:
        array: voxel data indexed ``[i, j, k]`` (see the module docstring).
        affine: 4x4 float64 voxel-to-world (RAS+, mm) matrix.
    """

    array: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along array axes ``(i, j, k)``."""
        return spacing_from_affine(self.affine)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each array axis: the column norms of the affine's 3x3 part."""
    return tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))


def is_nifti(path: "str | Path") -> bool:
    """True when the file name ends with .nii or .nii.gz."""
    return str(path).endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    """``img0001.nii.gz`` -> ``img0001``."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_volume(path: "str | Path", *, dtype=None) -> Volume:
    """Read a 3D NIfTI file (``.nii`` or ``.nii.gz``) into a :class:`Volume`.

    Args:
        path: the file.
        dtype: optional numpy dtype to cast to (e.g. ``np.float32`` for images); default keeps the stored type
            after scaling (nibabel's ``dataobj`` semantics).

    Raises:
        InputError: the file is missing, truncated, corrupt, not 3D, or holds NaN/inf image values.
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    try:
        image = nib.load(str(path))
        array = np.asanyarray(image.dataobj)
        affine = np.asarray(image.affine, dtype=np.float64)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: truncated or corrupt compressed NIfTI ({type(exc).__name__})") from None
    except nib.filebasedimages.ImageFileError:
        raise InputError(f"{path}: not a NIfTI file, or its header is truncated or corrupt") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read NIfTI data ({_first_line(exc)})") from None
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume, got {array.ndim}D with shape {tuple(array.shape)}")
    if min(array.shape) < 1:
        raise InputError(f"{path}: volume has an empty axis (shape {tuple(array.shape)})")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{path}: affine is singular or not finite")
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise InputError(f"{path}: volume contains NaN or infinite values")
    return Volume(array=array, affine=affine)


def write_volume(path: "str | Path", volume: Volume, *, dtype=None, intent: "tuple[str, str] | None" = None,
                 descrip: "str | None" = None) -> Path:
    """Write ``volume`` as NIfTI atomically (temp file in the same folder, then rename).

    Args:
        path: destination ``.nii`` or ``.nii.gz``.
        volume: the array and affine to store; the header's qform and sform are both set to the affine.
        dtype: on-disk data type (e.g. ``np.uint8`` for label maps); default keeps the array's.
        intent: optional ``(intent code, intent name)`` for the header, e.g. ``("label", "synapse8")``
            (the name is at most 15 characters).
        descrip: optional header description (at most 79 characters).
    """
    import nibabel as nib

    path = Path(path)
    array = volume.array if dtype is None else volume.array.astype(dtype, copy=False)
    image = nib.Nifti1Image(array, volume.affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(volume.affine, code=1)
    image.set_sform(volume.affine, code=1)
    if intent is not None:
        image.header.set_intent(intent[0], name=intent[1][:15])
    if descrip is not None:
        image.header["descrip"] = descrip[:79].encode("ascii", "replace")
    suffix = ".nii.gz" if str(path).endswith(".gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(image, str(tmp))
    return path


@contextlib.contextmanager
def atomic_path(path: "str | Path", suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error delete it.

    Use for every file a user keeps, so an interrupted write never leaves a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():  # mkstemp creates 0600; give the file the permissions a normal write would
            os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _current_umask() -> int:
    """The process's file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: "str | Path", data, *, indent: int = 2) -> Path:
    """Write ``data`` as JSON atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent, default=_json_default) + "\n")
    return path


def write_text(path: "str | Path", text: str) -> Path:
    """Write a text file atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def read_json(path: "str | Path") -> dict:
    """Read a JSON file; a missing or malformed file is an :class:`InputError` naming it."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({_first_line(exc)})") from None


def read_yaml_mapping(path: "str | Path", what: str = "config file") -> dict:
    """Read a YAML file whose top level is a mapping (an empty file gives ``{}``).

    Raises:
        ConfigError: the file is missing, is not valid YAML (the line is named), or is not a mapping.
    """
    import yaml

    from medseg.errors import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
