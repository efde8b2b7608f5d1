"""Interoperability with the TransUNet preprocessed Synapse layout.

The reference TransUNet code reads::

    train_npz/caseXXXX_sliceYYY.npz   keys "image" (H, W) float32 in [0, 1], "label" (H, W) class values
    test_vol_h5/caseXXXX.npy.h5       datasets "image" and "label", shape (D, H, W)
    lists/lists_Synapse/train.txt     slice names (no suffix), one per line; test_vol.txt the test case ids

That layout stores no spacing or affine. medseg writes a ``medseg_manifest.json`` beside it (the slice cache's
manifest) so a round trip keeps each case's geometry; a folder without it gets unit spacing and an identity affine.
Slice ``YYY`` of a case is ``volume[:, :, YYY]`` in medseg's oriented slice order.
"""
from __future__ import annotations

import re
import zipfile
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np

from medseg.data.slice_cache import CACHE_FORMAT, MANIFEST, load_case_arrays, load_manifest, write_case_folder
from medseg.data.transforms import organ_slice_indices
from medseg.data.transunet_h5 import as_labels, check_scaled_image, read_volume_h5
from medseg.errors import InputError, OutputError
from medseg.labels import get_label_set
from medseg.io import atomic_path, read_json, write_json, write_text
from medseg.ownership import files_under, folder_lock, read_owned, remove_owned, write_owned
from medseg.preprocessing import PreprocessingParams

TRAIN_DIR, TEST_DIR = "train_npz", "test_vol_h5"
GEOMETRY_FILE = "medseg_manifest.json"
_SLICE_NAME = re.compile(r"^(case\d+)_slice(\d+)\.npz$")


def is_transunet_layout(folder) -> bool:
    """True when ``folder`` holds a ``train_npz/`` or ``test_vol_h5/`` folder."""
    folder = Path(folder)
    return (folder / TRAIN_DIR).is_dir() or (folder / TEST_DIR).is_dir()


def write_slice_npz(path, image: np.ndarray, label: np.ndarray) -> None:
    """Write one training slice (image float32 (H, W), label (H, W)) as TransUNet's ``.npz``, atomically."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, image=image.astype(np.float32), label=label.astype(np.float32))


def write_volume_h5(path, image: np.ndarray, label: "np.ndarray | None") -> None:
    """Write one test volume (slice-first ``(D, H, W)`` stacks) as TransUNet's ``.npy.h5``, atomically."""
    import h5py

    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("image", data=image.astype(np.float32))
            if label is not None:
                f.create_dataset("label", data=label.astype(np.float32))


def read_slice_npz(path) -> tuple[np.ndarray, np.ndarray]:
    """Read a TransUNet training slice: ``(image float32 (H, W), label uint8 (H, W))``.

    Raises:
        InputError: the file is unreadable or corrupt, lacks ``image``/``label``, is not 2D, the two shapes differ,
            the image is outside [0, 1] (TransUNet's slices hold windowed, scaled CT) or the label is not classes.
    """
    try:
        with np.load(path) as data:
            image, label = data["image"].astype(np.float32), as_labels(data["label"], path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise InputError(f"{path}: not a readable TransUNet slice file ({type(exc).__name__}: {exc})") from None
    if image.ndim != 2 or image.shape != label.shape:
        raise InputError(f"{path}: expected a 2D image and label of one shape, got {image.shape} and {label.shape}")
    check_scaled_image(image, path)
    return image, label


def _check_classes(label: "np.ndarray | None", label_set, path) -> None:
    """InputError naming ``path`` when ``label`` holds a value that is not a class of ``label_set``."""
    if label is None or not label.size:
        return
    highest = int(label.max())
    if highest >= label_set.num_classes:
        raise InputError(f"{path}: label value {highest} is not a class of label set {label_set.name} "
                         f"(0..{label_set.num_classes - 1})")


def _stack_case(items: list, label_set) -> tuple[np.ndarray, np.ndarray]:
    """One case's slice files (``[(index, path)]`` in slice order) as ``(image, label)`` stacks ``(D, H, W)``.

    Raises:
        InputError: a slice is unreadable, holds a label outside ``label_set``, or has another size than the
            case's first slice.
    """
    images, labels = [], []
    for _, path in items:
        image, label = read_slice_npz(path)
        _check_classes(label, label_set, path)
        if images and image.shape != images[0].shape:
            raise InputError(f"{path}: slice size {image.shape} differs from the case's first slice "
                             f"{items[0][1].name} {images[0].shape}")
        images.append(image)
        labels.append(label)
    return np.stack(images), np.stack(labels)


def export_transunet(prepared_dir, out_dir, drop_empty: bool = False) -> dict:
    """Write a medseg slice cache in the TransUNet layout.

    Training-split cases become ``train_npz`` slices (organ-free slices dropped when ``drop_empty``), test-split
    cases ``test_vol_h5`` volumes; the slice lists and ``medseg_manifest.json`` are written too.

    The export folder is medseg's only as far as its ownership record (:mod:`medseg.ownership`) says: a layout file
    the record does not list (another tool's export, a user's file) refuses the export before anything is written;
    files of a previous medseg export that the new one does not write again (another split) are removed, so the
    folder never mixes two exports. One writer at a time (a lock).

    Returns:
        ``{"train_slices": n, "test_volumes": m}``.

    Raises:
        OutputError: the folder holds layout files medseg did not write, or another process is exporting there.
    """
    manifest = load_manifest(prepared_dir)
    out_dir = Path(out_dir)
    plan = _export_plan(manifest, drop_empty)
    planned = ([f"{TRAIN_DIR}/{n}.npz" for n in plan["train"]] + [f"{TEST_DIR}/{c}.npy.h5" for c in plan["test"]]
               + [LISTS + "/train.txt", LISTS + "/test_vol.txt", GEOMETRY_FILE])
    with folder_lock(out_dir, "export folder"):
        previous = _check_export_folder(out_dir)
        write_owned(out_dir, previous | set(planned), "transunet-export")  # an interrupted export stays medseg's
        train_names, test_ids = [], []
        for entry in manifest["cases"]:
            image, label = load_case_arrays(prepared_dir, entry["case_id"], mmap=True)
            if entry["case_id"] in plan["train_cases"]:
                for k in plan["train_cases"][entry["case_id"]]:
                    name = f"{entry['case_id']}_slice{k:03d}"
                    write_slice_npz(out_dir / TRAIN_DIR / f"{name}.npz", image[k], label[k])
                    train_names.append(name)
            else:
                write_volume_h5(out_dir / TEST_DIR / f"{entry['case_id']}.npy.h5", np.asarray(image),
                                None if label is None else np.asarray(label))
                test_ids.append(entry["case_id"])
        write_text(out_dir / LISTS / "train.txt", "".join(f"{n}\n" for n in train_names))
        write_text(out_dir / LISTS / "test_vol.txt", "".join(f"{c}\n" for c in test_ids))
        write_json(out_dir / GEOMETRY_FILE, manifest)
        remove_owned(out_dir, previous - set(planned))
        write_owned(out_dir, planned, "transunet-export")
    return {"train_slices": len(train_names), "test_volumes": len(test_ids)}


LISTS = "lists/lists_Synapse"


def _export_plan(manifest: dict, drop_empty: bool) -> dict:
    """Which slices and volumes an export writes: ``{"train_cases": {case: [slice indices]}, "train": [slice
    names], "test": [case ids]}``."""
    train_cases, test = {}, []
    for entry in manifest["cases"]:
        if entry["split"] == "train" and entry.get("has_label", True) is not False:
            train_cases[entry["case_id"]] = (list(entry["organ_slices"]) if drop_empty
                                             else list(range(entry["num_slices"])))
        else:
            test.append(entry["case_id"])
    train = [f"{case}_slice{k:03d}" for case, indices in train_cases.items() for k in indices]
    return {"train_cases": train_cases, "train": train, "test": test}


def _check_export_folder(out_dir: Path) -> set:
    """The files of a previous medseg export in ``out_dir`` (its ownership record); OutputError when the folder
    holds TransUNet-layout files that record does not list."""
    owned = read_owned(out_dir) or set()
    present = files_under(out_dir, [TRAIN_DIR, TEST_DIR, "lists", GEOMETRY_FILE])
    foreign = [name for name in present if name not in owned]
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise OutputError(f"{out_dir / foreign[0]}{more}: not written by a medseg export (no ownership record lists "
                          "it); export into an empty folder, or move those files away")
    return owned


def import_transunet(transunet_dir, out_dir, labels: str = "synapse8") -> dict:
    """Convert a TransUNet-layout folder into a medseg slice cache.

    Training slices of a case are stacked in slice order (a case with dropped slices keeps only those present,
    and its manifest entry says which original indices they were). Without a ``medseg_manifest.json``, geometry
    is unknown: unit spacing and an identity affine are recorded and ``geometry_known`` is False.

    Returns:
        The written manifest.
    """

    transunet_dir, out_dir = Path(transunet_dir), Path(out_dir)
    if not is_transunet_layout(transunet_dir):
        raise InputError(f"{transunet_dir}: no {TRAIN_DIR}/ or {TEST_DIR}/ folder (not a TransUNet layout)")
    geometry = {}
    geometry_path = transunet_dir / GEOMETRY_FILE
    known = geometry_path.exists()
    if known:
        source_manifest = read_json(geometry_path)
        geometry = {e["case_id"]: e for e in source_manifest["cases"]}
        header = {k: v for k, v in source_manifest.items() if k not in ("cases", "skipped")}
    else:
        header = {"format": CACHE_FORMAT, "version": 1, "label_set": get_label_set(labels).to_dict(),
                  "preprocessing": PreprocessingParams().to_dict(), "split_mode": "transunet-layout",
                  "split_seed": None}

    slices: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    train_dir = transunet_dir / TRAIN_DIR
    for path in sorted(train_dir.glob("*.npz")) if train_dir.is_dir() else []:
        match = _SLICE_NAME.match(path.name)
        if not match:
            raise InputError(f"{path}: slice file name is not caseXXXX_sliceYYY.npz")
        slices[match.group(1)].append((int(match.group(2)), path))

    # Every file is read and checked before anything is written, so a bad file leaves no half-imported cache.
    label_set = get_label_set(header["label_set"])
    test_dir = transunet_dir / TEST_DIR
    volumes = sorted(test_dir.glob("*.npy.h5")) if test_dir.is_dir() else []
    for items in slices.values():
        items.sort()
        _stack_case(items, label_set)
    for path in volumes:
        _check_classes(read_volume_h5(path)[1], label_set, path)

    entries = []
    for case_id, items in sorted(slices.items()):
        image, label = _stack_case(items, label_set)
        entries.append(_write_imported_case(out_dir, case_id, "train", image, label, geometry.get(case_id),
                                            [k for k, _ in items]))
    for path in volumes:
        case_id = path.name[: -len(".npy.h5")]
        image, label = read_volume_h5(path)
        entries.append(_write_imported_case(out_dir, case_id, "test", image, label, geometry.get(case_id),
                                            list(range(image.shape[0]))))
    if not entries:
        raise InputError(f"{transunet_dir}: no slices or volumes found")
    manifest = dict(header)
    manifest["geometry_known"] = known
    manifest["cases"] = sorted(entries, key=lambda e: e["case_id"])
    manifest["skipped"] = []
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def _write_imported_case(out_dir: Path, case_id: str, split: str, image: np.ndarray, label: "np.ndarray | None",
                         known: "dict | None", slice_indices: list[int]) -> dict:
    if known is not None:
        entry = dict(known)
        entry["split"] = split
    else:
        depth, rows, cols = image.shape
        entry = {
            "case_id": case_id, "split": split, "source_image": None, "source_label": None,
            "source_shape": [rows, cols, depth], "source_affine": np.eye(4).tolist(),
            "oriented_shape": [rows, cols, depth], "oriented_affine": np.eye(4).tolist(),
            "spacing": [1.0, 1.0, 1.0], "num_slices": depth, "has_label": label is not None,
        }
    entry["organ_slices"] = [] if label is None else organ_slice_indices(label)
    entry["num_slices"] = int(image.shape[0])
    if slice_indices != list(range(image.shape[0])):
        entry["slice_indices"] = slice_indices
    return write_case_folder(out_dir, case_id, image, label, entry)
