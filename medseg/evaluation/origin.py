"""What made each prediction of a folder, read from the files themselves, and what evaluate does with it.

Every label NIfTI medseg writes names its label set in the header (``intent_name``) and carries a provenance record
(:func:`medseg.io.read_provenance`: the checkpoint's SHA-256, the label-changing settings, ``organs`` when
``--organs`` kept a subset). Evaluate reads them before scoring anything:

* **label set**: the header's label set wins. ``--labels`` naming another set is a one-line error (scoring
  synapse8 classes as btcv13 gives wrong numbers with exit 0); without ``--labels`` the header's set is used.
  A folder whose files name different label sets is refused, naming a file of each.
* **organs kept**: predictions made with ``--organs liver,spleen`` hold only those organs; evaluate scores only
  them and says so. Predictions of one folder that kept different organs are refused.
* **models**: a folder whose predictions come from more than one checkpoint or label-changing setting is scored,
  but the summary's ``prediction_origin`` lists each group with its files and a warning says the folder is mixed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib

from medseg.errors import ConfigError, InputError
from medseg.evaluation.metrics import check_tolerance
from medseg.io import read_provenance
from medseg.labels import LABEL_SETS, LabelSet
from medseg.schema import parse_mm_by_organ

#: Settings of a prediction's record that make two predictions "the same model" (besides the label set).
MODEL_KEYS = ("checkpoint_sha256", "tta", "resize", "amp", "model", "img_size")


@dataclass(frozen=True)
class PredictionOrigin:
    """What one prediction file says about itself.

    Attributes:
        path: the prediction file.
        label_set: label set named by the header (``intent_name``), or None when it names none medseg knows.
        organs: organ keys the prediction kept (``--organs``), or None for every organ of the label set.
        model: the record's model-identifying settings (:data:`MODEL_KEYS`), or None without a medseg record.
    """

    path: Path
    label_set: "str | None"
    organs: "tuple[str, ...] | None"
    model: "dict | None"


def header_label_set(path: "str | Path") -> "str | None":
    """The label set a label NIfTI's header names (``intent_name``), or None when it names none medseg knows."""
    try:
        name = nib.load(str(path)).header.get_intent()[2]
    except Exception:  # unreadable: scored (and reported) as an unscorable prediction later
        return None
    return name if name in LABEL_SETS else None


def recorded_organs(record: "dict | None") -> "tuple[str, ...] | None":
    """The organs a provenance record says the prediction kept (``organs``: ``"liver,spleen"`` or a list)."""
    organs = (record or {}).get("organs")
    if not organs:
        return None
    if isinstance(organs, str):
        organs = organs.split(",")
    return tuple(o.strip() for o in organs if str(o).strip())


def read_origin(path: "str | Path") -> PredictionOrigin:
    """The :class:`PredictionOrigin` of one prediction file (header and provenance only; no voxel data)."""
    record = read_provenance(path)
    model = {key: record.get(key) for key in MODEL_KEYS} if record is not None else None
    return PredictionOrigin(Path(path), header_label_set(path), recorded_organs(record), model)


def resolve_label_set(origins: list[PredictionOrigin], requested: "str | None") -> str:
    """The label set to score with: the one the predictions' headers name.

    Args:
        origins: the folder's predictions.
        requested: ``--labels`` (None when not given).

    Raises:
        InputError: the headers name more than one label set, or another set than ``requested``.
    """
    named: dict[str, list[Path]] = {}
    for origin in origins:
        if origin.label_set is not None:
            named.setdefault(origin.label_set, []).append(origin.path)
    if len(named) > 1:
        parts = "; ".join(f"{name}: {files[0].name}" + (f" and {len(files) - 1} more" if len(files) > 1 else "")
                          for name, files in sorted(named.items()))
        raise InputError(f"{origins[0].path.parent}: predictions of more than one label set ({parts}); "
                         "evaluate each label set's predictions separately")
    if not named:
        return requested or "synapse8"
    (header_set, files), = named.items()
    if requested is not None and requested != header_set:
        raise InputError(f"{files[0]}: the prediction's header names label set {header_set}, but --labels "
                         f"{requested} was given; drop --labels or pass --labels {header_set}")
    return header_set


def resolve_organs(origins: list[PredictionOrigin], label_set: LabelSet) -> "tuple[str, ...] | None":
    """The organs to score: those every prediction kept (None: all organs of ``label_set``).

    Raises:
        InputError: predictions of the folder kept different organs, or a recorded organ is not in ``label_set``.
    """
    kept: dict = {}
    for origin in origins:
        kept.setdefault(origin.organs, []).append(origin.path)
    if len(kept) > 1:
        parts = "; ".join(f"{'all organs' if organs is None else ','.join(organs)}: {files[0].name}"
                          + (f" and {len(files) - 1} more" if len(files) > 1 else "")
                          for organs, files in sorted(kept.items(), key=lambda item: str(item[0])))
        raise InputError(f"{origins[0].path.parent}: predictions kept different organs ({parts}); evaluate "
                         "predictions made with the same --organs together")
    if not kept:
        return None
    (organs, files), = kept.items()
    if organs is None:
        return None
    unknown = [o for o in organs if o not in label_set.organs]
    if unknown:
        raise InputError(f"{files[0]}: the record keeps organ {unknown[0]!r}, not an organ of label set "
                         f"{label_set.name}")
    return tuple(o for o in label_set.organs if o in organs)  # class order


def model_groups(origins: list[PredictionOrigin]) -> list[dict]:
    """Predictions grouped by the model and settings that made them, largest group first.

    Returns:
        ``[{"model": record settings or None (no medseg record), "files": [file names]}]``.
    """
    groups: list[dict] = []
    for origin in origins:
        group = next((g for g in groups if g["model"] == origin.model), None)
        if group is None:
            group = {"model": origin.model, "files": []}
            groups.append(group)
        group["files"].append(origin.path.name)
    return sorted(groups, key=lambda g: -len(g["files"]))


def mixed_models_warning(groups: list[dict]) -> "str | None":
    """One line naming the groups of a folder made by more than one model or setting (None when all agree)."""
    if len(groups) < 2:
        return None
    parts = []
    for group in groups:
        model = group["model"]
        what = ("no medseg record" if model is None
                else f"checkpoint {str(model.get('checkpoint_sha256'))[:12]}"
                + "".join(f", {k}={model[k]}" for k in ("tta", "resize", "amp") if model.get(k) is not None))
        files = ", ".join(group["files"][:3]) + (", ..." if len(group["files"]) > 3 else "")
        parts.append(f"{what}: {len(group['files'])} file(s) ({files})")
    return (f"predictions come from {len(groups)} different models or settings, so the means mix them: "
            + "; ".join(parts))


def parse_tolerances(text: "str | float | dict | None", default_mm: float) -> tuple[float, dict[str, float]]:
    """NSD tolerances: ``"2"``, ``"liver=5,spleen=3"`` or ``"3,liver=5"`` (mm), a number, or ``{organ: mm}``.

    Returns:
        ``(default_mm, {organ: mm})``: the tolerance of organs not named, and the per-organ overrides.

    Raises:
        ConfigError: a value that is not a finite number >= 0, two defaults, an empty organ name, or an organ given
            twice (:func:`medseg.schema.parse_mm_by_organ`).
    """
    if text is None:
        return float(default_mm), {}
    if isinstance(text, dict):
        return float(default_mm), parse_mm_by_organ(text, "tolerance")
    if isinstance(text, (int, float)):
        return check_tolerance(text), {}
    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    if not parts:
        raise ConfigError(f"tolerance: {text!r}: no value given (a number of mm, or ORGAN=MM pairs)")
    defaults = [part for part in parts if "=" not in part]
    if len(defaults) > 1:
        raise ConfigError(f"tolerance: {text!r}: more than one default tolerance")
    pairs = ",".join(part for part in parts if "=" in part)
    overrides = parse_mm_by_organ(pairs, f"tolerance {text!r}") if pairs else {}
    return (check_tolerance(defaults[0]) if defaults else float(default_mm)), overrides


def coarse_tolerance_warning(tolerances: dict[str, float], spacings: list) -> "str | None":
    """A warning when an organ's NSD tolerance is below the finest voxel spacing of the grids scored.

    Below the smallest voxel spacing (mm) of a grid, a boundary one voxel away along any axis is outside the
    tolerance, so NSD measures voxel placement rather than surface agreement.

    Args:
        tolerances: organ -> tolerance in mm.
        spacings: each scored case's spacing in mm (array axis order).
    """
    finest = [min(s) for s in spacings if s]
    if not finest:
        return None
    smallest = min(finest)
    below = {organ: mm for organ, mm in tolerances.items() if mm < smallest}
    if not below:
        return None
    values = sorted(set(below.values()))
    shown = (f"{values[0]:g} mm" if len(values) == 1 and len(below) == len(tolerances) else
             ", ".join(f"{organ} {mm:g} mm" for organ, mm in below.items()))
    return (f"NSD tolerance {shown} is below the voxel spacing of the grids scored (smallest spacing per case "
            f"{smallest:.3g}-{max(finest):.3g} mm): a boundary one voxel off already counts as outside; choose a "
            "tolerance of at least one voxel (e.g. --tolerance 3, or per organ --tolerance-by-organ liver=5,spleen=3)")
