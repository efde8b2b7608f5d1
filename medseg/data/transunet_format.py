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
from collections import defaultdict
from pathlib import Path

import numpy as np

from medseg.data.slice_cache import CACHE_FORMAT, MANIFEST, load_case_arrays, load_manifest, write_case_folder
from medseg.data.transforms import organ_slice_indices
from medseg.data.transunet_h5 import as_labels, read_volume_h5
from medseg.errors import InputError
from medseg.labels import get_label_set
from medseg.io import atomic_path, read_json, write_json, write_text
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
    """Read a TransUNet training slice: ``(image float32 (H, W), label uint8 (H, W))``."""
    try:
        with np.load(path) as data:
            return data["image"].astype(np.float32), as_labels(data["label"], path)
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise InputError(f"{path}: not a readable TransUNet slice file ({type(exc).__name__}: {exc})") from None


def export_transunet(prepared_dir, out_dir, drop_empty: bool = False) -> dict:
    """Write a medseg slice cache in the TransUNet layout.

    Training-split cases become ``train_npz`` slices (organ-free slices dropped when ``drop_empty``), test-split
    cases ``test_vol_h5`` volumes; the slice lists and ``medseg_manifest.json`` are written too.

    Returns:
        ``{"train_slices": n, "test_volumes": m}``.
    """
    manifest = load_manifest(prepared_dir)
    out_dir = Path(out_dir)
    train_names, test_ids = [], []
    for entry in manifest["cases"]:
        image, label = load_case_arrays(prepared_dir, entry["case_id"], mmap=True)
        if entry["split"] == "train" and label is not None:
            keep = entry["organ_slices"] if drop_empty else range(image.shape[0])
            for k in keep:
                name = f"{entry['case_id']}_slice{k:03d}"
                write_slice_npz(out_dir / TRAIN_DIR / f"{name}.npz", image[k], label[k])
                train_names.append(name)
        else:
            write_volume_h5(out_dir / TEST_DIR / f"{entry['case_id']}.npy.h5", np.asarray(image),
                            None if label is None else np.asarray(label))
            test_ids.append(entry["case_id"])
    lists = out_dir / "lists" / "lists_Synapse"
    write_text(lists / "train.txt", "".join(f"{n}\n" for n in train_names))
    write_text(lists / "test_vol.txt", "".join(f"{c}\n" for c in test_ids))
    write_json(out_dir / GEOMETRY_FILE, manifest)
    return {"train_slices": len(train_names), "test_volumes": len(test_ids)}


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

    entries = []
    for case_id, items in sorted(slices.items()):
        items.sort()
        pairs = [read_slice_npz(p) for _, p in items]
        image = np.stack([p[0] for p in pairs])
        label = np.stack([p[1] for p in pairs])
        entries.append(_write_imported_case(out_dir, case_id, "train", image, label, geometry.get(case_id),
                                            [k for k, _ in items]))
    test_dir = transunet_dir / TEST_DIR
    for path in sorted(test_dir.glob("*.npy.h5")) if test_dir.is_dir() else []:
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
