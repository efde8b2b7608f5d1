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
    assert summary["counts"]["evaluated"] == 1 and list(summary["standard"]["cases"]) == ["case0003"]

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

    # a per-case error: still exit 0, the error is listed
    _write(pred_dir / "case0001.nii.gz", np.zeros((4, 4, 4), np.uint8))
    assert main(["evaluate", str(ref_dir), str(pred_dir), "-o", str(out), "--workers", "1", "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["counts"]["errors"] == 1

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
    assert json.loads((out / "summary.json").read_text())["counts"]["errors"] == 3
