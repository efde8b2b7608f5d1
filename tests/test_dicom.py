"""DICOM in and out: series round trips (phantom and real CT), refused geometries, several series and zips,
predict on DICOM, DICOM-SEG and RTSTRUCT read back with highdicom / pydicom."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from helpers import DATA_DIR
from medseg import dicom
from medseg.cli import main
from medseg.data.orientation import reorient
from medseg.errors import InputError
from medseg.io import Volume, read_volume
from medseg.labels import BTCV13, SYNAPSE8, remap_labels
from test_predict_cli import checkpoint  # noqa: F401  (the tiny TransUNet checkpoint fixture)

REAL_IMAGE = DATA_DIR / "realct" / "img" / "img0001.nii.gz"
REAL_LABEL = DATA_DIR / "realct" / "label" / "label0001.nii.gz"


def world_view(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """The volume in one fixed voxel order with its affine: equal views mean the same values at the same points."""
    return reorient(np.asarray(volume.array), volume.affine, ("R", "A", "S"))


@pytest.fixture(scope="module")
def real_ct() -> Volume:
    return read_volume(REAL_IMAGE)


@pytest.fixture(scope="module")
def real_series(tmp_path_factory, real_ct) -> dicom.Series:
    folder = tmp_path_factory.mktemp("realdicom") / "CT"
    dicom.write_series(real_ct, folder, patient_id="REAL1", study_date="20230101", series_number=3)
    (series,) = dicom.find_series(folder)
    return series


def _predict(*args) -> int:
    return main(["predict", *map(str, args), "--no-progress", "--device", "cpu"])


# ----------------------------------------------------------------------------------------------------------------
# Reading


def test_real_ct_round_trip_same_array_and_geometry(real_ct, real_series):
    volume = dicom.read_series(real_series)
    assert volume.array.dtype == np.int16  # HU from RescaleIntercept (stored unsigned with intercept -1100)
    assert pydicom.dcmread(real_series.files[0]).RescaleIntercept < 0
    np.testing.assert_array_equal(volume.array, real_ct.array)
    np.testing.assert_allclose(volume.affine, real_ct.affine, atol=1e-4)
    assert real_series.name == "REAL1_20230101_3"


def test_hu_from_rescale_slope_and_intercept(tmp_path):
    array = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4) - 50
    files = dicom.write_series(Volume(array, np.diag([0.7, 0.9, 2.5, 1.0])), tmp_path / "s", intercept=-100)
    for path in files:  # the stored values are array + 100; now say each stored unit is 0.5 HU, from -30 HU
        ds = pydicom.dcmread(path)
        ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-30"
        ds.save_as(path)
    volume = dicom.read_dicom(tmp_path / "s")
    np.testing.assert_allclose(volume.array, (array + 100) * 0.5 - 30)
    assert volume.array.dtype == np.float32  # half-HU steps do not fit an integer array


@pytest.mark.parametrize("case", [2, 3])  # case 2 stores LPS; case 3's slice normal points down (k reversed)
def test_phantom_round_trip_same_world_geometry(case, tmp_path):
    from medseg.phantom import generate_case

    image, _ = generate_case(case, 0, "small")
    dicom.write_series(image, tmp_path / "s")
    volume = dicom.read_dicom(tmp_path / "s")
    ours, ours_affine = world_view(volume)
    theirs, theirs_affine = world_view(image)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_allclose(ours_affine, theirs_affine, atol=1e-3)


def _edit(files, index, **changes):
    ds = pydicom.dcmread(files[index])
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(files[index])


def _small_series(folder: Path) -> list[Path]:
    array = np.arange(8 * 6 * 5, dtype=np.int16).reshape(8, 6, 5)
    affine = np.diag([0.7, 0.7, 2.0, 1.0])
    return dicom.write_series(Volume(array, affine), folder)


@pytest.mark.parametrize("problem, message", [
    ("missing", "missing slice"),
    ("uneven", "uneven slice spacing"),
    ("tilt", "gantry tilt"),
    ("orientation", "mixed slice orientations"),
    ("duplicate", "same position"),
    ("single", "single slice"),
    ("multiframe", "multi-frame"),
    ("modality", "modality MR, not CT"),
    ("mixed-modality", "modality CT/MR, not CT"),
])
def test_bad_series_geometry_is_one_line_error(problem, message, tmp_path):
    files = _small_series(tmp_path / "s")
    if problem == "missing":
        files[2].unlink()
    elif problem == "uneven":
        _edit(files, 2, ImagePositionPatient=[0, 0, 4.6])
    elif problem == "tilt":
        for k, path in enumerate(files):
            _edit(files, k, ImagePositionPatient=[0, 0.5 * k, 2.0 * k])
    elif problem == "orientation":
        _edit(files, 1, ImageOrientationPatient=[1, 0, 0, 0, 0.8, 0.6])
    elif problem == "duplicate":
        _edit(files, 3, ImagePositionPatient=[0, 0, 4.0])
    elif problem == "modality":
        for k in range(len(files)):
            _edit(files, k, Modality="MR")
    elif problem == "mixed-modality":  # the first file says CT, a later one MR
        _edit(files, 3, Modality="MR")
    elif problem == "multiframe":
        _edit(files, 0, NumberOfFrames=2)
    elif problem == "single":
        for path in files[1:]:
            path.unlink()
    with pytest.raises(InputError, match=message) as error:
        dicom.read_dicom(tmp_path / "s")
    assert "\n" not in str(error.value) and str(tmp_path / "s") in str(error.value)


def test_several_series_and_zip(tmp_path, real_ct):
    small = Volume(real_ct.array[:40, :30, :6], real_ct.affine)
    dicom.write_series(small, tmp_path / "in" / "a", patient_id="P1", study_date="20240101", series_number=2)
    dicom.write_series(small, tmp_path / "in" / "nested" / "b", patient_id="P1", study_date="20240101",
                       series_number=5)
    dicom.write_series(small, tmp_path / "in" / "c", patient_id="", series_number=7)  # no PatientID: date_number
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    series = dicom.find_series(tmp_path / "in")
    names = [s.name for s in series]
    assert names == ["20000101_7", "P1_20240101_2", "P1_20240101_5"]
    archive = tmp_path / "in.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in (tmp_path / "in").rglob("*"):
            z.write(path, path.relative_to(tmp_path / "in"))
    with dicom.open_dicom_input(archive) as from_zip:
        assert [s.name for s in from_zip] == names
        np.testing.assert_array_equal(dicom.read_series(from_zip[1]).array, small.array)
    with pytest.raises(InputError, match="3 DICOM series"):
        dicom.read_dicom(tmp_path / "in")
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputError, match="bad.zip"):
        with dicom.open_dicom_input(tmp_path / "bad.zip"):
            pass


# ----------------------------------------------------------------------------------------------------------------
# Writing DICOM-SEG and RTSTRUCT


def real_labels(real_ct) -> Volume:
    raw = read_volume(REAL_LABEL)
    return Volume(remap_labels(raw.array, SYNAPSE8), real_ct.affine)


def test_dicom_seg_read_back(real_ct, real_series, tmp_path):
    import highdicom as hd

    labels = real_labels(real_ct)
    info = dicom.write_dicom_seg(labels, real_series, SYNAPSE8, tmp_path / "seg.dcm")
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert seg.number_of_segments == 8 and info["empty"] == []
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == real_series.uid
    headers = dicom.read_headers(real_series)
    uids = [h.SOPInstanceUID for h in headers]
    for number, organ in info["segments"].items():
        description = seg.get_segment_description(number)
        assert description.segmented_property_type.value == dicom.ORGAN_CODES[organ][0]
        assert description.segment_label == SYNAPSE8.display_names[SYNAPSE8.organs.index(organ)]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids,
                                               segment_numbers=list(info["segments"]))
    expected = np.stack([dicom.frames_of(labels) == SYNAPSE8.organs.index(o) + 1 for o in info["segments"].values()],
                        axis=-1)
    np.testing.assert_array_equal(pixels.astype(bool), expected)


def test_rtstruct_contours_match_the_masks(real_ct, real_series, tmp_path):
    labels = real_labels(real_ct)
    info = dicom.write_rtstruct(labels, real_series, SYNAPSE8, tmp_path / "rt.dcm")
    ds = pydicom.dcmread(tmp_path / "rt.dcm")
    assert ds.Modality == "RTSTRUCT" and len(ds.StructureSetROISequence) == len(info["rois"]) == 8
    headers = dicom.read_headers(real_series)
    by_uid = {h.SOPInstanceUID: k for k, h in enumerate(headers)}
    referenced = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == real_series.uid
    spacing = [float(v) for v in headers[0].PixelSpacing]
    frames = dicom.frames_of(labels)
    for roi, contours in zip(ds.StructureSetROISequence, ds.ROIContourSequence):
        organ = info["rois"][int(roi.ROINumber)]
        area = 0.0
        for contour in contours.ContourSequence:
            k = by_uid[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            np.testing.assert_allclose(points[:, 2], float(headers[k].ImagePositionPatient[2]), atol=1e-3)
            x, y = points[:, 0], points[:, 1]
            area += 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))  # holes are rare here
        mask_area = (frames == SYNAPSE8.organs.index(organ) + 1).sum() * spacing[0] * spacing[1]
        assert area == pytest.approx(mask_area, rel=0.35), organ  # iso-line at 0.5 cuts the border pixels


# ----------------------------------------------------------------------------------------------------------------
# Predict on DICOM


def test_predict_dicom_series_all_output_types(real_ct, real_series, checkpoint, tmp_path):
    series_folder = real_series.files[0].parent
    out = tmp_path / "out"
    assert _predict("-i", series_folder, "-o", out, "-m", checkpoint, "--output-type", "nifti,dicom-seg",
                    "--output-type", "rtstruct", "--statistics", "--organs", "liver,spleen,aorta,stomach") == 0
    name = real_series.name
    prediction = nib.load(out / f"{name}.nii.gz")
    assert prediction.shape == real_ct.shape and np.allclose(prediction.affine, real_ct.affine, atol=1e-4)
    assert prediction.header.get_intent()[2] == "synapse8"
    values = set(np.unique(np.asarray(prediction.dataobj)).tolist())
    assert values <= {0, 5, 7, 1, 8}  # only the kept organs
    summary = json.loads((out / "predict_summary.json").read_text())
    assert summary["counts"]["predicted"] == 1
    assert summary["dicom_series"][0]["series_instance_uid"] == real_series.uid
    assert json.loads((out / "labels.json").read_text())["labels"]["5"]["key"] == "liver"
    seg = pydicom.dcmread(out / f"{name}_seg.dcm")
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == real_series.uid
    present = {SYNAPSE8.organs[v - 1] for v in values if v}
    assert {s.SegmentLabel for s in seg.SegmentSequence} == {SYNAPSE8.display_names[SYNAPSE8.organs.index(o)]
                                                             for o in present}
    assert pydicom.dcmread(out / f"{name}_rtstruct.dcm").Modality == "RTSTRUCT"
    rows = (out / "statistics.csv").read_text().splitlines()
    assert rows[0] == "case,organ,voxels,volume_ml,mean_hu,std_hu" and len(rows) == 1 + 4


def test_predict_zip_of_several_series(real_ct, checkpoint, tmp_path):
    small = Volume(real_ct.array[:40, :32, :5], real_ct.affine)
    for number in (1, 2):
        dicom.write_series(small, tmp_path / "in" / f"s{number}", patient_id="P9", study_date="20240202",
                           series_number=number)
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in (tmp_path / "in").rglob("*.dcm"):
            z.write(path, path.relative_to(tmp_path / "in"))
    assert _predict("-i", archive, "-o", tmp_path / "out", "-m", checkpoint) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["P9_20240202_1.nii.gz",
                                                                           "P9_20240202_2.nii.gz"]
    summary = json.loads((tmp_path / "out" / "predict_summary.json").read_text())
    assert [s["name"] for s in summary["dicom_series"]] == ["P9_20240202_1", "P9_20240202_2"]


def test_dicom_output_needs_dicom_input(checkpoint, tmp_path, capsys):
    assert _predict("-i", REAL_IMAGE, "-o", tmp_path / "out", "-m", checkpoint, "--output-type", "dicom-seg") == 2
    err = capsys.readouterr().err.strip()
    assert "needs a DICOM series input" in err and len(err.splitlines()) == 1
    assert _predict("-i", REAL_IMAGE, "-o", tmp_path / "out", "-m", checkpoint, "--output-type", "png") == 2
    assert "unknown type 'png'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_btcv_codes_cover_every_organ():
    assert set(dicom.ORGAN_CODES) == set(BTCV13.organs)


def test_prepare_a_cohort_of_dicom_series(tmp_path):
    """img/ holds a series folder and a zipped series, label/ NIfTI on their grids: the same cache as from NIfTI."""
    from helpers import tiny_case
    from medseg.data.slice_cache import load_case_arrays, prepare_cohort
    from medseg.io import write_volume

    for n in (1, 2):
        image, label = tiny_case(n, shape=(16, 14, 5))
        write_volume(tmp_path / "nifti" / "img" / f"img{n:04d}.nii.gz", image)
        write_volume(tmp_path / "nifti" / "label" / f"label{n:04d}.nii.gz", label)
        write_volume(tmp_path / "dicom" / "label" / f"label{n:04d}.nii.gz", label)
        dicom.write_series(image, tmp_path / "series" / f"img{n:04d}")
    (tmp_path / "dicom" / "img").mkdir()
    (tmp_path / "series" / "img0001").rename(tmp_path / "dicom" / "img" / "img0001")
    with zipfile.ZipFile(tmp_path / "dicom" / "img" / "img0002.zip", "w") as z:
        for path in sorted((tmp_path / "series" / "img0002").iterdir()):
            z.write(path, path.name)
    for name in ("nifti", "dicom"):
        summary = prepare_cohort(tmp_path / name, tmp_path / f"cache_{name}", split="all-train", progress=False)
        assert sorted(summary.written) == ["case0001", "case0002"]
    for case_id in ("case0001", "case0002"):
        for a, b in zip(load_case_arrays(tmp_path / "cache_nifti", case_id, mmap=False),
                        load_case_arrays(tmp_path / "cache_dicom", case_id, mmap=False)):
            np.testing.assert_array_equal(a, b)


def test_a_refused_series_fails_alone_and_a_single_series_to_one_file(real_ct, checkpoint, tmp_path, capsys):
    small = Volume(real_ct.array[:40, :32, :5], real_ct.affine)
    dicom.write_series(small, tmp_path / "in" / "good", patient_id="P3", study_date="20240303", series_number=1)
    bad = dicom.write_series(small, tmp_path / "in" / "bad", patient_id="P3", study_date="20240303", series_number=2)
    bad[2].unlink()
    assert _predict("-i", tmp_path / "in", "-o", tmp_path / "out", "-m", checkpoint) in (0, 1)
    cases = json.loads((tmp_path / "out" / "predict_summary.json").read_text())["cases"]
    assert cases["P3_20240303_1"]["status"] == "predicted"
    assert cases["P3_20240303_2"]["status"] == "failed" and "missing slice" in cases["P3_20240303_2"]["error"]
    assert not (tmp_path / "out" / "P3_20240303_2.nii.gz").exists()
    assert _predict("-i", tmp_path / "in" / "good", "-o", tmp_path / "one.nii.gz", "-m", checkpoint) == 0
    assert nib.load(tmp_path / "one.nii.gz").shape == small.shape
    capsys.readouterr()
    assert _predict("-i", tmp_path / "in" / "bad", "-o", tmp_path / "two.nii.gz", "-m", checkpoint) == 2
    assert "missing slice" in capsys.readouterr().err


def test_positions_rounded_to_hundredths_still_read(tmp_path):
    """Scanners write ImagePositionPatient with few decimals: 0.625 mm steps stored as .00/.62/.25/.88 are regular."""
    array = np.zeros((6, 5, 6), dtype=np.int16)
    files = dicom.write_series(Volume(array, np.diag([0.7, 0.7, 0.625, 1.0])), tmp_path / "s")
    for k, path in enumerate(files):
        _edit(files, k, ImagePositionPatient=[0, 0, f"{round(0.625 * k, 2):.2f}"])
    volume = dicom.read_dicom(tmp_path / "s")
    assert volume.affine[2, 2] == pytest.approx(0.625, abs=2e-3)  # (3.12 - 0) / 5 from the rounded positions


def test_no_organ_means_no_dicom_output_and_nothing_written(real_ct, checkpoint, tmp_path, monkeypatch, capsys):
    from medseg.prediction import run

    monkeypatch.setattr(run, "predict_volume",
                        lambda volume, *a, **k: Volume(np.zeros(volume.shape, np.uint8), volume.affine))
    small = Volume(real_ct.array[:20, :16, :4], real_ct.affine)
    dicom.write_series(small, tmp_path / "in", patient_id="P5", study_date="20240505", series_number=1)
    code = _predict("-i", tmp_path / "in", "-o", tmp_path / "out", "-m", checkpoint, "--output-type",
                    "nifti,dicom-seg", "--statistics", "--preview")
    assert code != 0 and "no organ predicted" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["predict_summary.json"]
