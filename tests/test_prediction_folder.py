"""The prediction folder (issue 20 items 1, 2 and 7, issue 21): every file belongs to the record of its case, a
damaged output is never taken for a finished case, a second run adds what it asks for, one label set and an honest
checkpoint per folder, mixed inputs refused, space-separated output types, ``--organs ''`` refused; and the library
call a notebook makes (``medseg.predict_cases``)."""
from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import tiny_case
from medseg import dicom, schema
from medseg.cli import main
from medseg.data.transforms import PreprocessingParams
from medseg.io import Volume, read_json, read_provenance, write_volume
from test_predict_cli import IMG_SIZE, checkpoint, images  # noqa: F401  (fixtures)

EXTRAS = ("--statistics", "--preview", "--save-probabilities", "--split-masks")


def _predict(*args) -> int:
    return main(["predict", *map(str, args), "--no-progress", "--device", "cpu"])


def _checkpoint(path: Path, seed: int, labels: str = "synapse8") -> Path:
    from medseg.models import create
    from medseg.models.checkpoint import save_checkpoint

    classes = 9 if labels == "synapse8" else 14
    torch.manual_seed(seed)
    save_checkpoint(path, create("TransUNet-Tiny", num_classes=classes, img_size=IMG_SIZE),
                    model_name="TransUNet-Tiny", model_config={"num_classes": classes, "img_size": IMG_SIZE},
                    label_set=labels, preprocessing=PreprocessingParams(img_size=IMG_SIZE).to_dict())
    return path


def _one_line_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("medseg predict: error:"), err
    return err[0]


def _truncate_keeping_header(path: Path) -> None:
    """Cut the voxel data of a .nii.gz in half; the header (and its provenance extension) still reads."""
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) - (len(raw) - 352) // 2]))


def test_an_output_truncated_with_its_header_intact_is_predicted_again(images, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict("-i", images, "-o", out, "-m", checkpoint) == 0
    _truncate_keeping_header(out / "img0002.nii.gz")
    assert read_provenance(out / "img0002.nii.gz") is not None  # what today's reuse check reads: still there
    with pytest.raises(Exception):
        np.asarray(nib.load(out / "img0002.nii.gz").dataobj)
    capsys.readouterr()
    assert _predict("-i", images, "-o", out, "-m", checkpoint) == 0
    assert "predicted 1, already done 3" in capsys.readouterr().out
    assert np.asarray(nib.load(out / "img0002.nii.gz").dataobj).shape == nib.load(images / "img0002.nii.gz").shape
    record = read_json(out / "img0002_record.json")
    assert record["files"]["img0002.nii.gz"]["size"] == (out / "img0002.nii.gz").stat().st_size


def test_a_damaged_extra_is_predicted_again(images, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict("-i", images, "-o", out, "-m", checkpoint, "--statistics") == 0
    (out / "img0003_statistics.json").write_text("{}")
    capsys.readouterr()
    assert _predict("-i", images, "-o", out, "-m", checkpoint, "--statistics") == 0
    assert "predicted 1, already done 3" in capsys.readouterr().out
    assert "liver" in read_json(out / "img0003_statistics.json")["organs"]


def test_overwrite_with_another_model_and_no_extras_removes_the_previous_extras(images, checkpoint, tmp_path):
    out = tmp_path / "out"
    assert _predict("-i", images, "-o", out, "-m", checkpoint, *EXTRAS) == 0
    assert (out / "img0001_preview.png").is_file() and (out / "statistics.csv").is_file()
    other = _checkpoint(tmp_path / "other.pt", seed=5)
    assert _predict("-i", images, "-o", out, "-m", other, "--overwrite") == 0
    for n in range(1, 5):
        for name in (f"img{n:04d}_statistics.json", f"img{n:04d}_preview.png", f"img{n:04d}_probabilities.npz",
                     f"img{n:04d}"):
            assert not (out / name).exists(), name
        assert read_json(out / f"img{n:04d}_record.json")["provenance"]["checkpoint"] == str(other)
    assert not (out / "statistics.csv").exists()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("img")) == ["labels.json",
                                                                                   "predict_summary.json",
                                                                                   "quality_flags.csv"]


def test_fewer_organs_leave_only_their_masks(images, checkpoint, tmp_path):
    out = tmp_path / "out"
    assert _predict("-i", images, "-o", out, "-m", checkpoint, "--split-masks") == 0
    assert len(list((out / "img0001").iterdir())) == 8
    assert _predict("-i", images, "-o", out, "-m", checkpoint, "--split-masks", "--organs", "liver",
                    "--overwrite") == 0
    assert sorted(p.name for p in (out / "img0001").iterdir()) == ["liver.nii.gz"]
    assert read_json(out / "labels.json")["organs_kept"] == ["liver"]


def test_a_second_run_adding_statistics_writes_them(images, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict("-i", images, "-o", out, "-m", checkpoint) == 0
    capsys.readouterr()
    assert _predict("-i", images, "-o", out, "-m", checkpoint, "--statistics") == 0
    assert "predicted 4, already done 0" in capsys.readouterr().out
    assert all((out / f"img{n:04d}_statistics.json").is_file() for n in range(1, 5))
    assert (out / "statistics.csv").is_file()
    assert _predict("-i", images, "-o", out, "-m", checkpoint, "--statistics") == 0
    assert "predicted 0, already done 4" in capsys.readouterr().out


def _more_images(folder: Path, numbers) -> Path:
    for n in numbers:
        image, _ = tiny_case(n, shape=(20, 18, 6))
        write_volume(folder / f"img{n:04d}.nii.gz", image)
    return folder


def test_labels_json_is_never_rewritten_for_another_label_set(images, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict("-i", images, "-o", out, "-m", checkpoint) == 0
    btcv = _checkpoint(tmp_path / "btcv.pt", seed=2, labels="btcv13")
    later = _more_images(tmp_path / "later", [11, 12])
    before = (out / "labels.json").read_bytes()
    capsys.readouterr()
    assert _predict("-i", later, "-o", out, "-m", btcv) == 2
    line = _one_line_error(capsys)
    assert "labels.json" in line and "synapse8" in line and "btcv13" in line and "img0001.nii.gz" in line
    assert (out / "labels.json").read_bytes() == before and not (out / "img0011.nii.gz").exists()


def test_a_folder_of_two_checkpoints_is_not_reported_as_one(images, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict("-i", images, "-o", out, "-m", checkpoint) == 0
    other = _checkpoint(tmp_path / "other.pt", seed=7)
    capsys.readouterr()
    assert _predict("-i", _more_images(tmp_path / "later", [11]), "-o", out, "-m", other) == 0
    assert "2 checkpoints" in capsys.readouterr().err
    summary = read_json(out / "predict_summary.json")
    assert summary["checkpoint_sha256"] is None and str(checkpoint) in summary["checkpoint"]
    assert sorted(len(entry["cases"]) for entry in summary["checkpoints"].values()) == [1, 4]


def test_a_folder_with_a_dicom_series_and_a_nifti_names_both(checkpoint, tmp_path, capsys):
    image, _ = tiny_case(1, shape=(20, 18, 6))
    folder = tmp_path / "in"
    write_volume(folder / "stray.nii.gz", image)
    dicom.write_series(image, folder / "series", patient_id="P1", study_date="20240101", series_number=1)
    assert _predict("-i", folder, "-o", tmp_path / "out", "-m", checkpoint) == 2
    line = _one_line_error(capsys)
    assert "stray.nii.gz" in line and str(folder / "series") in line
    assert not (tmp_path / "out").exists()


def test_a_single_file_prediction_gets_a_record(images, checkpoint, tmp_path):
    target = tmp_path / "result" / "case.nii.gz"
    assert _predict("-i", images / "img0001.nii.gz", "-o", target, "-m", checkpoint) == 0
    record = read_json(tmp_path / "result" / "case_record.json")
    assert record["provenance"]["checkpoint"] == str(checkpoint)
    assert record["provenance"]["model_name"] == "TransUNet-Tiny" and record["provenance"]["label_set"] == "synapse8"
    assert set(record["files"]) == {"case.nii.gz"}


def test_empty_organs_is_a_one_line_error(images, checkpoint, tmp_path, capsys):
    assert _predict("-i", images, "-o", tmp_path / "out", "-m", checkpoint, "--organs", "") == 2
    assert "--organs" in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_output_types_space_separated_or_comma_separated():
    parser = argparse.ArgumentParser()
    schema.add_arguments(parser, schema.PredictRequest)
    base = ["-i", "a", "-o", "b", "-m", "c"]
    for extra in (["--output-type", "dicom-seg", "rtstruct"], ["--output-type", "dicom-seg,rtstruct"],
                  ["--output-type", "dicom-seg", "--output-type", "rtstruct"]):
        values = schema.check_flags(parser.parse_args(base + extra), schema.PredictRequest)
        assert schema.PredictRequest(**values).output_types == ["dicom-seg", "rtstruct"]


def test_dicom_seg_and_rtstruct_space_separated(checkpoint, tmp_path, monkeypatch):
    from medseg.prediction import run

    def liver_blob(volume, *args, **kwargs):
        labels = np.zeros(volume.shape, np.uint8)
        labels[5:12, 5:12, 1:3] = 5
        return Volume(labels, volume.affine)

    monkeypatch.setattr(run, "predict_volume", liver_blob)
    image, _ = tiny_case(1, shape=(20, 18, 4))
    dicom.write_series(image, tmp_path / "in", patient_id="P2", study_date="20240202", series_number=4)
    assert _predict("-i", tmp_path / "in", "-o", tmp_path / "out", "-m", checkpoint, "--output-type", "dicom-seg",
                    "rtstruct") == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "P2_20240202_4_seg.dcm" in names and "P2_20240202_4_rtstruct.dcm" in names
    assert "P2_20240202_4.nii.gz" not in names
    record = read_json(tmp_path / "out" / "P2_20240202_4_record.json")
    assert set(record["outputs"]) == {"dicom-seg", "rtstruct"}


def test_a_notebook_predicts_a_folder_with_resume_in_three_lines(images, checkpoint, tmp_path):
    import medseg

    request = medseg.PredictRequest(input=images, output=tmp_path / "out", checkpoint=checkpoint, device="cpu",
                                    progress=False)
    first = medseg.predict_cases(request)
    assert sorted(first.predicted) == [f"img{n:04d}.nii.gz" for n in range(1, 5)] and first.exit_code == 0
    again = medseg.predict_cases(request)
    assert again.predicted == [] and len(again.reused) == 4 and again.label_set == "synapse8"
    assert again.checkpoint_sha256 == first.checkpoint_sha256 == read_json(
        tmp_path / "out" / "predict_summary.json")["checkpoint_sha256"]


@pytest.mark.parametrize("values, message", [
    ({"device": "gpu"}, "PredictRequest.device: expected auto|cpu|cuda[:N], got 'gpu'"),
    ({"organs": ""}, "PredictRequest.organs: empty"),
    ({"output_types": "png"}, "PredictRequest.output_types: unknown type 'png'"),
    ({"batch_size": 0}, "PredictRequest.batch_size: must be at least 1"),
])
def test_a_request_is_validated_when_made(values, message):
    assert schema.PredictRequest(input="a", output="b", checkpoint="c",
                                 organs=["liver, spleen", "liver"]).organs == ["liver", "spleen"]
    with pytest.raises(medseg_errors().ConfigError, match=message.replace("[", r"\[").replace("|", r"\|")):
        schema.PredictRequest(input="a", output="b", checkpoint="c", **values)


def medseg_errors():
    import medseg.errors

    return medseg.errors


def test_broken_links_in_an_input_folder_are_listed_as_failed(images, checkpoint, tmp_path, capsys):
    (images / "img0008.nii.gz").symlink_to(tmp_path / "gone.nii.gz")  # target missing
    (images / "img0009.nii.gz").symlink_to(images / "img0009.nii.gz")  # a loop
    out = tmp_path / "out"
    assert _predict("-i", images, "-o", out, "-m", checkpoint) == 1
    captured = capsys.readouterr()
    assert "predicted 4, already done 0, failed 2" in captured.out
    assert "skipped img0008.nii.gz" in captured.err and "skipped img0009.nii.gz" in captured.err
    cases = read_json(out / "predict_summary.json")["cases"]
    assert cases["img0008.nii.gz"]["status"] == cases["img0009.nii.gz"]["status"] == "failed"
