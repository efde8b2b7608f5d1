from pathlib import Path

import numpy as np
import pytest

from medseg.data.cohort import (SYNAPSE_TEST_IDS, SYNAPSE_TRAIN_IDS, case_id_from_path, discover_cases,
                                discover_cohort, make_split)
from medseg.errors import ConfigError, InputError
from medseg.io import write_volume
from helpers import tiny_case


@pytest.mark.parametrize("name, expected", [
    ("img0001.nii.gz", "case0001"), ("label0040.nii.gz", "case0040"), ("BTCV_12_0000.nii.gz", "case0012"),
    ("case0005.nii", "case0005"), ("case_0007_seg.nii.gz", "case0007"), ("liver.nii.gz", "liver"),
])
def test_case_ids(name, expected):
    assert case_id_from_path(name) == expected


def test_raw_btcv_layout(tiny_cohort):
    cases = discover_cases(tiny_cohort)
    assert [c.case_id for c in cases] == ["case0001", "case0002", "case0003", "case0004"]
    assert all(c.label is not None and c.label.name.startswith("label") for c in cases)


def test_nnunet_and_plain_layouts(tmp_path):
    image, label = tiny_case(0, (8, 8, 4))
    write_volume(tmp_path / "nn" / "imagesTr" / "BTCV_003_0000.nii.gz", image)
    write_volume(tmp_path / "nn" / "labelsTr" / "BTCV_003.nii.gz", label)
    write_volume(tmp_path / "nn" / "imagesTs" / "BTCV_009_0000.nii.gz", image)
    cases = discover_cases(tmp_path / "nn", allow_unlabelled=True)
    assert [(c.case_id, c.label is not None) for c in cases] == [("case0003", True), ("case0009", False)]
    cohort = discover_cohort(tmp_path / "nn")  # by default an unlabelled image of a labelled cohort is listed
    assert [c.case_id for c in cohort.cases] == ["case0003"] and len(cohort.skipped) == 1

    write_volume(tmp_path / "flat" / "case0002.nii.gz", image)
    write_volume(tmp_path / "flat" / "case0002_seg.nii.gz", label)
    write_volume(tmp_path / "flat" / "case0004.nii.gz", image)
    cases = discover_cases(tmp_path / "flat", allow_unlabelled=True)
    assert [(c.case_id, c.label is not None) for c in cases] == [("case0002", True), ("case0004", False)]
    assert [c.case_id for c in discover_cases(tmp_path / "flat")] == ["case0002"]
    write_volume(tmp_path / "images_only" / "img" / "img0001.nii.gz", image)  # no labels: an inference cohort
    assert [c.label for c in discover_cases(tmp_path / "images_only")] == [None]


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="not found"):
        discover_cases(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no NIfTI"):
        discover_cases(tmp_path / "empty")
    image, label = tiny_case(0, (8, 8, 4))
    write_volume(tmp_path / "mixed" / "img" / "img0001.nii.gz", image)
    write_volume(tmp_path / "mixed" / "label" / "label0002.nii.gz", label)
    with pytest.raises(InputError, match="label0002.nii.gz: label has no matching image"):
        discover_cases(tmp_path / "mixed")
    write_volume(tmp_path / "dup" / "images" / "img0001.nii.gz", image)
    write_volume(tmp_path / "dup" / "images" / "scan1.nii.gz", image)
    with pytest.raises(InputError, match="both map to case id case0001"):
        discover_cases(tmp_path / "dup")


def test_paper_split():
    ids = list(SYNAPSE_TEST_IDS + SYNAPSE_TRAIN_IDS)
    split = make_split(ids)  # auto -> paper when all 30 ids are present
    assert sorted(i for i, s in split.items() if s == "test") == sorted(SYNAPSE_TEST_IDS)
    assert len([s for s in split.values() if s == "train"]) == 18
    with pytest.raises(ConfigError, match="case0011"):
        make_split(ids + ["case0011"], mode="paper")


def test_seeded_split_is_deterministic_and_nonempty():
    ids = [f"case{n:04d}" for n in range(1, 21)]
    first = make_split(ids, test_fraction=0.25, seed=7)
    assert first == make_split(list(reversed(ids)), test_fraction=0.25, seed=7)
    assert sum(s == "test" for s in first.values()) == 5
    assert first != make_split(ids, test_fraction=0.25, seed=8)
    two = make_split(["case0001", "case0002"], test_fraction=0.1)
    assert sorted(two.values()) == ["test", "train"]
