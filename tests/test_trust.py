"""Trust on the paths a researcher walks (issue 20): results that would be silently wrong, crashes, half-written
outputs and folders medseg does not own.

Each silent-wrong-result test here failed on the code before the fix; each crash test shows the one-line error and
the exit code, and that nothing half-written is left.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from medseg.cli import main
from medseg.io import Volume, read_json, write_volume
from medseg.labels import BTCV13, SYNAPSE8
from medseg.outputs import write_labels_nifti

SHAPE = (20, 22, 8)
SPACING = (0.8, 0.7, 2.5)
AFFINE = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
AFFINE[:3, 3] = (120.0, 95.0, -40.0)


def _classes(seed: int, num_classes: int = 9) -> np.ndarray:
    """A class map with one blob per class 1 .. num_classes - 1."""
    rng = np.random.default_rng(seed)
    volume = np.zeros(SHAPE, np.uint8)
    for class_value in range(1, num_classes):
        field = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 2.0)
        volume[field > np.quantile(field, 1 - 0.6 / num_classes)] = class_value
    return volume


def _record(checkpoint: str = "a" * 64, organs=None) -> dict:
    """A provenance record as medseg predict writes it."""
    return {"checkpoint_sha256": checkpoint, "input_sha256": "0" * 64, "tta": False, "resize": "torch",
            "amp": False, "model": None, "labels": None, "img_size": None, "organs": organs}


def _evaluate(ref_dir, pred_dir, out, *extra) -> int:
    return main(["evaluate", str(ref_dir), str(pred_dir), "-o", str(out), "--workers", "1", "--no-progress",
                 "--thumbnails", "0", *extra])


@pytest.fixture
def synapse8_folders(tmp_path):
    """References (synapse8 classes) and medseg predictions of two cases, headers naming synapse8."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    for n in (1, 2):
        reference = _classes(n)
        write_volume(ref_dir / f"case{n:04d}.nii.gz", Volume(reference, AFFINE))
        prediction = np.roll(reference, 1, axis=0)
        write_labels_nifti(pred_dir / f"case{n:04d}.nii.gz", Volume(prediction, AFFINE), SYNAPSE8,
                           provenance=_record())
    return ref_dir, pred_dir


# ---------------------------------------------------------------------------------------------------------------
# Item 3: evaluate takes the label set the predictions' headers name.


def test_labels_other_than_the_headers_are_a_one_line_error(synapse8_folders, tmp_path, capsys):
    ref_dir, pred_dir = synapse8_folders
    out = tmp_path / "report"
    assert _evaluate(ref_dir, pred_dir, out, "--labels", "btcv13") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "case0001.nii.gz" in err and "synapse8" in err and "--labels btcv13" in err
    assert not (out / "summary.json").exists()


def test_without_labels_the_headers_set_is_used(tmp_path, capsys):
    """btcv13 predictions evaluated without --labels are scored as btcv13 (the old default scored synapse8)."""
    ref_dir, pred_dir, out = tmp_path / "ref", tmp_path / "pred", tmp_path / "report"
    for n in (1, 2):
        reference = _classes(n, BTCV13.num_classes)
        write_volume(ref_dir / f"case{n:04d}.nii.gz", Volume(reference, AFFINE))
        write_labels_nifti(pred_dir / f"case{n:04d}.nii.gz", Volume(reference, AFFINE), BTCV13, provenance=_record())
    assert _evaluate(ref_dir, pred_dir, out, "--reference-format", "classes") == 0
    summary = read_json(out / "summary.json")
    assert summary["label_set"]["name"] == "btcv13"
    assert summary["label_set_source"] == "prediction headers"
    assert summary["standard"]["foreground_mean"]["dice"] == pytest.approx(1.0)


def test_a_folder_of_two_label_sets_is_refused_naming_files(synapse8_folders, tmp_path, capsys):
    ref_dir, pred_dir = synapse8_folders
    write_labels_nifti(pred_dir / "case0002.nii.gz", Volume(_classes(2), AFFINE), BTCV13, provenance=_record())
    assert _evaluate(ref_dir, pred_dir, tmp_path / "report") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "more than one label set" in err and "case0001.nii.gz" in err and "case0002.nii.gz" in err


# ---------------------------------------------------------------------------------------------------------------
# Item 2 (evaluate side): a folder made by more than one checkpoint says so, naming the files.


def test_mixed_checkpoints_are_reported_with_their_files(synapse8_folders, tmp_path, capsys):
    ref_dir, pred_dir = synapse8_folders
    write_labels_nifti(pred_dir / "case0002.nii.gz", Volume(np.roll(_classes(2), 1, axis=0), AFFINE), SYNAPSE8,
                       provenance=_record(checkpoint="b" * 64))
    out = tmp_path / "report"
    assert _evaluate(ref_dir, pred_dir, out) == 0
    err = capsys.readouterr().err
    summary = read_json(out / "summary.json")
    groups = summary["prediction_origin"]
    assert sorted(g["model"]["checkpoint_sha256"][0] for g in groups) == ["a", "b"]
    assert sorted(f for g in groups for f in g["files"]) == ["case0001.nii.gz", "case0002.nii.gz"]
    warning = next(w for w in summary["warnings"] if "different models" in w)
    assert "aaaaaaaaaaaa" in warning and "bbbbbbbbbbbb" in warning and "case0002.nii.gz" in warning
    assert "different models" in err
    assert "different models" in (out / "report.md").read_text()


def test_one_checkpoint_gives_no_mixed_warning(synapse8_folders, tmp_path):
    ref_dir, pred_dir = synapse8_folders
    summary = _summary(ref_dir, pred_dir)
    assert len(summary["prediction_origin"]) == 1
    assert not [w for w in summary["warnings"] if "different models" in w]


def _summary(ref_dir, pred_dir, **options) -> dict:
    from medseg.evaluation import evaluate_folders

    return evaluate_folders(ref_dir, pred_dir, workers=1, progress=False, **options)


# ---------------------------------------------------------------------------------------------------------------
# Organs a prediction kept (--organs liver,spleen) are the organs scored.


def test_only_the_organs_a_prediction_kept_are_scored(tmp_path, capsys):
    ref_dir, pred_dir, out = tmp_path / "ref", tmp_path / "pred", tmp_path / "report"
    liver, spleen = SYNAPSE8.organs.index("liver") + 1, SYNAPSE8.organs.index("spleen") + 1
    for n in (1, 2):
        reference = _classes(n)
        write_volume(ref_dir / f"case{n:04d}.nii.gz", Volume(reference, AFFINE))
        kept = np.where(np.isin(reference, [liver, spleen]), reference, 0).astype(np.uint8)
        write_labels_nifti(pred_dir / f"case{n:04d}.nii.gz", Volume(kept, AFFINE), SYNAPSE8,
                           provenance=_record(organs="liver,spleen"))
    assert _evaluate(ref_dir, pred_dir, out) == 0
    summary = read_json(out / "summary.json")
    assert summary["organs"] == ["liver", "spleen"]
    assert summary["organs_kept"] == ["liver", "spleen"]
    assert summary["standard"]["foreground_mean"]["dice"] == pytest.approx(1.0)
    assert set(summary["standard"]["cases"]["case0001"]) == {"liver", "spleen"}
    assert not [w for w in summary["warnings"] if "collapsed" in w]
    assert any("kept only liver, spleen" in w for w in summary["warnings"])
    assert "kept only liver, spleen" in capsys.readouterr().err


def test_predictions_that_kept_different_organs_are_refused(synapse8_folders, tmp_path, capsys):
    ref_dir, pred_dir = synapse8_folders
    write_labels_nifti(pred_dir / "case0002.nii.gz", Volume(_classes(2), AFFINE), SYNAPSE8,
                       provenance=_record(organs="liver"))
    assert _evaluate(ref_dir, pred_dir, tmp_path / "report") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "kept different organs" in err and "case0002.nii.gz" in err


# ---------------------------------------------------------------------------------------------------------------
# NSD tolerance: per-organ values, recorded, and a warning below the grid's spacing.


def test_per_organ_tolerances_are_used_and_recorded(synapse8_folders, tmp_path):
    from medseg.evaluation import evaluate_case
    from medseg.io import read_volume

    ref_dir, pred_dir = synapse8_folders
    summary = _summary(ref_dir, pred_dir, tolerance_mm="3,liver=0.5,spleen=9")
    assert summary["tolerance_mm"] == 3.0
    assert summary["tolerance_overrides"] == {"liver": 0.5, "spleen": 9.0}
    assert summary["tolerance_mm_by_organ"]["liver"] == 0.5 and summary["tolerance_mm_by_organ"]["aorta"] == 3.0
    reference, prediction = read_volume(ref_dir / "case0001.nii.gz"), read_volume(pred_dir / "case0001.nii.gz")
    for organ, mm in (("liver", 0.5), ("spleen", 9.0), ("aorta", 3.0)):
        alone = evaluate_case(prediction.array, reference.array, SPACING, SYNAPSE8, "standard", mm)["standard"]
        assert summary["standard"]["cases"]["case0001"][organ]["nsd"] == pytest.approx(alone[organ]["nsd"])
    liver_default = evaluate_case(prediction.array, reference.array, SPACING, SYNAPSE8, "standard", 3.0)
    assert liver_default["standard"]["liver"]["nsd"] != pytest.approx(
        summary["standard"]["cases"]["case0001"]["liver"]["nsd"])


def test_tolerance_below_the_voxel_spacing_is_warned(synapse8_folders, tmp_path, capsys):
    ref_dir, pred_dir = synapse8_folders
    assert _evaluate(ref_dir, pred_dir, tmp_path / "fine", "--tolerance", "0.5") == 0
    warned = capsys.readouterr().err
    assert "below the voxel spacing" in warned and "0.5 mm" in warned
    assert _evaluate(ref_dir, pred_dir, tmp_path / "coarse", "--tolerance", "0.7,liver=0.2") == 0
    warned = capsys.readouterr().err
    assert "liver 0.2 mm" in warned
    assert _evaluate(ref_dir, pred_dir, tmp_path / "ok", "--tolerance", "0.7") == 0
    assert "below the voxel spacing" not in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [("liver=x", "'x' is not a finite number"),
                                           ("liver=2,liver=3", "given twice"),
                                           ("livr=2", "'livr' is not an organ"),
                                           ("=2", "organ name is missing")])
def test_bad_tolerances_are_one_line_errors(synapse8_folders, tmp_path, capsys, text, message):
    ref_dir, pred_dir = synapse8_folders
    assert _evaluate(ref_dir, pred_dir, tmp_path / "report", "--tolerance", text) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "tolerance" in err
