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

from medseg.dicom import ORGAN_CODES
from medseg.errors import ConfigError
from medseg.io import Volume, write_json, write_text, write_volume
from medseg.visualize import SOFT_TISSUE_WINDOW, write_case_preview

#: Population standard deviation (ddof=0) everywhere in medseg's statistics.
STD_DDOF = 0


def check_organs(organs: "list[str] | None", label_set) -> "list[str] | None":
    """``organs`` (a request's ``organs``: names, or None for all) checked against ``label_set``.

    Raises:
        ConfigError: ``--organs: 'lung' is not an organ of label set synapse8 (choose from ...)``.
    """
    if organs is None:
        return None
    unknown = [o for o in organs if o not in label_set.organs]
    if unknown:
        raise ConfigError(f"--organs: {unknown[0]!r} is not an organ of label set {label_set.name} "
                          f"(choose from {', '.join(label_set.organs)})")
    return list(organs)


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


def write_preview(path: "str | Path", image: Volume, labels: Volume, label_set, *, title: str = "",
                  window: tuple[float, float] = SOFT_TISSUE_WINDOW, hu: bool = True) -> Path:
    """A PNG with axial, coronal and sagittal views (:func:`medseg.visualize.write_case_preview`)."""
    return write_case_preview(path, image, labels, label_set, title=title, window=window, hu=hu)
