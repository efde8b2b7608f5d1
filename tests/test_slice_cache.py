import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.cli import main
from medseg.data.dataset import SliceDataset
from medseg.data.slice_cache import load_case_arrays, load_manifest, prepare_cohort
from medseg.data.transunet_format import read_volume_h5, read_slice_npz
from medseg.errors import ConfigError, InputError
from medseg.io import Volume, write_volume
from helpers import tiny_case, write_tiny_cohort


@pytest.fixture
def prepared(tiny_cohort, tmp_path):
    out = tmp_path / "prepared"
    summary = prepare_cohort(tiny_cohort, out, split="seeded", test_fraction=0.5, progress=False)
    assert sorted(summary.written) == ["case0001", "case0002", "case0003", "case0004"]
    return out


def test_manifest_holds_geometry_split_and_parameters(prepared):
    manifest = load_manifest(prepared)
    assert manifest["label_set"]["name"] == "synapse8"
    assert manifest["preprocessing"]["hu_min"] == -125.0 and manifest["preprocessing"]["hu_max"] == 275.0
    assert sorted(e["split"] for e in manifest["cases"]) == ["test", "test", "train", "train"]
    entry = manifest["cases"][0]
    assert entry["source_shape"] == [24, 20, 10] and entry["oriented_shape"] == [20, 24, 10]
    assert np.allclose(entry["spacing"], [0.8, 0.8, 3.0])
    image, label = load_case_arrays(prepared, entry["case_id"])
    assert image.shape == label.shape == (10, 20, 24)
    assert image.dtype == np.float32 and label.dtype == np.uint8


def test_rerun_skips_finished_cases_and_leaves_no_partial_case(prepared, tiny_cohort, monkeypatch):
    shutil.rmtree(prepared / "cases" / "case0003")
    summary = prepare_cohort(tiny_cohort, prepared, split="seeded", test_fraction=0.5, progress=False)
    assert summary.written == ["case0003"]
    assert sorted(summary.already_done) == ["case0001", "case0002", "case0004"]

    # an interruption while writing a case leaves neither a case folder nor temporary files behind
    import medseg.data.slice_cache as cache

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    shutil.rmtree(prepared / "cases" / "case0002")
    monkeypatch.setattr(cache, "write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_cohort(tiny_cohort, prepared, split="seeded", test_fraction=0.5, progress=False)
    assert sorted(p.name for p in (prepared / "cases").iterdir()) == ["case0001", "case0003", "case0004"]


def test_other_parameters_in_the_same_folder_are_refused(prepared, tiny_cohort):
    with pytest.raises(ConfigError, match="different label_set"):
        prepare_cohort(tiny_cohort, prepared, labels="btcv13", split="seeded", test_fraction=0.5,
                       progress=False)


def test_parallel_workers_give_identical_arrays(prepared, tiny_cohort, tmp_path):
    out = tmp_path / "parallel"
    prepare_cohort(tiny_cohort, out, split="seeded", test_fraction=0.5, workers=2, progress=False)
    for case_id in ("case0001", "case0004"):
        a, b = load_case_arrays(prepared, case_id), load_case_arrays(out, case_id)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_slice_dataset(prepared):
    train = SliceDataset(prepared, "train", img_size=32, augment=True, seed=3)
    assert len(train) == 20  # two training cases of 10 slices
    sample = train[4]
    assert sample["image"].shape == (1, 32, 32) and sample["image"].dtype == torch.float32
    assert sample["label"].shape == (32, 32) and sample["label"].dtype == torch.int64
    again = SliceDataset(prepared, "train", img_size=32, augment=True, seed=3)[4]
    assert torch.equal(sample["image"], again["image"])  # augmentation is a function of (seed, epoch, index)
    train.set_epoch(1)
    draws = [torch.equal(train[i]["image"], SliceDataset(prepared, "train", 32, seed=3)[i]["image"])
             for i in range(len(train))]
    assert not all(draws)
    nonempty = SliceDataset(prepared, "train", img_size=32, augment=False, drop_empty=True)
    assert 0 < len(nonempty) < len(train)
    assert all(nonempty[i]["label"].any() for i in range(len(nonempty)))


def test_transunet_round_trip(prepared, tmp_path):
    exported = tmp_path / "transunet"
    assert main(["prepare", str(prepared.parent / "nope"), str(exported)]) == 2
    from medseg.data.transunet_format import export_transunet, import_transunet

    counts = export_transunet(prepared, exported)
    assert counts == {"train_slices": 20, "test_volumes": 2}
    names = (exported / "lists" / "lists_Synapse" / "train.txt").read_text().split()
    assert len(names) == 20 and names[0].startswith("case") and "_slice000" in names[0]
    image, label = read_slice_npz(exported / "train_npz" / f"{names[0]}.npz")
    assert image.shape == (20, 24) and label.dtype == np.uint8

    reimported = tmp_path / "reimported"
    assert main(["prepare", str(exported), str(reimported)]) == 0
    original, again = load_manifest(prepared), load_manifest(reimported)
    assert [e["case_id"] for e in original["cases"]] == [e["case_id"] for e in again["cases"]]
    for entry in original["cases"]:
        a, b = load_case_arrays(prepared, entry["case_id"]), load_case_arrays(reimported, entry["case_id"])
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    test_id = next(e["case_id"] for e in original["cases"] if e["split"] == "test")
    volume, volume_label = read_volume_h5(exported / "test_vol_h5" / f"{test_id}.npy.h5")
    assert np.array_equal(volume, load_case_arrays(prepared, test_id)[0])


def test_cli_prepare_transunet_format(tiny_cohort, tmp_path, capsys):
    out = tmp_path / "tu"
    assert main(["prepare", str(tiny_cohort), str(out), "--format", "transunet", "--split", "seeded",
                 "--no-progress"]) == 0
    assert (out / "train_npz").is_dir() and (out / "test_vol_h5").is_dir()
    assert not any(p.name.startswith(".medseg-prepare") for p in tmp_path.iterdir())


# ---- bad input: one line naming the file, exit code 2 (or skipped and listed in batch mode) ---------------

def _cohort_with_bad_case(tmp_path, corrupt):
    root = write_tiny_cohort(tmp_path / "cohort", n_cases=3)
    corrupt(root)
    return root


def _truncate_header(root):
    path = root / "img" / "img0002.nii.gz"
    path.write_bytes(path.read_bytes()[:200])


def _truncate_data(root):
    path = root / "img" / "img0002.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(root):
    (root / "img" / "img0002.nii.gz").write_bytes(b"this is not a nifti file at all" * 20)


def _four_d(root):
    image, _ = tiny_case(2)
    nib.save(nib.Nifti1Image(np.stack([image.array] * 2, -1), image.affine), str(root / "img" / "img0002.nii.gz"))


def _two_d(root):
    image, _ = tiny_case(2)
    nib.save(nib.Nifti1Image(image.array[:, :, 0], image.affine), str(root / "img" / "img0002.nii.gz"))


def _bad_labels(root):
    image, label = tiny_case(2)
    label.array[0, 0, 0] = 17
    write_volume(root / "label" / "label0002.nii.gz", label)


def _shape_mismatch(root):
    _, label = tiny_case(2)
    write_volume(root / "label" / "label0002.nii.gz", Volume(label.array[:, :, :7], label.affine))


def _empty_file(root):
    (root / "label" / "label0002.nii.gz").write_bytes(b"")


@pytest.mark.parametrize("corrupt, message", [
    (_truncate_header, "img0002.nii.gz: not a NIfTI file, or its header is truncated or corrupt"),
    (_truncate_data, "img0002.nii.gz: truncated or corrupt"),
    (_garbage, "img0002.nii.gz: not a NIfTI file"),
    (_four_d, "img0002.nii.gz: expected a 3D volume, got 4D"),
    (_two_d, "img0002.nii.gz: expected a 3D volume, got 2D"),
    (_bad_labels, "label0002.nii.gz: unknown label values 17"),
    (_shape_mismatch, "label0002.nii.gz: label shape"),
    (_empty_file, "label0002.nii.gz: file is empty"),
])
def test_bad_case_is_skipped_and_listed(tmp_path, capsys, corrupt, message):
    root = _cohort_with_bad_case(tmp_path, corrupt)
    out = tmp_path / "out"
    code = main(["prepare", str(root), str(out), "--split", "seeded", "--no-progress"])
    assert code == 1  # the batch completed, one case failed (listed)
    err = capsys.readouterr().err
    skipped_lines = [line for line in err.splitlines() if line.startswith("skipped case0002")]
    assert len(skipped_lines) == 1 and message in skipped_lines[0], err
    assert "Traceback" not in err
    manifest = load_manifest(out)
    assert [e["case_id"] for e in manifest["cases"]] == ["case0001", "case0003"]
    assert manifest["skipped"][0]["case_id"] == "case0002"
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["case0001", "case0003"]


def test_unusable_input_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["prepare", str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no NIfTI files" in err[0] and str(tmp_path / "empty") in err[0]
    assert not (tmp_path / "out").exists()
    assert main(["prepare", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    root = _cohort_with_bad_case(tmp_path, _garbage)
    for name in ("img0001.nii.gz", "img0003.nii.gz"):
        (root / "img" / name).write_bytes(b"")
    assert main(["prepare", str(root), str(tmp_path / "all_bad"), "--no-progress"]) == 2
    assert main(["prepare", str(root), str(tmp_path / "x"), "--workers", "0"]) == 2
    with pytest.raises(InputError, match="no manifest.json"):
        load_manifest(tmp_path / "empty")


def _copy_cohort(source, target):
    shutil.copytree(source, target)
    return target


def test_replaced_input_is_prepared_again(tiny_cohort, tmp_path, capsys):
    """Replacing an input NIfTI after prepare used to keep the old arrays ("4 already done")."""
    from medseg.io import write_volume
    from helpers import tiny_case

    cohort = _copy_cohort(tiny_cohort, tmp_path / "cohort")
    out = tmp_path / "out"
    assert main(["prepare", str(cohort), str(out), "--split", "seeded", "--no-progress"]) == 0
    old_image, _ = load_case_arrays(out, "case0002", mmap=False)
    image, label = tiny_case(99)
    write_volume(cohort / "img" / "img0002.nii.gz", image)
    write_volume(cohort / "label" / "label0002.nii.gz", label)
    capsys.readouterr()
    assert main(["prepare", str(cohort), str(out), "--split", "seeded", "--no-progress"]) == 0
    out_text = capsys.readouterr().out
    assert "prepared 1 cases (1 prepared again" in out_text and "3 already done" in out_text
    assert "prepared case0002 again: source image contents changed" in out_text
    new_image, _ = load_case_arrays(out, "case0002", mmap=False)
    assert not np.array_equal(old_image, new_image)
    entry = json.loads((out / "cases" / "case0002" / "case.json").read_text())
    assert len(entry["provenance"]["source_image_sha256"]) == 64
    assert entry["provenance"]["preprocessing"]["hu_min"] == -125.0


def test_interrupted_run_with_other_settings_is_not_reused(tiny_cohort, tmp_path):
    """An interrupted run has no manifest yet: its finished cases used to be reused whatever the settings."""
    from medseg.preprocessing import PreprocessingParams

    out = tmp_path / "out"
    prepare_cohort(tiny_cohort, out, labels="synapse8", split="seeded", progress=False)
    (out / "manifest.json").unlink()  # as if interrupted before the manifest was written
    summary = prepare_cohort(tiny_cohort, out, labels="btcv13", split="seeded", progress=False)
    assert summary.already_done == [] and sorted(summary.reprepared.values()) == ["other label set"] * 4
    assert load_manifest(out)["label_set"]["name"] == "btcv13"
    (out / "manifest.json").unlink()
    summary = prepare_cohort(tiny_cohort, out, labels="btcv13", split="seeded", progress=False,
                             params=PreprocessingParams(hu_min=-200.0, hu_max=300.0))
    assert set(summary.reprepared.values()) == {"other preprocessing"}
    image, _ = load_case_arrays(out, "case0001", mmap=False)
    assert json.loads((out / "cases" / "case0001" / "case.json").read_text())["provenance"]["preprocessing"][
        "hu_min"] == -200.0
    (out / "manifest.json").unlink()
    summary = prepare_cohort(tiny_cohort, out, labels="btcv13", split="seeded", progress=False,
                             params=PreprocessingParams(hu_min=-200.0, hu_max=300.0))
    assert sorted(summary.already_done) == ["case0001", "case0002", "case0003", "case0004"]


def test_unlabelled_images_in_a_labelled_cohort_are_skipped(tiny_cohort, tmp_path, capsys):
    """An image without a label (or a stray file in img/) used to become an unlabelled training case."""
    cohort = _copy_cohort(tiny_cohort, tmp_path / "cohort")
    (cohort / "label" / "label0003.nii.gz").unlink()
    shutil.copy(cohort / "img" / "img0001.nii.gz", cohort / "img" / "scan_copy.nii.gz")
    out = tmp_path / "out"
    assert main(["prepare", str(cohort), str(out), "--split", "seeded", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "img0003.nii.gz: image has no label in a labelled cohort (pass --allow-unlabelled" in err
    assert "scan_copy.nii.gz: file name does not follow the img<NNNN> naming of img/" in err
    manifest = load_manifest(out)
    assert [e["case_id"] for e in manifest["cases"]] == ["case0001", "case0002", "case0004"]
    assert len(manifest["skipped_files"]) == 2
    out2 = tmp_path / "out2"
    assert main(["prepare", str(cohort), str(out2), "--split", "seeded", "--no-progress", "--allow-unlabelled"]) == 1
    entries = {e["case_id"]: e for e in load_manifest(out2)["cases"]}
    assert entries["case0003"]["has_label"] is False and len(entries) == 4


def test_a_manifest_from_before_schema_versions_still_matches(tiny_cohort, tmp_path):
    import json

    from medseg.errors import ConfigError

    out = tmp_path / "cache"
    prepare_cohort(tiny_cohort, out, split="seeded", test_fraction=0.5, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["preprocessing"]["schema_version"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    summary = prepare_cohort(tiny_cohort, out, split="seeded", test_fraction=0.5, progress=False)
    assert len(summary.already_done) == 4
    manifest["preprocessing"]["hu_window"] = [-125, 275]  # a key this medseg does not know: never ignored
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="manifest.json: preprocessing: hu_window: unknown key"):
        prepare_cohort(tiny_cohort, out, split="seeded", test_fraction=0.5, progress=False)
