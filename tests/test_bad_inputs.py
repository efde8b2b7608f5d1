"""Bad inputs and faults across every command: each gives its exit code, one line naming the file or key, no
traceback, and leaves nothing behind.

The commands run in-process (``medseg.cli.main`` with capsys) on tiny inputs built once for the module. Signals are
sent to this very process at a chosen point (SIGTERM unwinds like Ctrl-C), and one real SIGTERM and one real
SIGKILL go to a ``medseg`` subprocess.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import tiny_case, write_tiny_cohort
from medseg import io as medseg_io
from medseg.cli import main
from medseg.io import TEMP_MARK, Volume, write_volume

REPO = Path(__file__).parents[1]
IMG_SIZE = 32


def _tree(path: Path) -> "dict[str, int] | None":
    """Every file under ``path`` (hidden ones too) with its size; None when ``path`` does not exist."""
    if not path.exists():
        return None
    if path.is_file():
        return {path.name: path.stat().st_size}
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}


def _temps(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if TEMP_MARK in p.name] if path.exists() else []


@pytest.fixture(scope="module")
def world(tmp_path_factory, single_thread) -> dict:
    """Good and bad inputs for every command, built once."""
    from medseg.data.slice_cache import prepare_cohort
    from medseg.preprocessing import PreprocessingParams
    from medseg.models import create
    from medseg.models.checkpoint import save_checkpoint
    import torch

    root = tmp_path_factory.mktemp("bad_inputs")
    w = {"root": root}
    (root / "afile").write_text("a regular file, not a folder\n")
    w["afile"] = root / "afile"
    cohort = write_tiny_cohort(root / "cohort", n_cases=4, shape=(16, 14, 6))
    w["cohort"] = cohort
    w["prepared"] = root / "prepared"
    prepare_cohort(cohort, w["prepared"], split="seeded", test_fraction=0.5, progress=False)
    torch.manual_seed(0)
    w["ckpt"] = root / "tiny.pt"
    save_checkpoint(w["ckpt"], create("TransUNet-Tiny", num_classes=9, img_size=IMG_SIZE),
                    model_name="TransUNet-Tiny", model_config={"num_classes": 9, "img_size": IMG_SIZE},
                    label_set="synapse8", preprocessing=PreprocessingParams(img_size=IMG_SIZE).to_dict())
    w["preds"] = root / "preds"
    assert main(["predict", "-i", str(cohort / "img"), "-o", str(w["preds"]), "-m", str(w["ckpt"]), "--device",
                 "cpu", "--no-progress"]) == 0
    good_image, good_label = tiny_case(1, (16, 14, 6))

    def one_case(name, image=good_image, label=good_label):
        folder = root / name
        write_volume(folder / "img" / "img0001.nii.gz", image)
        if label is not None:
            write_volume(folder / "label" / "label0001.nii.gz", label)
        w[name] = folder
        return folder

    write_volume(root / "c_offpaper" / "img" / "img0011.nii.gz", good_image)  # case 11 is not in the paper split
    write_volume(root / "c_offpaper" / "label" / "label0011.nii.gz", good_label)
    w["c_offpaper"] = root / "c_offpaper"
    (root / "c_empty").mkdir()
    w["c_empty"] = root / "c_empty"
    orphan = one_case("c_orphan", label=None)
    write_volume(orphan / "label" / "label0002.nii.gz", good_label)
    dup = root / "c_dup"
    write_volume(dup / "images" / "img0001.nii.gz", good_image)
    write_volume(dup / "images" / "scan1.nii.gz", good_image)
    w["c_dup"] = dup
    bad_values = good_label.array.copy()
    bad_values[0, 0, 0] = 17
    one_case("c_badlabel", label=Volume(bad_values, good_label.affine))
    one_case("c_shape", label=Volume(good_label.array[:, :, :5], good_label.affine))
    shifted = good_label.affine.copy()
    shifted[:3, 3] += 2.0
    one_case("c_affine", label=Volume(good_label.array, shifted))
    nan_image = good_image.array.astype(np.float32)
    nan_image[3, 3, 3] = np.nan
    one_case("c_nan", image=Volume(nan_image, good_image.affine))
    trunc = one_case("c_trunc")
    data = (trunc / "img" / "img0001.nii.gz").read_bytes()
    (trunc / "img" / "img0001.nii.gz").write_bytes(data[: len(data) // 2])
    w["c_onebad"] = root / "c_onebad"
    shutil.copytree(cohort, w["c_onebad"])
    (w["c_onebad"] / "img" / "img0002.nii.gz").write_bytes(data[:100])
    unlabelled = root / "c_unlabelled"
    shutil.copytree(cohort, unlabelled)
    (unlabelled / "label" / "label0003.nii.gz").unlink()
    w["c_unlabelled"] = unlabelled

    for name, manifest in (("p_nomanifest", None), ("p_badjson", "{not json"), ("p_format", '{"format": "x"}')):
        (root / name).mkdir()
        if manifest is not None:
            (root / name / "manifest.json").write_text(manifest)
        w[name] = root / name

    w["p_corrupt"] = root / "p_corrupt"
    shutil.copytree(w["prepared"], w["p_corrupt"])
    for case in (w["p_corrupt"] / "cases").iterdir():
        (case / "image.npy").write_bytes(b"garbage, not an array")
    (root / "bad.yaml").write_text("name: x\nstages: [1\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "unknown_stage.yaml").write_text("name: x\nrun_dir: r\nstages:\n  trian: {}\n")
    (root / "unknown_key.yaml").write_text("name: x\nrun_dir: r\nstages:\n  synth: {casse: 2}\n")
    for name in ("bad.yaml", "list.yaml", "unknown_stage.yaml", "unknown_key.yaml"):
        w[name.replace(".", "_")] = root / name
    w["demo"] = REPO / "pipelines" / "demo.yaml"

    (root / "notes.txt").write_text("not an image")
    w["notes"] = root / "notes.txt"
    (root / "i_emptydir").mkdir()
    w["i_emptydir"] = root / "i_emptydir"
    w["i_trunc"] = root / "i_trunc.nii.gz"
    w["i_trunc"].write_bytes(data[:300])
    w["i_2d"] = root / "i_2d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.int16), np.eye(4)), str(w["i_2d"]))
    w["i_nan"] = root / "i_nan.nii.gz"
    write_volume(w["i_nan"], Volume(nan_image, good_image.affine))
    w["ckpt_garbage"] = root / "garbage.pt"
    w["ckpt_garbage"].write_bytes(b"this is not a checkpoint")
    w["ckpt_missing"] = root / "missing.pt"
    w["i_folder"] = cohort / "img"
    w["one_image"] = cohort / "img" / "img0001.nii.gz"

    w["e_nomatch"] = root / "e_nomatch"
    write_volume(w["e_nomatch"] / "case0099.nii.gz", Volume(np.zeros((16, 14, 6), np.uint8), np.eye(4)))
    mixed = root / "e_mixed"
    raw_high = good_label.array.copy()
    raw_high[0, 0, 0] = 13
    write_volume(mixed / "label0001.nii.gz", Volume(raw_high, good_label.affine))
    write_volume(mixed / "label0002.nii.gz", Volume(np.minimum(good_label.array, 8), good_label.affine))
    w["e_mixed"] = mixed
    broken = root / "e_broken"
    for n in (1, 2, 3, 4):
        write_volume(broken / f"case{n:04d}.nii.gz", Volume(np.zeros((4, 4, 4), np.uint8), np.eye(4)))
    w["e_broken"] = broken
    dup_preds = root / "e_dup"
    shutil.copytree(w["preds"], dup_preds)
    shutil.copy(dup_preds / "img0001.nii.gz", dup_preds / "pred1.nii.gz")
    w["e_dup"] = dup_preds
    w["e_refs"] = cohort
    return w


# (case id, argv with {placeholders} from the world, exit code, words the one line must hold, path that must be
# left as it was: unchanged when it existed, absent when it did not)
CASES = [
    # synth
    ("synth-parent-is-file", "synth {afile}/out --cases 1 --no-preview", 2, ["afile is a file"], "{afile}/out"),
    ("synth-out-is-file", "synth {afile} --cases 1", 2, ["afile", "not a folder"], "{afile}"),
    ("synth-zero-cases", "synth {root}/s0 --cases 0", 2, ["cases", "got 0"], "{root}/s0"),
    ("synth-negative-seed", "synth {root}/s1 --seed -1 --cases 1", 2, ["seed"], "{root}/s1"),
    ("synth-zero-workers", "synth {root}/s2 --workers 0 --cases 1", 2, ["workers"], "{root}/s2"),
    # prepare
    ("prepare-missing-cohort", "prepare {root}/nowhere {root}/o1", 2, ["nowhere", "not found"], "{root}/o1"),
    ("prepare-empty-cohort", "prepare {c_empty} {root}/o2", 2, ["c_empty", "no NIfTI"], "{root}/o2"),
    ("prepare-parent-is-file", "prepare {cohort} {afile}/out", 2, ["afile is a file"], "{afile}"),
    ("prepare-out-is-file", "prepare {cohort} {afile}", 2, ["afile", "not a folder"], "{afile}"),
    ("prepare-zero-workers", "prepare {cohort} {root}/o3 --workers 0", 2, ["--workers"], "{root}/o3"),
    ("prepare-label-orphan", "prepare {c_orphan} {root}/o4", 2, ["label0002.nii.gz", "no matching image"],
     "{root}/o4"),
    ("prepare-duplicate-ids", "prepare {c_dup} {root}/o5", 2, ["scan1.nii.gz", "case0001"], "{root}/o5"),
    ("prepare-paper-split", "prepare {c_offpaper} {root}/o6 --split paper", 2, ["split", "case0011"],
     "{root}/o6"),
    ("prepare-test-fraction", "prepare {cohort} {root}/o7 --split seeded --test-fraction 1.5", 2,
     ["test_fraction"], "{root}/o7"),
    ("prepare-other-labels", "prepare {cohort} {prepared} --labels btcv13 --split seeded --test-fraction 0.5", 2,
     ["manifest.json", "label_set"], "{prepared}"),
    ("prepare-bad-label-values", "prepare {c_badlabel} {root}/o8 --split all-train", 2,
     ["label0001.nii.gz", "17"], "{root}/o8"),
    ("prepare-label-shape", "prepare {c_shape} {root}/o9 --split all-train", 2, ["label0001.nii.gz", "shape"],
     "{root}/o9"),
    ("prepare-label-affine", "prepare {c_affine} {root}/o10 --split all-train", 2,
     ["label0001.nii.gz", "affine"], "{root}/o10"),
    ("prepare-nan-image", "prepare {c_nan} {root}/o11 --split all-train", 2, ["img0001.nii.gz", "NaN"],
     "{root}/o11"),
    ("prepare-truncated", "prepare {c_trunc} {root}/o12 --split all-train", 2, ["img0001.nii.gz", "truncated"],
     "{root}/o12"),
    ("prepare-transunet-format-twice", "prepare {root}/tu_layout {root}/o13 --format transunet", 2,
     ["--format"], "{root}/o13"),
    # train (data-side faults)
    ("train-missing-data", "train --model TransUNet-Tiny --data {root}/nowhere --out {root}/r1", 2,
     ["nowhere", "not found"], "{root}/r1"),
    ("train-no-manifest", "train --model TransUNet-Tiny --data {p_nomanifest} --out {root}/r2", 2,
     ["p_nomanifest", "manifest.json"], "{root}/r2"),
    ("train-manifest-not-json", "train --model TransUNet-Tiny --data {p_badjson} --out {root}/r3", 2,
     ["manifest.json", "not valid JSON"], "{root}/r3"),
    ("train-not-a-cache", "train --model TransUNet-Tiny --data {p_format} --out {root}/r4", 2,
     ["manifest.json", "not a medseg slice cache"], "{root}/r4"),
    ("train-unknown-model", "train --model TransUNet-Huge --data {prepared} --out {root}/r5", 2,
     ["TransUNet-Huge"], "{root}/r5"),
    ("train-out-parent-is-file", "train --model TransUNet-Tiny --data {prepared} --out {afile}/run", 2,
     ["afile is a file"], "{afile}"),
    ("train-config-missing", "train --config {root}/nope.yaml --data {prepared} --out {root}/r6", 2,
     ["nope.yaml", "not found"], "{root}/r6"),
    ("train-config-invalid", "train --config {bad_yaml} --data {prepared} --out {root}/r7", 2,
     ["bad.yaml", "not valid YAML"], "{root}/r7"),
    ("train-set-unknown-key", "train --model TransUNet-Tiny --data {prepared} --out {root}/r8 --set epochz=1", 2,
     ["epochz"], "{root}/r8"),
    ("train-set-bad-type", "train --model TransUNet-Tiny --data {prepared} --out {root}/r9 --set epochs=many", 2,
     ["epochs"], "{root}/r9"),
    # a corrupt array found by a data-loader worker: still one line (that no run folder is created at all belongs
    # to train's validate-before-start step, so the untouched path here is the cache)
    ("train-corrupt-cache", "train --model TransUNet-Tiny --data {p_corrupt} --out {root}/r10 --workers 1 "
     "--epochs 1 --img-size 32 --batch-size 4 --device cpu --no-progress", 2, ["case", "corrupt"], "{p_corrupt}"),
    # predict
    ("predict-missing-input", "predict -i {root}/nope.nii.gz -o {root}/q1.nii.gz -m {ckpt}", 2,
     ["nope.nii.gz", "not found"], "{root}/q1.nii.gz"),
    ("predict-not-an-image", "predict -i {notes} -o {root}/q2.nii.gz -m {ckpt}", 2, ["notes.txt"],
     "{root}/q2.nii.gz"),
    ("predict-empty-folder", "predict -i {i_emptydir} -o {root}/q3 -m {ckpt}", 2, ["i_emptydir", "no .nii"],
     "{root}/q3"),
    ("predict-truncated", "predict -i {i_trunc} -o {root}/q4.nii.gz -m {ckpt}", 2, ["i_trunc.nii.gz"],
     "{root}/q4.nii.gz"),
    ("predict-2d", "predict -i {i_2d} -o {root}/q5.nii.gz -m {ckpt}", 2, ["i_2d.nii.gz", "2D"],
     "{root}/q5.nii.gz"),
    ("predict-nan", "predict -i {i_nan} -o {root}/q6.nii.gz -m {ckpt}", 2, ["i_nan.nii.gz", "NaN"],
     "{root}/q6.nii.gz"),
    ("predict-missing-checkpoint", "predict -i {one_image} -o {root}/q7.nii.gz -m {ckpt_missing}", 2,
     ["missing.pt"], "{root}/q7.nii.gz"),
    ("predict-garbage-checkpoint", "predict -i {one_image} -o {root}/q8.nii.gz -m {ckpt_garbage}", 2,
     ["garbage.pt"], "{root}/q8.nii.gz"),
    ("predict-parent-is-file", "predict -i {i_folder} -o {afile}/q -m {ckpt}", 2, ["afile is a file"], "{afile}"),
    ("predict-file-parent-is-file", "predict -i {one_image} -o {afile}/q.nii.gz -m {ckpt}", 2,
     ["afile is a file"], "{afile}"),
    ("predict-folder-to-file", "predict -i {i_folder} -o {root}/q9.nii.gz -m {ckpt}", 2,
     ["q9.nii.gz", "output folder"], "{root}/q9.nii.gz"),
    ("predict-part-id", "predict -i {i_folder} -o {root}/q10 -m {ckpt} --num-parts 2 --part-id 2", 2,
     ["--part-id"], "{root}/q10"),
    ("predict-batch-size", "predict -i {i_folder} -o {root}/q11 -m {ckpt} --batch-size 0", 2, ["--batch-size"],
     "{root}/q11"),
    ("predict-bad-device", "predict -i {i_folder} -o {root}/q12 -m {ckpt} --device tpu", 2, ["device", "tpu"],
     "{root}/q12"),
    ("predict-other-settings", "predict -i {i_folder} -o {preds} -m {ckpt} --tta", 2,
     ["img0001.nii.gz", "--overwrite"], "{preds}"),
    ("predict-labels-mismatch", "predict -i {one_image} -o {root}/q13.nii.gz -m {ckpt} --labels btcv13", 2,
     ["tiny.pt", "btcv13"], "{root}/q13.nii.gz"),
    # evaluate
    ("evaluate-missing-refs", "evaluate {root}/nowhere {preds} -o {root}/v1", 2, ["nowhere", "not found"],
     "{root}/v1"),
    ("evaluate-missing-preds", "evaluate {e_refs} {root}/nopreds -o {root}/v2", 2, ["nopreds", "not found"],
     "{root}/v2"),
    ("evaluate-no-match", "evaluate {e_refs} {e_nomatch} -o {root}/v3", 2, ["e_nomatch", "no prediction matches"],
     "{root}/v3"),
    ("evaluate-out-parent-is-file", "evaluate {e_refs} {preds} -o {afile}/report", 2, ["afile is a file"],
     "{afile}"),
    ("evaluate-negative-tolerance", "evaluate {e_refs} {preds} -o {root}/v4 --tolerance -1", 2, ["tolerance"],
     "{root}/v4"),
    ("evaluate-mixed-references", "evaluate {e_mixed} {preds} -o {root}/v5", 2,
     ["e_mixed", "--reference-format"], "{root}/v5"),
    ("evaluate-duplicate-ids", "evaluate {e_refs} {e_dup} -o {root}/v6", 2, ["pred1.nii.gz", "case0001"],
     "{root}/v6"),
    ("evaluate-zero-workers", "evaluate {e_refs} {preds} -o {root}/v7 --workers 0", 2, ["workers"], "{root}/v7"),
    # run
    ("run-missing-pipeline", "run {root}/nope.yaml", 2, ["nope.yaml", "not found"], None),
    ("run-invalid-yaml", "run {bad_yaml}", 2, ["bad.yaml", "not valid YAML"], None),
    ("run-not-a-mapping", "run {list_yaml}", 2, ["list.yaml", "mapping"], None),
    ("run-unknown-stage", "run {unknown_stage_yaml} --set run_dir={root}/p1", 2, ["trian"], "{root}/p1"),
    ("run-unknown-key", "run {unknown_key_yaml} --set run_dir={root}/p2", 2, ["casse"], "{root}/p2"),
    ("run-dir-parent-is-file", "run {demo} --set run_dir={afile}/run", 2, ["afile is a file"], "{afile}"),
    ("run-force-unknown", "run {demo} --set run_dir={root}/p3 --force nothing", 2, ["--force", "nothing"],
     "{root}/p3"),
    ("run-missing-data", "run {demo} --set run_dir={root}/p4 --set data={root}/nodata", 2, ["nodata"],
     "{root}/p4"),
    # models
    ("models-unknown-family", "models --family nope", 2, ["--family", "unknown family 'nope'"], None),
]


def _format(text: str, world: dict) -> str:
    return text.format(**{k: str(v) for k, v in world.items()})


@pytest.mark.parametrize("case_id, argv, code, words, untouched", CASES, ids=[c[0] for c in CASES])
def test_bad_input(world, capsys, case_id, argv, code, words, untouched):
    if case_id == "prepare-transunet-format-twice" and not (world["root"] / "tu_layout").exists():
        assert main(["prepare", str(world["cohort"]), str(world["root"] / "tu_layout"), "--format", "transunet",
                     "--split", "seeded", "--test-fraction", "0.5", "--no-progress"]) == 0
    target = Path(_format(untouched, world)) if untouched else None
    before = _tree(target) if target else None
    capsys.readouterr()
    args = _format(argv, world).split()
    if args[0] in ("prepare", "predict", "evaluate", "run"):
        args.append("--no-progress")
    if args[0] == "predict" and "--device" not in args:
        args += ["--device", "cpu"]
    if args[0] == "evaluate" and "--workers" not in args:
        args += ["--workers", "1"]
    assert main(args) == code
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"medseg {args[0]}: error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    if target is not None:
        assert _tree(target) == before, f"{target} changed"
    assert not _temps(world["root"])


def test_every_command_of_the_cli_is_tried_with_bad_input():
    """Every sub-command the command line offers (medseg.cli.COMMANDS, the product's own list) is exercised by the
    table above, so a new or renamed command cannot go without bad-input cases; case ids are unique."""
    from medseg.cli import COMMANDS

    tried = {argv.split()[0] for _, argv, *_ in CASES}
    assert len(COMMANDS) >= 7 and set(COMMANDS) <= tried, sorted(set(COMMANDS) - tried)
    assert len({c[0] for c in CASES}) == len(CASES)


# ----------------------------------------------------------------------------------------------------------------
# Batches with some bad cases: exit 1, every failure listed on its own line


def test_prepare_batch_with_one_bad_case_exits_1(world, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prepare", str(world["c_onebad"]), str(out), "--split", "seeded", "--no-progress"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("skipped case0002:") and "img0002.nii.gz" in err[0]
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["case0001", "case0003", "case0004"]
    assert not _temps(out)


def test_prepare_unlabelled_image_is_listed_and_skipped(world, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prepare", str(world["c_unlabelled"]), str(out), "--split", "seeded", "--no-progress"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "img0003.nii.gz: image has no label" in err[0]


def test_evaluate_every_prediction_broken_exits_2_with_reports(world, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["evaluate", str(world["e_refs"]), str(world["e_broken"]), "-o", str(out), "--workers", "1",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "medseg evaluate: error: no case could be scored (4 failed" in err and "Traceback" not in err
    assert json.loads((out / "summary.json").read_text())["counts"]["unscorable_predictions"] == 4


def test_predict_folder_with_one_bad_case_exits_1(world, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(world["i_folder"], images)
    shutil.copy(world["i_trunc"], images / "img0009.nii.gz")
    out = tmp_path / "out"
    assert main(["predict", "-i", str(images), "-o", str(out), "-m", str(world["ckpt"]), "--device", "cpu",
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "skipped img0009.nii.gz:" in err and "Traceback" not in err
    assert not (out / "img0009.nii.gz").exists() and not _temps(out)


# ----------------------------------------------------------------------------------------------------------------
# Signals: SIGTERM unwinds like Ctrl-C (temporary files removed, exit 143); a SIGKILLed run's leftovers are removed
# by the next run in that folder


@contextlib.contextmanager
def _sigterm_at_write(monkeypatch, after: int = 1):
    """Send SIGTERM to this process while the ``after``-th atomic write holds its finished temporary file."""
    original = medseg_io.atomic_path
    count = {"n": 0}

    @contextlib.contextmanager
    def atomic_then_signal(path, suffix=""):
        with original(path, suffix) as tmp:
            yield tmp
            count["n"] += 1
            if count["n"] == after:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.5)  # the handler raises here, before the rename

    monkeypatch.setattr(medseg_io, "atomic_path", atomic_then_signal)
    for module in ("medseg.evaluation.report", "medseg.visualize", "medseg.commands.predict"):
        imported = sys.modules.get(module)
        if imported is not None and hasattr(imported, "atomic_path"):
            monkeypatch.setattr(imported, "atomic_path", atomic_then_signal)
    yield count


@pytest.mark.parametrize("command", ["synth", "prepare", "predict", "evaluate"])
def test_sigterm_removes_temporary_files_and_exits_143(world, tmp_path, monkeypatch, capsys, command):
    out = tmp_path / "out"
    argv = {
        "synth": ["synth", str(out), "--cases", "2", "--no-preview"],
        "prepare": ["prepare", str(world["cohort"]), str(out), "--split", "seeded", "--no-progress"],
        "predict": ["predict", "-i", str(world["i_folder"]), "-o", str(out), "-m", str(world["ckpt"]), "--device",
                    "cpu", "--no-progress"],
        "evaluate": ["evaluate", str(world["e_refs"]), str(world["preds"]), "-o", str(out), "--workers", "1",
                     "--no-progress"],
    }[command]
    previous = signal.getsignal(signal.SIGTERM)
    with _sigterm_at_write(monkeypatch, after=2) as count:
        assert main(argv) == 143
    assert count["n"] == 2 and signal.getsignal(signal.SIGTERM) == previous  # the handler is put back
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"medseg {command}: terminated" and "Traceback" not in err
    assert not _temps(out)
    if command == "prepare":  # a case folder exists only when complete
        for case in (out / "cases").iterdir() if (out / "cases").exists() else []:
            assert (case / "case.json").is_file() and (case / "image.npy").is_file()


def _medseg_env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def test_real_sigterm_to_a_running_synth(tmp_path):
    out = tmp_path / "cohort"
    process = subprocess.Popen([sys.executable, "-m", "medseg", "synth", str(out), "--cases", "40",
                                "--no-preview"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_medseg_env())
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "img").is_dir():
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err.decode()
    assert err.decode().strip().splitlines()[-1] == "medseg synth: terminated"
    assert not _temps(out)


def test_files_left_by_a_sigkilled_run_are_removed_by_the_next_run(world, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    script = ("import sys, time\nfrom medseg.io import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_text('half'); print(tmp, flush=True)\n"
              "    time.sleep(60)\n")
    process = subprocess.Popen([sys.executable, "-c", script, str(out / "summary.json")], stdout=subprocess.PIPE,
                               env=_medseg_env())
    left = Path(process.stdout.readline().decode().strip())
    process.kill()  # SIGKILL: no clean-up is possible
    process.wait(timeout=30)
    assert left.exists() and TEMP_MARK in left.name
    busy = out / f".other{TEMP_MARK}"  # not made by medseg's naming: never touched
    busy.write_text("x")
    assert main(["evaluate", str(world["e_refs"]), str(world["preds"]), "-o", str(out), "--workers", "1",
                 "--no-progress"]) == 0
    assert not left.exists() and busy.exists()
    live = medseg_io.temp_prefix("summary.json") + "x" + TEMP_MARK  # this process's own temporary: kept
    (out / live).write_text("x")
    medseg_io.remove_stale_temps(out)
    assert (out / live).exists()


def test_stale_case_folder_of_a_killed_prepare_is_removed(world, tmp_path):
    out = tmp_path / "prepared"
    shutil.copytree(world["prepared"], out)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)  # a process that has ended: what a SIGKILLed run leaves behind
    stale = out / "cases" / f".case0001.{medseg_io._host_tag()}.{dead_pid}.abc{TEMP_MARK}"
    stale.mkdir()
    (stale / "image.npy").write_bytes(b"half written")
    assert main(["prepare", str(world["cohort"]), str(out), "--split", "seeded", "--test-fraction", "0.5",
                 "--no-progress"]) == 0
    assert not stale.exists() and not _temps(out)


def test_ctrl_c_exits_130_and_leaves_no_temporary_file(world, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    original = medseg_io.atomic_path

    @contextlib.contextmanager
    def atomic_then_interrupt(path, suffix=""):
        with original(path, suffix) as tmp:
            yield tmp
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)

    monkeypatch.setattr(medseg_io, "atomic_path", atomic_then_interrupt)
    assert main(["prepare", str(world["cohort"]), str(out), "--split", "seeded", "--no-progress"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "medseg prepare: interrupted"
    assert not _temps(out) and not (out / "manifest.json").exists()
