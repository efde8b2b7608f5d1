"""Cohort evaluation: pairing, per-case errors, missing predictions, reports, and the ``medseg evaluate`` command."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from medseg.cli import main
from medseg.errors import ConfigError, InputError
from medseg.evaluation import evaluate_case, evaluate_folders, pair_cases, write_reports
from medseg.io import Volume, write_volume
from medseg.labels import SYNAPSE8

SHAPE = (20, 22, 8)
SPACING = (0.8, 0.7, 2.5)
AFFINE = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
AFFINE[:3, 3] = (120.0, 95.0, -40.0)
PAPER_ORDER = ["Aorta", "Gallbladder", "Kidney L", "Kidney R", "Liver", "Pancreas", "Spleen", "Stomach"]


def _labels(seed: int) -> np.ndarray:
    """A synapse8 class map with blob organs."""
    rng = np.random.default_rng(seed)
    volume = np.zeros(SHAPE, np.uint8)
    for class_value in range(1, 9):
        field = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 2.0)
        volume[field > np.quantile(field, 0.9)] = class_value
    return volume


def _prediction(reference: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    prediction = np.roll(reference, int(rng.integers(-2, 3)), axis=int(rng.integers(3)))
    prediction[prediction == 6] = 0  # pancreas missed
    return prediction


def _write(path, array, affine=AFFINE):
    return write_volume(path, Volume(np.asarray(array), affine), dtype=np.uint8)


@pytest.fixture()
def flat(tmp_path):
    """Flat reference folder (labelNNNN, classes) and a prediction folder (caseNNNN) of three cases."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    arrays = {}
    for n in (1, 2, 3):
        reference = _labels(n)
        prediction = _prediction(reference, 10 + n)
        _write(ref_dir / f"label{n:04d}.nii.gz", reference)
        _write(pred_dir / f"case{n:04d}.nii.gz", prediction)
        arrays[f"case{n:04d}"] = (prediction, reference)
    return ref_dir, pred_dir, arrays


def test_folder_evaluation_equals_evaluate_case(flat):
    ref_dir, pred_dir, arrays = flat
    summary = evaluate_folders(ref_dir, pred_dir, protocol="both", tolerance_mm=1.5, workers=1, progress=False)
    assert summary["counts"]["cases"] == 3 and summary["counts"]["evaluated"] == 3
    assert summary["counts"]["errors"] == 0 and summary["counts"]["missing_predictions"] == 0
    assert summary["spacing_source"] == "reference NIfTI affine"
    for case_id, (prediction, reference) in arrays.items():
        spacing = summary["case_info"][case_id]["spacing_mm"]  # from the stored (float32) affine
        assert spacing == pytest.approx(SPACING)
        expected = evaluate_case(prediction, reference, spacing, SYNAPSE8, protocol="both", tolerance_mm=1.5)
        assert summary["standard"]["cases"][case_id] == expected["standard"]
        assert summary["transunet"]["cases"][case_id] == expected["transunet"]
    liver = [summary["standard"]["cases"][c]["liver"]["dice"] for c in arrays]
    assert summary["standard"]["organs"]["liver"]["dice"]["mean"] == pytest.approx(np.mean(liver))
    assert summary["standard"]["organs"]["liver"]["dice"]["std"] == pytest.approx(np.std(liver))
    assert summary["standard"]["organs"]["liver"]["dice"]["median"] == pytest.approx(np.median(liver))
    organ_means = [summary["standard"]["organs"][o]["dice"]["mean"] for o in SYNAPSE8.organs]
    assert summary["standard"]["foreground_mean"]["dice"] == pytest.approx(np.mean(organ_means))
    # the missed pancreas is a scored failure in every case, and enters the mean
    pancreas = summary["standard"]["organs"]["pancreas"]
    assert pancreas["dice"] == {"mean": 0.0, "std": 0.0, "median": 0.0, "n": 3}
    assert pancreas["status_counts"]["pred_empty"] == 3


def test_parallel_workers_give_the_same_summary(flat):
    ref_dir, pred_dir, _ = flat
    serial = evaluate_folders(ref_dir, pred_dir, protocol="both", workers=1, progress=False)
    parallel = evaluate_folders(ref_dir, pred_dir, protocol="both", workers=2, progress=False)
    assert parallel["standard"] == serial["standard"] and parallel["transunet"] == serial["transunet"]


def test_missing_prediction_is_a_listed_scored_failure(flat):
    ref_dir, pred_dir, _ = flat
    (pred_dir / "case0002.nii.gz").unlink()
    summary = evaluate_folders(ref_dir, pred_dir, protocol="both", workers=1, progress=False)
    assert summary["missing_predictions"] == ["case0002"]
    assert summary["counts"]["missing_predictions"] == 1 and summary["counts"]["evaluated"] == 2
    missing = summary["standard"]["cases"]["case0002"]
    diagonal = float(np.sqrt(np.sum((np.array(SHAPE) * np.array(SPACING)) ** 2)))
    for record in missing.values():
        assert record["status"] == "missing_prediction"
        assert record["dice"] == 0.0 and record["hd95_mm"] == pytest.approx(diagonal)
    assert summary["standard"]["organs"]["aorta"]["dice"]["n"] == 3  # the failure stays in the mean
    assert summary["transunet"]["cases"]["case0002"]["aorta"] == {"status": "missing_prediction", "dice": 0.0,
                                                                  "hd95_voxels": 0.0}


def test_geometry_and_value_errors_are_per_case(flat):
    ref_dir, pred_dir, arrays = flat
    _write(pred_dir / "case0001.nii.gz", np.zeros((20, 22, 9), np.uint8))  # wrong shape
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.01
    _write(pred_dir / "case0002.nii.gz", arrays["case0002"][0], affine=shifted)  # affine off by 0.01 mm
    summary = evaluate_folders(ref_dir, pred_dir, workers=1, progress=False)
    errors = {e["case_id"]: e["message"] for e in summary["errors"]}
    assert set(errors) == {"case0001", "case0002"}
    assert "case0001.nii.gz: shape (20, 22, 9) differs from the reference (20, 22, 8)" in errors["case0001"]
    assert "case0002.nii.gz: affine differs from the reference label0002.nii.gz" in errors["case0002"]
    # unscorable predictions are scored as empty ones: failures that stay in the means
    assert summary["counts"]["evaluated"] == 1 and summary["counts"]["failed"] == 2
    assert summary["counts"]["unscorable_predictions"] == 2
    assert sorted(summary["standard"]["cases"]) == ["case0001", "case0002", "case0003"]
    assert summary["standard"]["cases"]["case0001"]["aorta"]["status"] == "unscorable_prediction"
    assert summary["standard"]["organs"]["aorta"]["dice"]["n"] == 3

    nearly = AFFINE.copy()
    nearly[0, 3] += 5e-5  # within the 1e-4 mm tolerance
    _write(pred_dir / "case0002.nii.gz", arrays["case0002"][0], affine=nearly)
    bad_values = arrays["case0001"][0].copy()
    bad_values[0, 0, 0] = 12
    _write(pred_dir / "case0001.nii.gz", bad_values)
    summary = evaluate_folders(ref_dir, pred_dir, workers=1, progress=False)
    assert [e["case_id"] for e in summary["errors"]] == ["case0001"]
    assert "label values 12 are outside the classes 0..8 of label set synapse8" in summary["errors"][0]["message"]


def test_raw_btcv_cohort_references_are_remapped(tmp_path):
    raw = np.zeros(SHAPE, np.uint8)
    raw[2:8, 2:8, 1:4] = 8  # BTCV aorta -> synapse8 class 1
    raw[10:18, 3:15, 2:7] = 6  # liver -> 5
    raw[3:6, 14:20, 4:7] = 9  # inferior vena cava -> background in synapse8
    cohort = tmp_path / "Synapse"
    _write(cohort / "img" / "img0001.nii.gz", np.zeros(SHAPE))
    _write(cohort / "label" / "label0001.nii.gz", raw)
    prediction = np.zeros(SHAPE, np.uint8)
    prediction[raw == 8], prediction[raw == 6] = 1, 5
    _write(tmp_path / "pred" / "case0001.nii.gz", prediction)
    summary = evaluate_folders(cohort, tmp_path / "pred", workers=1, progress=False)
    assert summary["case_info"]["case0001"]["reference_format"] == "raw"
    case = summary["standard"]["cases"]["case0001"]
    assert case["aorta"]["dice"] == 1.0 and case["liver"]["dice"] == 1.0
    assert case["spleen"]["status"] == "both_empty"

    # a flat folder of raw labels: values above 8 reveal the raw format; "classes" refuses them per case
    _write(tmp_path / "flat" / "label0001.nii.gz", raw)
    summary = evaluate_folders(tmp_path / "flat", tmp_path / "pred", workers=1, progress=False)
    assert summary["case_info"]["case0001"]["reference_format"] == "raw"
    summary = evaluate_folders(tmp_path / "flat", tmp_path / "pred", workers=1, progress=False,
                               reference_format="classes")
    assert "reference format raw" in summary["errors"][0]["message"]


def test_pairing_errors(flat, tmp_path):
    ref_dir, pred_dir, _ = flat
    with pytest.raises(InputError, match="prediction folder not found"):
        pair_cases(ref_dir, tmp_path / "nowhere")
    with pytest.raises(InputError, match="reference folder not found"):
        pair_cases(tmp_path / "nowhere", pred_dir)
    other = tmp_path / "other"
    _write(other / "case0042.nii.gz", np.zeros(SHAPE))
    with pytest.raises(InputError, match="no prediction matches a reference case"):
        pair_cases(ref_dir, other)
    _write(pred_dir / "case0042.nii.gz", np.zeros(SHAPE))
    pairs, unmatched = pair_cases(ref_dir, pred_dir)
    assert [p.case_id for p in pairs] == ["case0001", "case0002", "case0003"] and unmatched == ["case0042.nii.gz"]
    with pytest.raises(ConfigError, match="reference-format"):
        pair_cases(ref_dir, pred_dir, reference_format="btcv")
    with pytest.raises(ConfigError, match="workers"):
        evaluate_folders(ref_dir, pred_dir, workers=0)


def test_reports_contents(flat, tmp_path):
    ref_dir, pred_dir, _ = flat
    (pred_dir / "case0003.nii.gz").unlink()
    summary = evaluate_folders(ref_dir, pred_dir, protocol="both", workers=1, progress=False)
    paths = write_reports(summary, tmp_path / "report")

    saved = json.loads(paths["summary"].read_text())
    for key in ("medseg_version", "protocol", "label_set", "tolerance_mm", "spacing_source", "counts", "errors",
                "missing_predictions", "standard", "transunet"):
        assert key in saved
    assert saved["standard"]["organs"]["liver"]["dice"]["n"] == 3
    assert set(saved["counts"]["organ_status"]) >= {"scored", "both_empty", "pred_empty", "ref_empty"}

    table = pd.read_csv(paths["per_case"])
    assert list(table.columns[:4]) == ["case", "organ", "metric", "value"]
    assert len(table) == 3 * 8 * (6 + 2)
    row = table[(table.case == "case0003") & (table.organ == "liver") & (table.metric == "dice")
                & (table.protocol == "standard")]
    assert row.value.item() == 0.0 and row.status.item() == "missing_prediction"

    markdown = paths["markdown"].read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("|  | Mean"))
    assert header == "|  | Mean | " + " | ".join(PAPER_ORDER) + " |"
    assert "| DSC (%) |" in markdown and "| HD95 (mm) |" in markdown and "HD95 (voxels), TransUNet" in markdown
    assert "**Protocol.** Standard protocol" in markdown and "TransUNet protocol (the paper's)" in markdown
    assert "## Worst cases" in markdown and "case0003" in markdown.split("## Worst cases")[1]
    assert "## Missing predictions" in markdown and "- case0003" in markdown
    assert "![DSC per organ](dice_boxplot.png)" in markdown

    page = paths["html"].read_text()
    thumbnails = sorted((tmp_path / "report").glob("worst_*.png"))
    assert page.count('src="data:image/png;base64,') == 2 + len(thumbnails)  # the box plots and the thumbnails
    assert "<th>Aorta</th><th>Gallbladder</th>" in page
    for name in ("dice_boxplot", "hd95_boxplot"):
        assert paths[name].read_bytes().startswith(b"\x89PNG")
    assert not list((tmp_path / "report").glob(".*tmp*"))  # atomic writes leave no temporary files


def test_single_protocol_summaries(flat):
    ref_dir, pred_dir, _ = flat
    standard = evaluate_folders(ref_dir, pred_dir, protocol="standard", workers=1, progress=False)
    paper = evaluate_folders(ref_dir, pred_dir, protocol="transunet", workers=1, progress=False)
    assert "transunet" not in standard and "standard" not in paper
    assert paper["transunet"]["metrics"] == ["dice", "hd95_voxels"]


def test_cli_evaluate(flat, tmp_path, capsys):
    ref_dir, pred_dir, arrays = flat
    out = tmp_path / "out"
    code = main(["evaluate", str(ref_dir), str(pred_dir), "-o", str(out), "--workers", "1", "--no-progress",
                 "--tolerance", "1.5"])
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {"summary.json", "per_case.csv", "report.md", "report.html"}
    assert json.loads((out / "summary.json").read_text())["tolerance_mm"] == 1.5

    # a per-case failure: exit 1, the failure is counted, listed and said on stderr
    capsys.readouterr()
    _write(pred_dir / "case0001.nii.gz", np.zeros((4, 4, 4), np.uint8))
    assert main(["evaluate", str(ref_dir), str(pred_dir), "-o", str(out), "--workers", "1", "--no-progress"]) == 1
    assert json.loads((out / "summary.json").read_text())["counts"]["failed"] == 1
    err = capsys.readouterr().err
    assert "1 of 3 cases failed (1 unscorable prediction(s): case0001)" in err
    assert "failed case0001 (unscorable_prediction)" in err

    # unusable inputs: exit 2 with a one-line message
    assert main(["evaluate", str(tmp_path / "nowhere"), str(pred_dir), "-o", str(out), "--no-progress"]) == 2
    assert "reference folder not found" in capsys.readouterr().err
    assert main(["evaluate", str(ref_dir), str(pred_dir), "-o", str(out), "--tolerance", "-1", "--no-progress"]) == 2
    assert main(["evaluate", str(ref_dir), str(pred_dir), "-o", str(out), "--workers", "0", "--no-progress"]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(ref_dir), str(pred_dir), "-o", str(out), "--protocol", "paper"])
    assert exit_info.value.code == 2

    # every case broken: the reports list the errors, exit 2
    for n in (2, 3):
        _write(pred_dir / f"case{n:04d}.nii.gz", np.zeros((4, 4, 4), np.uint8))
    assert main(["evaluate", str(ref_dir), str(pred_dir), "-o", str(out), "--workers", "1", "--no-progress"]) == 2
    assert "no case could be scored" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["counts"]["failed"] == 3


def _dice_mean(summary):
    return summary["standard"]["foreground_mean"]["dice"]


@pytest.mark.parametrize("breakage", ["truncated", "empty_file", "2d", "wrong_shape", "wrong_affine",
                                      "values_outside", "non_integer"])
def test_unscorable_prediction_counts_like_a_missing_one(tmp_path, breakage):
    """One bad file of four used to leave the means at 100 %: it must weigh exactly like a missing prediction."""
    import nibabel as nib

    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    for n in (1, 2, 3, 4):
        reference = _labels(n)
        _write(ref_dir / f"label{n:04d}.nii.gz", reference)
        _write(pred_dir / f"case{n:04d}.nii.gz", reference)  # perfect predictions
    missing_dir = tmp_path / "missing"
    missing_dir.mkdir()
    for n in (2, 3, 4):
        (missing_dir / f"case{n:04d}.nii.gz").write_bytes((pred_dir / f"case{n:04d}.nii.gz").read_bytes())
    bad = pred_dir / "case0001.nii.gz"
    if breakage == "truncated":
        bad.write_bytes(bad.read_bytes()[:200])
    elif breakage == "empty_file":
        bad.write_bytes(b"")
    elif breakage == "2d":
        nib.save(nib.Nifti1Image(np.zeros(SHAPE[:2], np.uint8), AFFINE), str(bad))
    elif breakage == "wrong_shape":
        _write(bad, np.zeros((SHAPE[0] + 1, *SHAPE[1:]), np.uint8))
    elif breakage == "wrong_affine":
        shifted = AFFINE.copy()
        shifted[:3, 3] += 3.0
        _write(bad, _labels(1), affine=shifted)
    elif breakage == "values_outside":
        array = _labels(1)
        array[0, 0, 0] = 11
        _write(bad, array)
    else:
        nib.save(nib.Nifti1Image(_labels(1).astype(np.float32) + 0.5, AFFINE), str(bad))
    summary = evaluate_folders(ref_dir, pred_dir, workers=1, progress=False)
    missing = evaluate_folders(ref_dir, missing_dir, workers=1, progress=False)
    assert _dice_mean(summary) == pytest.approx(_dice_mean(missing)) and _dice_mean(summary) < 0.8
    assert summary["transunet"]["foreground_mean"] == pytest.approx(missing["transunet"]["foreground_mean"])
    assert summary["counts"]["failed"] == 1 and summary["failures"][0]["reason"] == "unscorable_prediction"
    assert "1 of 4 cases failed (1 unscorable prediction(s): case0001)" in summary["warnings"][-1]


def test_prediction_in_another_voxel_order_is_reoriented(flat):
    """Same physical grid, axes flipped and permuted (another tool's voxel order): scored as if stored like the
    reference; a prediction on another grid stays a per-case failure."""
    import nibabel.orientations as nio

    ref_dir, pred_dir, arrays = flat
    expected = evaluate_folders(ref_dir, pred_dir, workers=1, progress=False)
    prediction = arrays["case0002"][0]
    transform = nio.axcodes2ornt(("A", "S", "L"))  # any voxel order: flip + permute, same world positions
    ornt = nio.ornt_transform(nio.io_orientation(AFFINE), transform)
    reordered = nio.apply_orientation(prediction, ornt)
    affine = AFFINE @ nio.inv_ornt_aff(ornt, prediction.shape)
    _write(pred_dir / "case0002.nii.gz", reordered, affine=affine)
    summary = evaluate_folders(ref_dir, pred_dir, workers=1, progress=False)
    assert summary["counts"]["failed"] == 0 and summary["case_info"]["case0002"]["reoriented"] is True
    assert summary["standard"]["cases"]["case0002"] == expected["standard"]["cases"]["case0002"]

    zoomed = affine.copy()
    zoomed[:3, :3] *= 1.01  # same voxel order, 1 % larger voxels: another grid
    _write(pred_dir / "case0002.nii.gz", reordered, affine=zoomed)
    summary = evaluate_folders(ref_dir, pred_dir, workers=1, progress=False)
    assert summary["failures"][0]["case_id"] == "case0002"
    assert "another voxel grid" in summary["failures"][0]["message"]


def test_reference_format_is_decided_once_per_cohort(tmp_path):
    """A raw BTCV file whose highest value is <= 8 used to be read as classes when it sat in a flat folder."""
    raw_high = np.zeros(SHAPE, np.uint8)
    raw_high[2:8, 2:8, 1:4] = 8  # BTCV aorta -> synapse8 class 1
    raw_high[10:14, 3:9, 2:5] = 11  # BTCV pancreas -> class 6
    raw_low = np.zeros(SHAPE, np.uint8)
    raw_low[2:8, 2:8, 1:4] = 8  # the highest value is 8: a class number too
    flat = tmp_path / "flat"
    _write(flat / "label0001.nii.gz", raw_high)
    _write(flat / "label0002.nii.gz", raw_low)
    prediction = np.zeros(SHAPE, np.uint8)
    prediction[2:8, 2:8, 1:4] = 1
    for n in (1, 2):
        _write(tmp_path / "pred" / f"case{n:04d}.nii.gz", prediction)
    with pytest.raises(ConfigError, match="pass --reference-format raw or classes"):
        evaluate_folders(flat, tmp_path / "pred", workers=1, progress=False)
    summary = evaluate_folders(flat, tmp_path / "pred", workers=1, progress=False, reference_format="raw")
    assert {i["reference_format"] for i in summary["case_info"].values()} == {"raw"}
    assert summary["standard"]["cases"]["case0002"]["aorta"]["dice"] == 1.0
    # the CLI: one line, exit 2
    assert main(["evaluate", str(flat), str(tmp_path / "pred"), "-o", str(tmp_path / "out"), "--workers", "1",
                 "--no-progress"]) == 2


def test_collapsed_model_is_said(flat, capsys):
    ref_dir, pred_dir, arrays = flat
    for n in (1, 2, 3):
        _write(pred_dir / f"case{n:04d}.nii.gz", np.zeros(SHAPE, np.uint8))  # empty everywhere
    out = pred_dir.parent / "out"
    assert main(["evaluate", str(ref_dir), str(pred_dir), "-o", str(out), "--workers", "1", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning: predictions empty for 24 of 24 organ-cases" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["empty_predictions"] == {"empty": 24, "of": 24}
    assert "predictions empty for 24 of 24 organ-cases" in (out / "report.md").read_text()
    assert "predictions empty for 24 of 24 organ-cases" in (out / "report.html").read_text()
