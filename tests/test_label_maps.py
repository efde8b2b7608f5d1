"""Label maps: a cohort labelled in another dataset's numbering (here AMOS's) prepares and evaluates like its BTCV
original, through an nnU-Net ``dataset.json`` found at the cohort's root or a map named with ``--label-map``."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medseg import write_cohort
from medseg.cli import main
from medseg.data.slice_cache import load_case_arrays, load_manifest
from medseg.errors import ConfigError, InputError
from medseg.io import Volume, read_volume, write_volume
from medseg.labels import (BTCV13, SYNAPSE8, LabelSet, get_label_set, organ_for_name, read_label_map,
                           remap_labels, with_label_map)

# AMOS 2022's dataset.json, as published (v1 form, value -> name, with its spelling "arota").
AMOS_LABELS = {"0": "background", "1": "spleen", "2": "right kidney", "3": "left kidney", "4": "gall bladder",
               "5": "esophagus", "6": "liver", "7": "stomach", "8": "arota", "9": "postcava", "10": "pancreas",
               "11": "right adrenal gland", "12": "left adrenal gland", "13": "duodenum", "14": "bladder",
               "15": "prostate/uterus"}
# BTCV value -> AMOS value; BTCV 10 (portal and splenic vein) has no AMOS label and becomes 0.
BTCV_TO_AMOS = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7, 8: 8, 9: 9, 10: 0, 11: 10, 12: 11, 13: 12}


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> dict:
    """A 3-case phantom cohort in BTCV numbering and the same cases renumbered as AMOS labels them, with AMOS's
    dataset.json at its root; background voxels of the AMOS copy get the AMOS-only labels 13, 14 and 15."""
    root = tmp_path_factory.mktemp("label_maps")
    btcv = root / "btcv"
    write_cohort(btcv, cases=3, seed=5, progress=False, preview=False)
    amos = root / "amos"
    shutil.copytree(btcv / "img", amos / "img")
    lut = np.zeros(14, dtype=np.uint8)
    for raw, value in BTCV_TO_AMOS.items():
        lut[raw] = value
    for path in sorted((btcv / "label").glob("*.nii.gz")):
        label = read_volume(path)
        original = np.ascontiguousarray(label.array.astype(np.int64))
        renumbered = lut[original]
        flat = renumbered.reshape(-1)  # a view of the C-ordered copy
        background = np.flatnonzero(original.reshape(-1) == 0)
        for value, chunk in zip((13, 14, 15), np.array_split(background[:3000], 3)):  # outside medseg's organs
            flat[chunk] = value
        assert set(np.unique(renumbered)) >= {13, 14, 15}
        write_volume(amos / "label" / path.name, Volume(renumbered, label.affine))
    (amos / "dataset.json").write_text(json.dumps({"name": "AMOS-like", "labels": AMOS_LABELS,
                                                   "file_ending": ".nii.gz"}))
    return {"btcv": btcv, "amos": amos}


def _prepare(raw: Path, out: Path, labels: str, *extra) -> int:
    return main(["prepare", str(raw), str(out), "--labels", labels, "--split", "seeded", "--test-fraction", "0.34",
                 "--no-progress", *map(str, extra)])


@pytest.mark.parametrize("labels", ["synapse8", "btcv13"])
def test_amos_numbered_cohort_prepares_to_the_btcv_classes(cohorts, tmp_path, labels, capsys):
    assert _prepare(cohorts["btcv"], tmp_path / "btcv", labels) == 0
    assert _prepare(cohorts["amos"], tmp_path / "amos", labels) == 0
    said = capsys.readouterr().out
    assert "dataset.json" in said and "mapped to background" in said and "13 duodenum" in said

    original, mapped = load_manifest(tmp_path / "btcv"), load_manifest(tmp_path / "amos")
    assert [c["case_id"] for c in original["cases"]] == [c["case_id"] for c in mapped["cases"]]
    assert [c["split"] for c in original["cases"]] == [c["split"] for c in mapped["cases"]]
    portal = BTCV13.organs.index("portal_splenic_vein") + 1
    for case in original["cases"]:
        _, expected = load_case_arrays(tmp_path / "btcv", case["case_id"], mmap=False)
        _, actual = load_case_arrays(tmp_path / "amos", case["case_id"], mmap=False)
        if labels == "btcv13":  # AMOS has no portal/splenic vein label: those voxels were background there
            expected = np.where(expected == portal, 0, expected)
        np.testing.assert_array_equal(actual, expected)
        assert len(np.unique(actual)) >= 6  # the comparison covers organs, not only background

    record = mapped["label_set"]["label_map"]
    assert record["source"].endswith("dataset.json")
    assert len(record["sha256"]) == 64
    assert record["values"]["9"] == {"name": "postcava", "organ": "inferior_vena_cava",
                                     "class": 9 if labels == "btcv13" else 0}
    assert record["values"]["8"]["class"] == get_label_set(labels).organs.index("aorta") + 1
    assert set(record["background"]) >= {"13", "14", "15"}
    assert "label_map" not in original["label_set"]


def _predictions(cohort: Path, out: Path) -> Path:
    """Imperfect synapse8 predictions of the BTCV cohort: the references shifted by two voxels along axis 0."""
    for path in sorted((cohort / "label").glob("*.nii.gz")):
        label = read_volume(path)
        classes = remap_labels(label.array, SYNAPSE8)
        write_volume(out / path.name.replace("label", "img"), Volume(np.roll(classes, 2, axis=0), label.affine))
    return out


def test_amos_numbered_references_evaluate_to_the_same_scores(cohorts, tmp_path, capsys):
    predictions = _predictions(cohorts["btcv"], tmp_path / "pred")
    assert main(["evaluate", str(cohorts["btcv"]), str(predictions), "-o", str(tmp_path / "btcv"),
                 "--workers", "1", "--thumbnails", "0", "--no-progress"]) == 0
    assert main(["evaluate", str(cohorts["amos"]), str(predictions), "-o", str(tmp_path / "amos"),
                 "--workers", "1", "--thumbnails", "0", "--no-progress"]) == 0
    assert "dataset.json" in capsys.readouterr().out
    original = json.loads((tmp_path / "btcv" / "summary.json").read_text())
    mapped = json.loads((tmp_path / "amos" / "summary.json").read_text())
    for protocol in ("standard", "transunet"):
        assert mapped[protocol]["organs"] == original[protocol]["organs"]
        assert mapped[protocol]["foreground_mean"] == original[protocol]["foreground_mean"]
    assert 0.3 < original["standard"]["foreground_mean"]["dice"] < 0.99  # a shift, not a copy
    assert mapped["label_set"]["label_map"]["sha256"] == read_label_map(cohorts["amos"] / "dataset.json").sha256
    assert "label_map" not in original["label_set"]
    report = (tmp_path / "amos" / "report.md").read_text()
    assert mapped["label_set"]["label_map"]["sha256"][:12] in report


def test_label_map_named_explicitly(cohorts, tmp_path):
    """``--label-map FILE``: a small JSON of organ name -> value, for a cohort without a dataset.json."""
    cohort = tmp_path / "cohort"
    shutil.copytree(cohorts["amos"], cohort, ignore=shutil.ignore_patterns("dataset.json"))
    small = tmp_path / "organs.json"
    small.write_text(json.dumps({name: int(value) for value, name in AMOS_LABELS.items() if value != "0"}))
    assert _prepare(cohort, tmp_path / "without", "synapse8") == 2  # AMOS values 14, 15 are not BTCV labels
    assert _prepare(cohort, tmp_path / "with", "synapse8", "--label-map", small) == 0
    record = load_manifest(tmp_path / "with")["label_set"]["label_map"]
    assert record["source"] == str(small) and record["values"]["10"]["organ"] == "pancreas"


def test_a_changed_label_map_prepares_the_cases_again(cohorts, tmp_path):
    cohort = tmp_path / "cohort"
    shutil.copytree(cohorts["amos"], cohort)
    assert _prepare(cohort, tmp_path / "out", "btcv13") == 0
    swapped = dict(AMOS_LABELS, **{"2": "left kidney", "3": "right kidney"})
    (cohort / "dataset.json").write_text(json.dumps({"labels": swapped}))
    assert _prepare(cohort, tmp_path / "out", "btcv13") == 2  # refused: the cache was made with another map
    assert _prepare(cohort, tmp_path / "out2", "btcv13") == 0


# ---------------------------------------------------------------- names and one-line errors
@pytest.mark.parametrize("name,organ", [
    ("postcava", "inferior_vena_cava"), ("inferior_vena_cava", "inferior_vena_cava"), ("IVC", "inferior_vena_cava"),
    ("Inferior vena cava", "inferior_vena_cava"), ("kidney_right", "kidney_right"), ("right kidney", "kidney_right"),
    ("right_kidney", "kidney_right"), ("Kidney R", "kidney_right"), ("adrenal_gland_left", "adrenal_left"),
    ("Left adrenal gland", "adrenal_left"), ("portal_vein_and_splenic_vein", "portal_splenic_vein"),
    ("portal vein and splenic vein", "portal_splenic_vein"), ("esophagus", "esophagus"),
    ("gall bladder", "gallbladder"), ("arota", "aorta"), ("Liver", "liver"),
    # outside medseg's organs: background
    ("duodenum", None), ("bladder", None), ("urinary_bladder", None), ("prostate/uterus", None), ("colon", None),
    ("intestine", None), ("Head_of_femur_L", None), ("vertebrae_L1", None), ("rib_left_7", None),
    ("lung_upper_lobe_right", None), ("superior_vena_cava", None), ("adrenal", None), ("cancer", None),
    ("background", None),
])
def test_organ_names_of_the_public_sets(name, organ):
    assert organ_for_name(name) == organ


def _write(tmp_path, content, name="map.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(content))
    return path


def test_unknown_name_is_one_line_listing_the_known_names(tmp_path):
    path = _write(tmp_path, {"labels": {"background": 0, "livre": 1}})
    with pytest.raises(ConfigError) as error:
        read_label_map(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "'livre'" in message
    assert "inferior_vena_cava: inferior vena cava, postcava" in message


@pytest.mark.parametrize("labels,why", [
    ({"IVC": 9, "postcava": 10}, "both inferior_vena_cava"),
    ({"labels": {"1": "liver", "2": "Liver"}}, "both liver"),
    ({"labels": {"background": 0, "liver": [1, 2]}}, "region labels"),
    ({"liver": -1}, "non-negative integer"),
    ({"labels": {}}, "no labels"),
    ({"liver": 0}, "value 0"),
])
def test_ambiguous_or_malformed_maps_are_one_line_errors(tmp_path, labels, why):
    with pytest.raises(ConfigError, match=why) as error:
        read_label_map(_write(tmp_path, labels))
    assert "\n" not in str(error.value)
    if "both" in why:  # ambiguous names: the known names are listed, as for an unknown one
        assert "known organ names: spleen: spleen; kidney_right: right kidney" in str(error.value)


def test_values_the_map_does_not_name_are_an_input_error(tmp_path):
    label_set = with_label_map("btcv13", _write(tmp_path, {"liver": 1, "spleen": 2}))
    assert remap_labels(np.array([0, 1, 2]), label_set).tolist() == [0, 6, 1]
    with pytest.raises(InputError, match=r"unknown label values 3 \(the label map .*map.json names 0, 1, 2\)"):
        remap_labels(np.array([0, 3]), label_set, source="label0001.nii.gz")


def test_a_label_set_with_a_map_round_trips_and_differs_from_the_plain_one(tmp_path):
    label_set = with_label_map("synapse8", _write(tmp_path, {"labels": AMOS_LABELS}))
    assert LabelSet.from_dict(json.loads(json.dumps(label_set.to_dict()))) == label_set
    assert label_set != SYNAPSE8 and label_set.organs == SYNAPSE8.organs
    assert label_set.raw_values == tuple(range(16))
    assert remap_labels(np.arange(16), label_set).tolist() == [0, 7, 4, 3, 2, 0, 5, 8, 1, 0, 6, 0, 0, 0, 0, 0]


def test_evaluate_refuses_an_explicit_map_for_class_references(cohorts, tmp_path):
    from medseg.evaluation.cohort import evaluate_folders

    predictions = _predictions(cohorts["btcv"], tmp_path / "pred")
    with pytest.raises(ConfigError, match="follow no label map"):
        evaluate_folders(predictions, predictions, reference_format="classes",
                         label_map=cohorts["amos"] / "dataset.json", workers=1, progress=False)


def test_pipeline_prepare_stage_takes_a_label_map_and_reruns_when_it_changes(cohorts, tmp_path):
    from medseg.pipeline import load_pipeline, run_pipeline

    cohort = tmp_path / "cohort"
    shutil.copytree(cohorts["amos"], cohort, ignore=shutil.ignore_patterns("dataset.json"))
    label_map = _write(tmp_path, {"labels": AMOS_LABELS}, "amos.json")
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"run_dir: {tmp_path / 'run'}\ndata: {cohort}\nstages:\n"
                    f"  prepare: {{split: seeded, label_map: {label_map}}}\n")
    assert [r.status for r in run_pipeline(load_pipeline(path), progress=False)] == ["ran"]
    record = load_manifest(tmp_path / "run" / "prepare" / "slices")["label_set"]["label_map"]
    assert record["sha256"] == read_label_map(label_map).sha256
    assert [r.status for r in run_pipeline(load_pipeline(path), progress=False)] == ["cached"]
    label_map.write_text(json.dumps({"labels": dict(AMOS_LABELS, **{"6": "stomach", "7": "liver"})}))
    assert [r.status for r in run_pipeline(load_pipeline(path), progress=False)] == ["ran"]  # noticed, not skipped
    record = load_manifest(tmp_path / "run" / "prepare" / "slices")["label_set"]["label_map"]
    assert record["sha256"] == read_label_map(label_map).sha256 and record["values"]["6"]["organ"] == "stomach"


def test_pipeline_trains_and_evaluates_an_amos_numbered_cohort(cohorts, tmp_path):
    """The cohort's dataset.json is found by the prepare stage; the evaluate stage reads the held-out AMOS label
    files through the same map (values 14 and 15 would otherwise be unreadable references) and records it."""
    from medseg.models.checkpoint import load_checkpoint
    from medseg.pipeline import load_pipeline, run_pipeline

    path = tmp_path / "pipeline.yaml"
    path.write_text(f"run_dir: {tmp_path / 'run'}\ndata: {cohorts['amos']}\nstages:\n"
                    "  prepare: {split: seeded, test_fraction: 0.34}\n"
                    "  train: {model: TransUNet-Tiny, img_size: 32, epochs: 1, batch_size: 8, workers: 0,"
                    " threads: 1, tensorboard: false}\n"
                    "  predict: {}\n  evaluate: {}\n")
    results = {r.name: r for r in run_pipeline(load_pipeline(path), progress=False)}
    summary = json.loads(Path(results["evaluate"].outputs["summary"]).read_text())
    sha = read_label_map(cohorts["amos"] / "dataset.json").sha256
    assert summary["counts"]["failed"] == 0 and summary["counts"]["evaluated"] == 1
    assert summary["label_set"]["label_map"]["sha256"] == sha
    _, info = load_checkpoint(tmp_path / "run" / "train" / "run" / "last.pt")
    assert info.label_set.label_map["sha256"] == sha


def test_evaluate_finds_the_dataset_json_above_a_label_folder(cohorts, tmp_path):
    """References given as the label folder itself (``amos/label``): the dataset root's map still applies, so AMOS
    value 10 (pancreas) is never read as BTCV's 10 (portal vein)."""
    from medseg.evaluation.cohort import evaluate_folders

    predictions = _predictions(cohorts["btcv"], tmp_path / "pred")
    summary = evaluate_folders(cohorts["amos"] / "label", predictions, reference_format="raw", workers=1,
                               progress=False)
    original = evaluate_folders(cohorts["btcv"] / "label", predictions, reference_format="raw", workers=1,
                                progress=False)
    assert summary["label_set"]["label_map"]["source"] == str(cohorts["amos"] / "dataset.json")
    assert summary["standard"]["foreground_mean"] == original["standard"]["foreground_mean"]


# Label names of the public sets (TotalSegmentator v2 and v1 extras, WORD, FLARE22, MSD tasks 3/7/8/9).
TOTALSEGMENTATOR = (
    "spleen kidney_right kidney_left gallbladder liver stomach pancreas adrenal_gland_right adrenal_gland_left "
    "lung_upper_lobe_left lung_lower_lobe_left lung_upper_lobe_right lung_middle_lobe_right lung_lower_lobe_right "
    "esophagus trachea thyroid_gland small_bowel duodenum colon urinary_bladder prostate kidney_cyst_left "
    "kidney_cyst_right sacrum vertebrae_S1 vertebrae_L5 vertebrae_L1 vertebrae_T12 vertebrae_T1 vertebrae_C7 "
    "vertebrae_C1 heart aorta pulmonary_vein brachiocephalic_trunk subclavian_artery_right subclavian_artery_left "
    "common_carotid_artery_right common_carotid_artery_left brachiocephalic_vein_left brachiocephalic_vein_right "
    "atrial_appendage_left superior_vena_cava inferior_vena_cava portal_vein_and_splenic_vein iliac_artery_left "
    "iliac_artery_right iliac_vena_left iliac_vena_right humerus_left humerus_right scapula_left scapula_right "
    "clavicula_left clavicula_right femur_left femur_right hip_left hip_right spinal_cord gluteus_maximus_left "
    "gluteus_maximus_right gluteus_medius_left gluteus_medius_right gluteus_minimus_left gluteus_minimus_right "
    "autochthon_left autochthon_right iliopsoas_left iliopsoas_right brain skull rib_left_1 rib_left_12 "
    "rib_right_1 rib_right_12 sternum costal_cartilages heart_myocardium heart_atrium_left heart_ventricle_right "
    "pulmonary_artery face").split()
WORD = ("liver spleen kidney_left kidney_right stomach gallbladder esophagus pancreas duodenum colon intestine "
        "adrenal rectum bladder Head_of_femur_L Head_of_femur_R").split()
FLARE = ["Liver", "Right kidney", "Spleen", "Pancreas", "Aorta", "Inferior vena cava", "Right adrenal gland",
         "Left adrenal gland", "Gallbladder", "Esophagus", "Stomach", "Duodenum", "Left kidney"]
MSD = ["background", "liver", "cancer", "pancreas", "spleen", "Vessel", "Tumour"]


def test_every_name_of_the_public_sets_is_known():
    organs = {name: organ_for_name(name) for name in TOTALSEGMENTATOR + WORD + FLARE + MSD}
    # medseg's 13 organs are found under their TotalSegmentator and FLARE names, each once per set
    assert {organs[name] for name in TOTALSEGMENTATOR} - {None} == set(BTCV13.organs)
    assert {organs[name] for name in FLARE} - {None} == set(BTCV13.organs) - {"portal_splenic_vein"}
    assert sum(organs[name] is not None for name in TOTALSEGMENTATOR) == 13


def test_a_label_map_for_a_transunet_layout_input_is_refused(tmp_path, capsys):
    (tmp_path / "transunet" / "train_npz").mkdir(parents=True)
    small = _write(tmp_path, {"liver": 1})
    assert main(["prepare", str(tmp_path / "transunet"), str(tmp_path / "out"), "--label-map", str(small)]) == 2
    error = capsys.readouterr().err.strip()
    assert "--label-map" in error and "TransUNet layout" in error and "\n" not in error
