"""Trust on the paths a researcher walks (issue 20): results that would be silently wrong, crashes, half-written
outputs and folders medseg does not own.

Each silent-wrong-result test here failed on the code before the fix; each crash test shows the one-line error and
the exit code, and that nothing half-written is left.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medseg.cli import main
from medseg.errors import MedsegError
from medseg.io import Volume, read_json, write_volume
from medseg.labels import BTCV13, SYNAPSE8
from medseg.prediction.outputs import write_labels_nifti

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


def test_a_tolerance_for_an_organ_the_predictions_did_not_keep_is_refused(tmp_path):
    from medseg.errors import ConfigError

    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    liver = SYNAPSE8.organs.index("liver") + 1
    reference = _classes(1)
    write_volume(ref_dir / "case0001.nii.gz", Volume(reference, AFFINE))
    kept = np.where(reference == liver, reference, 0).astype(np.uint8)
    write_labels_nifti(pred_dir / "case0001.nii.gz", Volume(kept, AFFINE), SYNAPSE8,
                       provenance=_record(organs="liver"))
    with pytest.raises(ConfigError, match="NSD tolerance for spleen: not scored .*kept only liver"):
        _summary(ref_dir, pred_dir, tolerance_by_organ="spleen=3")
    with pytest.raises(ConfigError, match="spleen: not scored"):
        _summary(ref_dir, pred_dir, tolerance_mm="2,spleen=3")
    assert _summary(ref_dir, pred_dir, tolerance_by_organ="liver=3")["tolerance_mm_by_organ"]["liver"] == 3.0


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
    assert _evaluate(ref_dir, pred_dir, tmp_path / "coarse", "--tolerance", "0.7", "--tolerance-by-organ", "liver=0.2") == 0
    warned = capsys.readouterr().err
    assert "liver 0.2 mm" in warned
    assert _evaluate(ref_dir, pred_dir, tmp_path / "ok", "--tolerance", "0.7") == 0
    assert "below the voxel spacing" not in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [("liver=x", "'x' is not a finite number"),
                                           ("liver=2,liver=3", "given twice"),
                                           ("livr=2", "'livr' is not an organ"),
                                           ("=2", "organ name is missing"),
                                           ("liver", "is not ORGAN=MM"),
                                           (" , ", "no value given")])
def test_bad_tolerances_are_one_line_errors(synapse8_folders, tmp_path, capsys, text, message):
    ref_dir, pred_dir = synapse8_folders
    assert _evaluate(ref_dir, pred_dir, tmp_path / "report", "--tolerance-by-organ", text) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "tolerance" in err


# ---------------------------------------------------------------------------------------------------------------
# Item 6 and crashes: input checks of NIfTI files and the TransUNet layout.


def _nifti_bytes_with_pixdim(path, index: int, value: float) -> None:
    """Rewrite an uncompressed NIfTI's pixdim[index] in place (nibabel itself would never write 0)."""
    import struct

    data = bytearray(path.read_bytes())
    data[76 + 4 * index: 80 + 4 * index] = struct.pack("<f", value)
    path.write_bytes(bytes(data))


def test_zero_voxel_spacing_is_an_input_error(tmp_path):
    """nibabel reads pixdim 0 as 1 mm: volumes and distances would be in made-up units."""
    import nibabel as nib

    from medseg.errors import InputError
    from medseg.io import read_volume

    path = tmp_path / "ct.nii"
    image = nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), np.eye(4))
    image.set_sform(None, code=0)
    image.set_qform(np.eye(4), code=1)
    nib.save(image, str(path))
    _nifti_bytes_with_pixdim(path, 1, 0.0)
    with pytest.raises(InputError, match=r"ct.nii: voxel spacing pixdim\[1\]=0"):
        read_volume(path)


@pytest.mark.parametrize("kind", ["rgb", "complex"])
def test_rgb_and_complex_nifti_are_one_line_errors(tmp_path, capsys, kind):
    import nibabel as nib

    from helpers import write_tiny_cohort

    cohort = write_tiny_cohort(tmp_path / "cohort", n_cases=2)
    shape = (24, 20, 10)
    if kind == "rgb":
        array = np.zeros(shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    else:
        array = np.zeros(shape, np.complex64)
    nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.8, 3.0, 1.0])), str(cohort / "img" / "img0002.nii.gz"))
    assert main(["prepare", str(cohort), str(tmp_path / "out"), "--split", "all-train", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "img0002.nii.gz" in err and ("colour voxels" in err or "complex64 voxels" in err)
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def tiny_prepared(tmp_path_factory):
    """A 4-case slice cache (synapse8) of the tiny cohort, seeded split."""
    from helpers import write_tiny_cohort
    from medseg.data.slice_cache import prepare_cohort

    root = tmp_path_factory.mktemp("prepared")
    cohort = write_tiny_cohort(root / "cohort", n_cases=4)
    prepare_cohort(cohort, root / "slices", split="seeded", test_fraction=0.5, seed=1, progress=False)
    return root / "slices"


def _export(prepared, out) -> None:
    from medseg.data.transunet_format import export_transunet

    export_transunet(prepared, out)


def _assert_import_refused(exported, out, capsys, *fragments: str) -> None:
    """Importing the TransUNet folder ``exported`` into ``out`` is one line of error (exit 2) holding every fragment,
    and no slice cache is left."""
    assert main(["prepare", str(exported), str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(fragment in err for fragment in fragments), err
    assert _no_cache_written(out)


def _no_cache_written(out) -> bool:
    return not (out / "manifest.json").exists() and not (out / "cases").exists()


def test_transunet_slice_with_a_label_outside_the_set_is_refused(tiny_prepared, tmp_path, capsys):
    exported, out = tmp_path / "tu", tmp_path / "imported"
    _export(tiny_prepared, exported)
    slice_path = sorted((exported / "train_npz").glob("*.npz"))[-1]
    with np.load(slice_path) as data:
        image, label = data["image"], data["label"].copy()
    label[0, 0] = 200
    np.savez(slice_path, image=image, label=label)
    _assert_import_refused(exported, out, capsys, slice_path.name,
                           "label value 200 is not a class of label set synapse8")


@pytest.mark.parametrize("damage, message", [
    ("corrupt", "not a readable TransUNet slice file"),
    ("size", "differs from the case's first slice"),
])
def test_damaged_transunet_slices_are_one_line_errors(tiny_prepared, tmp_path, capsys, damage, message):
    exported, out = tmp_path / "tu", tmp_path / "imported"
    _export(tiny_prepared, exported)
    slice_path = sorted((exported / "train_npz").glob("*.npz"))[-1]
    if damage == "corrupt":
        slice_path.write_bytes(slice_path.read_bytes()[:100])
    else:
        np.savez(slice_path, image=np.zeros((7, 9), np.float32), label=np.zeros((7, 9), np.float32))
    _assert_import_refused(exported, out, capsys, slice_path.name, message)


@pytest.mark.parametrize("content, message", [
    ("hu", "outside [0, 1]"),
    ("zero", "holds no voxels"),
])
def test_bad_transunet_volumes_are_one_line_errors(tiny_prepared, tmp_path, capsys, content, message):
    from medseg.data.transunet_format import write_volume_h5

    exported, out = tmp_path / "tu", tmp_path / "imported"
    _export(tiny_prepared, exported)
    volume = sorted((exported / "test_vol_h5").glob("*.npy.h5"))[0]
    if content == "hu":
        write_volume_h5(volume, np.full((3, 8, 8), 240.0, np.float32) - 1000, None)
    else:
        write_volume_h5(volume, np.zeros((0, 8, 8), np.float32), None)
    _assert_import_refused(exported, out, capsys, volume.name, message)


# ---------------------------------------------------------------------------------------------------------------
# Item 8: folders medseg does not own, and one writer at a time.


def test_exporting_again_with_another_split_leaves_no_old_slices(tmp_path, capsys):
    from helpers import write_tiny_cohort
    from medseg.data.slice_cache import load_manifest

    cohort = write_tiny_cohort(tmp_path / "cohort", n_cases=4)
    out = tmp_path / "tu"
    common = ["prepare", str(cohort), str(out), "--format", "transunet", "--no-progress"]
    assert main(common + ["--split", "all-train"]) == 0
    assert main(common + ["--split", "all-test"]) == 0
    assert not (out / "train_npz").exists()  # the first export's slices were medseg's: removed with their folder
    assert (out / "lists" / "lists_Synapse" / "train.txt").read_text() == ""
    assert main(["prepare", str(out), str(tmp_path / "back"), "--no-progress"]) == 0
    cases = [e["case_id"] for e in load_manifest(tmp_path / "back")["cases"]]
    assert sorted(cases) == ["case0001", "case0002", "case0003", "case0004"]  # each case once, as a test volume
    assert {e["split"] for e in load_manifest(tmp_path / "back")["cases"]} == {"test"}


def test_export_into_a_folder_with_foreign_layout_files_is_refused(tiny_prepared, tmp_path):
    from medseg.errors import OutputError

    out = tmp_path / "tu"
    (out / "train_npz").mkdir(parents=True)
    theirs = out / "train_npz" / "case0099_slice000.npz"
    np.savez(theirs, image=np.zeros((4, 4), np.float32), label=np.zeros((4, 4), np.float32))
    with pytest.raises(OutputError, match="case0099_slice000.npz: not written by a medseg export"):
        _export(tiny_prepared, out)
    assert theirs.exists() and not (out / "test_vol_h5").exists()
    (out / "notes.txt").write_text("mine")
    theirs.unlink()
    _export(tiny_prepared, out)
    assert (out / "notes.txt").read_text() == "mine"  # files outside the layout are left alone


def test_a_second_writer_is_refused_and_a_dead_holder_is_taken_over(tmp_path):
    import socket
    import subprocess
    import sys

    from medseg.errors import OutputError
    from medseg.ownership import LOCK_FILE, folder_lock

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                      "started": "now"}))
        with pytest.raises(OutputError, match=f"in use by another medseg process \\(pid {holder.pid}"):
            with folder_lock(tmp_path, "run folder"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(tmp_path, "run folder") as lock:  # the holder is gone: its lock is stale
        assert json.loads(lock.read_text())["pid"] != holder.pid
    assert not (tmp_path / LOCK_FILE).exists()


# ---------------------------------------------------------------------------------------------------------------
# Training: one writer per run folder, a full disk, a damaged metrics.csv, labels outside the set.


def _train_args(prepared, out, *extra) -> list[str]:
    return ["train", "--model", "TransUNet-Tiny", "--data", str(prepared), "--out", str(out), "--epochs", "1",
            "--img-size", "32", "--batch-size", "8", "--workers", "0", "--threads", "1", "--no-progress",
            "--set", "tensorboard=false", *extra]


def _leftover_temps(folder) -> list:
    return [p.name for p in folder.rglob("*") if ".medseg-tmp" in p.name] if folder.exists() else []


def test_a_second_training_into_the_same_folder_is_refused(tiny_prepared, tmp_path, capsys):
    import socket
    import subprocess
    import sys

    from medseg.ownership import LOCK_FILE

    out = tmp_path / "run"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (out / LOCK_FILE).write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(), "started": "t"}))
        assert main(_train_args(tiny_prepared, out)) == 2
    finally:
        other.kill()
        other.wait()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training folder in use by another medseg process" in err[0] and str(other.pid) in err[0]
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing of the second run was written


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_nothing_half_written(tiny_prepared, tmp_path):
    """A real file-size limit (RLIMIT_FSIZE, as a full disk gives EFBIG/ENOSPC) while last.pt is written."""
    import os
    import resource
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    process = subprocess.run([sys.executable, "-m", "medseg", *_train_args(tiny_prepared, out)],
                             capture_output=True, text=True, preexec_fn=limit, timeout=600,
                             env={**os.environ, "MEDSEG_PROGRESS": "lines"})
    assert process.returncode == 2, process.stderr
    errors = [line for line in process.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in process.stderr
    assert "cannot save the checkpoint" in errors[0] and "disk full" in errors[0]
    assert not (out / "last.pt").exists() and not _leftover_temps(out)


def test_resume_with_a_damaged_metrics_file_is_one_line(tiny_prepared, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train_args(tiny_prepared, out, "--set", "stop_after=1")) == 0
    (out / "metrics.csv").write_text("epoch,iteration,loss\n0,1,0.5\n\x00garbage,,\n")
    last = (out / "last.pt").read_bytes()
    capsys.readouterr()
    assert main(_train_args(tiny_prepared, out, "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metrics.csv: damaged training metrics" in err[0] and "line 3" in err[0]
    assert (out / "last.pt").read_bytes() == last


def test_a_cached_label_outside_the_label_set_is_found_before_training(tiny_prepared, tmp_path, capsys):
    import shutil

    prepared = tmp_path / "slices"
    shutil.copytree(tiny_prepared, prepared)
    from medseg.data.slice_cache import load_manifest

    from medseg.data.slice_cache import array_record

    train_case = next(e["case_id"] for e in load_manifest(prepared)["cases"] if e["split"] == "train")
    label_path = prepared / "cases" / train_case / "label.npy"
    label = np.load(label_path)
    label[0, 0, 0] = 200
    np.save(label_path, label)
    # A cache written with that value (its records match the file), not one altered afterwards (refused for that).
    for record_path in (prepared / "manifest.json", label_path.parent / "case.json"):
        record = json.loads(record_path.read_text())
        for entry in record.get("cases", [record]):
            if entry.get("case_id") == train_case:
                entry["arrays"]["label"] = array_record(label_path, label)
        record_path.write_text(json.dumps(record))
    assert main(_train_args(prepared, tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{label_path.parent}: label.npy holds value 200" in err[0]
    assert not (tmp_path / "run").exists()


def test_a_config_file_with_a_duplicate_key_is_refused(tiny_prepared, tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text("epochs: 1\nlr: 0.01\nepochs: 5\n")
    assert main(_train_args(tiny_prepared, tmp_path / "run", "--config", str(config))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.yaml: key 'epochs' given twice (lines 1 and 3)" in err[0]
    assert not (tmp_path / "run").exists()


def test_the_cli_says_disk_full(monkeypatch, tmp_path, capsys):
    import errno

    import medseg.commands.synth as synth_command

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.nii.gz"))

    monkeypatch.setattr(synth_command, "run", full)
    assert main(["synth", str(tmp_path / "c"), "--cases", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "x.nii.gz: disk full or file-size limit reached (No space left on device)" in err


# ---------------------------------------------------------------------------------------------------------------
# Pipelines: the data fingerprint, owned stage folders, the run lock, unprepared cases, stop_after.


def _pipeline_file(tmp_path, text: str):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_a_ct_edited_in_place_with_the_same_size_and_time_reruns_prepare(tmp_path):
    import os

    from helpers import write_tiny_cohort
    from medseg.pipeline import load_pipeline, stage_keys

    cohort = write_tiny_cohort(tmp_path / "cohort", n_cases=2)
    path = _pipeline_file(tmp_path, f"data: {cohort}\nstages:\n  prepare: {{split: seeded}}\n")
    before = stage_keys(load_pipeline(path))["prepare"]
    image = cohort / "img" / "img0001.nii.gz"
    stat = image.stat()
    data = bytearray(image.read_bytes())
    data[-20] ^= 0xFF  # same size; then the same modification time
    image.write_bytes(bytes(data))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert image.stat().st_size == stat.st_size and image.stat().st_mtime_ns == stat.st_mtime_ns
    assert stage_keys(load_pipeline(path))["prepare"] != before


def test_a_dicom_cohorts_slices_are_in_the_fingerprint(tmp_path):
    from medseg.pipeline import load_pipeline, stage_keys

    series = tmp_path / "cohort" / "img" / "img0001"
    series.mkdir(parents=True)
    for n in range(3):
        (series / f"IM{n:04d}").write_bytes(b"DICM" + bytes([n]) * 100)
    path = _pipeline_file(tmp_path, f"data: {tmp_path / 'cohort'}\nstages:\n  prepare: {{split: seeded}}\n")
    before = stage_keys(load_pipeline(path))["prepare"]
    (series / "IM0001").write_bytes(b"DICM" + bytes([9]) * 100)
    assert stage_keys(load_pipeline(path))["prepare"] != before


def test_a_users_file_in_a_stage_folder_is_kept_and_one_inside_its_output_refused(tmp_path, caplog):
    from medseg.errors import OutputError
    from medseg.pipeline import load_pipeline, run_pipeline

    run = tmp_path / "run"
    path = _pipeline_file(tmp_path, f"run_dir: {run}\nstages:\n  synth: {{cases: 1, seed: 1}}\n")
    run_pipeline(load_pipeline(path), progress=False)
    notes = run / "synth" / "notes.txt"
    notes.write_text("my notes")
    assert [r.status for r in run_pipeline(load_pipeline(path, ["synth.seed=2"]), progress=False)] == ["ran"]
    assert notes.read_text() == "my notes"
    assert f"{notes}: kept (not written by medseg)" in caplog.text
    assert json.loads((run / "synth" / "cohort" / "phantom.json").read_text())["seed"] == 2

    theirs = run / "synth" / "cohort" / "img" / "img0099.nii.gz"
    theirs.write_bytes(b"not medseg's")
    with pytest.raises(OutputError, match="img0099.nii.gz: not written by medseg, but inside the synth stage"):
        run_pipeline(load_pipeline(path, ["synth.seed=3"]), progress=False)
    assert theirs.read_bytes() == b"not medseg's" and (run / "synth" / "stage.json").exists()


def test_a_second_pipeline_run_in_one_folder_is_refused(tmp_path, capsys):
    import socket
    import subprocess
    import sys

    from medseg.ownership import LOCK_FILE

    run = tmp_path / "run"
    run.mkdir()
    path = _pipeline_file(tmp_path, f"run_dir: {run}\nstages:\n  synth: {{cases: 1}}\n")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (run / LOCK_FILE).write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(), "started": "t"}))
        assert main(["run", str(path), "--no-progress"]) == 2
    finally:
        other.kill()
        other.wait()
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "run folder in use by another medseg process" in err[0]
    assert not (run / "synth").exists()


def test_stop_after_ends_the_pipeline_without_an_error(tiny_cohort, tmp_path, monkeypatch, capsys):
    import medseg.engine.train as engine_train
    import medseg.pipeline as pipeline

    def stopped(config):
        return engine_train.RunResult(run_dir=Path(config.out), last_checkpoint=Path(config.out) / "last.pt",
                                      iterations=2, max_iterations=10, stop_reason="stop_after", exit_code=0)

    monkeypatch.setattr(pipeline, "train", stopped)  # the pipeline's own reference to engine.train.train
    path = _pipeline_file(tmp_path, f"run_dir: {tmp_path / 'run'}\ndata: {tiny_cohort}\nstages:\n"
                                    "  prepare: {split: seeded, test_fraction: 0.5}\n  train: {model: TransUNet-Tiny}\n")
    assert main(["run", str(path), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "train: stopped (stop_after) at iteration 2 of 10" in err and "error" not in err


def test_an_unpreparable_case_and_nii_labels_in_a_pipeline(tmp_path, capsys):
    """A truncated image is reported (exit 1), and uncompressed .nii labels are evaluated (they crashed)."""
    from helpers import tiny_case

    cohort = tmp_path / "cohort"
    for n in range(1, 6):
        image, label = tiny_case(n)
        write_volume(cohort / "img" / f"img{n:04d}.nii.gz", image)
        write_volume(cohort / "label" / f"label{n:04d}.nii", label)
    broken = cohort / "img" / "img0005.nii.gz"
    broken.write_bytes(broken.read_bytes()[:300])
    run = tmp_path / "run"
    path = _pipeline_file(tmp_path, f"run_dir: {run}\ndata: {cohort}\nstages:\n"
                                    "  prepare: {split: seeded, test_fraction: 0.5}\n"
                                    "  train: {model: TransUNet-Tiny, img_size: 32, epochs: 1, batch_size: 8, "
                                    "workers: 0, threads: 1, tensorboard: false}\n"
                                    "  predict: {}\n  evaluate: {workers: 1}\n")
    assert main(["run", str(path), "--no-progress"]) == 1
    out = capsys.readouterr()
    summary = read_json(run / "evaluate" / "summary.json")
    assert summary["counts"]["failed"] == 0 and summary["counts"]["evaluated"] >= 1
    assert list(summary["unprepared_cases"]) == ["case0005"]
    assert any("could not be prepared" in w and "case0005" in w for w in summary["warnings"])
    assert "could not be prepared" in out.out
    assert all(p.name.endswith(".nii") for p in (run / "evaluate" / "references").iterdir())


def test_an_unfinished_synth_cohort_is_refused_by_prepare(tmp_path, capsys):
    from helpers import write_tiny_cohort

    cohort = write_tiny_cohort(tmp_path / "cohort", n_cases=2)
    (cohort / "phantom.json").write_text(json.dumps({"format": "medseg-phantom", "seed": 4, "num_cases": 5,
                                                     "complete": False, "cases": []}))
    assert main(["prepare", str(cohort), str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "phantom.json: the phantom cohort is incomplete" in err[0]
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_broken_symlinks_in_a_cohort_are_listed(tmp_path, capsys):
    from helpers import write_tiny_cohort

    cohort = write_tiny_cohort(tmp_path / "cohort", n_cases=2)
    (cohort / "img" / "img0003.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    (cohort / "img" / "img0004.nii.gz").symlink_to(cohort / "img" / "img0004.nii.gz")
    assert main(["prepare", str(cohort), str(tmp_path / "out"), "--split", "all-train", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "img0003.nii.gz: a dangling symbolic link" in err and "img0004.nii.gz: a symbolic link loop" in err


def test_a_dicom_series_cohort_runs_through_the_pipeline(tmp_path, capsys):
    """A cohort medseg prepare accepts (img/imgXXXX/ DICOM series, NIfTI labels) also runs in medseg run."""
    from helpers import tiny_case
    from medseg import dicom

    cohort = tmp_path / "cohort"
    for n in range(1, 5):
        image, label = tiny_case(n)
        write_volume(cohort / "label" / f"label{n:04d}.nii.gz", label)
        dicom.write_series(image, cohort / "img" / f"img{n:04d}")
    run = tmp_path / "run"
    path = _pipeline_file(tmp_path, f"run_dir: {run}\ndata: {cohort}\nstages:\n"
                                    "  prepare: {split: seeded, test_fraction: 0.5}\n"
                                    "  train: {model: TransUNet-Tiny, img_size: 32, epochs: 1, batch_size: 8, "
                                    "workers: 0, threads: 1, tensorboard: false}\n"
                                    "  predict: {}\n  evaluate: {workers: 1}\n")
    assert main(["run", str(path), "--no-progress"]) == 0, capsys.readouterr().err
    summary = read_json(run / "evaluate" / "summary.json")
    assert summary["counts"]["evaluated"] == 2 and summary["counts"]["failed"] == 0



def test_the_boxes_of_kept_organs_have_their_own_colours(tmp_path):
    """Only liver and spleen scored: the liver's box is drawn in the liver's colour, not the first organ's."""
    from matplotlib.patches import PathPatch

    from medseg.evaluation.report import box_plot_figure

    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    liver, spleen = SYNAPSE8.organs.index("liver") + 1, SYNAPSE8.organs.index("spleen") + 1
    for n in (1, 2):
        reference = _classes(n)
        write_volume(ref_dir / f"case{n:04d}.nii.gz", Volume(reference, AFFINE))
        kept = np.where(np.isin(np.roll(reference, 1, axis=0), [liver, spleen]), np.roll(reference, 1, axis=0), 0)
        write_labels_nifti(pred_dir / f"case{n:04d}.nii.gz", Volume(kept.astype(np.uint8), AFFINE), SYNAPSE8,
                           provenance=_record(organs="liver,spleen"))
    summary = _summary(ref_dir, pred_dir)
    figure = box_plot_figure(summary, "standard", "dice")
    faces = [tuple(round(255 * c) for c in patch.get_facecolor()[:3])
             for axes in figure.axes for patch in axes.patches if isinstance(patch, PathPatch)]
    colours = dict(zip(SYNAPSE8.organs, SYNAPSE8.colours))
    assert faces == [tuple(colours["liver"]), tuple(colours["spleen"])]


def test_a_zip_input_killed_with_sigkill_leaves_nothing_after_the_next_run(tmp_path, monkeypatch):
    """SIGKILL while a zipped series is extracted: the next zip input removes the extracted copy."""
    import os
    import subprocess
    import sys
    import tempfile
    import zipfile

    from helpers import tiny_case
    from medseg import dicom

    image, _ = tiny_case(1)
    files = dicom.write_series(image, tmp_path / "series")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in files:
            z.write(path, path.name)
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    killed = subprocess.run(
        [sys.executable, "-c", "import os, signal, sys\nfrom medseg.dicom import open_dicom_input\n"
         "with open_dicom_input(sys.argv[1]):\n    os.kill(os.getpid(), signal.SIGKILL)\n", str(archive)],
        env={**os.environ, "TMPDIR": str(temp_root)}, capture_output=True, timeout=120)
    assert killed.returncode == -9
    left = [p.name for p in temp_root.iterdir()]
    assert len(left) == 1 and "medseg-dicom" in left[0]  # what the killed process left
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))
    assert dicom.read_dicom(archive).shape == image.shape
    assert list(temp_root.iterdir()) == []


def test_the_pipeline_passes_per_organ_tolerances(tmp_path, monkeypatch):
    from medseg import pipeline as pipeline_module

    seen = {}

    def fake_evaluate(references, predictions, **options):
        seen.update(options)
        raise RuntimeError("stop here")

    monkeypatch.setattr(pipeline_module, "evaluate_folders", fake_evaluate)  # the pipeline's own references
    params = pipeline_module.stage_params("evaluate", {"tolerance_mm": 3, "tolerance_by_organ": {"liver": 5}}, "p")
    monkeypatch.setattr(pipeline_module, "_test_cases", lambda outputs: [])
    monkeypatch.setattr(pipeline_module, "load_manifest", lambda path: {"label_set": "synapse8"})
    with pytest.raises(RuntimeError, match="stop here"):
        pipeline_module._stage_evaluate(None, params, tmp_path, {"prepare": {"prepared": "x"},
                                                                 "predict": {"predictions": "y"}}, False)
    assert seen["tolerance_mm"] == 3.0 and seen["tolerance_by_organ"] == {"liver": 5.0}


def test_prepare_on_a_full_disk_says_so_and_leaves_no_partial_cache(tmp_path):
    """numpy reports a short write without an errno; the user still reads "disk full", and no case is half there."""
    import resource
    import signal
    import subprocess
    import sys

    from helpers import write_tiny_cohort

    cohort = write_tiny_cohort(tmp_path / "cohort", n_cases=2)
    out = tmp_path / "slices"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    process = subprocess.run([sys.executable, "-m", "medseg", "prepare", str(cohort), str(out), "--split",
                              "all-train", "--no-progress"], capture_output=True, text=True, preexec_fn=limit,
                             timeout=300)
    assert process.returncode == 2, process.stderr
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and "medseg prepare: error:" in lines[0]
    assert "disk full or file-size limit reached" in lines[0]
    assert not (out / "manifest.json").exists() and not list(out.rglob("*.npy")) and not _leftover_temps(out)


def test_a_cached_stage_whose_output_was_damaged_runs_again(tmp_path, caplog):
    from medseg.pipeline import load_pipeline, run_pipeline

    run = tmp_path / "run"
    path = _pipeline_file(tmp_path, f"run_dir: {run}\nstages:\n  synth: {{cases: 1, seed: 1}}\n")
    run_pipeline(load_pipeline(path), progress=False)
    image = run / "synth" / "cohort" / "img" / "img0001.nii.gz"
    whole = image.read_bytes()
    image.write_bytes(whole[: len(whole) // 2])
    assert [r.status for r in run_pipeline(load_pipeline(path), progress=False)] == ["ran"]
    assert "img0001.nii.gz changed size" in caplog.text
    assert image.read_bytes() == whole  # written again, the same phantom
    assert [r.status for r in run_pipeline(load_pipeline(path), progress=False)] == ["cached"]
    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0xFF  # same size, other contents
    image.write_bytes(bytes(flipped))
    assert [r.status for r in run_pipeline(load_pipeline(path), progress=False)] == ["ran"]
    assert "img0001.nii.gz changed since it was written (SHA-256 differs)" in caplog.text
    assert image.read_bytes() == whole


def test_a_file_another_stage_wrote_into_a_stage_folder_does_not_block_its_rerun(tmp_path):
    """The postprocess stage writes its rules beside the train stage's checkpoint; re-running training removes them
    (they are stale) instead of refusing them as a foreign file."""
    from medseg.pipeline import Pipeline, clear_stage_dir, written_by_other_stages

    run = tmp_path / "run"
    (run / "train" / "run").mkdir(parents=True)
    (run / "postprocess").mkdir()
    checkpoint, rules = run / "train" / "run" / "last.pt", run / "train" / "run" / "last.postprocess.json"
    checkpoint.write_bytes(b"ckpt")
    (run / "train" / "stage.json").write_text(json.dumps({"files": ["run/last.pt"], "outputs": {}}))
    rules.write_text("{}")
    (run / "postprocess" / "stage.json").write_text(json.dumps({"files": [], "outputs": {"rules": str(rules)}}))
    pipeline = Pipeline("p", run, None, {"train": {}, "postprocess": {}})
    with pytest.raises(MedsegError, match="not written by medseg"):
        clear_stage_dir(run / "train", "train")
    assert written_by_other_stages(pipeline, "train") == ["run/last.postprocess.json"]
    assert clear_stage_dir(run / "train", "train", also_owned=written_by_other_stages(pipeline, "train")) == []
    assert not checkpoint.exists() and not rules.exists()
