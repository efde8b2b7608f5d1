"""``medseg predict``: folders, sharding, skip-existing, outputs on the input's grid, bad inputs (exit 2)."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import DATA_DIR, tiny_case
from medseg.cli import main
from medseg.io import Volume, write_volume
from medseg.preprocessing import PreprocessingParams

IMG_SIZE = 32


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from medseg.models import create
    from medseg.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create("TransUNet-Tiny", num_classes=9, img_size=IMG_SIZE)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model, model_name="TransUNet-Tiny", model_config={"num_classes": 9, "img_size": IMG_SIZE},
                    label_set="synapse8", preprocessing=PreprocessingParams(img_size=IMG_SIZE).to_dict())
    return path


@pytest.fixture
def images(tmp_path) -> Path:
    """Four small CT files with different orientations."""
    folder = tmp_path / "images"
    for n in range(1, 5):
        image, _ = tiny_case(n, shape=(20, 18, 6))
        if n == 2:
            image = Volume(image.array[::-1].copy(), image.affine @ _flip(0, image.shape[0]))
        if n == 3:
            image = Volume(image.array.transpose(2, 0, 1).copy(), image.affine[:, [2, 0, 1, 3]])
        write_volume(folder / f"img{n:04d}.nii.gz", image)
    return folder


def _flip(axis: int, size: int) -> np.ndarray:
    flip = np.eye(4)
    flip[axis, axis] = -1
    flip[axis, 3] = size - 1
    return flip


def _predict(*args) -> int:
    return main(["predict", *map(str, args), "--no-progress", "--device", "cpu"])


def test_folder_outputs_have_each_inputs_geometry(images, checkpoint, tmp_path):
    out = tmp_path / "out"
    assert _predict("-i", images, "-o", out, "-m", checkpoint, "--statistics", "--save-probabilities") == 0
    for n in range(1, 5):
        source = nib.load(images / f"img{n:04d}.nii.gz")
        predicted = nib.load(out / f"img{n:04d}.nii.gz")
        assert predicted.shape == source.shape
        assert np.allclose(predicted.affine, source.affine, atol=1e-6)
        assert predicted.get_data_dtype() == np.uint8
        stats = json.loads((out / f"img{n:04d}_statistics.json").read_text())
        assert set(stats["organs"]) >= {"liver", "aorta"} and stats["voxel_volume_ml"] == pytest.approx(0.8 * 0.8 * 3 / 1000)
        with np.load(out / f"img{n:04d}_probabilities.npz") as npz:
            assert npz["probabilities"].shape == (*source.shape, 9)
    summary = json.loads((out / "predict_summary.json").read_text())
    assert summary["counts"] == {"predicted": 4, "exists": 0, "failed": 0}


def test_skip_existing_and_overwrite(images, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict("-i", images, "-o", out, "-m", checkpoint) == 0
    stamp = (out / "img0001.nii.gz").stat().st_mtime_ns
    capsys.readouterr()
    assert _predict("-i", images, "-o", out, "-m", checkpoint) == 0
    assert "predicted 0, already done 4" in capsys.readouterr().out
    assert (out / "img0001.nii.gz").stat().st_mtime_ns == stamp
    assert _predict("-i", images, "-o", out, "-m", checkpoint, "--overwrite") == 0
    assert "predicted 4" in capsys.readouterr().out


def test_sharding_splits_the_sorted_cases(images, checkpoint, tmp_path):
    out = tmp_path / "out"
    assert _predict("-i", images, "-o", out, "-m", checkpoint, "--num-parts", "2", "--part-id", "1") == 0
    assert sorted(p.name for p in out.glob("img*.nii.gz")) == ["img0002.nii.gz", "img0004.nii.gz"]
    assert _predict("-i", images, "-o", out, "-m", checkpoint, "--num-parts", "2", "--part-id", "0") == 0
    assert len(list(out.glob("img*.nii.gz"))) == 4
    assert (out / "predict_summary.part0of2.json").is_file() and (out / "predict_summary.part1of2.json").is_file()
    assert _predict("-i", images, "-o", out, "-m", checkpoint, "--num-parts", "2", "--part-id", "2") == 2


def test_bad_case_in_a_folder_is_skipped_and_listed(images, checkpoint, tmp_path, capsys):
    (images / "img0009.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    out = tmp_path / "out"
    assert _predict("-i", images, "-o", out, "-m", checkpoint) == 1  # completed, one case failed
    captured = capsys.readouterr()
    assert "img0009.nii.gz" in captured.err and "predicted 4, already done 0, failed 1" in captured.out
    assert not (out / "img0009.nii.gz").exists()
    summary = json.loads((out / "predict_summary.json").read_text())
    assert summary["cases"]["img0009.nii.gz"]["status"] == "failed"


def _assert_one_line_error(capsys, *words) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medseg predict: error:"), err
    for word in words:
        assert word in err[0]
    return captured.out


def test_bad_inputs_exit_2_without_output(images, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "pred.nii.gz"
    # missing input
    assert _predict("-i", tmp_path / "nope.nii.gz", "-o", target, "-m", checkpoint) == 2
    _assert_one_line_error(capsys, "nope.nii.gz")
    # corrupt NIfTI
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes((images / "img0001.nii.gz").read_bytes()[:200])
    assert _predict("-i", corrupt, "-o", target, "-m", checkpoint) == 2
    _assert_one_line_error(capsys, "corrupt.nii.gz")
    # 4D volume
    four_d = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.int16), np.eye(4)), str(four_d))
    assert _predict("-i", four_d, "-o", target, "-m", checkpoint) == 2
    _assert_one_line_error(capsys, "four_d.nii.gz", "4D")
    single = images / "img0001.nii.gz"
    # checkpoint of another architecture (a bare state_dict named as the wrong model)
    weights = DATA_DIR / "transunet_small_parity_weights.pt"
    if weights.exists():
        assert _predict("-i", single, "-o", target, "-m", weights, "--model", "TransUNet-Tiny") == 2
        _assert_one_line_error(capsys, "weights do not match")
    # a checkpoint carrying pickled code
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": _Evil()}, evil)
    assert _predict("-i", single, "-o", target, "-m", evil) == 2
    assert "this must never run" not in _assert_one_line_error(capsys, "evil.pt", "pickled code")
    # missing checkpoint
    assert _predict("-i", single, "-o", target, "-m", tmp_path / "none.pt") == 2
    _assert_one_line_error(capsys, "none.pt")
    # output onto the input
    assert _predict("-i", images, "-o", images, "-m", checkpoint) == 2
    _assert_one_line_error(capsys, "overwrite an input")
    assert list(out.iterdir()) == []  # nothing written, not even a temporary file


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_single_file_to_a_named_output(images, checkpoint, tmp_path):
    target = tmp_path / "result" / "liver_case.nii.gz"
    assert _predict("-i", images / "img0003.nii.gz", "-o", target, "-m", checkpoint, "--tta") == 0
    assert nib.load(target).shape == nib.load(images / "img0003.nii.gz").shape


def test_reference_state_dict_with_model_flag(images, tmp_path):
    weights = DATA_DIR / "transunet_small_parity_weights.pt"  # committed (see tests/data); never skipped
    target = tmp_path / "ref.nii.gz"
    assert _predict("-i", images / "img0001.nii.gz", "-o", target, "-m", weights, "--model", "TransUNet-S",
                    "--labels", "synapse8", "--img-size", "224") == 0
    assert nib.load(target).shape == nib.load(images / "img0001.nii.gz").shape


def test_transunet_h5_volume(checkpoint, tmp_path):
    from medseg.data.transunet_format import write_volume_h5

    stack = np.random.default_rng(0).uniform(0, 1, (4, 20, 18)).astype(np.float32)  # (D, H, W) in [0, 1]
    write_volume_h5(tmp_path / "in" / "case0007.npy.h5", stack, None)
    assert _predict("-i", tmp_path / "in", "-o", tmp_path / "out", "-m", checkpoint, "--statistics") == 0
    predicted = nib.load(tmp_path / "out" / "case0007.nii.gz")
    assert predicted.shape == (20, 18, 4) and np.allclose(predicted.affine, np.eye(4))
    stats = json.loads((tmp_path / "out" / "case0007_statistics.json").read_text())
    assert "mean_intensity" in stats["organs"]["liver"]


def test_outputs_of_another_checkpoint_are_never_kept(images, checkpoint, tmp_path, capsys):
    """Predicting into a folder holding another model's outputs used to say "already done" and keep them."""
    from medseg.io import read_provenance
    from medseg.models import create
    from medseg.models.checkpoint import save_checkpoint

    out = tmp_path / "out"
    assert _predict("-i", images, "-o", out, "-m", checkpoint) == 0
    record = read_provenance(out / "img0001.nii.gz")
    assert len(record["checkpoint_sha256"]) == 64 and record["tta"] is False and len(record["input_sha256"]) == 64
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    save_checkpoint(other, create("TransUNet-Tiny", num_classes=9, img_size=IMG_SIZE), model_name="TransUNet-Tiny",
                    model_config={"num_classes": 9, "img_size": IMG_SIZE}, label_set="synapse8",
                    preprocessing=PreprocessingParams(img_size=IMG_SIZE).to_dict())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert _predict("-i", images, "-o", out, "-m", other) == 2
    _assert_one_line_error(capsys, "img0001.nii.gz", "another checkpoint", "--overwrite", "and 3 more")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    assert _predict("-i", images, "-o", out, "-m", checkpoint, "--tta") == 2  # other settings
    _assert_one_line_error(capsys, "other 'tta'", "--overwrite")
    image, _ = tiny_case(7, shape=(20, 18, 6))  # a replaced input
    write_volume(images / "img0004.nii.gz", image)
    assert _predict("-i", images, "-o", out, "-m", checkpoint) == 2
    _assert_one_line_error(capsys, "img0004.nii.gz", "another version of the input")
    assert _predict("-i", images, "-o", out, "-m", other, "--overwrite") == 0
    assert read_provenance(out / "img0001.nii.gz")["checkpoint"] == str(other)
    summary = json.loads((out / "predict_summary.json").read_text())
    assert summary["checkpoint_sha256"] == read_provenance(out / "img0002.nii.gz")["checkpoint_sha256"]
    # a file from elsewhere (no record) is not taken for a finished case either
    write_volume(out / "img0003.nii.gz", Volume(np.zeros((6, 20, 18), np.uint8), np.eye(4)))
    assert _predict("-i", images, "-o", out, "-m", other) == 2
    _assert_one_line_error(capsys, "img0003.nii.gz", "no medseg provenance record")


def test_part_without_inputs_exits_0(images, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict("-i", images, "-o", out, "-m", checkpoint, "--num-parts", "6", "--part-id", "5") == 0
    assert "part 5 of 6 has no inputs (4 input(s) in all): nothing to do" in capsys.readouterr().out
    assert not out.exists()
