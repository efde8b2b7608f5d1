"""Post-processing rules (medseg.postprocess): components, rule application, choice on validation, storage."""
import json

import numpy as np
import pytest

from medseg.errors import MedsegError
from medseg.evaluation.postprocess import choose_rules
from medseg.postprocess import (OrganRule, PostprocessRules, apply_organ_rule, apply_rules, components, load_rules,
                                load_rules_for, rules_path, save_rules)

SPACING = (1.0, 1.0, 1.0)  # 1 voxel = 0.001 ml
LIVER, SPLEEN = 5, 7  # synapse8 classes


def _organ_with_island(shape=(40, 40, 20), island_at=(35, 35, 15)):
    """A 10 x 10 x 10 block (1 ml) plus a 2 x 2 x 2 island (0.008 ml) far from it."""
    mask = np.zeros(shape, bool)
    mask[5:15, 5:15, 5:15] = True
    i, j, k = island_at
    mask[i:i + 2, j:j + 2, k:k + 2] = True
    return mask


def test_components_use_26_connectivity():
    mask = np.zeros((5, 5, 5), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True  # corner neighbours: one component
    mask[4, 4, 0] = True
    labelled, sizes = components(mask)
    assert sorted(sizes.tolist()) == [1, 2]
    assert labelled[1, 1, 1] == labelled[2, 2, 2] != labelled[4, 4, 0]


def test_largest_component_removes_the_island():
    mask = _organ_with_island()
    kept, result = apply_organ_rule(mask, SPACING, OrganRule(largest_only=True))
    assert kept.sum() == 1000 and not kept[35, 35, 15]
    assert (result.components, result.removed_components, result.not_found) == (2, 1, False)
    assert result.removed_ml == pytest.approx(0.008)
    assert mask.sum() == 1008  # input untouched


def test_threshold_keeps_components_above_it_and_scales_with_spacing():
    mask = _organ_with_island()
    kept, _ = apply_organ_rule(mask, SPACING, OrganRule(min_component_ml=0.01))
    assert kept.sum() == 1000
    # with 2 mm voxels the island is 8 * 0.008 ml = 0.064 ml: above the threshold, kept
    kept, _ = apply_organ_rule(mask, (2.0, 2.0, 2.0), OrganRule(min_component_ml=0.01))
    assert kept.sum() == 1008


def test_tiny_organ_is_reported_not_found():
    mask = np.zeros((10, 10, 10), bool)
    mask[2:4, 2:4, 2:4] = True  # 0.008 ml
    kept, result = apply_organ_rule(mask, SPACING, OrganRule(largest_only=True, min_component_ml=0.5))
    assert not kept.any() and result.not_found and result.removed_ml == pytest.approx(0.008)


def test_apply_rules_touches_only_organs_with_a_rule():
    labels = np.zeros((40, 40, 20), np.uint8)
    labels[_organ_with_island()] = LIVER
    labels[20:30, 20:30, 2:4] = SPLEEN
    labels[0, 0, 0] = SPLEEN  # a spleen island with no rule: stays
    out, results = apply_rules(labels, SPACING, {"liver": OrganRule(largest_only=True)}, "synapse8")
    assert out[35, 35, 15] == 0 and out[0, 0, 0] == SPLEEN
    assert set(results) == {"liver"} and labels[35, 35, 15] == LIVER


def test_choose_rules_keeps_a_rule_only_where_it_helps():
    ref = np.zeros((40, 40, 20), np.uint8)
    ref[5:15, 5:15, 5:15] = LIVER
    ref[20:30, 20:30, 5:10] = SPLEEN
    pred = ref.copy()
    pred[34:38, 34:38, 14:18] = LIVER  # a liver island: largest-component helps the liver
    pred[0:2, 0:2, 0:2] = SPLEEN       # the spleen's second piece is real in the reference too
    ref[0:2, 0:2, 0:2] = SPLEEN
    rules = choose_rules([(pred, ref, SPACING)], "synapse8")
    assert rules.rules["liver"].largest_only or rules.rules["liver"].min_component_ml > 0
    assert "spleen" not in rules.rules  # removing its small true piece would lower Dice
    organs = rules.validation["organs"]
    assert organs["liver"]["hd95_mm_with"] < organs["liver"]["hd95_mm_without"]
    assert organs["spleen"]["rule"] == "none"
    fixed, _ = apply_rules(pred, SPACING, rules)
    assert np.array_equal(fixed, ref)


def test_choose_rules_drops_a_false_positive_speck_of_an_absent_organ():
    ref = np.zeros((30, 30, 10), np.uint8)
    ref[5:15, 5:15, 2:8] = LIVER
    pred = ref.copy()
    pred[25:27, 25:27, 2:4] = SPLEEN  # spleen absent from the reference
    rules = choose_rules([(pred, ref, SPACING)], "synapse8", thresholds_ml=(0.5,))
    assert rules.rules["spleen"].min_component_ml == 0.5
    _, results = apply_rules(pred, SPACING, rules)
    assert results["spleen"].not_found


def test_rules_round_trip_and_refuse_another_checkpoint(tmp_path):
    checkpoint = tmp_path / "last.pt"
    checkpoint.write_bytes(b"weights")
    from medseg.io import file_sha256

    rules = PostprocessRules("synapse8", {"liver": OrganRule(True, 2.0)}, checkpoint_sha256=file_sha256(checkpoint))
    save_rules(rules_path(checkpoint), rules)
    assert rules_path(checkpoint).name == "last.postprocess.json"
    loaded = load_rules_for(checkpoint)
    assert loaded.rules == rules.rules
    checkpoint.write_bytes(b"other weights")
    with pytest.raises(MedsegError, match="another checkpoint"):
        load_rules_for(checkpoint)
    assert load_rules_for(tmp_path / "none.pt") is None


@pytest.mark.parametrize("content, message", [
    ({"format": "other"}, "not a medseg post-processing"),
    ({"format": "medseg-postprocess", "version": 1, "label_set": "synapse8", "rules": {"brain": {}}}, "brain"),
    ({"format": "medseg-postprocess", "version": 1, "label_set": "synapse8",
      "rules": {"liver": {"largest_only": True}}}, "damaged"),
    ({"format": "medseg-postprocess", "version": 1, "label_set": "synapse8",
      "rules": {"liver": {"largest_only": True, "min_component_ml": -1}}}, ">= 0"),
])
def test_bad_rules_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "r.postprocess.json"
    path.write_text(json.dumps(content))
    with pytest.raises(MedsegError, match=message):
        load_rules(path)
