"""Choosing post-processing rules on validation cases (as nnU-Net does), scored with the standard protocol.

The rules themselves and applying them live in :mod:`medseg.postprocess` (light enough for the prediction path);
this module scores candidates with :func:`medseg.evaluation.metrics.evaluate_case`.
"""
from __future__ import annotations

import numpy as np

from medseg.errors import InputError
from medseg.evaluation.metrics import BOTH_EMPTY, evaluate_case
from medseg.labels import LabelSet, get_label_set
from medseg.postprocess import OrganRule, PostprocessRules, apply_organ_rule

#: Thresholds (ml) tried by :func:`candidate_rules` for removing small components.
DEFAULT_THRESHOLDS_ML = (0.5, 2.0, 10.0)

#: Smallest change that counts as an improvement in :func:`choose_rules` (Dice, and HD95 in mm).
DICE_EPSILON = 1e-4
HD95_EPSILON_MM = 0.01




def candidate_rules(thresholds_ml=DEFAULT_THRESHOLDS_ML) -> list[OrganRule]:
    """The rules :func:`choose_rules` tries per organ: largest component only, components under each threshold
    removed, and both together."""
    rules = [OrganRule(largest_only=True)]
    for threshold in thresholds_ml:
        rules += [OrganRule(min_component_ml=float(threshold)),
                  OrganRule(largest_only=True, min_component_ml=float(threshold))]
    return rules


def organ_scores(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing) -> tuple[float, float]:
    """``(dice, hd95_mm)`` of one organ for rule selection: the standard protocol, with an organ correctly absent
    from both masks counted as Dice 1, HD95 0 (so removing a false-positive speck counts as a gain)."""
    record = evaluate_case(pred_mask.astype(np.uint8), ref_mask.astype(np.uint8), spacing,
                           label_set=_ONE_ORGAN)["standard"]["organ"]
    if record["status"] == BOTH_EMPTY:
        return 1.0, 0.0
    return float(record["dice"]), float(record["hd95_mm"])


_ONE_ORGAN = LabelSet(name="one-organ", organs=("organ",), raw_to_class={1: 1})


def _mean_scores(pairs, spacings, rule: OrganRule) -> tuple[float, float]:
    dice, hd95 = [], []
    for (pred_mask, ref_mask), spacing in zip(pairs, spacings):
        kept = apply_organ_rule(pred_mask, spacing, rule)[0] if not rule.is_identity else pred_mask
        d, h = organ_scores(kept, ref_mask, spacing)
        dice.append(d)
        hd95.append(h)
    return float(np.mean(dice)), float(np.mean(hd95))


def _improves(candidate: tuple[float, float], base: tuple[float, float]) -> bool:
    """Better Dice or better HD95, and neither worse (within the epsilons)."""
    dice_gain = candidate[0] - base[0]
    hd95_gain = base[1] - candidate[1]
    not_worse = dice_gain >= -DICE_EPSILON and hd95_gain >= -HD95_EPSILON_MM
    return not_worse and (dice_gain > DICE_EPSILON or hd95_gain > HD95_EPSILON_MM)


def choose_rules(cases, label_set: "LabelSet | str", thresholds_ml=DEFAULT_THRESHOLDS_ML,
                 checkpoint_sha256: "str | None" = None) -> PostprocessRules:
    """Per organ, the candidate rule that improves the validation cases most, or none.

    Args:
        cases: iterable of ``(prediction, reference, spacing)``: class-index label maps of one case (same shape,
            array axis order) and its spacing in mm per axis. Predictions are the model's raw output.
        label_set: the label set of both maps.
        thresholds_ml: component volumes tried (:func:`candidate_rules`).
        checkpoint_sha256: the model the predictions came from (recorded in the rules).

    Returns:
        :class:`PostprocessRules`; ``validation`` holds per organ the mean Dice / HD95 (mm) without and with the
        chosen rule, and the number of cases.

    A candidate improves when the organ's mean Dice rises or its mean HD95 falls and the other does not get worse;
    among improving candidates the one with the highest Dice, then the lowest HD95, then the first listed wins.
    """
    label_set = get_label_set(label_set)
    cases = list(cases)
    if not cases:
        raise InputError("post-processing: no validation case to choose rules on")
    spacings = [tuple(float(s) for s in spacing) for _, _, spacing in cases]
    for index, (pred, ref, _) in enumerate(cases):
        if np.shape(pred) != np.shape(ref):
            raise InputError(f"post-processing: validation case {index}: prediction shape {np.shape(pred)} differs "
                             f"from reference shape {np.shape(ref)}")
    rules: dict[str, OrganRule] = {}
    per_organ: dict[str, dict] = {}
    candidates = candidate_rules(thresholds_ml)
    for value, organ in enumerate(label_set.organs, start=1):
        pairs = [(np.asarray(pred) == value, np.asarray(ref) == value) for pred, ref, _ in cases]
        base = _mean_scores(pairs, spacings, OrganRule())
        best_rule, best = None, base
        for rule in candidates:
            scores = _mean_scores(pairs, spacings, rule)
            if _improves(scores, base) and (best_rule is None or (scores[0], -scores[1]) > (best[0], -best[1])):
                best_rule, best = rule, scores
        if best_rule is not None:
            rules[organ] = best_rule
        per_organ[organ] = {"rule": (best_rule or OrganRule()).describe(),
                            "dice_without": round(base[0], 4), "hd95_mm_without": round(base[1], 2),
                            "dice_with": round(best[0], 4), "hd95_mm_with": round(best[1], 2)}
    validation = {"cases": len(cases), "criterion": "mean Dice up or mean HD95 (mm, standard protocol) down, "
                  "neither worse; an organ absent from both masks counts as Dice 1, HD95 0",
                  "candidates": [rule.describe() for rule in candidates], "organs": per_organ}
    return PostprocessRules(label_set=label_set.name, rules=rules, checkpoint_sha256=checkpoint_sha256,
                            validation=validation)
