"""The 2D slice cache written by ``medseg prepare``: every volume decoded once, its slices stored ready to train.

Layout (see docs/architecture.md)::

    OUT/manifest.json              format, label set, preprocessing, split, one entry per case, skipped cases
    OUT/cases/<case_id>/image.npy  float32 (D, H, W) in [0, 1], slice-first, oriented (rows P, columns L)
    OUT/cases/<case_id>/label.npy  uint8 (D, H, W) classes of the label set (labelled cases only)
    OUT/cases/<case_id>/case.json  the case's manifest entry

A case folder is written under a temporary name and renamed when complete, so an interrupted run leaves no
half-written case, and re-running skips the cases already there.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg import __version__
from medseg.data.cohort import Case, discover_cases, make_split
from medseg.data.transforms import IMAGE, LABEL, PreprocessingParams, volume_preprocessing
from medseg.errors import ConfigError, InputError, MedsegError
from medseg.io import _current_umask, read_json, spacing_from_affine, write_json
from medseg.labels import LabelSet, get_label_set

log = logging.getLogger(__name__)

CACHE_FORMAT = "medseg-slices"
CACHE_VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class PrepareSummary:
    """What a prepare run did: case ids written, skipped as already done, and failed with their message."""

    out_dir: Path
    written: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def preprocess_case(case: Case, label_set: LabelSet, params: PreprocessingParams) -> dict:
    """Run the volume chain on one case.

    Returns:
        The chain's output dict: ``image`` float32 ``(D, H, W)``, ``label`` uint8 ``(D, H, W)`` when the case has
        one, ``organ_slices``, source and oriented geometry.
    """
    data = {IMAGE: str(case.image)}
    if case.label is not None:
        data[LABEL] = str(case.label)
    return volume_preprocessing(label_set, params)(data)


def case_entry(case: Case, split: str, result: dict) -> dict:
    """The manifest entry of a prepared case (plain JSON data)."""
    oriented_affine = np.asarray(result["oriented_affine"])
    return {
        "case_id": case.case_id,
        "split": split,
        "source_image": str(case.image),
        "source_label": str(case.label) if case.label is not None else None,
        "source_shape": list(result["image_source_shape"]),
        "source_affine": np.asarray(result["image_source_affine"]).tolist(),
        "oriented_shape": list(result["oriented_shape"]),
        "oriented_affine": oriented_affine.tolist(),
        "spacing": list(spacing_from_affine(oriented_affine)),
        "num_slices": int(result[IMAGE].shape[0]),
        "has_label": LABEL in result,
        "organ_slices": result["organ_slices"],
    }


def write_case_folder(out_dir, case_id: str, image: np.ndarray, label: "np.ndarray | None", entry: dict) -> dict:
    """Write one case's slice stacks and manifest entry to ``out_dir/cases/<case_id>/`` atomically.

    The folder is built under a temporary name and renamed into place, so it exists only when complete.
    """
    cases_dir = Path(out_dir) / "cases"
    cases_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{case_id}.", suffix=".tmp", dir=cases_dir))
    try:
        np.save(tmp / "image.npy", np.ascontiguousarray(image, dtype=np.float32))
        if label is not None:
            np.save(tmp / "label.npy", np.ascontiguousarray(label, dtype=np.uint8))
        write_json(tmp / "case.json", entry)
        os.chmod(tmp, 0o777 & ~_current_umask())  # mkdtemp creates 0700
        final = cases_dir / case_id
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return entry


def _write_case(out_dir: Path, case: Case, split: str, label_set: LabelSet, params: PreprocessingParams) -> dict:
    """Preprocess one case and write its folder atomically; returns its manifest entry."""
    result = preprocess_case(case, label_set, params)
    entry = case_entry(case, split, result)
    return write_case_folder(out_dir, case.case_id, result[IMAGE], result.get(LABEL), entry)


def _prepare_one(args) -> tuple[str, "dict | None", "str | None"]:
    out_dir, case, split, label_set, params = args
    try:
        return case.case_id, _write_case(out_dir, case, split, label_set, params), None
    except MedsegError as exc:
        return case.case_id, None, str(exc)


def _cache_header(label_set: LabelSet, params: PreprocessingParams, split_mode: str, seed: int) -> dict:
    return {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "medseg_version": __version__,
        "label_set": label_set.to_dict(),
        "preprocessing": params.to_dict(),
        "split_mode": split_mode,
        "split_seed": seed,
    }


def prepare_cohort(raw_dir, out_dir, *, labels: "str | LabelSet" = "synapse8",
                   params: PreprocessingParams = PreprocessingParams(), split: str = "auto",
                   test_fraction: float = 0.4, seed: int = 1234, workers: int = 1,
                   progress: bool = True) -> PrepareSummary:
    """Preprocess every case of a cohort into a slice cache.

    Args:
        raw_dir: cohort folder (raw BTCV, nnU-Net or plain layout; see :mod:`medseg.data.cohort`).
        out_dir: cache folder; created if needed. Cases already prepared with the same parameters are skipped.
        labels: label set name or value (``synapse8`` or ``btcv13``).
        params: preprocessing parameters (HU window, orientation).
        split: split mode for :func:`medseg.data.cohort.make_split`.
        test_fraction, seed: seeded split parameters.
        workers: cases processed in parallel processes.
        progress: show a progress bar.

    Returns:
        A :class:`PrepareSummary`; bad cases are listed in it (and in the manifest's ``skipped``), not raised.

    Raises:
        InputError: the cohort folder is unusable. ConfigError: ``out_dir`` holds a cache made with other settings.
    """
    from medseg.progress import progress_bar as tqdm

    label_set = get_label_set(labels)
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: output path exists and is not a folder")
    cases = discover_cases(raw_dir)
    splits = make_split([c.case_id for c in cases], mode=split, test_fraction=test_fraction, seed=seed)
    header = _cache_header(label_set, params, split, seed)
    _check_existing_cache(out_dir, header)
    out_dir.mkdir(parents=True, exist_ok=True)

    summary = PrepareSummary(out_dir=out_dir)
    entries: dict[str, dict] = {}
    todo = []
    for case in cases:
        done = out_dir / "cases" / case.case_id / "case.json"
        if done.exists():
            entry = read_json(done)
            if entry.get("source_image") == str(case.image) and entry.get("split") == splits[case.case_id]:
                entries[case.case_id] = entry
                summary.already_done.append(case.case_id)
                continue
        todo.append((out_dir, case, splits[case.case_id], label_set, params))

    bar = tqdm(total=len(todo), desc="prepare", unit="case", disable=not progress or not todo)
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_prepare_one, job) for job in todo]
            for future in as_completed(futures):
                _collect(future.result(), entries, summary)
                bar.update()
    else:
        for job in todo:
            _collect(_prepare_one(job), entries, summary)
            bar.update()
    bar.close()

    manifest = dict(header)
    manifest["cases"] = [entries[cid] for cid in sorted(entries)]
    manifest["skipped"] = [{"case_id": cid, "error": msg} for cid, msg in sorted(summary.failed.items())]
    write_json(out_dir / MANIFEST, manifest)
    return summary


def _collect(result, entries: dict, summary: PrepareSummary) -> None:
    case_id, entry, error = result
    if error is not None:
        log.debug("skipped %s: %s", case_id, error)
        summary.failed[case_id] = error
    else:
        entries[case_id] = entry
        summary.written.append(case_id)


def _check_existing_cache(out_dir: Path, header: dict) -> None:
    manifest_path = out_dir / MANIFEST
    if not manifest_path.exists():
        return
    existing = read_json(manifest_path)
    for key in ("format", "label_set", "preprocessing", "split_mode", "split_seed"):
        if existing.get(key) != header[key]:
            raise ConfigError(f"{manifest_path}: folder was prepared with a different {key}; "
                              "use a new output folder or delete this one")


def load_manifest(prepared_dir) -> dict:
    """Read and check a slice cache's manifest.

    Raises:
        InputError: the folder or manifest is missing, or it is not a medseg slice cache.
    """
    prepared_dir = Path(prepared_dir)
    path = prepared_dir / MANIFEST
    if not prepared_dir.is_dir():
        raise InputError(f"{prepared_dir}: prepared data folder not found")
    if not path.exists():
        raise InputError(f"{prepared_dir}: no {MANIFEST}; run `medseg prepare` on the cohort first")
    manifest = read_json(path)
    if manifest.get("format") != CACHE_FORMAT:
        raise InputError(f"{path}: not a medseg slice cache (format {manifest.get('format')!r})")
    return manifest


def load_case_arrays(prepared_dir, case_id: str, mmap: bool = True) -> tuple[np.ndarray, "np.ndarray | None"]:
    """The slice stacks of one prepared case: image float32 ``(D, H, W)`` and label uint8 ``(D, H, W)`` or None.

    With ``mmap`` the arrays are memory-mapped read-only (cheap random access to single slices).
    """
    folder = Path(prepared_dir) / "cases" / case_id
    mode = "r" if mmap else None
    try:
        image = np.load(folder / "image.npy", mmap_mode=mode)
        label_path = folder / "label.npy"
        label = np.load(label_path, mmap_mode=mode) if label_path.exists() else None
    except FileNotFoundError:
        raise InputError(f"{folder}: prepared case is missing its arrays") from None
    except ValueError as exc:
        raise InputError(f"{folder}: prepared case arrays are corrupt ({exc})") from None
    return image, label
