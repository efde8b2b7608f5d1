"""DICOM in and out: CT series to volumes, label volumes to DICOM-SEG and RTSTRUCT.

Reading uses pydicom for the headers (grouping files into series, checking the slice geometry) and SimpleITK/GDCM
for the pixel data (every transfer syntax GDCM knows: uncompressed little or big endian, deflated, RLE, JPEG
lossless, JPEG-LS, JPEG 2000; RescaleSlope/RescaleIntercept applied, so the array holds HU). No DICOM parsing is
written here. Files group by SeriesInstanceUID, or where anonymisation left it empty by FrameOfReferenceUID +
orientation + pixel grid (:func:`series_key`; :attr:`Series.grouped_by` records which); an empty SOPInstanceUID is
taken from the file meta header.

Geometry, handled once, here:
    DICOM gives positions in patient LPS millimetres. A series becomes a :class:`medseg.io.Volume` indexed
    ``[i, j, k]`` = ``[column, row, slice]`` with a RAS+ affine, as nibabel reads the NIfTI file dcm2niix or
    SimpleITK would write from the same series: ``affine = diag(-1, -1, 1, 1) @ lps_affine``. Slices are ordered
    by their position along the slice normal ``cross(row direction, column direction)``, so ``k`` increases along
    that normal. A prediction on that volume maps back to DICOM pixels as ``labels[:, :, k].T`` = the ``(rows,
    columns)`` frame of slice ``k``.

A series that would give a wrong volume is refused with one line naming it and the reason: missing slices, uneven
spacing, gantry tilt (slices sheared against their normal), all slices at one position, mixed orientations or pixel
grids, duplicate positions, a single slice, multi-frame files, or a Modality other than CT.

Writing:
    :func:`write_series` writes a volume as a CT series (tests, and turning a NIfTI into DICOM for a viewer);
    :func:`write_dicom_seg` writes a DICOM-SEG with highdicom (one segment per organ, coded with SNOMED CT,
    referencing the source series); :func:`write_rtstruct` writes an RT Structure Set built with pydicom (one ROI
    per organ, closed planar contours per slice traced with scikit-image's marching squares). Both reference the
    source through :func:`source_headers` (UIDs the source lacks are minted by :func:`output_uids` and reported)
    and pass dicom3tools' ``dciodvfy`` without errors.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import logging
import re
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from skimage import measure

from medseg.errors import InputError
from medseg.io import Volume, atomic_path, read_volume

log = logging.getLogger(__name__)

#: LPS (DICOM patient) <-> RAS (NIfTI world) for positions: flip x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: How far (share of the slice step, 2 %, but at least SLICE_JITTER_MM) a slice may sit from a regular grid through
#: the first and last slice before the series counts as uneven; positions are often written with 2 decimals.
SPACING_TOLERANCE = 0.02
SLICE_JITTER_MM = 0.02
#: Absolute tolerances (mm, and direction cosines) for positions and orientations.
POSITION_TOLERANCE_MM = 1e-3
ORIENTATION_TOLERANCE = 1e-4

#: SNOMED CT codes of the organs, (code value, meaning), as DICOM's CID 7166 / TotalSegmentator use them.
ORGAN_CODES: dict[str, tuple[str, str]] = {
    "spleen": ("78961009", "Spleen"),
    "kidney_right": ("9846003", "Right kidney"),
    "kidney_left": ("18639004", "Left kidney"),
    "gallbladder": ("28231008", "Gallbladder"),
    "esophagus": ("32849002", "Esophagus"),
    "liver": ("10200004", "Liver"),
    "stomach": ("69695003", "Stomach"),
    "aorta": ("15825003", "Aorta"),
    "inferior_vena_cava": ("64131007", "Inferior vena cava"),
    "portal_splenic_vein": ("32764006", "Portal vein"),
    "pancreas": ("15776009", "Pancreas"),
    "adrenal_right": ("281625002", "Right adrenal gland"),
    "adrenal_left": ("281624003", "Left adrenal gland"),
}

_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
#: SOP classes that hold no image slices (SEG, RTSTRUCT, SR, presentation states...) are skipped when scanning.
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR
_IMAGE_FREE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "REG"}


#: How :func:`find_series` grouped a series' files (recorded in :meth:`Series.summary`).
GROUPED_BY_SERIES_UID = "SeriesInstanceUID"
GROUPED_BY_GEOMETRY = "FrameOfReferenceUID+orientation+grid"


@dataclass(frozen=True)
class Series:
    """One DICOM image series found on disk.

    Attributes:
        uid: SeriesInstanceUID ('' when the files have none; see ``grouped_by``).
        files: the slice files, sorted along the slice normal (see the module docstring).
        patient_id, study_date, series_number, description, modality: from the first file ('' when absent).
        name: the output stem, unique in the input (set by :func:`find_series`, see :func:`_named`).
        grouped_by: the rule that put the files together: :data:`GROUPED_BY_SERIES_UID`, or for files without a
            SeriesInstanceUID :data:`GROUPED_BY_GEOMETRY` (same FrameOfReferenceUID, ImageOrientationPatient,
            Rows, Columns and PixelSpacing).
        study_uid, frame_of_reference_uid: from the first file ('' when absent or empty).
        sop_uids: each file's SOPInstanceUID, or its file meta MediaStorageSOPInstanceUID when the dataset's is
            empty ('' when both are), in ``files`` order.
        sop_uids_from_file_meta: how many of ``sop_uids`` came from the file meta only.
    """

    uid: str
    files: tuple[Path, ...]
    patient_id: str = ""
    study_date: str = ""
    series_number: str = ""
    description: str = ""
    modality: str = ""
    name: str = ""
    grouped_by: str = GROUPED_BY_SERIES_UID
    study_uid: str = ""
    frame_of_reference_uid: str = ""
    sop_uids: tuple[str, ...] = ()
    sop_uids_from_file_meta: int = 0

    def label(self) -> str:
        """How error messages name the series: its folder and UID (or its name when it has no UID)."""
        folder = self.files[0].parent if self.files else ""
        if self.uid:
            return f"{folder} (series {self.uid})"
        return f"{folder} (series '{self.name or '?'}', no SeriesInstanceUID)"

    def summary(self) -> dict:
        """Plain-data description for summaries: identity, the rule that grouped the files, and which UIDs DICOM
        outputs take from the file meta or mint (see :func:`output_uids`)."""
        return {"series_instance_uid": self.uid, "patient_id": self.patient_id, "study_date": self.study_date,
                "series_number": self.series_number, "description": self.description, "modality": self.modality,
                "slices": len(self.files), "folder": str(self.files[0].parent) if self.files else "",
                "grouped_by": self.grouped_by, "minted_uids": output_uids(self).minted,
                "sop_uids_from_file_meta": self.sop_uids_from_file_meta}


@dataclass(frozen=True)
class OutputUids:
    """The source UIDs a DICOM-SEG or RTSTRUCT references (see :func:`output_uids`).

    Attributes:
        study, series, frame_of_reference: the series' own UIDs, or minted ones where its files hold none.
        minted: ``{keyword: minted UID}`` of the UIDs the files lack (empty when they hold all three).
    """

    study: str
    series: str
    frame_of_reference: str
    minted: dict


def output_uids(series: Series) -> OutputUids:
    """The Study, Series and Frame of Reference UIDs that outputs of ``series`` reference: the files' own, else
    minted.

    A UID the files leave empty is minted: a new UID is what DICOM prescribes wherever an identity is created, and
    it is derived from the slices' SOP Instance UIDs and file names, so the DICOM-SEG and the RTSTRUCT of one
    series, and reruns, reference the same minted UIDs. SOP Instance UIDs are never minted (a reference must name
    the instance a viewer holds); see :func:`source_headers`.
    """
    seed = [*series.sop_uids, *(p.name for p in series.files)]
    own = {"StudyInstanceUID": series.study_uid, "SeriesInstanceUID": series.uid,
           "FrameOfReferenceUID": series.frame_of_reference_uid}
    minted = {key: generate_uid(entropy_srcs=[key, *seed]) for key, value in own.items() if not value}
    return OutputUids(study=own["StudyInstanceUID"] or minted.get("StudyInstanceUID", ""),
                      series=own["SeriesInstanceUID"] or minted.get("SeriesInstanceUID", ""),
                      frame_of_reference=own["FrameOfReferenceUID"] or minted.get("FrameOfReferenceUID", ""),
                      minted=minted)


# ----------------------------------------------------------------------------------------------------------------
# Finding series


def is_dicom_file(path: Path) -> bool:
    """True for a file with the DICOM preamble (``DICM`` at byte 128, as every Part 10 file has)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_input(path: "str | Path") -> bool:
    """True when ``path`` is a ``.zip`` file, or a folder holding (at any depth) DICOM files and no NIfTI/h5."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".zip"
    if not path.is_dir():
        return False
    return any(_dicom_files(path, limit=1))


def _dicom_files(folder: Path, limit: "int | None" = None) -> Iterator[Path]:
    found = 0
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith(".") and is_dicom_file(path):
            yield path
            found += 1
            if limit is not None and found >= limit:
                return


def _text(header, keyword: str) -> str:
    """A tag's value as stripped text ('' when absent or empty)."""
    return str(getattr(header, keyword, "") or "").strip()


def skip_reason(header) -> str:
    """Why a DICOM file is no slice of a CT volume ('' when it may be one): a DICOMDIR (CD and USB exports carry
    one), an image-free object by Modality (SEG, RTSTRUCT, SR, ...), a file without Rows, or a localizer (scout:
    ImageType LOCALIZER, a projection image that study exports put beside the volumes)."""
    if _text(getattr(header, "file_meta", None), "MediaStorageSOPClassUID") == _MEDIA_STORAGE_DIRECTORY:
        return "DICOMDIR"
    if _text(header, "Modality").upper() in _IMAGE_FREE_MODALITIES or not _text(header, "Rows"):
        return "non-image object"
    image_type = [str(v).strip().upper() for v in (getattr(header, "ImageType", None) or [])]
    if "LOCALIZER" in image_type:
        return "localizer"
    return ""


def sop_instance_uid(header) -> tuple[str, bool]:
    """``(SOP Instance UID, taken from the file meta)``: the dataset's SOPInstanceUID, or when that is empty or
    absent the file meta's MediaStorageSOPInstanceUID (Part 10 requires both to be equal); '' when neither exists."""
    own = _text(header, "SOPInstanceUID")
    if own:
        return own, False
    meta = _text(getattr(header, "file_meta", None), "MediaStorageSOPInstanceUID")
    return meta, bool(meta)


def series_key(header) -> tuple[str, tuple]:
    """``(rule, key)`` that groups a file into its series.

    Files with a SeriesInstanceUID group by it (rule :data:`GROUPED_BY_SERIES_UID`). Files without one group by
    FrameOfReferenceUID, ImageOrientationPatient (rounded to 1e-4), Rows, Columns and PixelSpacing (rounded to
    1e-4 mm) (rule :data:`GROUPED_BY_GEOMETRY`): slices of one volume share all of them, and a group that still
    mixes acquisitions is refused by :func:`check_geometry` (slices at the same position).
    """
    uid = _text(header, "SeriesInstanceUID")
    if uid:
        return GROUPED_BY_SERIES_UID, (uid,)
    try:
        orientation = tuple(round(float(v), 4) + 0.0 for v in header.ImageOrientationPatient)
        spacing = tuple(round(float(v), 4) for v in header.PixelSpacing)
    except (AttributeError, ValueError, TypeError):
        orientation, spacing = (), ()
    return GROUPED_BY_GEOMETRY, (_text(header, "FrameOfReferenceUID"), orientation,
                                 _text(header, "Rows"), _text(header, "Columns"), spacing)


def find_series(folder: "str | Path") -> list[Series]:
    """Every image series below ``folder`` (any depth), grouped by :func:`series_key`.

    Files without the DICOM preamble are ignored, and so are DICOMDIR files, SEG, RTSTRUCT, SR and other image-free
    objects, and localizers (see :func:`skip_reason`; logged as one line). The geometry is not checked here (see
    :func:`read_series`).

    Raises:
        InputError: an unreadable DICOM file, or the folder holds no DICOM image files.
    """
    folder = Path(folder)
    groups: dict[tuple, list[tuple[Path, object]]] = {}
    skipped: dict[str, int] = {}
    for path in _dicom_files(folder):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # pydicom raises several types for a corrupt file
            raise InputError(f"{path}: unreadable DICOM file ({_first_line(exc)})") from None
        reason = skip_reason(header)
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        groups.setdefault(series_key(header), []).append((path, header))
    if skipped:
        log.info("%s: skipped %s", folder, ", ".join(f"{n} {reason} file(s)" for reason, n in sorted(skipped.items())))
    if not groups:
        found = f" (only {', '.join(f'{n} {reason}' for reason, n in sorted(skipped.items()))})" if skipped else ""
        raise InputError(f"{folder}: no DICOM image files found{found}")
    series = [_series_of(rule, members) for (rule, _), members in groups.items()]
    return _named(sorted(series, key=lambda s: (s.patient_id, s.study_date, _int_or(s.series_number), s.uid,
                                                s.sop_uids)))


def _series_of(rule: str, members: list[tuple[Path, object]]) -> Series:
    """A :class:`Series` (not yet named) of one group's ``(path, header)`` members."""
    members = _sort_along_normal(members)
    first = members[0][1]
    sops = [sop_instance_uid(header) for _, header in members]
    return Series(
        uid=_text(first, "SeriesInstanceUID") if rule == GROUPED_BY_SERIES_UID else "",
        files=tuple(p for p, _ in members), patient_id=_text(first, "PatientID"),
        study_date=_text(first, "StudyDate"), series_number=_text(first, "SeriesNumber"),
        description=_text(first, "SeriesDescription"), modality=_text(first, "Modality"), grouped_by=rule,
        study_uid=_text(first, "StudyInstanceUID"), frame_of_reference_uid=_text(first, "FrameOfReferenceUID"),
        sop_uids=tuple(uid for uid, _ in sops), sop_uids_from_file_meta=sum(meta for _, meta in sops),
    )


def _named(series: list[Series]) -> list[Series]:
    """Give each series its output stem: ``PatientID_StudyDate_SeriesNumber`` from the parts that are not empty
    (else the SeriesDescription, else ``series``), file-name safe; a stem that several series share gets
    ``_`` and 8 hex digits of the series' Series UID (its own or minted, see :func:`output_uids`) appended."""
    stems = []
    for s in series:
        readable = "_".join(part for part in (s.patient_id, s.study_date, s.series_number) if part)
        stems.append(_safe_name(readable or s.description or "series"))
    named = []
    for s, stem in zip(series, stems):
        if stems.count(stem) > 1:
            stem = f"{stem}_{hashlib.sha1(output_uids(s).series.encode()).hexdigest()[:8]}"
        named.append(dataclasses.replace(s, name=stem))
    return named


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "series"


def _int_or(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def _sort_along_normal(members: list[tuple[Path, object]]) -> list[tuple[Path, object]]:
    """Members sorted by position along the normal of the first file's orientation (unsortable: as found)."""
    try:
        normal = _normal(_orientation(members[0][1]))
        return sorted(members, key=lambda m: float(np.dot(_position(m[1]), normal)))
    except (AttributeError, ValueError, TypeError, IndexError):
        return members


@contextlib.contextmanager
def open_dicom_input(path: "str | Path") -> Iterator[list[Series]]:
    """The series of a DICOM folder or ``.zip`` (extracted into a temporary folder that lives for the block).

    Raises:
        InputError: not a zip file, a member that would land outside the folder, or no DICOM image files.
    """
    path = Path(path)
    if path.is_dir():
        yield find_series(path)
        return
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a zip file")
    with tempfile.TemporaryDirectory(prefix="medseg-dicom-") as tmp:
        root = Path(tmp).resolve()
        try:
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    target = (root / member).resolve()
                    if root != target and root not in target.parents:
                        raise InputError(f"{path}: member {member!r} points outside the archive folder")
                archive.extractall(root)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise InputError(f"{path}: truncated or corrupt zip file ({_first_line(exc)})") from None
        try:
            found = find_series(root)
        except InputError:
            raise InputError(f"{path}: no DICOM image files in the zip file") from None
        yield found


# ----------------------------------------------------------------------------------------------------------------
# Reading one series


def _orientation(header) -> np.ndarray:
    return np.asarray([float(v) for v in header.ImageOrientationPatient], dtype=np.float64)


def _position(header) -> np.ndarray:
    return np.asarray([float(v) for v in header.ImagePositionPatient], dtype=np.float64)


def _normal(orientation: np.ndarray) -> np.ndarray:
    normal = np.cross(orientation[:3], orientation[3:])
    return normal / np.linalg.norm(normal)


def check_geometry(headers: list, source: str) -> np.ndarray:
    """Check that the slices (sorted along their normal) form one regular volume; return its LPS affine.

    Args:
        headers: pydicom datasets of the slices, sorted along the slice normal.
        source: what to name in error messages (the series folder and UID).

    Returns:
        4x4 voxel-to-LPS affine for indices ``(column, row, slice)`` in mm.

    Raises:
        InputError: one line naming the problem (missing tags, single slice, multi-frame, mixed orientations or
            pixel grids, duplicate positions, gantry tilt, missing slices, uneven spacing).
    """
    if any(int(getattr(h, "NumberOfFrames", 1) or 1) > 1 for h in headers):
        raise InputError(f"{source}: multi-frame (enhanced) DICOM is not supported; export classic slices")
    if len(headers) < 2:
        raise InputError(f"{source}: a single slice, not a volume")
    try:
        orientations = np.stack([_orientation(h) for h in headers])
        positions = np.stack([_position(h) for h in headers])
        grids = {(int(h.Rows), int(h.Columns), tuple(round(float(v), 6) for v in h.PixelSpacing)) for h in headers}
    except (AttributeError, ValueError, TypeError) as exc:
        raise InputError(f"{source}: slices lack image geometry tags ({_first_line(exc)})") from None
    if np.abs(orientations - orientations[0]).max() > ORIENTATION_TOLERANCE:
        raise InputError(f"{source}: mixed slice orientations (ImageOrientationPatient differs between slices)")
    if len(grids) > 1:
        raise InputError(f"{source}: slices differ in Rows/Columns/PixelSpacing")
    row_direction, column_direction = orientations[0][:3], orientations[0][3:]
    normal = _normal(orientations[0])
    along = positions @ normal
    steps = np.diff(along)
    if np.ptp(along) < POSITION_TOLERANCE_MM:
        raise InputError(f"{source}: all {len(headers)} slices at one position ({along[0]:.2f} mm along the "
                         "normal): not a volume (a localizer, or repeated scans of one slice?)")
    if np.any(steps < POSITION_TOLERANCE_MM):
        at = int(np.argmin(steps))
        raise InputError(f"{source}: two slices at the same position ({along[at]:.2f} mm along the normal); "
                         "several acquisitions in one series?")
    deltas = np.diff(positions, axis=0)
    shear = np.linalg.norm(deltas - np.outer(deltas @ normal, normal), axis=1)
    if shear.max() > max(POSITION_TOLERANCE_MM, 1e-3 * float(np.abs(steps).max())):
        tilt = float(np.degrees(np.arctan2(shear.max(), steps[int(np.argmax(shear))])))
        uneven = f", and uneven steps ({steps.min():.2f} to {steps.max():.2f} mm along the normal)" \
            if not _regular(along) else ""
        raise InputError(f"{source}: gantry tilt ({tilt:.1f} degrees between slice positions and their normal"
                         f"{uneven}); resample the series to an orthogonal grid first")
    step = float(np.median(steps))
    gaps = steps > 1.5 * step
    if np.any(gaps):
        at = int(np.argmax(gaps))
        ratio = steps[at] / step
        if abs(ratio - round(ratio)) < 0.1 * round(ratio):
            raise InputError(f"{source}: missing slice(s): a {steps[at]:.2f} mm gap between slices at "
                             f"{along[at]:.2f} and {along[at + 1]:.2f} mm (spacing elsewhere {step:.2f} mm)")
    if not _regular(along):
        raise InputError(f"{source}: uneven slice spacing ({steps.min():.2f} to {steps.max():.2f} mm); "
                         "resample the series to a regular grid first")
    row_spacing, column_spacing = (float(v) for v in headers[0].PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = row_direction * column_spacing
    affine[:3, 1] = column_direction * row_spacing
    affine[:3, 2] = (positions[-1] - positions[0]) / (len(headers) - 1)
    affine[:3, 3] = positions[0]
    return affine


def _regular(along: np.ndarray) -> bool:
    """True when sorted slice positions ``along`` the normal (mm) lie on a regular grid through the first and last:
    none more than :data:`SPACING_TOLERANCE` of the median step (at least :data:`SLICE_JITTER_MM`) off it."""
    step = float(np.median(np.diff(along)))
    regular = along[0] + np.arange(len(along)) * (along[-1] - along[0]) / (len(along) - 1)
    return bool(np.abs(along - regular).max() <= max(SPACING_TOLERANCE * step, SLICE_JITTER_MM))


def read_headers(series: Series) -> list:
    """pydicom datasets (no pixel data) of the series' slices, in its slice order."""
    headers = []
    for path in series.files:
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception as exc:
            raise InputError(f"{path}: unreadable DICOM file ({_first_line(exc)})") from None
    return headers


def read_series(series: Series) -> Volume:
    """Read one series as a HU volume with its RAS affine (see the module docstring for the axes).

    The array is int16 when every value is a whole number in int16 range after RescaleSlope/Intercept (the usual
    CT case), else float32.

    Raises:
        InputError: not a CT series (Modality), bad geometry (see :func:`check_geometry`) or pixel data GDCM cannot
            decode.
    """

    source = series.label()
    headers = read_headers(series)
    modalities = sorted({_text(h, "Modality").upper() or "unknown" for h in headers})
    if modalities != ["CT"]:
        raise InputError(f"{source}: modality {'/'.join(modalities)}, not CT; medseg's models segment CT "
                         "(in HU), so this series is not read")
    lps_affine = check_geometry(headers, source)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in series.files])
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{source}: cannot decode the pixel data ({_first_line(exc)})") from None
    array = np.transpose(sitk.GetArrayViewFromImage(image), (2, 1, 0))  # (slice, row, col) -> (col, row, slice)
    _check_reader_geometry(image, lps_affine, source)
    if not np.all(np.isfinite(array)):
        raise InputError(f"{source}: pixel data contains NaN or infinite values")
    if np.all(array == np.round(array)) and array.min() >= -32768 and array.max() <= 32767:
        array = array.astype(np.int16)
    else:
        array = np.ascontiguousarray(array, dtype=np.float32)
    return Volume(array=array, affine=LPS_TO_RAS @ lps_affine)


def _check_reader_geometry(image, lps_affine: np.ndarray, source: str) -> None:
    """Refuse when SimpleITK's geometry disagrees with the one checked here (a reader bug must not pass silently).

    Origin and directions must agree to 1e-3 mm / 1e-4; the slice spacing within :data:`SPACING_TOLERANCE` (a
    reader may take it from the first two slices, here it is the mean step over the whole series).
    """
    spacing = np.linalg.norm(lps_affine[:3, :3], axis=0)
    direction = lps_affine[:3, :3] / spacing
    theirs_spacing = np.asarray(image.GetSpacing())
    agree = (np.allclose(np.asarray(image.GetOrigin()), lps_affine[:3, 3], atol=POSITION_TOLERANCE_MM)
             and np.allclose(np.asarray(image.GetDirection()).reshape(3, 3), direction, atol=ORIENTATION_TOLERANCE)
             and np.allclose(theirs_spacing[:2], spacing[:2], rtol=1e-4)
             and abs(theirs_spacing[2] - spacing[2]) <= SPACING_TOLERANCE * spacing[2])
    if not agree:
        raise InputError(f"{source}: SimpleITK's geometry of the series differs from its slice positions")


def read_dicom(path: "str | Path") -> Volume:
    """Read a folder or ``.zip`` holding exactly one DICOM image series.

    Raises:
        InputError: no series, several series (use :func:`open_dicom_input` to read each), or bad geometry.
    """
    with open_dicom_input(path) as series:
        if len(series) > 1:
            raise InputError(f"{path}: {len(series)} DICOM series found ({', '.join(s.name for s in series[:3])}"
                             f"{', ...' if len(series) > 3 else ''}); expected one")
        return read_series(series[0])


def read_image(path: "str | Path", *, dtype=None) -> Volume:
    """Read a CT image: a NIfTI file (:func:`medseg.io.read_volume`) or one DICOM series (folder or ``.zip``)."""
    path = Path(path)
    if path.is_dir() or (path.is_file() and path.suffix.lower() == ".zip"):
        volume = read_dicom(path)
        return volume if dtype is None else Volume(volume.array.astype(dtype, copy=False), volume.affine)
    return read_volume(path, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------------
# Writing a CT series


def write_series(volume: Volume, folder: "str | Path", *, patient_id: str = "ANON", study_date: str = "20000101",
                 series_number: int = 1, description: str = "medseg", study_uid: "str | None" = None,
                 series_uid: "str | None" = None, intercept: "float | None" = None) -> list[Path]:
    """Write ``volume`` (HU, RAS affine) as a CT Image Storage series, one file per slice ``k``.

    Pixels are stored as unsigned 16-bit ``round(HU) - intercept`` with RescaleIntercept ``intercept`` (default:
    -1024, or the volume's minimum when lower) and slope 1, so :func:`read_series` gives back the same array and
    affine. The affine must have orthogonal axes (a sheared affine has no DICOM equivalent).

    Returns:
        The slice files, ``IM0001.dcm``... in ``k`` order.

    Raises:
        InputError: a sheared affine, or HU values that do not fit the stored range.
    """

    folder = Path(folder)
    lps = LPS_TO_RAS @ np.asarray(volume.affine, dtype=np.float64)
    columns_axis, rows_axis, slice_axis = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    column_spacing, row_spacing = float(np.linalg.norm(columns_axis)), float(np.linalg.norm(rows_axis))
    row_direction, column_direction = columns_axis / column_spacing, rows_axis / row_spacing
    normal = np.cross(row_direction, column_direction)
    thickness = float(np.linalg.norm(slice_axis))
    if abs(abs(float(np.dot(normal, slice_axis))) - thickness) > 1e-4 * thickness or \
            abs(float(np.dot(row_direction, column_direction))) > 1e-6:
        raise InputError("write_series: the affine is sheared; DICOM slices need orthogonal axes")
    if intercept is None:
        intercept = min(-1024.0, float(np.floor(np.min(volume.array))))
    stored = np.round(np.asarray(volume.array, dtype=np.float64) - intercept)
    if stored.min() < 0 or stored.max() > 65535:
        raise InputError(f"write_series: values {volume.array.min()}..{volume.array.max()} do not fit uint16 "
                         f"with intercept {intercept}")
    stored = stored.astype(np.uint16)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(volume.array.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = _CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = _CT_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID = f"{patient_id or 'ANON'}^", patient_id
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study_uid, study_date, "120000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "CT", series_uid, int(series_number)
        ds.SeriesDescription, ds.Manufacturer = description, "medseg"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
        ds.PatientPosition, ds.Laterality = "", ""  # Type 2C: unknown here, present and empty
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.InstanceNumber, ds.AcquisitionNumber = k + 1, 1
        ds.ContentDate, ds.ContentTime = study_date, "120000"
        ds.ImagePositionPatient = [_ds(v) for v in lps[:3, 3] + k * slice_axis]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_direction, *column_direction)]
        ds.PixelSpacing = [_ds(row_spacing), _ds(column_spacing)]
        ds.SliceThickness = _ds(thickness)
        ds.KVP = ""
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = int(volume.array.shape[1]), int(volume.array.shape[0])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = _ds(intercept), "1", "HU"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        path = folder / f"IM{k + 1:04d}.dcm"
        with atomic_path(path, suffix=".dcm") as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        paths.append(path)
    return paths


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    text = f"{float(value):.10g}"
    return text if len(text) <= 16 else f"{float(value):.6g}"


# ----------------------------------------------------------------------------------------------------------------
# DICOM-SEG


def organ_code(organ: str):
    """The SNOMED CT code of an organ key as a highdicom CodedConcept (``Organ`` when the organ has no code)."""
    value, meaning = ORGAN_CODES.get(organ, ("91772007", "Organ"))
    return hd.sr.CodedConcept(value=value, scheme_designator="SCT", meaning=meaning)


def frames_of(labels: Volume) -> np.ndarray:
    """A label volume on a series' grid as DICOM frames ``(slice, rows, columns)`` in the series' slice order."""
    return np.ascontiguousarray(np.transpose(np.asarray(labels.array), (2, 1, 0)))


def source_headers(series: Series, output: str) -> list:
    """The series' headers (no pixel data) with the UIDs an ``output`` (e.g. ``"DICOM-SEG"``) references filled in:
    SOPInstanceUID from the file meta where the dataset's is empty, Study/Series/Frame of Reference UIDs from
    :func:`output_uids` (minted where the files hold none).

    Raises:
        InputError: one line naming a slice file with no SOP Instance UID at all (neither in the dataset nor in
            the file meta): ``output`` cannot reference that slice, so it is not written.
    """
    uids = output_uids(series)
    headers = read_headers(series)
    for path, header, sop_uid in zip(series.files, headers, series.sop_uids):
        if not sop_uid:
            raise InputError(f"{path}: no SOPInstanceUID (nor MediaStorageSOPInstanceUID in the file meta); "
                             f"a {output} cannot reference this slice, so none is written for {series.name}")
        header.SOPInstanceUID = sop_uid
        header.StudyInstanceUID, header.SeriesInstanceUID = uids.study, uids.series
        header.FrameOfReferenceUID = uids.frame_of_reference
    return headers


def _sources_and_frames(labels: Volume, series: Series, path, output: str) -> tuple[list, np.ndarray]:
    """The series' headers (:func:`source_headers`) and the labels as its frames; a label volume on another grid
    is an InputError."""
    sources = source_headers(series, output)
    frames = frames_of(labels)
    if frames.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise InputError(f"{path}: label volume {labels.shape} does not match the grid of {series.label()}")
    return sources, frames


def organ_masks(frames: np.ndarray, label_set, organs: "list[str] | None" = None) -> tuple[list, list[str]]:
    """``([(class value, organ, display name, mask), ...], [organs without a voxel])`` of the kept organs."""
    present, empty = [], []
    for class_index, (organ, display) in enumerate(zip(label_set.organs, label_set.display_names), start=1):
        if organs is not None and organ not in organs:
            continue
        mask = frames == class_index
        if mask.any():
            present.append((class_index, organ, display, mask))
        else:
            empty.append(organ)
    return present, empty


def write_dicom_seg(labels: Volume, series: Series, label_set, path: "str | Path", *,
                    organs: "list[str] | None" = None, description: str = "medseg segmentation",
                    software_version: str = "") -> dict:
    """Write a DICOM-SEG (binary, one segment per organ present) referencing ``series``.

    Args:
        labels: predicted classes on the series' grid (as returned for :func:`read_series`'s volume).
        series: the source series.
        label_set: :class:`medseg.labels.LabelSet` of ``labels``.
        path: the ``.dcm`` file to write (atomically).
        organs: organ keys to include (default all); organs with no voxel are left out (a segment needs frames).
        description: SeriesDescription of the SEG.

    Returns:
        ``{"segments": {segment_number: organ}, "empty": [organ, ...], "minted_uids": {keyword: uid}}`` (the
        source UIDs the files lacked and :func:`output_uids` minted).

    Raises:
        InputError: no organ to write, labels on another grid, or a slice without any SOP Instance UID.
    """
    sources, frames = _sources_and_frames(labels, series, path, "DICOM-SEG")
    segments, descriptions = {}, []
    segment_map = np.zeros(frames.shape, dtype=np.uint8)
    present, empty = organ_masks(frames, label_set, organs)
    for class_index, organ, display, mask in present:
        number = len(segments) + 1
        segments[number] = organ
        segment_map[mask] = number
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=display,
            segmented_property_category=codes.SCT.Organ, segmented_property_type=organ_code(organ),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name="medseg", version=software_version or "0", family=codes.cid7162.ArtificialIntelligence),
            tracking_uid=hd.UID(), tracking_id=f"{organ}",
        ))
    if not segments:
        raise InputError(f"{path}: no organ in the prediction; a DICOM-SEG needs at least one segment")
    with _highdicom_info_as_debug():
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=segment_map, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(),
            series_number=_seg_series_number(series), sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="medseg", manufacturer_model_name="medseg", software_versions=software_version or "0",
            device_serial_number="0", series_description=description, omit_empty_frames=True,
        )
    with atomic_path(path, suffix=".dcm") as tmp:
        seg.save_as(tmp)
    return {"segments": segments, "empty": empty, "minted_uids": output_uids(series).minted}


class _DemoteInfo(logging.Handler):
    """Passes highdicom's warnings and errors on to the root logger's handlers, logs its INFO records with this
    module's logger at DEBUG level, and drops its own DEBUG records (hundreds of lines per DICOM-SEG)."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno > logging.INFO:
            logging.getLogger().handle(record)
        elif record.levelno == logging.INFO:
            log.debug("highdicom: %s", record.getMessage())


@contextlib.contextmanager
def _highdicom_info_as_debug() -> Iterator[None]:
    """While the block runs, highdicom's INFO records (about forty lines per DICOM-SEG) reach the user only with
    debug logging on (``medseg -v``); its log warnings and errors pass unchanged, and its Python warnings about
    the source's values (e.g. a one-component PatientName) are logged as one debug line each."""
    highdicom_log = logging.getLogger("highdicom")
    handler, propagate = _DemoteInfo(), highdicom_log.propagate
    highdicom_log.addHandler(handler)
    highdicom_log.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            yield
        for warning in caught:
            log.debug("highdicom: %s", _first_line(warning.message))
    finally:
        highdicom_log.propagate = propagate
        highdicom_log.removeHandler(handler)


def _seg_series_number(series: Series) -> int:
    return 1000 + _int_or(series.series_number)


# ----------------------------------------------------------------------------------------------------------------
# RTSTRUCT


def slice_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours of a 2D binary ``(rows, columns)`` mask, each ``(N, 2)`` in (row, column) pixel units.

    The contours run along the 0.5 iso-line of the mask (marching squares on a zero-padded copy), so they enclose
    the pixel centres of the mask; a hole gives its own contour (viewers combine nested contours by parity).
    """

    padded = np.pad(mask.astype(np.float32), 1)
    contours = []
    for contour in measure.find_contours(padded, 0.5):
        if len(contour) >= 4:
            contours.append(contour[:-1] - 1.0)  # drop the repeated closing point, undo the padding
    return contours


def write_rtstruct(labels: Volume, series: Series, label_set, path: "str | Path", *,
                   organs: "list[str] | None" = None, label: str = "medseg") -> dict:
    """Write an RT Structure Set with one ROI per organ present, referencing ``series``' slices.

    Contour points are in patient LPS mm on each slice's plane (``ImagePositionPatient + column * dc * row
    direction + row * dr * column direction``). The structure set is built with pydicom.

    Returns:
        ``{"rois": {roi_number: organ}, "empty": [organ, ...], "minted_uids": {keyword: uid}}`` (the source UIDs
        the files lacked and :func:`output_uids` minted).

    Raises:
        InputError: no organ to write, labels on another grid, or a slice without any SOP Instance UID.
    """

    sources, frames = _sources_and_frames(labels, series, path, "RTSTRUCT")
    first = sources[0]
    ds = _rtstruct_dataset(series, first, label)
    ds.ReferencedFrameOfReferenceSequence = Sequence([_rtstruct_referenced_frame(series, sources)])

    rois = {}
    roi_items, contour_items, observation_items = [], [], []
    present, empty = organ_masks(frames, label_set, organs)
    for class_index, organ, display, mask in present:
        number = len(rois) + 1
        rois[number] = organ
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, first.FrameOfReferenceUID
        roi.ROIName, roi.ROIGenerationAlgorithm = display, "AUTOMATIC"
        roi_items.append(roi)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ROIDisplayColor = list(label_set.colours[class_index - 1])
        roi_contour.ContourSequence = Sequence(_rtstruct_contours(mask, sources))
        contour_items.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.RTROIInterpretedType, observation.ROIInterpreter = "ORGAN", ""
        observation_items.append(observation)
    if not rois:
        raise InputError(f"{path}: no organ in the prediction; an RTSTRUCT needs at least one structure")
    ds.StructureSetROISequence = Sequence(roi_items)
    ds.ROIContourSequence = Sequence(contour_items)
    ds.RTROIObservationsSequence = Sequence(observation_items)
    with atomic_path(path, suffix=".dcm") as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    return {"rois": rois, "empty": empty, "minted_uids": output_uids(series).minted}


def _rtstruct_dataset(series: Series, first, label: str):
    """A new RT Structure Set dataset (file meta, patient and study copied from the series' ``first`` slice, new
    series, structure set ``label`` dated now), without its references and ROIs."""
    now_date, now_time = _now()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _RTSTRUCT_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = _RTSTRUCT_STORAGE, meta.MediaStorageSOPInstanceUID
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "FrameOfReferenceUID",
                    "PositionReferenceIndicator"):
        setattr(ds, keyword, getattr(first, keyword, ""))
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "RTSTRUCT", generate_uid(), _seg_series_number(series) + 1
    ds.SeriesDescription, ds.Manufacturer, ds.OperatorsName = "medseg structures", "medseg", ""
    ds.InstanceNumber = 1
    ds.StructureSetLabel, ds.StructureSetName = label[:16], label
    ds.StructureSetDate, ds.StructureSetTime = now_date, now_time
    return ds


def _rtstruct_referenced_frame(series: Series, sources: list):
    """The Referenced Frame of Reference item: frame of reference -> study -> series -> every slice of
    ``sources``."""
    first = sources[0]
    contour_images = []
    for header in sources:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = header.SOPClassUID, header.SOPInstanceUID
        contour_images.append(item)
    series_item = Dataset()
    series_item.SeriesInstanceUID = first.SeriesInstanceUID
    series_item.ContourImageSequence = Sequence(contour_images)
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (as RT objects use)
    study_item.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study_item.RTReferencedSeriesSequence = Sequence([series_item])
    frame_item = Dataset()
    frame_item.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame_item.RTReferencedStudySequence = Sequence([study_item])
    return frame_item


def _rtstruct_contours(mask: np.ndarray, sources: list) -> list:
    """Contour items of one organ's ``mask`` (slices, rows, columns; slice ``k`` lies on ``sources[k]``): closed
    planar contours in patient LPS mm, each referencing its slice."""
    orientation = _orientation(sources[0])
    row_spacing, column_spacing = (float(v) for v in sources[0].PixelSpacing)
    contours = []
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        origin = _position(sources[k])
        for contour in slice_contours(mask[k]):
            points = (origin + contour[:, 1:2] * column_spacing * orientation[:3]
                      + contour[:, 0:1] * row_spacing * orientation[3:])
            image_item = Dataset()
            image_item.ReferencedSOPClassUID = sources[k].SOPClassUID
            image_item.ReferencedSOPInstanceUID = sources[k].SOPInstanceUID
            item = Dataset()
            item.ContourImageSequence = Sequence([image_item])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourData = [f"{v:.3f}" for v in points.reshape(-1)]
            contours.append(item)
    return contours


def _now() -> tuple[str, str]:
    now = datetime.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
