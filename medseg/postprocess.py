"""Post-processing of predicted label maps, chosen on validation cases (as nnU-Net does).

Per organ, a rule (:class:`OrganRule`) may

* remove every 3D connected component smaller than ``min_component_ml`` millilitres, and
* keep only the largest connected component (``largest_only``).

When no component of an organ survives (its largest component is smaller than ``min_component_ml``), the organ is
reported as **not found** (:attr:`OrganResult.not_found`) instead of being kept as a speck.

Connectivity is full 3D (26 neighbours: faces, edges and corners), so a component is what a reader sees as one
piece. Volumes are voxel counts times the voxel volume in ml, from the spacing in mm of the label map's axes (array
axis order, as ``medseg.io.Volume.spacing``). Label maps hold class indices of a :class:`~medseg.labels.LabelSet`
(0 background, ``i + 1`` the organ ``organs[i]``); removed voxels become background.

:func:`medseg.evaluation.postprocess.choose_rules` picks, per organ, among its candidate rules the one that
improves the validation cases' mean Dice or mean HD95 (standard protocol, mm) without making the other worse; an organ where none does keeps no
rule. The rules are stored as a JSON file beside the checkpoint (:func:`rules_path`), holding the checkpoint's
SHA-256, so that they are applied only to the model they were chosen for (:func:`load_rules_for`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg.errors import InputError
from medseg.io import file_sha256, read_json, spacing_from_affine, write_json
from medseg.labels import LabelSet, get_label_set
from medseg.quality import quality_flags

#: Format name and version of a rules file.
RULES_FORMAT = "medseg-postprocess"
RULES_VERSION = 1

#: Suffix of the rules file beside a checkpoint: ``run/last.pt`` -> ``run/last.postprocess.json``.
RULES_SUFFIX = ".postprocess.json"

#: 26-connectivity in 3D.
_STRUCTURE = ndimage.generate_binary_structure(3, 3)


@dataclass(frozen=True)
class OrganRule:
    """What post-processing does to one organ: drop components under ``min_component_ml`` ml, then optionally keep
    only the largest. The default (no removal) changes nothing."""

    largest_only: bool = False
    min_component_ml: float = 0.0

    @property
    def is_identity(self) -> bool:
        """True when the rule changes no mask."""
        return not self.largest_only and self.min_component_ml <= 0

    def describe(self) -> str:
        """Short text, e.g. ``largest component, components >= 2 ml``."""
        parts = []
        if self.largest_only:
            parts.append("largest component")
        if self.min_component_ml > 0:
            parts.append(f"components >= {self.min_component_ml:g} ml")
        return ", ".join(parts) or "none"


@dataclass
class OrganResult:
    """What a rule did to one organ of one case (volumes in ml)."""

    components: int
    removed_components: int
    removed_ml: float
    kept_ml: float
    not_found: bool  # the organ had voxels, but no component reached the rule's minimum volume


@dataclass
class PostprocessRules:
    """The rules of every organ that has one, plus what the choice was based on."""

    label_set: str
    rules: dict[str, OrganRule] = field(default_factory=dict)
    checkpoint_sha256: "str | None" = None
    validation: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The rules file's content (plain JSON types)."""
        return {"format": RULES_FORMAT, "version": RULES_VERSION, "label_set": self.label_set,
                "checkpoint_sha256": self.checkpoint_sha256,
                "rules": {organ: asdict(rule) for organ, rule in self.rules.items()},
                "validation": self.validation}

    def describe(self) -> dict[str, str]:
        """``organ -> rule text`` of the organs with a rule (for summaries and reports)."""
        return {organ: rule.describe() for organ, rule in self.rules.items()}


# ----------------------------------------------------------------------------------------------------------------
# Applying rules (pure functions)


def voxel_volume_ml(spacing) -> float:
    """Volume of one voxel in ml from the spacing in mm per axis."""
    spacing = np.asarray(spacing, dtype=np.float64)
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(f"spacing: expected three positive sizes in mm, got {spacing.tolist()}")
    return float(np.prod(spacing)) / 1000.0


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 26-connected components of a 3D boolean mask.

    Returns:
        ``(labelled, sizes)``: an int32 array with 0 outside the mask and ``1..n`` per component, and the voxel count
        of each component (``sizes[i]`` belongs to component ``i + 1``).
    """
    if mask.ndim != 3:
        raise InputError(f"mask: expected a 3D array, got shape {mask.shape}")
    labelled, count = ndimage.label(mask, structure=_STRUCTURE)
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)[1:]
    return labelled, sizes


def apply_organ_rule(mask: np.ndarray, spacing, rule: OrganRule) -> tuple[np.ndarray, OrganResult]:
    """One organ's mask after ``rule`` (a new array; the input is not modified).

    Args:
        mask: 3D boolean mask, array axis order.
        spacing: voxel size in mm per array axis.
        rule: the organ's rule.

    Returns:
        ``(kept_mask, result)``.
    """
    mask = np.asarray(mask, dtype=bool)
    voxel_ml = voxel_volume_ml(spacing)
    labelled, sizes = components(mask)
    keep = np.ones(sizes.size, dtype=bool)
    if rule.min_component_ml > 0:
        keep &= sizes * voxel_ml >= rule.min_component_ml
    if rule.largest_only and keep.any():
        largest = int(np.argmax(np.where(keep, sizes, -1)))
        keep[:] = False
        keep[largest] = True
    kept = np.concatenate([[False], keep])[labelled]
    result = OrganResult(components=int(sizes.size), removed_components=int(np.count_nonzero(~keep)),
                         removed_ml=float(sizes[~keep].sum() * voxel_ml), kept_ml=float(sizes[keep].sum() * voxel_ml),
                         not_found=bool(sizes.size > 0 and not keep.any()))
    return kept, result


def apply_rules(labels: np.ndarray, spacing, rules: "PostprocessRules | dict[str, OrganRule]",
                label_set: "LabelSet | str | None" = None) -> tuple[np.ndarray, dict[str, OrganResult]]:
    """A label map after the organs' rules (a new array; removed voxels become background 0).

    Args:
        labels: 3D class-index label map, array axis order.
        spacing: voxel size in mm per array axis.
        rules: :class:`PostprocessRules` (its label set is used) or ``organ -> OrganRule``.
        label_set: needed when ``rules`` is a plain dict.

    Returns:
        ``(labels, results)``: the new map and ``organ -> OrganResult`` for every organ with a rule.
    """
    if isinstance(rules, PostprocessRules):
        label_set, rules = rules.label_set, rules.rules
    label_set = get_label_set(label_set)
    labels = np.asarray(labels)
    out = labels.copy()
    results: dict[str, OrganResult] = {}
    for organ, rule in rules.items():
        if organ not in label_set.organs:
            raise InputError(f"post-processing rule for {organ!r}: not an organ of label set {label_set.name}")
        if rule.is_identity:
            continue
        value = label_set.organs.index(organ) + 1
        mask = labels == value
        kept, results[organ] = apply_organ_rule(mask, spacing, rule)
        out[mask & ~kept] = 0
    return out, results


# ----------------------------------------------------------------------------------------------------------------
# Storing rules beside a checkpoint


def rules_path(checkpoint: "str | Path") -> Path:
    """Where the rules of a checkpoint live: ``run/last.pt`` -> ``run/last.postprocess.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + RULES_SUFFIX)


def save_rules(path: "str | Path", rules: PostprocessRules) -> Path:
    """Write a rules file atomically."""
    return write_json(path, rules.to_json())


def parse_rules(data: dict, source: str) -> PostprocessRules:
    """A rules file's content as :class:`PostprocessRules`; a damaged or foreign file is an InputError."""
    if not isinstance(data, dict) or data.get("format") != RULES_FORMAT:
        raise InputError(f"{source}: not a medseg post-processing rules file (format {RULES_FORMAT!r} expected)")
    if data.get("version") != RULES_VERSION:
        raise InputError(f"{source}: rules file version {data.get('version')!r}; this medseg reads {RULES_VERSION}")
    try:
        label_set = get_label_set(data["label_set"])
        rules = {}
        for organ, rule in data["rules"].items():
            if organ not in label_set.organs:
                raise InputError(f"{source}: rule for {organ!r}, not an organ of label set {label_set.name}")
            threshold = float(rule["min_component_ml"])
            if not math.isfinite(threshold) or threshold < 0:
                raise InputError(f"{source}: {organ}: min_component_ml must be >= 0, got {threshold}")
            rules[organ] = OrganRule(largest_only=bool(rule["largest_only"]), min_component_ml=threshold)
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise InputError(f"{source}: damaged rules file ({type(error).__name__}: {error})") from None
    return PostprocessRules(label_set=label_set.name, rules=rules, checkpoint_sha256=data.get("checkpoint_sha256"),
                            validation=data.get("validation") or {})


def load_rules(path: "str | Path") -> PostprocessRules:
    """Read a rules file (:func:`parse_rules`)."""
    return parse_rules(read_json(path), str(path))


def load_rules_for(checkpoint: "str | Path", checkpoint_sha256: "str | None" = None) -> "PostprocessRules | None":
    """The rules stored beside ``checkpoint`` (:func:`rules_path`), or None when there is no rules file.

    Raises:
        InputError: the file is damaged, or it was chosen for another checkpoint (its recorded SHA-256 differs):
            rules chosen for one model are never applied to another.
    """
    path = rules_path(checkpoint)
    if not path.is_file():
        return None
    rules = load_rules(path)
    sha = checkpoint_sha256 or file_sha256(checkpoint)
    if rules.checkpoint_sha256 != sha:
        raise InputError(f"{path}: post-processing rules were chosen for another checkpoint (sha256 "
                         f"{str(rules.checkpoint_sha256)[:12]}..., {Path(checkpoint).name} is {sha[:12]}...); "
                         "choose them again or use --no-postprocess")
    return rules


# ----------------------------------------------------------------------------------------------------------------
# One predicted case: post-processing and quality flags together (used by the pipeline and `medseg predict`)


def finish_case(labels: np.ndarray, affine: np.ndarray, label_set: "LabelSet | str",
                rules: "PostprocessRules | None", image: "np.ndarray | None" = None,
                flags: bool = True) -> tuple[np.ndarray, dict]:
    """A predicted label map after the rules (when given), and the case's record.

    Args:
        labels: the model's class-index label map, in the voxel axes of ``affine``.
        affine: its 4x4 affine (spacing in mm, orientation for the quality flags).
        label_set: the label set of ``labels``.
        rules: the checkpoint's rules, or None (post-processing off or no rules file).
        image: the CT in HU on the same grid (optional; the body midline of the quality flags).
        flags: compute the quality flags (False for input without geometry, e.g. a TransUNet h5 stack).

    Returns:
        ``(labels, record)``: the final map and ``{"postprocess": {organ: what was removed} or None,
        "not_found": [organs left as specks by the rules], "flags": [quality flag dicts of the final map]}``.
    """
    record: dict = {"postprocess": None, "not_found": [], "flags": []}
    if rules is not None:
        labels, results = apply_rules(labels, spacing_from_affine(affine), rules)
        record["postprocess"] = {organ: {"removed_components": r.removed_components,
                                         "removed_ml": round(r.removed_ml, 3), "not_found": r.not_found}
                                 for organ, r in results.items() if r.removed_components}
        record["not_found"] = [organ for organ, r in results.items() if r.not_found]
    if flags:
        record["flags"] = [flag.to_dict() for flag in quality_flags(labels, affine, label_set, image=image)]
    return labels, record
