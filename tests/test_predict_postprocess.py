"""`medseg predict` applies the checkpoint's post-processing rules by default, names them in predict_summary.json,
`--no-postprocess` turns them off, rules of another checkpoint are refused; quality flags per case."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import tiny_case
from medseg.cli import main
from medseg.data.transforms import PreprocessingParams
from medseg.io import file_sha256, write_volume
from medseg.labels import SYNAPSE8
from medseg.postprocess import OrganRule, PostprocessRules, rules_path, save_rules


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from medseg.models import create
    from medseg.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create("TransUNet-Tiny", num_classes=9, img_size=32)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model, model_name="TransUNet-Tiny", model_config={"num_classes": 9, "img_size": 32},
                    label_set="synapse8", preprocessing=PreprocessingParams(img_size=32).to_dict())
    return path


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    for n in (1, 2):
        write_volume(folder / f"img{n:04d}.nii.gz", tiny_case(n, shape=(20, 18, 6))[0])
    return folder


def _predict(*args) -> int:
    return main(["predict", *map(str, args), "--no-progress", "--device", "cpu"])


def _labels(folder: Path, n: int) -> np.ndarray:
    return np.asarray(nib.load(folder / f"img{n:04d}.nii.gz").dataobj)


def test_rules_are_applied_named_and_turned_off(images, checkpoint, tmp_path, capsys):
    model = tmp_path / "model" / "last.pt"
    model.parent.mkdir()
    shutil.copy(checkpoint, model)
    assert _predict("-i", images, "-o", tmp_path / "plain", "-m", model) == 0  # no rules file yet
    plain = json.loads((tmp_path / "plain" / "predict_summary.json").read_text())
    assert plain["postprocess"] is None and plain["postprocess_off"] == "the checkpoint has no rules file"
    raw = _labels(tmp_path / "plain", 1)
    assert raw.any()
    # rules that drop every organ (no component reaches 1e6 ml): every predicted organ is reported not found
    rules = PostprocessRules("synapse8", {organ: OrganRule(min_component_ml=1e6) for organ in SYNAPSE8.organs},
                             checkpoint_sha256=file_sha256(model), validation={"source": "test"})
    save_rules(rules_path(model), rules)
    assert _predict("-i", images, "-o", tmp_path / "post", "-m", model) == 0
    summary = json.loads((tmp_path / "post" / "predict_summary.json").read_text())
    assert summary["postprocess"]["rules_sha256"] == file_sha256(rules_path(model))
    assert summary["postprocess"]["organs"]["liver"] == "components >= 1e+06 ml"
    assert not _labels(tmp_path / "post", 1).any()
    predicted = {SYNAPSE8.organs[v - 1] for v in np.unique(raw) if v}
    assert set(summary["cases"]["img0001.nii.gz"]["not_found"]) == predicted
    assert "flags" in summary["cases"]["img0001.nii.gz"]
    assert (tmp_path / "post" / "quality_flags.csv").read_text().startswith("case_id,organ,flag,detail")
    # the rules are part of what made an output: the plain folder's outputs are not reused as post-processed
    assert _predict("-i", images, "-o", tmp_path / "plain", "-m", model) == 2
    assert "exists and it was made with other 'postprocess'" in capsys.readouterr().err
    # --no-postprocess: the model's own labels again
    assert _predict("-i", images, "-o", tmp_path / "off", "-m", model, "--no-postprocess") == 0
    assert np.array_equal(_labels(tmp_path / "off", 1), raw)
    off = json.loads((tmp_path / "off" / "predict_summary.json").read_text())
    assert off["postprocess"] is None and off["postprocess_off"] == "--no-postprocess"


def test_rules_of_another_checkpoint_are_refused(images, checkpoint, tmp_path, capsys):
    model = tmp_path / "last.pt"
    shutil.copy(checkpoint, model)
    save_rules(rules_path(model), PostprocessRules("synapse8", {}, checkpoint_sha256="0" * 64))
    assert _predict("-i", images, "-o", tmp_path / "out", "-m", model) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "chosen for another checkpoint" in err[0] and "--no-postprocess" in err[0]
    assert not (tmp_path / "out").exists()



def test_quality_flags_csv_keeps_the_rows_of_reused_cases(images, checkpoint, tmp_path):
    """A re-run that reuses a case and predicts a new one lists both in quality_flags.csv (rebuilt from records)."""
    from medseg.quality import flags_csv_text

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(images / "img0001.nii.gz", folder)
    assert _predict("-i", folder, "-o", tmp_path / "out", "-m", checkpoint) == 0
    first = (tmp_path / "out" / "quality_flags.csv").read_text()
    shutil.copy(images / "img0002.nii.gz", folder)
    assert _predict("-i", folder, "-o", tmp_path / "out", "-m", checkpoint) == 0
    summary = json.loads((tmp_path / "out" / "predict_summary.json").read_text())
    assert summary["counts"]["exists"] == 1 and summary["counts"]["predicted"] == 1
    records = {n: json.loads((tmp_path / "out" / f"{n}_record.json").read_text()) for n in ("img0001", "img0002")}
    flags = {n: record["quality"]["flags"] for n, record in records.items()}
    assert flags["img0001"] == summary["cases"]["img0001.nii.gz"].get("flags", flags["img0001"])
    assert first == flags_csv_text({"img0001": flags["img0001"]})
    assert (tmp_path / "out" / "quality_flags.csv").read_text() == flags_csv_text(flags)


def test_rules_of_another_label_set_are_refused(images, checkpoint, tmp_path, capsys):
    """btcv13 rules on a synapse8 checkpoint would act on other organs' class numbers (esophagus 5 = liver 5)."""
    from medseg.labels import BTCV13

    model = tmp_path / "model" / "last.pt"
    model.parent.mkdir()
    shutil.copy(checkpoint, model)
    save_rules(rules_path(model), PostprocessRules("btcv13", {"esophagus": OrganRule(min_component_ml=1e6)},
                                                   checkpoint_sha256=file_sha256(model),
                                                   validation={"source": "test"}))
    assert "esophagus" in BTCV13.organs
    assert _predict("-i", images, "-o", tmp_path / "out", "-m", model) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label set btcv13" in err[0] and "synapse8" in err[0]
    assert not (tmp_path / "out" / "img0001.nii.gz").exists()


def test_a_case_interrupted_before_its_record_is_predicted_again_without_overwrite(images, checkpoint, tmp_path):
    """The labels were written (with this run's provenance in their header) but the record was not: the same
    command predicts the case again instead of asking for --overwrite."""
    assert _predict("-i", images, "-o", tmp_path / "out", "-m", checkpoint) == 0
    (tmp_path / "out" / "img0001_record.json").unlink()
    assert _predict("-i", images, "-o", tmp_path / "out", "-m", checkpoint) == 0
    summary = json.loads((tmp_path / "out" / "predict_summary.json").read_text())
    assert summary["cases"]["img0001.nii.gz"]["status"] == "predicted"
    assert summary["cases"]["img0002.nii.gz"]["status"] == "exists"
    assert (tmp_path / "out" / "img0001_record.json").exists()


def test_a_single_file_prediction_names_its_model_in_the_evaluation_report(images, checkpoint, tmp_path):
    """No predict_summary.json beside a single-file prediction: the report names the model from its header."""
    from helpers import tiny_case

    predictions, references = tmp_path / "pred", tmp_path / "ref"
    assert _predict("-i", images / "img0001.nii.gz", "-o", predictions / "img0001.nii.gz", "-m", checkpoint) == 0
    assert not (predictions / "predict_summary.json").exists()
    write_volume(references / "img0001.nii.gz", tiny_case(1, shape=(20, 18, 6))[1])
    assert main(["evaluate", str(references), str(predictions), "-o", str(tmp_path / "report"),
                 "--reference-format", "classes", "--no-progress", "--workers", "1"]) in (0, 1)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "TransUNet-Tiny" in report and file_sha256(checkpoint) in report
