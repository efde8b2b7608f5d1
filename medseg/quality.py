"""Quality flags of a predicted label map: per case and organ, what a reviewer should look at first.

Flags (each a :class:`Flag` with the organ, the flag's name and a one-line detail):

* ``volume_out_of_range``: the organ's volume (ml) lies outside the plausible adult range of
  :data:`VOLUME_RANGES_ML`. An organ touching the first or last slice is cut by the scan, so only its upper bound
  is checked.
* ``several_large_components``: besides the largest 3D connected component (26-connectivity) there is another of at
  least :data:`LARGE_COMPONENT_ML` ml and :data:`LARGE_COMPONENT_FRACTION` of the largest.
* ``wrong_side``: the organ's centre lies on the wrong side of the midline (a liver or right kidney on the
  patient's left, a spleen or left kidney on the right; what a left-right flip in a file's header also produces).
  The midline is the centre of the body (voxels above -500 HU, largest component) when the image is given,
  otherwise the aorta's centre (it runs along the spine), otherwise the centre of the field of view.
* ``above_liver_dome``: a kidney, the gallbladder or the pancreas reaches above the liver's highest slice (they lie
  below the dome), checked when the liver is found and its dome is inside the scan.
* ``expected_not_found``: the organ is absent although the scan covers where it must be: every organ when the
  liver lies wholly inside the scan (its top and bottom slices are not the scan's first or last); the aorta when
  any other organ is found; the liver when the spleen is found.

Volume ranges: 0.25 to 2.5 times the adult reference organ masses of ICRP Publication 89 ("Basic anatomical and
physiological data for use in radiological protection: reference values", Ann. ICRP 32(3-4), 2002), lower bound
from the female and upper bound from the male reference (1 g ~ 1 ml; soft tissue is 1.04-1.06 g/ml): liver
1400 / 1800 g, spleen 130 / 150 g, kidneys 275 / 310 g for both (half for each), pancreas 120 / 140 g,
gallbladder contents 48 / 58 g. The factors are this module's choice (wide enough for adults of every build, so a
flag means "look"); the stomach (its contents vary) and the aorta have no range.

Geometry: the label map is brought into medseg's slice orientation (P, L, S: axis 1 runs from the patient's right
to left, axis 2 from inferior to superior; :func:`medseg.data.orientation.orient_view`) using its affine, so a
file stored in any voxel order gives the same flags. Distances and volumes use the spacing of the affine in mm.
"""
from __future__ import annotations

import csv
import io as _io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg.data.orientation import orient_view, oriented_spacing
from medseg.io import write_text
from medseg.labels import LabelSet, get_label_set

#: Reference organ masses (g ~ ml), (female, male), ICRP Publication 89 (2002); kidneys: one kidney (half the pair).
REFERENCE_MASS_G = {"liver": (1400.0, 1800.0), "spleen": (130.0, 150.0), "kidney_left": (137.5, 155.0),
                    "kidney_right": (137.5, 155.0), "pancreas": (120.0, 140.0), "gallbladder": (48.0, 58.0)}

#: Plausible range = (LOW_FACTOR x female reference, HIGH_FACTOR x male reference).
LOW_FACTOR, HIGH_FACTOR = 0.25, 2.5

#: Plausible adult volume ranges in ml (see the module docstring).
VOLUME_RANGES_ML = {organ: (LOW_FACTOR * female, HIGH_FACTOR * male)
                    for organ, (female, male) in REFERENCE_MASS_G.items()}

#: A second component counts as large from this volume (ml) and this share of the largest component.
LARGE_COMPONENT_ML = 5.0
LARGE_COMPONENT_FRACTION = 0.1

#: Organs that lie on the patient's right / left of the midline.
RIGHT_SIDE = ("liver", "kidney_right", "gallbladder")
LEFT_SIDE = ("spleen", "kidney_left")
#: Organs that lie wholly below the liver's dome.
BELOW_LIVER_DOME = ("kidney_left", "kidney_right", "gallbladder", "pancreas")

#: HU above which a voxel belongs to the body (for the midline).
BODY_HU = -500.0

FLAG_NAMES = ("volume_out_of_range", "several_large_components", "wrong_side", "above_liver_dome",
              "expected_not_found")

_STRUCTURE = ndimage.generate_binary_structure(3, 3)


@dataclass(frozen=True)
class Flag:
    """One quality flag of one organ."""

    organ: str
    flag: str
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class OrganGeometry:
    """Where one organ of a case lies, in the oriented (P, L, S) grid; positions in mm from the first voxel."""

    volume_ml: float
    component_ml: list  # component volumes, largest first
    centre_lr_mm: float  # along axis 1, towards the patient's left
    bottom_slice: int
    top_slice: int


def organ_geometry(mask: np.ndarray, spacing) -> "OrganGeometry | None":
    """Volume, components, left-right centre and slice range of one oriented (P, L, S) boolean mask, or None when
    it is empty. ``spacing`` is in mm per oriented axis."""
    if not mask.any():
        return None
    voxel_ml = float(np.prod(spacing)) / 1000.0
    labelled, count = ndimage.label(mask, structure=_STRUCTURE)
    sizes = np.sort(np.bincount(labelled.ravel(), minlength=count + 1)[1:])[::-1]
    slices = np.flatnonzero(mask.any(axis=(0, 1)))
    columns = np.flatnonzero(mask.any(axis=(0, 2)))
    column_counts = mask.sum(axis=(0, 2))[columns]
    centre = float(np.average(columns, weights=column_counts)) * float(spacing[1])
    return OrganGeometry(volume_ml=float(mask.sum()) * voxel_ml, component_ml=[float(s) * voxel_ml for s in sizes],
                         centre_lr_mm=centre, bottom_slice=int(slices[0]), top_slice=int(slices[-1]))


def midline_mm(labels: np.ndarray, spacing, label_set: LabelSet,
               image: "np.ndarray | None" = None) -> tuple[float, str]:
    """The midline's position along oriented axis 1 (mm from the first column) and what it was taken from."""
    if image is not None:
        body, count = ndimage.label(image > BODY_HU)
        if count:
            largest = 1 + int(np.argmax(np.bincount(body.ravel())[1:]))
            columns = np.nonzero(body == largest)[1]
            return float(columns.mean()) * float(spacing[1]), "body centre"
    if "aorta" in label_set.organs:
        columns = np.nonzero(labels == label_set.organs.index("aorta") + 1)[1]
        if columns.size:
            return float(columns.mean()) * float(spacing[1]), "aorta centre"
    return (labels.shape[1] - 1) / 2.0 * float(spacing[1]), "field-of-view centre"


def quality_flags(labels: np.ndarray, affine: np.ndarray, label_set: "LabelSet | str",
                  image: "np.ndarray | None" = None) -> list[Flag]:
    """Quality flags of one predicted label map (see the module docstring).

    Args:
        labels: 3D class-index label map in the voxel axes of ``affine``.
        affine: its 4x4 voxel-to-world affine (orientation and spacing in mm).
        label_set: the label set of ``labels``.
        image: the CT in HU on the same grid (optional; gives the body midline).

    Returns:
        Flags in organ order, then flag order.
    """
    label_set = get_label_set(label_set)
    oriented = orient_view(np.asarray(labels), affine)[0]
    spacing = np.asarray(oriented_spacing(affine))
    image_oriented = orient_view(np.asarray(image), affine)[0] if image is not None else None
    last_slice = oriented.shape[2] - 1
    geometry = {organ: organ_geometry(oriented == value, spacing)
                for value, organ in enumerate(label_set.organs, start=1)}
    flags: list[Flag] = []
    flags += _volume_flags(geometry, last_slice)
    flags += _component_flags(geometry)
    midline, source = midline_mm(oriented, spacing, label_set, image_oriented)
    flags += _side_flags(geometry, midline, source)
    flags += _dome_flags(geometry, last_slice, float(spacing[2]))
    flags += _missing_flags(geometry, last_slice)
    order = {organ: i for i, organ in enumerate(label_set.organs)}
    return sorted(flags, key=lambda f: (order[f.organ], FLAG_NAMES.index(f.flag)))


def _touches_ends(geometry: OrganGeometry, last_slice: int) -> bool:
    return geometry.bottom_slice == 0 or geometry.top_slice == last_slice


def _volume_flags(geometry: dict, last_slice: int) -> list[Flag]:
    flags = []
    for organ, (low, high) in VOLUME_RANGES_ML.items():
        found = geometry.get(organ)
        if found is None:
            continue
        if found.volume_ml > high:
            flags.append(Flag(organ, "volume_out_of_range", f"{found.volume_ml:.0f} ml > {high:.0f} ml"))
        elif found.volume_ml < low and not _touches_ends(found, last_slice):
            flags.append(Flag(organ, "volume_out_of_range", f"{found.volume_ml:.1f} ml < {low:.0f} ml"))
    return flags


def _component_flags(geometry: dict) -> list[Flag]:
    flags = []
    for organ, found in geometry.items():
        if found is None or len(found.component_ml) < 2:
            continue
        largest = found.component_ml[0]
        large = [v for v in found.component_ml[1:]
                 if v >= LARGE_COMPONENT_ML and v >= LARGE_COMPONENT_FRACTION * largest]
        if large:
            flags.append(Flag(organ, "several_large_components",
                              f"{len(large) + 1} components >= {LARGE_COMPONENT_ML:g} ml (largest {largest:.0f} ml, "
                              f"next {large[0]:.0f} ml)"))
    return flags


def _side_flags(geometry: dict, midline: float, source: str) -> list[Flag]:
    flags = []
    for organ, found in geometry.items():
        if found is None:
            continue
        offset = found.centre_lr_mm - midline  # > 0: towards the patient's left
        if organ in RIGHT_SIDE and offset > 0:
            flags.append(Flag(organ, "wrong_side", f"centre {offset:.0f} mm left of the midline ({source})"))
        elif organ in LEFT_SIDE and offset < 0:
            flags.append(Flag(organ, "wrong_side", f"centre {-offset:.0f} mm right of the midline ({source})"))
    return flags


def _dome_flags(geometry: dict, last_slice: int, slice_mm: float) -> list[Flag]:
    liver = geometry.get("liver")
    if liver is None or liver.top_slice == last_slice:
        return []
    flags = []
    for organ in BELOW_LIVER_DOME:
        found = geometry.get(organ)
        if found is not None and found.top_slice > liver.top_slice:
            above = (found.top_slice - liver.top_slice) * slice_mm
            flags.append(Flag(organ, "above_liver_dome", f"reaches {above:.0f} mm above the liver's dome"))
    return flags


def _missing_flags(geometry: dict, last_slice: int) -> list[Flag]:
    found = {organ for organ, g in geometry.items() if g is not None}
    liver = geometry.get("liver")
    expected = set()
    if liver is not None and not _touches_ends(liver, last_slice):
        expected |= set(geometry)
    if "aorta" in geometry and found - {"aorta"}:
        expected.add("aorta")
    if "liver" in geometry and "spleen" in found:
        expected.add("liver")
    reasons = {"aorta": "other organs are found", "liver": "the spleen is found"}
    return [Flag(organ, "expected_not_found",
                 f"absent although {reasons.get(organ, 'the liver lies wholly inside the scan')}")
            for organ in geometry if organ in expected and organ not in found]


# ----------------------------------------------------------------------------------------------------------------
# Tables


FLAG_COLUMNS = ("case_id", "organ", "flag", "detail")


def flags_csv_text(flags_by_case: dict[str, list]) -> str:
    """CSV text with one row per flag (columns :data:`FLAG_COLUMNS`); flags as :class:`Flag` or their dicts."""
    buffer = _io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FLAG_COLUMNS)
    for case_id in sorted(flags_by_case):
        for flag in flags_by_case[case_id]:
            record = flag.to_dict() if isinstance(flag, Flag) else flag
            writer.writerow([case_id, record["organ"], record["flag"], record["detail"]])
    return buffer.getvalue()


def write_flags_csv(path: "str | Path", flags_by_case: dict[str, list]) -> Path:
    """Write :func:`flags_csv_text` atomically."""
    return write_text(path, flags_csv_text(flags_by_case))


def flag_text(flags: list) -> str:
    """Flags of one case as one short text, e.g. ``kidney_left: wrong_side; spleen: several_large_components``."""
    records = [f.to_dict() if isinstance(f, Flag) else f for f in flags]
    return "; ".join(f"{r['organ']}: {r['flag']}" for r in records)


def flag_comparison(cases: dict[str, dict], flags_by_case: dict[str, list]) -> dict:
    """Do flagged results score worse? Mean Dice of flagged vs unflagged results.

    Args:
        cases: ``{case_id: {organ: record}}`` of an evaluation summary's protocol (records with ``dice``; None when
            not scored).
        flags_by_case: ``{case_id: [flag dicts]}`` (cases absent here are left out).

    Returns:
        ``{"organ_results": {"flagged": {"n", "mean_dice"}, "unflagged": {...}}, "cases": {...}}``: per (case,
        organ) result (flagged when that organ of that case has a flag) and per case (the mean Dice of its scored
        organs; flagged when any organ has a flag). ``mean_dice`` is None where ``n`` is 0.
    """
    organ_groups: dict[str, list] = {"flagged": [], "unflagged": []}
    case_groups: dict[str, list] = {"flagged": [], "unflagged": []}
    for case_id, organs in cases.items():
        if case_id not in flags_by_case:
            continue
        flagged_organs = {f["organ"] for f in flags_by_case[case_id]}
        scored = []
        for organ, record in organs.items():
            if record.get("dice") is None:
                continue
            scored.append(record["dice"])
            organ_groups["flagged" if organ in flagged_organs else "unflagged"].append(record["dice"])
        if scored:
            case_groups["flagged" if flagged_organs else "unflagged"].append(float(np.mean(scored)))

    def describe(groups: dict) -> dict:
        return {name: {"n": len(values), "mean_dice": float(np.mean(values)) if values else None}
                for name, values in groups.items()}

    return {"organ_results": describe(organ_groups), "cases": describe(case_groups)}


def comparison_line(comparison: dict) -> str:
    """One line, e.g. ``flagged organ results: mean Dice 0.412 (n=5); unflagged: 0.861 (n=67)``."""
    def part(group: dict) -> str:
        mean = "-" if group["mean_dice"] is None else f"{group['mean_dice']:.3f}"
        return f"{mean} (n={group['n']})"

    organs, cases = comparison["organ_results"], comparison["cases"]
    return (f"quality flags: flagged organ results mean Dice {part(organs['flagged'])}, unflagged "
            f"{part(organs['unflagged'])}; flagged cases {part(cases['flagged'])}, unflagged "
            f"{part(cases['unflagged'])}")
