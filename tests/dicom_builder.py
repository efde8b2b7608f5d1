"""CT series as scanners and anonymisers leave them, built with pydicom alone (never with medseg's writer).

The reader tests compare medseg's :func:`medseg.dicom.read_series` with SimpleITK's ``ImageSeriesReader`` on these
series, so the files must not share medseg's assumptions: this module writes the DICOM tags itself from a NIfTI
crop and its affine, and re-encodes with ``gdcmconv`` (GDCM's converter, Debian package libgdcm-tools) where a
compressed transfer syntax is wanted.

Geometry (standard DICOM/NIfTI conventions): the NIfTI voxel ``[i, j, k]`` with RAS affine ``A`` lies at LPS point
``diag(-1, -1, 1) @ A[:3] @ (i, j, k, 1)``; DICOM slice ``k`` holds rows ``j`` and columns ``i``, its
ImagePositionPatient is the LPS point of voxel ``(0, 0, k)``, ImageOrientationPatient is the unit LPS direction of
``i`` (along a row) then of ``j`` (down a column), PixelSpacing is ``(row spacing = |A[:, 1]|, column spacing =
|A[:, 0]|)``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: The intercept scanners commonly write; pixels are stored signed 16-bit ``HU + 1024`` (GE style).
INTERCEPT = -1024

#: gdcmconv options of each compressed transfer syntax, and the UID it must leave in the file meta.
GDCMCONV = {
    "jpeg2000-lossless": (["--j2k"], "1.2.840.10008.1.2.4.90"),
    "jpeg2000-lossy": (["--j2k", "--lossy", "-r", "10"], "1.2.840.10008.1.2.4.91"),
    "jpeg-lossless": (["--jpeg"], "1.2.840.10008.1.2.4.70"),
    "jpeg-ls-lossless": (["--jpegls"], "1.2.840.10008.1.2.4.80"),
    "jpeg-ls-near-lossless": (["--jpegls", "--lossy", "-e", "3"], "1.2.840.10008.1.2.4.81"),
    "rle": (["--rle"], "1.2.840.10008.1.2.5"),
    "deflated": (["--deflated"], "1.2.840.10008.1.2.1.99"),
}


def need_tool(name: str) -> str:
    """The path of the command-line tool ``name``; skip the test without it, but fail under CI (CI=true), where
    .ci/run installs it."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is missing under CI; .ci/run installs it with apt-get")
        pytest.skip(f"{name} not installed (Debian: apt-get install libgdcm-tools dicom3tools)")
    return path


def lps_geometry(affine: np.ndarray) -> dict:
    """Position of voxel (0, 0, 0), row/column unit directions, spacings and slice step in LPS mm."""
    lps = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)[:3]
    column_step, row_step, slice_step = lps[:, 0], lps[:, 1], lps[:, 2]
    return {"origin": lps[:, 3], "row_direction": column_step / np.linalg.norm(column_step),
            "column_direction": row_step / np.linalg.norm(row_step), "column_spacing": np.linalg.norm(column_step),
            "row_spacing": np.linalg.norm(row_step), "slice_step": slice_step}


def build_series(array: np.ndarray, affine: np.ndarray, folder: Path, *, anonymised: bool = False,
                 big_endian: bool = False, series_uid: "str | None" = None, frame_uid: "str | None" = None,
                 series_number: str = "4", file_names: "list[str] | None" = None) -> list[Path]:
    """Write ``array`` (HU, ``(i, j, k)`` = columns, rows, slices) with its RAS ``affine`` as a CT series.

    ``anonymised``: Study/Series/SOP Instance UIDs present but empty (the SOP UID only in the file meta), empty
    PatientID, SeriesNumber and StudyDate, as common anonymisation tools leave them. ``big_endian``: Explicit VR Big
    Endian. ``frame_uid``: the FrameOfReferenceUID (default a new one; '' leaves it empty). ``file_names``: the
    name of each slice file (default ``IM0001.dcm``...).
    """
    geometry = lps_geometry(affine)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = generate_uid(), series_uid or generate_uid()
    frame_uid = generate_uid() if frame_uid is None else frame_uid
    paths = []
    for k in range(array.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRBigEndian if big_endian else ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = "" if anonymised else meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = "" if anonymised else study_uid
        ds.SeriesInstanceUID = "" if anonymised else series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName = "ANONYMOUS" if anonymised else "Test^Patient"
        ds.PatientID = "" if anonymised else "PAT7"
        ds.StudyDate = "" if anonymised else "20230405"
        ds.SeriesNumber = "" if anonymised else series_number
        ds.PatientBirthDate, ds.PatientSex, ds.StudyTime, ds.StudyID = "", "", "", ""
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.PositionReferenceIndicator = "", "", ""
        ds.Modality, ds.Manufacturer, ds.InstanceNumber = "CT", "SIEMENS", str(k + 1)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in geometry["origin"] + k * geometry["slice_step"]]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*geometry["row_direction"],
                                                          *geometry["column_direction"])]
        ds.PixelSpacing = [f"{geometry['row_spacing']:.4f}", f"{geometry['column_spacing']:.4f}"]
        ds.SliceThickness = f"{np.linalg.norm(geometry['slice_step']):.4f}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = array.shape[1], array.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = str(INTERCEPT), "1", "HU"
        stored = np.ascontiguousarray((array[:, :, k].T.astype(np.int32) - INTERCEPT).astype(np.int16))
        ds.PixelData = stored.astype(">i2" if big_endian else "<i2").tobytes()
        path = folder / (file_names[k] if file_names else f"IM{k + 1:04d}.dcm")
        if big_endian:
            ds.save_as(path, implicit_vr=False, little_endian=False, enforce_file_format=True)
        else:
            ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


#: The UIDs an anonymiser may leave empty; gdcmconv mints a new SOPInstanceUID for an empty one.
EMPTIABLE_UIDS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def gdcmconv(paths: list[Path], kind: str) -> None:
    """Re-encode each file in place with gdcmconv to the transfer syntax ``kind`` (a key of :data:`GDCMCONV`).

    UIDs that were empty before (see :data:`EMPTIABLE_UIDS`) are emptied again afterwards (gdcmconv fills an empty
    SOPInstanceUID with a new one, into the file meta too), so an anonymised series stays as anonymised.
    """
    tool = need_tool("gdcmconv")
    options, syntax = GDCMCONV[kind]
    for path in paths:
        before = pydicom.dcmread(path, stop_before_pixels=True)
        encoded = path.with_suffix(".enc")
        subprocess.run([tool, *options, str(path), str(encoded)], check=True, capture_output=True)
        after = pydicom.dcmread(encoded)
        empty = [keyword for keyword in EMPTIABLE_UIDS if not str(before.get(keyword, "") or "")]
        if empty:
            for keyword in empty:
                setattr(after, keyword, "")
            after.save_as(encoded, enforce_file_format=True)
        encoded.replace(path)
        assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax, (path, kind)
