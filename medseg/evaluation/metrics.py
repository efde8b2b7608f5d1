"""Per-organ segmentation metrics of one case: Dice, HD95, ASSD, NSD and organ volumes, under two protocols.

Axis convention: every array is a label map indexed in the voxel axes of its NIfTI file (``[i, j, k]``), and
``spacing`` is the voxel size in mm **in the same axis order** (``medseg.io.Volume.spacing``).

Boundary (both protocols, identical to medpy 0.5.2 and MONAI 1.x): a boundary voxel is a mask voxel that is not
interior, and a voxel is interior when it and its face neighbours (6 in 3D, connectivity 1) all lie in the mask.
Outside the image counts as background, so a mask touching the image edge has a boundary there. This equals
``mask ^ scipy.ndimage.binary_erosion(mask, generate_binary_structure(ndim, 1), border_value=0)``.

Distances are exact Euclidean distances between boundary voxel centres: for each boundary voxel of one mask, the
distance to the nearest boundary voxel of the other mask (a KD-tree over the boundary voxels, the same numbers as
the distance transform medpy uses and the KD-tree MONAI uses on CPU).

Standard protocol (what users of MONAI and the metric literature expect; all distances in mm):

* ``dice``: 2 |P and R| / (|P| + |R|).
* ``hd95_mm``: the larger of the two directed 95th percentiles of the boundary distances (numpy's linear
  percentile), equal to MONAI's ``compute_hausdorff_distance(percentile=95, spacing=spacing)``.
* ``assd_mm``: the mean of all boundary distances of both directions pooled,
  (sum d(P->R) + sum d(R->P)) / (|dP| + |dR|), equal to MONAI's
  ``compute_average_surface_distance(symmetric=True, spacing=spacing)``. (medpy's ``assd`` is the mean of the two
  directed means instead, a slightly different number.)
* ``nsd``: normalised surface Dice at a tolerance ``tolerance_mm``: the share of boundary voxels of both masks that
  lie within the tolerance (distance <= tolerance) of the other boundary, equal to MONAI's
  ``compute_surface_dice(class_thresholds=[tolerance_mm], spacing=spacing)``.
* ``pred_volume_ml`` / ``ref_volume_ml``: voxel count times voxel volume, in millilitres.

Empty-mask policy of the standard protocol (made explicit, never silent):

* both masks empty: status ``both_empty``; the organ is not scored (metric values None) and is counted.
* prediction empty, reference not (``pred_empty``), or reference empty, prediction not (``ref_empty``): a scored
  failure with Dice 0, NSD 0 and HD95 = ASSD = the worst case, the diagonal of the image in mm
  (``sqrt(sum((shape * spacing) ** 2))``). These values enter every mean.

TransUNet protocol (the paper's evaluation, kept for comparison with published tables):

* both masks non-empty: ``dice`` as medpy's ``dc`` and ``hd95_voxels`` as medpy's ``hd95`` without spacing: one
  95th percentile over the pooled distances of both directions, **in voxel units**.
* prediction non-empty and reference empty: Dice 1, HD95 0 (status ``ref_empty``).
* prediction empty (whatever the reference): Dice 0, HD95 0 (status ``pred_empty`` or ``both_empty``).
  Every organ of every case enters the paper's means.

Speed: both label maps are first cropped to the box holding all their foreground; the bounding boxes of all organs
are then found in one pass over each cropped map (``scipy.ndimage.find_objects``), and each organ is handled inside
the union of its two boxes only. Cropping does not change any number: outside the box both masks are background, so
erosion (which treats outside-the-array as background) and distances are the same as on the whole volume.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from medseg.errors import ConfigError, InputError
from medseg.labels import LabelSet, get_label_set

#: Default NSD tolerance in mm.
DEFAULT_TOLERANCE_MM = 2.0

#: Protocol names accepted by :func:`evaluate_case` (``both`` runs the standard and the TransUNet protocol).
PROTOCOLS = ("standard", "transunet", "both")

#: Metric keys of each protocol, in report order.
STANDARD_METRICS = ("dice", "hd95_mm", "assd_mm", "nsd", "pred_volume_ml", "ref_volume_ml")
TRANSUNET_METRICS = ("dice", "hd95_voxels")

# Status of one organ of one case.
SCORED = "scored"
BOTH_EMPTY = "both_empty"
PRED_EMPTY = "pred_empty"
REF_EMPTY = "ref_empty"
MISSING_PREDICTION = "missing_prediction"
UNSCORABLE_PREDICTION = "unscorable_prediction"  # the file exists but cannot be scored: counted like a missing one
STATUSES = (SCORED, BOTH_EMPTY, PRED_EMPTY, REF_EMPTY, MISSING_PREDICTION, UNSCORABLE_PREDICTION)

# Margin (voxels) around the union bounding box of an organ. Any margin >= 0 gives the same numbers; one voxel
# keeps the crop readable when debugging (the boundary is surrounded by background).
_CROP_MARGIN = 1


def protocols_of(protocol: str) -> tuple[str, ...]:
    """``"both"`` -> ``("standard", "transunet")``; a single protocol name -> a 1-tuple. Unknown -> ConfigError."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol: unknown protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")
    return ("standard", "transunet") if protocol == "both" else (protocol,)


def check_spacing(spacing, ndim: int) -> np.ndarray:
    """Validate a voxel spacing (mm, array axis order): ``ndim`` finite positive numbers. Returns float64 array."""
    try:
        values = np.asarray(spacing, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ConfigError(f"spacing: expected {ndim} numbers in mm, got {spacing!r}") from None
    if values.size == 1 and ndim > 1:
        values = np.repeat(values, ndim)
    if values.size != ndim or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ConfigError(f"spacing: expected {ndim} positive finite numbers in mm, got {spacing!r}")
    return values


def check_tolerance(tolerance_mm) -> float:
    """Validate an NSD tolerance: a finite number of mm >= 0 (ConfigError otherwise). Returns it as float."""
    try:
        value = float(tolerance_mm)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"tolerance: must be a finite number of mm >= 0, got {tolerance_mm!r}")
    return value


def organ_tolerance_map(tolerance_mm: "float | dict", label_set: LabelSet) -> dict:
    """``{organ: tolerance in mm}`` for every organ of ``label_set`` from one number or a per-organ mapping
    (organs not named get :data:`DEFAULT_TOLERANCE_MM`; ConfigError for a bad value or an unknown organ)."""
    if not isinstance(tolerance_mm, dict):
        return dict.fromkeys(label_set.organs, check_tolerance(tolerance_mm))
    unknown = [organ for organ in tolerance_mm if organ not in label_set.organs]
    if unknown:
        raise ConfigError(f"tolerance: {unknown[0]!r} is not an organ of label set {label_set.name}")
    return {organ: check_tolerance(tolerance_mm.get(organ, DEFAULT_TOLERANCE_MM)) for organ in label_set.organs}


def image_diagonal_mm(shape, spacing) -> float:
    """Diagonal of the image's field of view in mm, ``sqrt(sum((shape * spacing) ** 2))``: the worst-case distance."""
    extent = np.asarray(shape, dtype=np.float64) * check_spacing(spacing, len(shape))
    return float(math.sqrt(float(np.sum(extent**2))))


def to_class_map(labels: np.ndarray, label_set: "LabelSet | str", source: str = "label volume") -> np.ndarray:
    """Check that ``labels`` holds only class values of ``label_set`` and return it as uint8.

    Args:
        labels: integer, boolean or integral-float label map of any shape.
        label_set: the label set whose classes (0 .. num_classes - 1) are allowed.
        source: name used in error messages (a file path).

    Raises:
        InputError: NaN/inf, non-integer values, or values outside the label set.
    """
    label_set = get_label_set(label_set)
    labels = np.asarray(labels)
    highest = label_set.num_classes - 1
    if labels.dtype == np.uint8 or labels.dtype == np.bool_:
        values_ok = labels.size == 0 or int(labels.max()) <= highest
    else:
        if np.issubdtype(labels.dtype, np.floating):
            if not np.all(np.isfinite(labels)):
                raise InputError(f"{source}: label map contains NaN or infinite values")
            if not np.array_equal(labels, np.floor(labels)):
                raise InputError(f"{source}: label map holds non-integer values (is this an image, not a label map?)")
        elif not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"{source}: label map has unsupported data type {labels.dtype}")
        values_ok = labels.size == 0 or (labels.min() >= 0 and labels.max() <= highest)
    if not values_ok:
        values = np.unique(labels)
        bad = values[(values < 0) | (values > highest)]
        shown = ", ".join(str(int(v)) for v in bad[:5])
        raise InputError(
            f"{source}: label values {shown} are outside the classes 0..{highest} of label set {label_set.name}"
        )
    return labels.astype(np.uint8, copy=False)


def boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a binary mask: mask voxels with at least one face neighbour outside the mask.

    Face neighbours are the 2 * ndim voxels sharing a face (connectivity 1); voxels beyond the array edge count as
    background. Identical to ``mask ^ binary_erosion(mask, generate_binary_structure(ndim, 1), border_value=0)``,
    the boundary of medpy and MONAI, written out as shifted comparisons (faster than the generic erosion).

    Args:
        mask: boolean array of any dimension.

    Returns:
        boolean array of the same shape.
    """
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1, constant_values=False)
    interior = mask.copy()
    inner = tuple(slice(1, n + 1) for n in mask.shape)
    for axis in range(mask.ndim):
        for step in (-1, 1):
            neighbour = list(inner)
            neighbour[axis] = slice(1 + step, mask.shape[axis] + 1 + step)
            interior &= padded[tuple(neighbour)]
    return mask & ~interior


def nearest_distances(from_points: np.ndarray, to_points: np.ndarray) -> np.ndarray:
    """For each point of ``from_points`` (n, ndim), the Euclidean distance to the nearest point of ``to_points``."""
    if len(from_points) == 0:
        return np.zeros(0, dtype=np.float64)
    tree = cKDTree(to_points, leafsize=32, balanced_tree=False, compact_nodes=False)
    distances, _ = tree.query(from_points, k=1)
    return np.asarray(distances, dtype=np.float64)


def _directed_distances(own_only: np.ndarray, n_shared: int, other_all: np.ndarray) -> np.ndarray:
    """Distances of one boundary's voxels to the other boundary: 0 for the ``n_shared`` voxels on both boundaries,
    a nearest-neighbour query for the others (``own_only``). Order is irrelevant to every metric."""
    return np.concatenate([np.zeros(n_shared), nearest_distances(own_only, other_all)])


def surface_distances(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing=None) -> tuple[np.ndarray, np.ndarray]:
    """Boundary-to-boundary distances of two non-empty binary masks.

    Args:
        pred_mask, ref_mask: boolean arrays of the same shape (array axis order).
        spacing: voxel size in mm per array axis; None gives voxel units.

    Returns:
        ``(d_pred_to_ref, d_ref_to_pred)``: for every boundary voxel of the prediction the distance to the nearest
        reference boundary voxel, and the other way round (float64, mm or voxels).

    Raises:
        InputError: the masks differ in shape.
        ValueError: a mask is empty (distances are undefined; the protocols handle that case).
    """
    pred_mask, ref_mask = _mask_pair(pred_mask, ref_mask)
    if not pred_mask.any() or not ref_mask.any():
        raise ValueError("surface distances need two non-empty masks")
    scale = np.ones(pred_mask.ndim) if spacing is None else check_spacing(spacing, pred_mask.ndim)
    box = _union_box(_bounding_box(pred_mask), _bounding_box(ref_mask), pred_mask.shape)
    pred_points = np.argwhere(boundary(pred_mask[box])) * scale
    ref_points = np.argwhere(boundary(ref_mask[box])) * scale
    return nearest_distances(pred_points, ref_points), nearest_distances(ref_points, pred_points)


def standard_metrics(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing, tolerance_mm: float = DEFAULT_TOLERANCE_MM,
                     worst_case_mm: "float | None" = None) -> dict:
    """Standard-protocol metrics of one binary mask pair (see the module docstring for definitions and policy).

    Args:
        pred_mask, ref_mask: boolean arrays of the same shape, array axis order.
        spacing: voxel size in mm per array axis.
        tolerance_mm: NSD tolerance in mm.
        worst_case_mm: HD95/ASSD given when exactly one mask is empty; default: the diagonal of these arrays.

    Returns:
        ``{"status", "dice", "hd95_mm", "assd_mm", "nsd", "pred_volume_ml", "ref_volume_ml"}``.
    """
    pred_mask, ref_mask = _mask_pair(pred_mask, ref_mask)
    spacing = check_spacing(spacing, pred_mask.ndim)
    tolerance_mm = check_tolerance(tolerance_mm)
    if worst_case_mm is None:
        worst_case_mm = image_diagonal_mm(pred_mask.shape, spacing)
    return _score_pair(pred_mask, ref_mask, spacing, ("standard",), tolerance_mm, worst_case_mm)["standard"]


def transunet_metrics(pred_mask: np.ndarray, ref_mask: np.ndarray) -> dict:
    """TransUNet-protocol metrics of one binary mask pair: ``{"status", "dice", "hd95_voxels"}`` (voxel units)."""
    pred_mask, ref_mask = _mask_pair(pred_mask, ref_mask)
    spacing = np.ones(pred_mask.ndim)
    return _score_pair(pred_mask, ref_mask, spacing, ("transunet",), DEFAULT_TOLERANCE_MM, 0.0)["transunet"]


def evaluate_case(pred: np.ndarray, ref: np.ndarray, spacing, label_set: "LabelSet | str" = "synapse8",
                  protocol: str = "standard", tolerance_mm: "float | dict" = DEFAULT_TOLERANCE_MM) -> dict:
    """Score every organ of one case.

    Args:
        pred: predicted label map in the classes of ``label_set`` (values 0 .. num_classes - 1), array axis order.
        ref: reference label map, same shape and classes.
        spacing: voxel size in mm per array axis (the reference NIfTI's spacing).
        label_set: ``synapse8``, ``btcv13`` or a :class:`~medseg.labels.LabelSet`.
        protocol: ``standard``, ``transunet`` or ``both``.
        tolerance_mm: NSD tolerance in mm (standard protocol): one number for every organ, or ``{organ: mm}``
            (organs not named get :data:`DEFAULT_TOLERANCE_MM`).

    Returns:
        ``{protocol_name: {organ_key: record}}`` for each protocol run, organs in class order. A standard record
        holds ``status`` and :data:`STANDARD_METRICS` (None when not scored); a TransUNet record holds ``status``,
        ``dice`` and ``hd95_voxels``.

    Raises:
        InputError: shapes differ or a map holds values outside the label set.
        ConfigError: bad spacing, protocol or tolerance.
    """
    label_set = get_label_set(label_set)
    protocols = protocols_of(protocol)
    tolerances = organ_tolerance_map(tolerance_mm, label_set)
    pred = to_class_map(pred, label_set, "prediction")
    ref = to_class_map(ref, label_set, "reference")
    if pred.shape != ref.shape:
        raise InputError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    spacing = check_spacing(spacing, ref.ndim)
    worst_case_mm = image_diagonal_mm(ref.shape, spacing)

    # 1. Crop both maps to the box holding all their foreground (cheap axis projections).
    # 2. One pass over each cropped map finds the bounding box of every class (None for an absent class).
    num_organs = len(label_set.organs)
    pred_box, ref_box = _bounding_box(pred), _bounding_box(ref)
    if pred_box is not None or ref_box is not None:
        case_box = _union_box(pred_box, ref_box, ref.shape)
        pred, ref = pred[case_box], ref[case_box]
    pred_boxes = ndimage.find_objects(pred, max_label=num_organs)
    ref_boxes = ndimage.find_objects(ref, max_label=num_organs)

    results: dict[str, dict] = {name: {} for name in protocols}
    for index, organ in enumerate(label_set.organs):
        class_value = index + 1
        pred_box, ref_box = pred_boxes[index], ref_boxes[index]
        if pred_box is None and ref_box is None:
            records = _score_pair(np.zeros(0, bool), np.zeros(0, bool), spacing, protocols, tolerances[organ],
                                  worst_case_mm)
        else:
            box = _union_box(pred_box, ref_box, ref.shape)
            records = _score_pair(pred[box] == class_value, ref[box] == class_value, spacing, protocols,
                                  tolerances[organ], worst_case_mm)
        for name in protocols:
            results[name][organ] = records[name]
    return results


def _mask_pair(pred_mask, ref_mask) -> tuple[np.ndarray, np.ndarray]:
    pred_mask = np.asarray(pred_mask, dtype=bool)
    ref_mask = np.asarray(ref_mask, dtype=bool)
    if pred_mask.shape != ref_mask.shape:
        raise InputError(f"prediction shape {pred_mask.shape} differs from reference shape {ref_mask.shape}")
    return pred_mask, ref_mask


def _bounding_box(array: np.ndarray) -> "tuple[slice, ...] | None":
    """Smallest box holding every non-zero voxel of ``array`` (None when there is none), from axis projections."""
    box = []
    for axis in range(array.ndim):
        other_axes = tuple(a for a in range(array.ndim) if a != axis)
        present = np.flatnonzero(np.any(array, axis=other_axes))
        if present.size == 0:
            return None
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def _union_box(box_a, box_b, shape) -> tuple[slice, ...]:
    """Smallest box holding both boxes (either may be None), grown by the crop margin and clipped to ``shape``."""
    boxes = [b for b in (box_a, box_b) if b is not None]
    union = []
    for axis, size in enumerate(shape):
        start = min(b[axis].start for b in boxes) - _CROP_MARGIN
        stop = max(b[axis].stop for b in boxes) + _CROP_MARGIN
        union.append(slice(max(start, 0), min(stop, size)))
    return tuple(union)


def _score_pair(pred: np.ndarray, ref: np.ndarray, spacing: np.ndarray, protocols, tolerance_mm: float,
                worst_case_mm: float) -> dict:
    """Both protocols' records for one binary mask pair (already cropped: the crop must hold both masks whole)."""
    n_pred = int(np.count_nonzero(pred))
    n_ref = int(np.count_nonzero(ref))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    records = {}

    both_present = n_pred > 0 and n_ref > 0
    if both_present:
        intersection = int(np.count_nonzero(pred & ref))
        dice = 2.0 * intersection / float(n_pred + n_ref)
        # Boundary voxels as coordinates (voxel indices); a voxel on both boundaries is at distance 0 both ways,
        # so only the others need a nearest-neighbour query.
        pred_edge, ref_edge = boundary(pred), boundary(ref)
        n_shared = int(np.count_nonzero(pred_edge & ref_edge))
        pred_all = np.argwhere(pred_edge).astype(np.float64)
        ref_all = np.argwhere(ref_edge).astype(np.float64)
        pred_only = np.argwhere(pred_edge & ~ref_edge).astype(np.float64)
        ref_only = np.argwhere(ref_edge & ~pred_edge).astype(np.float64)

    if "standard" in protocols:
        record = {"status": _status(n_pred, n_ref)}
        if both_present:
            d_pred_ref = _directed_distances(pred_only * spacing, n_shared, ref_all * spacing)
            d_ref_pred = _directed_distances(ref_only * spacing, n_shared, pred_all * spacing)
            n_boundary = d_pred_ref.size + d_ref_pred.size
            record.update(
                dice=dice,
                hd95_mm=float(max(np.percentile(d_pred_ref, 95), np.percentile(d_ref_pred, 95))),
                assd_mm=float((d_pred_ref.sum() + d_ref_pred.sum()) / n_boundary),
                nsd=float((np.count_nonzero(d_pred_ref <= tolerance_mm)
                           + np.count_nonzero(d_ref_pred <= tolerance_mm)) / n_boundary),
            )
        elif n_pred == 0 and n_ref == 0:
            record.update(dice=None, hd95_mm=None, assd_mm=None, nsd=None)
        else:
            record.update(dice=0.0, hd95_mm=worst_case_mm, assd_mm=worst_case_mm, nsd=0.0)
        record.update(pred_volume_ml=n_pred * voxel_ml, ref_volume_ml=n_ref * voxel_ml)
        records["standard"] = record

    if "transunet" in protocols:
        record = {"status": _status(n_pred, n_ref)}
        if both_present:
            d_pred_ref = _directed_distances(pred_only, n_shared, ref_all)
            d_ref_pred = _directed_distances(ref_only, n_shared, pred_all)
            pooled = np.concatenate([d_pred_ref, d_ref_pred])
            record.update(dice=dice, hd95_voxels=float(np.percentile(pooled, 95)))
        elif n_pred > 0:
            record.update(dice=1.0, hd95_voxels=0.0)
        else:
            record.update(dice=0.0, hd95_voxels=0.0)
        records["transunet"] = record
    return records


def _status(n_pred: int, n_ref: int) -> str:
    if n_pred > 0 and n_ref > 0:
        return SCORED
    if n_pred == 0 and n_ref == 0:
        return BOTH_EMPTY
    return PRED_EMPTY if n_pred == 0 else REF_EMPTY
