"""What a prediction folder holds besides the label NIfTI: a label map, viewer tables, per-organ masks, previews and
statistics, so that 3D Slicer, ITK-SNAP, a PACS viewer or a spreadsheet reads the result without guessing.

Files (``NAME`` is the case's output stem):

* ``labels.json`` in every output folder: label value -> organ key, display name, RGB colour and SNOMED CT code,
  plus the label set's name (the same name is in each label NIfTI's header: ``intent_name`` and ``descrip``).
* ``labels.ctbl`` (3D Slicer colour table) and ``labels_itksnap.txt`` (ITK-SNAP label description) with
  ``--viewer-tables``.
* ``NAME/<organ>.nii.gz`` binary masks with ``--split-masks`` (TotalSegmentator's layout).
* ``NAME_preview.png`` with ``--preview``: axial, coronal and sagittal views through the organs.
* ``NAME_statistics.json`` per case and ``statistics.csv`` for the whole folder with ``--statistics``: voxels,
  volume (ml) and mean / std HU (population std, ddof=0) of the CT inside each organ.

Arrays follow :mod:`medseg.io`: ``[i, j, k]`` in the file's voxel axes with a RAS+ affine in mm.
"""
from __future__ import annotations

import csv
import io as _io
from pathlib import Path

import numpy as np

from medseg.data.orientation import reorient
from medseg.dicom import ORGAN_CODES
from medseg.errors import ConfigError
from medseg.io import Volume, atomic_path, write_json, write_text, write_volume

#: Output types of ``medseg predict --output-type``.
OUTPUT_TYPES = ("nifti", "dicom-seg", "rtstruct")
#: File-name endings of each output type after the case stem.
OUTPUT_SUFFIXES = {"nifti": ".nii.gz", "dicom-seg": "_seg.dcm", "rtstruct": "_rtstruct.dcm"}
#: Soft-tissue window of the previews (HU): level 40, width 400.
SOFT_TISSUE_WINDOW = (-160.0, 240.0)
#: Population standard deviation (ddof=0) everywhere in medseg's statistics.
STD_DDOF = 0


def parse_output_types(values) -> list[str]:
    """``["nifti,dicom-seg", "rtstruct"]`` -> ``["nifti", "dicom-seg", "rtstruct"]`` (order kept, checked)."""
    types: list[str] = []
    for value in values or ["nifti"]:
        for item in str(value).split(","):
            item = item.strip().lower()
            if not item:
                continue
            if item not in OUTPUT_TYPES:
                raise ConfigError(f"--output-type: unknown type {item!r} (choose from {', '.join(OUTPUT_TYPES)})")
            if item not in types:
                types.append(item)
    return types or ["nifti"]


def parse_organs(text: "str | None", label_set) -> "list[str] | None":
    """``"liver,spleen"`` -> ``["liver", "spleen"]`` checked against ``label_set`` (None: all organs)."""
    if not text:
        return None
    organs = [o.strip() for o in text.split(",") if o.strip()]
    unknown = [o for o in organs if o not in label_set.organs]
    if unknown:
        raise ConfigError(f"--organs: {unknown[0]!r} is not an organ of label set {label_set.name} "
                          f"(choose from {', '.join(label_set.organs)})")
    return organs


def kept_classes(label_set, organs: "list[str] | None") -> list[int]:
    """Class values of ``organs`` (all foreground classes when None), in class order."""
    return [index for index, organ in enumerate(label_set.organs, start=1) if organs is None or organ in organs]


def keep_organs(labels: np.ndarray, label_set, organs: "list[str] | None") -> np.ndarray:
    """``labels`` with every class outside ``organs`` set to background (values of kept organs unchanged)."""
    if organs is None:
        return labels
    keep = np.zeros(label_set.num_classes, dtype=bool)
    keep[kept_classes(label_set, organs)] = True
    return np.where(keep[labels], labels, 0).astype(labels.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Label map and viewer tables


def label_map(label_set, organs: "list[str] | None" = None) -> dict:
    """The content of ``labels.json``: ``{"label_set", "labels": {value: {key, name, colour, snomed_ct}}}``."""
    entries = {"0": {"key": "background", "name": "Background", "colour": [0, 0, 0], "snomed_ct": None}}
    for index in kept_classes(label_set, organs):
        organ = label_set.organs[index - 1]
        code = ORGAN_CODES.get(organ)
        entries[str(index)] = {
            "key": organ, "name": label_set.display_names[index - 1], "colour": list(label_set.colours[index - 1]),
            "snomed_ct": {"code": code[0], "meaning": code[1]} if code else None,
        }
    return {"label_set": label_set.name, "num_classes": label_set.num_classes, "labels": entries,
            "organs_kept": organs or list(label_set.organs)}


def write_label_map(folder: "str | Path", label_set, organs: "list[str] | None" = None) -> Path:
    """Write ``folder/labels.json`` (see :func:`label_map`)."""
    return write_json(Path(folder) / "labels.json", label_map(label_set, organs))


def slicer_colour_table(label_set, organs: "list[str] | None" = None) -> str:
    """A 3D Slicer colour table (``.ctbl``): ``value name R G B A`` per line."""
    lines = [f"# medseg label set {label_set.name}", "# value name R G B A", "0 Background 0 0 0 0"]
    for index in kept_classes(label_set, organs):
        r, g, b = label_set.colours[index - 1]
        lines.append(f"{index} {label_set.organs[index - 1]} {r} {g} {b} 255")
    return "\n".join(lines) + "\n"


def itksnap_label_file(label_set, organs: "list[str] | None" = None) -> str:
    """An ITK-SNAP label description file: ``IDX R G B A VIS MSH "LABEL"`` per line (A is opacity 0..1)."""
    lines = [f"# medseg label set {label_set.name}", "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
             '    0     0    0    0     0  0  0    "Clear Label"']
    for index in kept_classes(label_set, organs):
        r, g, b = label_set.colours[index - 1]
        lines.append(f"{index:5d} {r:5d}{g:5d}{b:5d}     1  1  1    \"{label_set.display_names[index - 1]}\"")
    return "\n".join(lines) + "\n"


def write_viewer_tables(folder: "str | Path", label_set, organs: "list[str] | None" = None) -> list[Path]:
    """Write ``labels.ctbl`` (3D Slicer) and ``labels_itksnap.txt`` (ITK-SNAP) into ``folder``."""
    folder = Path(folder)
    return [write_text(folder / "labels.ctbl", slicer_colour_table(label_set, organs)),
            write_text(folder / "labels_itksnap.txt", itksnap_label_file(label_set, organs))]


def write_labels_nifti(path: "str | Path", labels: Volume, label_set, provenance: "dict | None" = None) -> Path:
    """Write a uint8 label NIfTI whose header names the label set (intent NIFTI_INTENT_LABEL, intent_name, descrip);
    ``provenance`` (what made it) goes into a header extension (:func:`medseg.io.read_provenance`)."""
    return write_volume(path, labels, dtype=np.uint8, intent=("label", label_set.name[:15]),
                        descrip=f"medseg labels {label_set.name}; see labels.json", provenance=provenance)


def write_split_masks(folder: "str | Path", labels: Volume, label_set, organs: "list[str] | None" = None) -> list[Path]:
    """One binary uint8 NIfTI per organ, ``folder/<organ>.nii.gz`` (empty organs give an all-zero mask)."""
    folder = Path(folder)
    paths = []
    for index in kept_classes(label_set, organs):
        mask = Volume((np.asarray(labels.array) == index).astype(np.uint8), labels.affine)
        paths.append(write_volume(folder / f"{label_set.organs[index - 1]}.nii.gz", mask, dtype=np.uint8,
                                  descrip=f"medseg mask {label_set.organs[index - 1]} ({label_set.name})"))
    return paths


# ----------------------------------------------------------------------------------------------------------------
# Statistics


def organ_statistics(labels: Volume, image: "Volume | None", label_set, hu: bool = True) -> dict:
    """Per-organ voxel count, volume (ml) and mean / std of the image inside each organ.

    Args:
        labels: class values on the image's grid.
        image: the CT on the same grid (HU), or None.
        label_set: the classes' organs.
        hu: the image holds HU (False for h5 input in [0, 1]: keys ``mean_intensity`` / ``std_intensity``).

    Returns:
        ``{"voxel_volume_ml": v, "std_convention": "population (ddof=0)", "organs": {organ: {"voxels": n,
        "volume_ml": ml, "mean_hu": x, "std_hu": s}}}``; the voxel volume is ``|det(affine[:3, :3])|`` mm^3 / 1000;
        the mean and std are None for an empty organ or without an image.
    """
    voxel_ml = abs(float(np.linalg.det(np.asarray(labels.affine)[:3, :3]))) / 1000.0
    num_classes = label_set.num_classes
    counts = np.zeros(num_classes, dtype=np.int64)
    sums = np.zeros(num_classes, dtype=np.float64)
    squares = np.zeros(num_classes, dtype=np.float64)
    depth = labels.array.shape[-1]
    for start in range(0, depth, 32):  # in chunks of slices, so a long volume is never copied as float64
        chunk = np.asarray(labels.array[..., start:start + 32]).reshape(-1).astype(np.int64)
        counts += np.bincount(chunk, minlength=num_classes)[:num_classes]
        if image is not None:
            values = np.asarray(image.array[..., start:start + 32], dtype=np.float64).reshape(-1)
            sums += np.bincount(chunk, weights=values, minlength=num_classes)[:num_classes]
            squares += np.bincount(chunk, weights=values * values, minlength=num_classes)[:num_classes]
    mean_key, std_key = ("mean_hu", "std_hu") if hu else ("mean_intensity", "std_intensity")
    organs = {}
    for index, organ in enumerate(label_set.organs, start=1):
        count = int(counts[index])
        mean = std = None
        if image is not None and count:
            mean_value = sums[index] / count
            std_value = np.sqrt(max(squares[index] / count - mean_value ** 2, 0.0))
            mean, std = round(float(mean_value), 3), round(float(std_value), 3)
        organs[organ] = {"voxels": count, "volume_ml": round(count * voxel_ml, 4), mean_key: mean, std_key: std}
    return {"voxel_volume_ml": voxel_ml, "std_convention": "population (ddof=0)", "organs": organs}


STATISTICS_COLUMNS = ("case", "organ", "voxels", "volume_ml", "mean_hu", "std_hu")


def write_statistics_csv(path: "str | Path", per_case: dict[str, dict], organs: "list[str] | None" = None) -> Path:
    """One CSV row per case and organ from ``{case: organ_statistics(...)}`` (cases sorted by name).

    h5 inputs (no HU) fill the ``mean_hu`` / ``std_hu`` columns from ``mean_intensity`` / ``std_intensity``.
    """
    buffer = _io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(STATISTICS_COLUMNS)
    for case in sorted(per_case):
        for organ, row in per_case[case]["organs"].items():
            if organs is not None and organ not in organs:
                continue
            mean = row.get("mean_hu", row.get("mean_intensity"))
            std = row.get("std_hu", row.get("std_intensity"))
            writer.writerow([case, organ, row["voxels"], row["volume_ml"], "" if mean is None else mean,
                             "" if std is None else std])
    return write_text(path, buffer.getvalue())


# ----------------------------------------------------------------------------------------------------------------
# Preview


def preview_views(image: Volume, labels: Volume) -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    """Axial, coronal and sagittal slices through the centre of the labelled organs.

    The volume is first brought into medseg's slice orientation (P, L, S; see :mod:`medseg.data.orientation`),
    so each view is shown as a radiologist expects: the patient's right on the image's left, anterior (axial) or
    superior (coronal, sagittal) at the top.

    Returns:
        ``[(name, ct_2d, labels_2d, aspect), ...]`` where ``aspect`` is the row spacing over the column spacing
        (``imshow(aspect=...)`` gives square millimetres).
    """
    ct, affine = reorient(np.asarray(image.array), image.affine)
    lab, _ = reorient(np.asarray(labels.array), labels.affine)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))  # (P, L, S) order
    foreground = np.argwhere(lab > 0)
    centre = (foreground.mean(axis=0) if len(foreground) else np.asarray(lab.shape) / 2).astype(int)
    i, j, k = (int(np.clip(c, 0, s - 1)) for c, s in zip(centre, lab.shape))
    return [
        ("axial", ct[:, :, k], lab[:, :, k], spacing[0] / spacing[1]),
        ("coronal", ct[i, :, ::-1].T, lab[i, :, ::-1].T, spacing[2] / spacing[1]),
        ("sagittal", ct[:, j, ::-1].T, lab[:, j, ::-1].T, spacing[2] / spacing[0]),
    ]


def write_preview(path: "str | Path", image: Volume, labels: Volume, label_set, *, title: str = "",
                  window: tuple[float, float] = SOFT_TISSUE_WINDOW, hu: bool = True) -> Path:
    """A PNG with the three views of :func:`preview_views`: CT in a soft-tissue window, organs overlaid, a legend.

    Args:
        window: display range in HU (default level 40, width 400); ignored when ``hu`` is False (image in [0, 1]).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    views = preview_views(image, labels)
    colours = np.zeros((label_set.num_classes, 4))
    colours[1:, :3] = np.asarray(label_set.colours, dtype=float) / 255.0
    colours[1:, 3] = 0.45
    cmap = ListedColormap(colours)
    low, high = window if hu else (0.0, 1.0)
    widths = [view[1].shape[1] for view in views]
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.8), gridspec_kw={"width_ratios": widths})
    for axis, (name, ct, lab, aspect) in zip(axes, views):
        axis.imshow(ct, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
        axis.imshow(lab, cmap=cmap, vmin=0, vmax=label_set.num_classes - 1, aspect=aspect, interpolation="nearest")
        axis.set_title(name)
        axis.set_axis_off()
    present = sorted(int(v) for v in np.unique(np.asarray(labels.array)) if v > 0)
    handles = [Patch(facecolor=colours[v, :3], label=label_set.display_names[v - 1]) for v in present]
    if handles:
        figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), frameon=False, fontsize=9)
    window_text = f"window {low:g}..{high:g} HU" if hu else "intensity 0..1"
    figure.suptitle(f"{title}  ({window_text}; patient right on the left)".strip(), fontsize=10)
    figure.tight_layout(rect=(0, 0.08 if handles else 0, 1, 0.95))
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    plt.close(figure)
    return path
