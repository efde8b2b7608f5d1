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
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import yaml

from medseg.errors import ConfigError, InputError, OutputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
PROVENANCE_TAG = b"medseg-provenance:"


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


def check_input_file(path: Path, error: type = InputError) -> None:
    """Raise ``error`` naming ``path`` unless it is an existing, non-empty regular file."""
    if not path.exists():
        raise error(f"{path}: file not found")
    if not path.is_file():
        raise error(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise error(f"{path}: file is empty")


def read_volume(path: "str | Path", *, dtype=None) -> Volume:
    """Read a 3D NIfTI file (``.nii`` or ``.nii.gz``) into a :class:`Volume`.

    Args:
        path: the file.
        dtype: optional numpy dtype to cast to (e.g. ``np.float32`` for images); default keeps the stored type
            after scaling (nibabel's ``dataobj`` semantics).

    Raises:
        InputError: the file is missing, truncated, corrupt, not 3D, holds RGB or complex voxels or NaN/inf image
            values, or its header gives a voxel spacing of 0 (nibabel would read it as 1 mm).
    """
    import nibabel as nib

    path = Path(path)
    check_input_file(path)
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
    _check_scalar_voxels(path, array)
    _check_header_spacing(path, image)
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


def _check_scalar_voxels(path: Path, array: np.ndarray) -> None:
    """InputError unless the voxels are real scalars (an RGB or complex NIfTI is not a CT or label volume)."""
    if array.dtype.fields is not None:
        raise InputError(f"{path}: holds {'/'.join(array.dtype.names)} colour voxels, not a scalar CT or label "
                         "volume")
    if np.iscomplexobj(array) or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise InputError(f"{path}: holds {array.dtype} voxels, not real numbers (a CT or label volume)")


def _check_header_spacing(path: Path, image) -> None:
    """InputError when the stored header gives a spatial voxel size (pixdim 1-3) of 0 or not a finite number.

    nibabel silently replaces such a pixdim by 1 when it loads the file, so volumes and distances computed from it
    would be in made-up millimetres; the raw header is read again without that fix to see the stored values.
    """
    import nibabel as nib

    header_class = type(image.header)
    if not hasattr(header_class, "from_fileobj") or "pixdim" not in image.header:
        return
    try:
        with nib.openers.ImageOpener(str(path)) as fileobj:
            raw = header_class.from_fileobj(fileobj, check=False)
        ndim = min(int(raw["dim"][0]), 3)
        pixdim = np.asarray(raw["pixdim"][1:1 + ndim], dtype=np.float64)
    except Exception:  # the header already loaded once; nothing more to learn from it
        return
    bad = [f"pixdim[{i + 1}]={value:g}" for i, value in enumerate(pixdim) if not np.isfinite(value) or value == 0]
    if bad:
        raise InputError(f"{path}: voxel spacing {', '.join(bad)} in the header: not a usable voxel size in mm")


def write_volume(path: "str | Path", volume: Volume, *, dtype=None, intent: "tuple[str, str] | None" = None,
                 descrip: "str | None" = None, provenance: "dict | None" = None) -> Path:
    """Write ``volume`` as NIfTI atomically (temp file in the same folder, then rename).

    Args:
        path: destination ``.nii`` or ``.nii.gz``.
        volume: the array and affine to store; the header's qform and sform are both set to the affine.
        dtype: on-disk data type (e.g. ``np.uint8`` for label maps); default keeps the array's.
        intent: optional ``(intent code, intent name)`` for the header, e.g. ``("label", "synapse8")``
            (the name is at most 15 characters).
        descrip: optional header description (at most 79 characters).
        provenance: plain JSON data recording what made the file (stored in a NIfTI "comment" header extension,
            read back with :func:`read_provenance`); other tools ignore it.
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
    if provenance is not None:
        content = PROVENANCE_TAG + json.dumps(provenance, sort_keys=True, default=_json_default).encode()
        image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", content))
    suffix = ".nii.gz" if str(path).endswith(".gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(image, str(tmp))
    return path


#: Every temporary file or folder medseg creates beside an output carries this mark, the host and the process id,
#: so a later run can tell an abandoned one (its process is gone) from one another run is still writing.
TEMP_MARK = ".medseg-tmp"
_TEMP_NAME = re.compile(r"^\.(?P<name>.*)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+" + re.escape(TEMP_MARK))
#: A temporary file from another host counts as abandoned after this long (its process cannot be checked).
FOREIGN_TEMP_AGE_S = 24 * 3600


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"


def temp_prefix(name: str) -> str:
    """Prefix of a temporary file or folder standing in for ``name`` (hidden, host and process id in the name)."""
    return f".{name}.{_host_tag()}.{os.getpid()}."


def file_sha256(path: "str | Path") -> str:
    """Hex SHA-256 of a file's contents (read in 1 MiB blocks): the identity of a source or checkpoint file.

    For a folder (a DICOM series), the SHA-256 of the relative names and contents of all its files, sorted by name.
    """
    path = Path(path)
    if path.is_dir():
        digest = hashlib.sha256()
        for member in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{member.relative_to(path).as_posix()}\0{file_sha256(member)}\n".encode())
        return digest.hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_provenance(path: "str | Path") -> "dict | None":
    """The provenance record :func:`write_volume` stored in a NIfTI file, or None when it holds none.

    Reads only the header. An unreadable file also gives None (the caller then treats it as made elsewhere).
    """
    import nibabel as nib

    try:
        extensions = nib.load(str(path)).header.extensions
    except Exception:  # any unreadable file: no usable record
        return None
    for extension in extensions:
        content = extension.get_content()
        if isinstance(content, bytes) and content.startswith(PROVENANCE_TAG):
            try:
                return json.loads(content[len(PROVENANCE_TAG):].rstrip(b"\0").decode())
            except (ValueError, UnicodeDecodeError):
                return None
    return None


# ----------------------------------------------------------------------------------------------------------------
# Geometry comparison: one tolerance, in mm, for every check that two files share a voxel grid.

#: Two affines describe the same voxel grid when no corner of the volume moves by more than this many mm
#: between them (float32 rounding of NIfTI headers is ~1e-5 mm; the smallest CT voxel is ~0.3 mm).
GRID_TOLERANCE_MM = 1e-3


def grid_difference_mm(affine_a: np.ndarray, affine_b: np.ndarray, shape) -> float:
    """Largest distance in mm between where the two affines put the 8 corner voxels of a volume of ``shape``."""
    corners = np.array(np.meshgrid(*[[0, max(int(n) - 1, 0)] for n in shape[:3]], indexing="ij")).reshape(3, -1)
    points = np.vstack([corners, np.ones(corners.shape[1])])
    moved = (np.asarray(affine_a, dtype=np.float64) - np.asarray(affine_b, dtype=np.float64)) @ points
    return float(np.sqrt((moved[:3] ** 2).sum(axis=0)).max())


def voxel_order_onto(shape, affine: np.ndarray, target_affine: np.ndarray) -> tuple[np.ndarray, tuple, np.ndarray]:
    """How to store a volume of ``shape`` / ``affine`` in the voxel order of ``target_affine`` (axes permuted and
    flipped only, never resampled).

    Returns:
        ``(transform, shape, affine)``: the nibabel orientation transform (for
        ``nibabel.orientations.apply_orientation``), and the shape and affine the volume has in the new order.
        Compare them with the target's (:func:`grid_difference_mm`) to tell whether both lie on one physical grid.
    """
    import nibabel.orientations as nio

    transform = nio.ornt_transform(nio.io_orientation(affine), nio.io_orientation(target_affine))
    new_shape = tuple(int(shape[int(axis)]) for axis in np.argsort(transform[:, 0]))
    new_affine = np.asarray(affine, dtype=np.float64) @ nio.inv_ornt_aff(transform, tuple(shape[:3]))
    return transform, new_shape, new_affine


@contextlib.contextmanager
def atomic_path(path: "str | Path", suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error delete it.

    Use for every file a user keeps, so an interrupted write never leaves a half-written file. A temporary file left
    by a killed process is removed by :func:`remove_stale_temps` on the next run in that folder.
    """
    path = Path(path)
    ensure_folder(path.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=f"{TEMP_MARK}{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():  # mkstemp creates 0600; give the file the permissions a normal write would
            os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def make_temp_dir(parent: "str | Path", name: str) -> Path:
    """Create a temporary folder standing in for ``parent/name`` (renamed into place by the caller when complete)."""
    parent = ensure_folder(parent)
    return Path(tempfile.mkdtemp(prefix=temp_prefix(name), suffix=TEMP_MARK, dir=parent))


def process_alive(pid: int) -> bool:
    """True when a process with this id exists on this host (also one owned by another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_stale_temp(path: "str | Path") -> bool:
    """True for a medseg temporary file or folder whose writing process has ended.

    On this host the process id is checked; a temporary from another host (a shared disk) counts as stale only
    when it is older than :data:`FOREIGN_TEMP_AGE_S`.
    """
    path = Path(path)
    match = _TEMP_NAME.match(path.name)
    if match is None:
        return False
    if match["host"] == _host_tag():
        pid = int(match["pid"])
        return pid != os.getpid() and not process_alive(pid)
    try:
        import time

        return time.time() - path.lstat().st_mtime > FOREIGN_TEMP_AGE_S
    except FileNotFoundError:
        return False


def remove_stale_temps(folder: "str | Path", recursive: bool = False) -> list[Path]:
    """Delete the temporary files and folders that killed medseg runs left in ``folder``; returns what went.

    Only names made by :func:`atomic_path` / :func:`make_temp_dir` whose process is gone are touched, so a run
    writing into the same folder at the same time (another ``--part-id``) is left alone.
    """
    import shutil

    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in list(folder.iterdir()):
        if is_stale_temp(entry):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
            logging.getLogger(__name__).info("%s: removed a temporary file left by an interrupted run", entry)
        elif recursive and entry.is_dir() and not entry.is_symlink():
            removed += remove_stale_temps(entry, recursive=True)
    return removed


def ensure_folder(path: "str | Path", what: str = "output folder") -> Path:
    """Create the folder ``path`` (and its parents) or raise a one-line :class:`OutputError` saying why not.

    Raises:
        OutputError: ``path`` or one of its parents is an existing file, or the folder cannot be created
            (permissions, read-only disk).
    """
    path = Path(path)
    if path.is_dir():
        return path
    check_output_path(path, what, folder=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create the {what} ({exc.strerror or type(exc).__name__})") from None
    return path


def check_output_path(path: "str | Path", what: str = "output", folder: bool = False) -> Path:
    """Check, before any work is done, that ``path`` can be written: no parent is a file, the nearest existing
    parent is a writable folder, and (for ``folder``) ``path`` itself is not a file. Creates nothing.

    Raises:
        OutputError: naming ``path`` and the problem.
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise OutputError(f"{path}: the {what} exists and is not a folder")
    parent = path if folder else path.parent
    for ancestor in [parent, *parent.parents]:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise OutputError(f"{path}: cannot create the {what}: {ancestor} is a file, not a folder")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise OutputError(f"{path}: cannot create the {what}: {ancestor} is not writable")
            break
    return path


def current_umask() -> int:
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


class _DuplicateKey(Exception):
    """A key given twice in one YAML mapping."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a key given twice in one mapping (the plain loader keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str) and key in seen:
                raise _DuplicateKey(f"key {key!r} given twice (lines {seen[key] + 1} and "
                                    f"{key_node.start_mark.line + 1})")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml_mapping(path: "str | Path", what: str = "config file") -> dict:
    """Read a YAML file whose top level is a mapping (an empty file gives ``{}``).

    Raises:
        ConfigError: the file is missing, is not valid YAML (the line is named), gives one key twice in a mapping
            (YAML would silently keep the last), or is not a mapping.
    """

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc}") from None
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
