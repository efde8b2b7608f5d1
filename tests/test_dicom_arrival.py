"""DICOM as scanners and anonymisers leave it, checked against an independent reader.

Every series here is built from the real CT in tests/data/realct with pydicom alone (tests/dicom_builder.py, never
medseg's writer) and, for compressed transfer syntaxes, re-encoded by GDCM's own encoder (``gdcmconv``). medseg's
volume and world geometry must equal what SimpleITK's ``ImageSeriesReader`` reads from the same files (and, where
the encoding is lossless, the NIfTI crop they were made from). The four real scanner series of
tests/data/realdicom must each be refused with their own reason. The DICOM outputs of such series must pass
``dciodvfy`` (dicom3tools) with zero errors.
"""
from __future__ import annotations

import json
import logging
import random
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_builder import GDCMCONV, build_series, gdcmconv, need_tool
from helpers import DATA_DIR
from medseg import dicom
from medseg.cli import main
from medseg.errors import InputError
from medseg.io import Volume
from medseg.labels import SYNAPSE8, remap_labels
from test_predict_cli import checkpoint  # noqa: F401  (the tiny TransUNet checkpoint fixture)

REAL_IMAGE = DATA_DIR / "realct" / "img" / "img0001.nii.gz"
REAL_LABEL = DATA_DIR / "realct" / "label" / "label0001.nii.gz"
REAL_DICOM = DATA_DIR / "realdicom"
#: The crop of the real CT the series are built from: 64 x 64 x 6 voxels (i, j, k) starting at voxel CROP_START.
CROP_START, CROP_SHAPE = (30, 20, 10), (64, 64, 6)
#: The lossy encodings and the largest error (HU) each may leave: JPEG 2000 at rate 10, JPEG-LS near-lossless at 3.
LOSSY = {"jpeg2000-lossy": None, "jpeg-ls-near-lossless": 3}
LOSSLESS = [kind for kind in GDCMCONV if kind not in LOSSY]


@pytest.fixture(scope="module")
def crop() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(HU array, labels in SYNAPSE8 numbering, RAS affine)`` of the crop, straight from the NIfTI files."""
    image, label = nib.load(REAL_IMAGE), nib.load(REAL_LABEL)
    window = tuple(slice(start, start + size) for start, size in zip(CROP_START, CROP_SHAPE))
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ np.asarray(CROP_START) + image.affine[:3, 3]
    labels = remap_labels(np.asarray(label.dataobj)[window], SYNAPSE8)
    return np.asarray(image.dataobj)[window].astype(np.int16), labels, affine


def sitk_series(files: "list[Path] | None" = None, folder: "Path | None" = None,
                series_id: str = "") -> tuple[np.ndarray, np.ndarray]:
    """SimpleITK's reading of a series: ``(array (i, j, k), RAS affine)``.

    Without ``files``, GDCM groups ``folder``'s files by ``series_id`` and sorts them itself.
    """
    reader = sitk.ImageSeriesReader()
    if files is None:
        files = reader.GetGDCMSeriesFileNames(str(folder), series_id)
    reader.SetFileNames([str(p) for p in files])
    image = reader.Execute()
    array = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return array, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def assert_same_as_sitk(volume: Volume, theirs: tuple[np.ndarray, np.ndarray]) -> None:
    """Same voxel values on the same voxel grid, same world geometry (RAS affine to 1e-3 mm)."""
    array, affine = theirs
    assert volume.shape == array.shape
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-3)


def read_only_series(folder: Path) -> tuple[dicom.Series, Volume]:
    (series,) = dicom.find_series(folder)
    return series, dicom.read_series(series)


# ----------------------------------------------------------------------------------------------------------------
# Reading what the field's readers read


def test_plain_series_equals_simpleitk_and_the_nifti(crop, tmp_path):
    array, _, affine = crop
    build_series(array, affine, tmp_path / "s")
    series, volume = read_only_series(tmp_path / "s")
    assert_same_as_sitk(volume, sitk_series(folder=tmp_path / "s", series_id=series.uid))
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-3)
    assert series.grouped_by == "SeriesInstanceUID" and series.name == "PAT7_20230405_4"


@pytest.mark.parametrize("uids", ["empty", "missing"])
def test_anonymised_series_with_empty_uids(uids, crop, tmp_path):
    """Study/Series/SOP Instance UIDs empty or missing (SOP UID in the file meta only), PatientID, StudyDate,
    SeriesNumber empty: read as SimpleITK reads it, grouped by frame of reference and grid, the SOP UIDs from the
    file meta."""
    array, _, affine = crop
    files = build_series(array, affine, tmp_path / "s", anonymised=True)
    if uids == "missing":
        for path in files:
            ds = pydicom.dcmread(path)
            del ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID
            ds.save_as(path)
        assert "SeriesInstanceUID" not in pydicom.dcmread(files[0])
    else:
        assert pydicom.dcmread(files[0]).SOPInstanceUID == "" and pydicom.dcmread(files[0]).SeriesInstanceUID == ""
    series, volume = read_only_series(tmp_path / "s")
    assert_same_as_sitk(volume, sitk_series(folder=tmp_path / "s", series_id=""))
    np.testing.assert_array_equal(volume.array, array)
    assert series.uid == "" and series.grouped_by == dicom.GROUPED_BY_GEOMETRY
    meta_uids = {pydicom.dcmread(p).file_meta.MediaStorageSOPInstanceUID for p in files}
    assert set(series.sop_uids) == meta_uids and series.sop_uids_from_file_meta == len(files)
    assert series.name == "series"  # nothing readable in the header: still a usable, unique file name
    summary = series.summary()
    assert summary["grouped_by"] == "FrameOfReferenceUID+orientation+grid"
    assert sorted(summary["minted_uids"]) == ["SeriesInstanceUID", "StudyInstanceUID"]


@pytest.mark.parametrize("kind", LOSSLESS)
def test_lossless_transfer_syntaxes_equal_simpleitk_and_the_nifti(kind, crop, tmp_path):
    array, _, affine = crop
    files = build_series(array, affine, tmp_path / "s")
    gdcmconv(files, kind)
    series, volume = read_only_series(tmp_path / "s")
    assert_same_as_sitk(volume, sitk_series(folder=tmp_path / "s", series_id=series.uid))
    np.testing.assert_array_equal(volume.array, array)


@pytest.mark.parametrize("kind", sorted(LOSSY))
def test_lossy_transfer_syntaxes_equal_simpleitk(kind, crop, tmp_path):
    """Lossy JPEG 2000 (compression ratio 10) and near-lossless JPEG-LS (allowed error 3): the decoded values
    differ from the NIfTI (the encoding is lossy) but not by much, and are exactly SimpleITK's."""
    array, _, affine = crop
    files = build_series(array, affine, tmp_path / "s")
    gdcmconv(files, kind)
    series, volume = read_only_series(tmp_path / "s")
    assert_same_as_sitk(volume, sitk_series(folder=tmp_path / "s", series_id=series.uid))
    error = np.abs(volume.array.astype(np.float64) - array)
    assert 0 < error.mean() < 40 and error.max() <= (LOSSY[kind] or np.inf)


def test_anonymised_jpeg2000_as_the_issue_reports_it(crop, tmp_path):
    """The series of issue 21: empty UIDs and JPEG 2000 lossless together."""
    array, _, affine = crop
    gdcmconv(build_series(array, affine, tmp_path / "s", anonymised=True), "jpeg2000-lossless")
    series, volume = read_only_series(tmp_path / "s")
    assert series.uid == "" and series.sop_uids_from_file_meta == CROP_SHAPE[2]
    assert_same_as_sitk(volume, sitk_series(folder=tmp_path / "s", series_id=""))
    np.testing.assert_array_equal(volume.array, array)


def test_big_endian_series(crop, tmp_path):
    array, _, affine = crop
    files = build_series(array, affine, tmp_path / "s", big_endian=True)
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRBigEndian
    series, volume = read_only_series(tmp_path / "s")
    assert_same_as_sitk(volume, sitk_series(folder=tmp_path / "s", series_id=series.uid))
    np.testing.assert_array_equal(volume.array, array)


def _shuffle_and_rename(folder: Path, seed: int) -> None:
    """Give every file a random name without an extension, in random order (as PACS exports leave them)."""
    rng = random.Random(seed)
    files = sorted(folder.iterdir())
    rng.shuffle(files)
    for n, path in enumerate(files):
        path.rename(folder / f"{rng.getrandbits(40):010x}{n}")


def test_two_series_in_one_folder_shuffled_and_renamed(crop, tmp_path):
    """Two series (the crop and the next 6 slices) in one folder, file names random: each as SimpleITK reads it."""
    array, _, affine = crop
    image = nib.load(REAL_IMAGE)
    lower = np.asarray(image.dataobj)[30:94, 20:84, 16:22].astype(np.int16)
    lower_affine = affine.copy()
    lower_affine[:3, 3] = affine[:3, :3] @ [0, 0, 6] + affine[:3, 3]
    build_series(array, affine, tmp_path / "in", series_number="4", file_names=[f"a{k}" for k in range(6)])
    build_series(lower, lower_affine, tmp_path / "in", series_number="5", file_names=[f"b{k}" for k in range(6)])
    _shuffle_and_rename(tmp_path / "in", seed=3)
    found = dicom.find_series(tmp_path / "in")
    assert [s.name for s in found] == ["PAT7_20230405_4", "PAT7_20230405_5"]
    assert set(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(tmp_path / "in"))) == {s.uid for s in found}
    for series, (expected, expected_affine) in zip(found, [(array, affine), (lower, lower_affine)]):
        volume = dicom.read_series(series)
        assert_same_as_sitk(volume, sitk_series(folder=tmp_path / "in", series_id=series.uid))
        np.testing.assert_array_equal(volume.array, expected)
        np.testing.assert_allclose(volume.affine, expected_affine, atol=1e-3)


def test_dicomdir_localizer_and_image_free_files_are_not_series(crop, tmp_path):
    """A CD export's DICOMDIR, a structured report and a localizer (scout) beside the slices are skipped, not read
    as series; a folder holding only such files says what it found."""
    array, _, affine = crop
    build_series(array, affine, tmp_path / "in")
    for name, sop_class, modality in (("DICOMDIR", "1.2.840.10008.1.3.10", ""),
                                      ("report", "1.2.840.10008.5.1.4.1.1.88.11", "SR")):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if modality:
            ds.Modality, ds.SOPClassUID = modality, sop_class
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.save_as(tmp_path / "in" / name, enforce_file_format=True)
    (scout,) = build_series(array[:, :, :1], affine, tmp_path / "in" / "scout", series_number="1")
    ds = pydicom.dcmread(scout)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.save_as(scout)
    (series,) = dicom.find_series(tmp_path / "in")
    assert len(series.files) == CROP_SHAPE[2] and series.name == "PAT7_20230405_4"
    with pytest.raises(InputError, match=r"no DICOM image files found \(only 1 localizer\)"):
        dicom.find_series(tmp_path / "in" / "scout")


def test_two_anonymised_series_in_one_folder_grouped_by_frame_of_reference(crop, tmp_path):
    """No SeriesInstanceUID at all: the frame of reference tells the two series apart (GDCM's series reader puts
    all such files in one series '', so each is compared with SimpleITK reading its own files); names stay unique
    and readable."""
    array, _, affine = crop
    flipped = array[::-1].copy()
    build_series(array, affine, tmp_path / "in", anonymised=True, frame_uid="1.2.3.4.1",
                 file_names=[f"a{k}" for k in range(6)])
    build_series(flipped, affine, tmp_path / "in", anonymised=True, frame_uid="1.2.3.4.2",
                 file_names=[f"b{k}" for k in range(6)])
    _shuffle_and_rename(tmp_path / "in", seed=5)
    found = dicom.find_series(tmp_path / "in")
    assert len(found) == 2 and all(s.grouped_by == dicom.GROUPED_BY_GEOMETRY for s in found)
    assert len({s.name for s in found}) == 2 and all(s.name.startswith("series_") for s in found)
    volumes = {s.frame_of_reference_uid: dicom.read_series(s) for s in found}
    for series in found:
        assert_same_as_sitk(volumes[series.frame_of_reference_uid], sitk_series(files=list(series.files)))
    np.testing.assert_array_equal(volumes["1.2.3.4.1"].array, array)
    np.testing.assert_array_equal(volumes["1.2.3.4.2"].array, flipped)


def test_anonymised_acquisitions_sharing_a_frame_of_reference_are_refused(crop, tmp_path):
    """Two UID-less series on one frame of reference and grid cannot be told apart: refused, never merged."""
    array, _, affine = crop
    build_series(array, affine, tmp_path / "in", anonymised=True, frame_uid="1.2.3.9",
                 file_names=[f"a{k}" for k in range(6)])
    build_series(array + 10, affine, tmp_path / "in", anonymised=True, frame_uid="1.2.3.9",
                 file_names=[f"b{k}" for k in range(6)])
    (series,) = dicom.find_series(tmp_path / "in")
    with pytest.raises(InputError, match="two slices at the same position") as error:
        dicom.read_series(series)
    assert "no SeriesInstanceUID" in str(error.value) and "\n" not in str(error.value)


# ----------------------------------------------------------------------------------------------------------------
# Real scanner series that must be refused, each for its own reason


@pytest.mark.parametrize("folder, reason", [
    ("gantrytilting/001", r"gantry tilt \(14\.0 degrees between slice positions and their normal\)"),
    ("notavolume/001", r"all 4 slices at one position \(61\.50 mm along the normal\): not a volume"),
    ("sliceincrement/001", r"missing slice\(s\): a 10\.00 mm gap between slices at 28\.11 and 38\.11 mm"),
    ("sliceincrement/002", r"gantry tilt \(15\.5 degrees .* and uneven steps \(0\.7\d to 1\.5\d mm"),
])
def test_real_scanner_series_refused_with_their_own_reason(folder, reason):
    (series,) = dicom.find_series(REAL_DICOM / folder)
    assert series.modality == "CT" and len(series.files) == 4
    with pytest.raises(InputError, match=reason) as error:
        dicom.read_series(series)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{REAL_DICOM / folder} (series {series.uid})")


# ----------------------------------------------------------------------------------------------------------------
# DICOM outputs a validator accepts


def dciodvfy_errors(path: Path, iod: str) -> list[str]:
    """dciodvfy's ``Error`` lines for ``path``, after checking that it recognised the file as an ``iod``
    (its first line of findings names the IOD it validated against)."""
    tool = need_tool("dciodvfy")
    result = subprocess.run([tool, str(path)], capture_output=True, text=True)
    lines = (result.stdout + result.stderr).splitlines()
    assert iod in lines, lines
    return [line for line in lines if line.startswith("Error")]


@pytest.mark.parametrize("anonymised, frame_uid, minted", [
    (False, None, []),
    (True, None, ["SeriesInstanceUID", "StudyInstanceUID"]),
    (True, "", ["FrameOfReferenceUID", "SeriesInstanceUID", "StudyInstanceUID"]),
], ids=["plain", "anonymised-jpeg2000", "anonymised-jpeg2000-no-frame-of-reference"])
def test_dicom_seg_and_rtstruct_pass_dciodvfy(anonymised, frame_uid, minted, crop, tmp_path):
    array, labels, affine = crop
    files = build_series(array, affine, tmp_path / "s", anonymised=anonymised, frame_uid=frame_uid)
    if anonymised:
        gdcmconv(files, "jpeg2000-lossless")
    series, volume = read_only_series(tmp_path / "s")
    prediction = Volume(labels, volume.affine)
    seg = dicom.write_dicom_seg(prediction, series, SYNAPSE8, tmp_path / "seg.dcm")
    rt = dicom.write_rtstruct(prediction, series, SYNAPSE8, tmp_path / "rt.dcm")
    assert dciodvfy_errors(tmp_path / "seg.dcm", "Segmentation") == []
    assert dciodvfy_errors(tmp_path / "rt.dcm", "RTStructureSet") == []
    assert pydicom.dcmread(tmp_path / "rt.dcm").PositionReferenceIndicator == ""  # Type 2: present, may be empty
    meta_uids = {pydicom.dcmread(p).file_meta.MediaStorageSOPInstanceUID for p in series.files}
    seg_ds, rt_ds = pydicom.dcmread(tmp_path / "seg.dcm"), pydicom.dcmread(tmp_path / "rt.dcm")
    seg_series = seg_ds.ReferencedSeriesSequence[0]
    referenced = {item.ReferencedSOPInstanceUID for item in seg_series.ReferencedInstanceSequence}
    rt_series = rt_ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert referenced == meta_uids == {item.ReferencedSOPInstanceUID for item in rt_series.ContourImageSequence}
    assert sorted(seg["minted_uids"]) == minted
    if anonymised:  # minted, reported, and the same in both outputs
        assert seg["minted_uids"] == rt["minted_uids"] == dicom.output_uids(series).minted
        frame = str(pydicom.dcmread(series.files[0]).FrameOfReferenceUID) or seg["minted_uids"]["FrameOfReferenceUID"]
        assert seg_ds.FrameOfReferenceUID == rt_ds.FrameOfReferenceUID == frame
        assert {roi.ReferencedFrameOfReferenceUID for roi in rt_ds.StructureSetROISequence} == {frame}
        assert seg_ds.StudyInstanceUID == rt_ds.StudyInstanceUID == seg["minted_uids"]["StudyInstanceUID"]
        assert rt_series.SeriesInstanceUID == seg_ds.ReferencedSeriesSequence[0].SeriesInstanceUID \
            == seg["minted_uids"]["SeriesInstanceUID"]
    else:
        assert seg["minted_uids"] == rt["minted_uids"] == {}
        assert seg_ds.ReferencedSeriesSequence[0].SeriesInstanceUID == rt_series.SeriesInstanceUID == series.uid


def test_medseg_written_series_outputs_pass_dciodvfy(crop, tmp_path):
    """The CT series medseg writes (write_series) and the DICOM-SEG / RTSTRUCT made on it."""
    array, labels, affine = crop
    slices = dicom.write_series(Volume(array, affine), tmp_path / "s")
    assert dciodvfy_errors(slices[0], "CTImage") == []
    series, volume = read_only_series(tmp_path / "s")
    prediction = Volume(labels, volume.affine)
    dicom.write_dicom_seg(prediction, series, SYNAPSE8, tmp_path / "seg.dcm")
    dicom.write_rtstruct(prediction, series, SYNAPSE8, tmp_path / "rt.dcm")
    assert dciodvfy_errors(tmp_path / "seg.dcm", "Segmentation") == []
    assert dciodvfy_errors(tmp_path / "rt.dcm", "RTStructureSet") == []


def test_a_slice_without_any_sop_uid_refuses_the_dicom_output_in_one_line(crop, tmp_path):
    array, labels, affine = crop
    files = build_series(array, affine, tmp_path / "s", anonymised=True)
    ds = pydicom.dcmread(files[2])
    del ds.file_meta.MediaStorageSOPInstanceUID
    ds.save_as(files[2])
    series, volume = read_only_series(tmp_path / "s")  # the volume itself is fine
    for writer, name in ((dicom.write_dicom_seg, "DICOM-SEG"), (dicom.write_rtstruct, "RTSTRUCT")):
        with pytest.raises(InputError, match=f"no SOPInstanceUID .*a {name} cannot reference") as error:
            writer(Volume(labels, volume.affine), series, SYNAPSE8, tmp_path / "out.dcm")
        assert str(files[2]) in str(error.value) and "\n" not in str(error.value)
        assert not (tmp_path / "out.dcm").exists()


def test_highdicom_info_lines_are_debug_records(crop, tmp_path, caplog):
    array, labels, affine = crop
    build_series(array, affine, tmp_path / "s")
    series, volume = read_only_series(tmp_path / "s")
    with caplog.at_level(logging.DEBUG):
        dicom.write_dicom_seg(Volume(labels, volume.affine), series, SYNAPSE8, tmp_path / "seg.dcm")
    assert not [r for r in caplog.records if r.name.startswith("highdicom")]
    demoted = [r for r in caplog.records if r.name == "medseg.dicom" and r.getMessage().startswith("highdicom: ")]
    assert demoted and all(r.levelno == logging.DEBUG for r in demoted)


# ----------------------------------------------------------------------------------------------------------------
# Predict on the issue's series


def test_predict_on_an_anonymised_jpeg2000_series(crop, checkpoint, tmp_path, capsys):  # noqa: F811
    array, _, affine = crop
    gdcmconv(build_series(array, affine, tmp_path / "in", anonymised=True), "jpeg2000-lossless")
    code = main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(checkpoint),
                 "--output-type", "nifti,dicom-seg,rtstruct", "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "highdicom" not in err and "copy attributes" not in err
    assert nib.load(tmp_path / "out" / "series.nii.gz").shape == CROP_SHAPE
    summary = json.loads((tmp_path / "out" / "predict_summary.json").read_text())
    (recorded,) = summary["dicom_series"]
    assert recorded["grouped_by"] == dicom.GROUPED_BY_GEOMETRY and recorded["series_instance_uid"] == ""
    assert sorted(recorded["minted_uids"]) == ["SeriesInstanceUID", "StudyInstanceUID"]
    for name, iod in (("series_seg.dcm", "Segmentation"), ("series_rtstruct.dcm", "RTStructureSet")):
        assert dciodvfy_errors(tmp_path / "out" / name, iod) == []
