"""The 2D slice cache written by ``medseg prepare``: every volume decoded once, its slices stored ready to train.

Layout (see docs/architecture.md)::

    OUT/manifest.json              format, label set, preprocessing, split, one entry per case, skipped cases
    OUT/cases/<case_id>/image.npy  float32 (D, H, W) in [0, 1], slice-first, oriented (rows P, columns L)
    OUT/cases/<case_id>/label.npy  uint8 (D, H, W) classes of the label set (labelled cases only)
    OUT/cases/<case_id>/case.json  the case's manifest entry

A case folder is written under a temporary name and renamed when complete, so an interrupted run leaves no
half-written case. Each ``case.json`` records what made the case (``provenance``: the SHA-256 of the source image
and label files' contents, and every setting that shaped the arrays: label set, preprocessing, cache version,
split). A re-run reuses a case only when that record matches the current sources and settings exactly; otherwise
the case is prepared again and the reason reported (a replaced input file, other labels or preprocessing after an
interrupted run, ...). Temporary folders left by a killed run are removed by the next run.
"""
from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg import __version__
from medseg.data.cohort import Case, discover_cohort, make_split
from medseg.data.spacing import with_target_spacing
from medseg.data.transforms import IMAGE, LABEL, PreprocessingParams, volume_preprocessing
from medseg.errors import ConfigError, InputError, MedsegError
from medseg.io import (current_umask, check_output_path, ensure_folder, file_sha256, make_temp_dir, read_json,
                       remove_stale_temps, spacing_from_affine, write_json)
from medseg.labels import LabelSet, describe_label_map, find_label_map, with_label_map
from medseg.progress import progress_bar

log = logging.getLogger(__name__)

CACHE_FORMAT = "medseg-slices"
CACHE_VERSION = 2  # bump whenever the arrays a case holds would change for the same sources and settings
MANIFEST = "manifest.json"


@dataclass
class PrepareSummary:
    """What a prepare run did.

    Attributes:
        written: case ids prepared in this run (including ``reprepared`` ones).
        already_done: case ids reused: their sources and settings match the record in their ``case.json``.
        reprepared: ``{case_id: why}`` for cases prepared again because their record no longer matched.
        failed: ``{case_id: message}`` for cases that could not be prepared.
        skipped_files: ``{file: reason}`` for images left out of the cohort (no label, unexpected name).
        label_set: the label set the labels were read with (with the label map it followed, if any).
    """

    out_dir: Path
    label_set: "LabelSet | None" = None
    written: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    reprepared: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    skipped_files: dict[str, str] = field(default_factory=dict)


def case_provenance(case: Case, split: str, label_set: LabelSet, params: PreprocessingParams) -> dict:
    """What shapes a prepared case: its source files' content hashes and every setting (plain JSON data).

    Raises:
        InputError: a source file cannot be read.
    """
    hashes = {}
    for key, path in (("image", case.image), ("label", case.label)):
        if path is None:
            hashes[key] = None
            continue
        try:
            hashes[key] = file_sha256(path)
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    return {
        "source_image": str(case.image),
        "source_image_sha256": hashes["image"],
        "source_label": str(case.label) if case.label is not None else None,
        "source_label_sha256": hashes["label"],
        "cache_version": CACHE_VERSION,
        "label_set": label_set.to_dict(),
        "preprocessing": params.to_dict(),
        "split": split,
    }


def provenance_difference(recorded: "dict | None", current: dict) -> "str | None":
    """None when a case's recorded provenance equals ``current``, else a short reason naming what changed."""
    if not recorded:
        return "no provenance record (prepared by an older medseg)"
    reasons = {"source_image_sha256": "source image contents changed", "source_label_sha256":
               "source label contents changed", "source_image": "source image path changed", "source_label":
               "source label path changed", "label_set": "other label set", "preprocessing": "other preprocessing",
               "cache_version": "other cache version", "split": "other split"}
    for key, reason in reasons.items():
        if recorded.get(key) != current.get(key):
            return reason
    return None


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


def case_entry(case: Case, split: str, result: dict, provenance: "dict | None" = None) -> dict:
    """The manifest entry of a prepared case (plain JSON data), with its provenance record."""
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
        "provenance": provenance,
    }


def write_case_folder(out_dir, case_id: str, image: np.ndarray, label: "np.ndarray | None", entry: dict) -> dict:
    """Write one case's slice stacks and manifest entry to ``out_dir/cases/<case_id>/`` atomically.

    The folder is built under a temporary name and renamed into place, so it exists only when complete.
    """
    cases_dir = ensure_folder(Path(out_dir) / "cases")
    tmp = make_temp_dir(cases_dir, case_id)
    try:
        np.save(tmp / "image.npy", np.ascontiguousarray(image, dtype=np.float32))
        if label is not None:
            np.save(tmp / "label.npy", np.ascontiguousarray(label, dtype=np.uint8))
        write_json(tmp / "case.json", entry)
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp creates 0700
        final = cases_dir / case_id
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return entry


def _write_case(out_dir: Path, case: Case, split: str, label_set: LabelSet, params: PreprocessingParams,
                provenance: "dict | None" = None) -> dict:
    """Preprocess one case and write its folder atomically; returns its manifest entry."""
    if provenance is None:
        provenance = case_provenance(case, split, label_set, params)
    result = preprocess_case(case, label_set, params)
    entry = case_entry(case, split, result, provenance)
    return write_case_folder(out_dir, case.case_id, result[IMAGE], result.get(LABEL), entry)


def _prepare_one(args) -> tuple[str, "dict | None", "str | None"]:
    out_dir, case, split, label_set, params, provenance = args
    try:
        return case.case_id, _write_case(out_dir, case, split, label_set, params, provenance), None
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
                   progress: bool = True, allow_unlabelled: bool = False,
                   label_map: "str | Path | None" = None, input_mode: "str | None" = None,
                   target_spacing_mm: "float | None" = None) -> PrepareSummary:
    """Preprocess every case of a cohort into a slice cache.

    Args:
        raw_dir: cohort folder (raw BTCV, nnU-Net or plain layout; see :mod:`medseg.data.cohort`).
        out_dir: cache folder; created if needed. A case already there is reused only when its recorded sources
            (content hash) and settings match; otherwise it is prepared again (listed in ``reprepared``).
        labels: label set name or value (``synapse8`` or ``btcv13``).
        params: preprocessing parameters (HU window, orientation, input mode; in ``spacing`` mode without a
            target spacing, the training split's median in-plane spacing is used and recorded).
        input_mode, target_spacing_mm: when given (the ``medseg prepare`` flags and the pipeline's prepare stage),
            they replace those of ``params``.
        split: split mode for :func:`medseg.data.cohort.make_split`.
        test_fraction, seed: seeded split parameters.
        workers: cases processed in parallel processes.
        progress: show a progress bar.
        allow_unlabelled: keep images without a label in a labelled cohort (default: skipped and listed).
        label_map: the numbering of the label files (an nnU-Net ``dataset.json`` or a JSON of organ name -> value;
            :func:`medseg.labels.read_label_map`); default ``RAW_DIR/dataset.json`` when present, else BTCV's. The
            label set reads raw values through it, and the manifest's ``label_set`` records it (``label_map``:
            source, sha256, value -> name / organ / class, and the values mapped to background).

    Returns:
        A :class:`PrepareSummary`; bad cases and skipped files are listed in it (and in the manifest's
        ``skipped``), not raised.

    Raises:
        InputError: the cohort folder is unusable, or no case could be prepared (a folder this call created is
            removed again). ConfigError: ``out_dir`` holds a cache made with other settings.
        OutputError: ``out_dir`` cannot be created.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    label_set = with_label_map(labels, find_label_map(raw_dir, label_map))
    if label_set.label_map is not None:
        log.info("%s", describe_label_map(label_set))
    check_output_path(out_dir, "output folder", folder=True)
    cohort = discover_cohort(raw_dir, allow_unlabelled=allow_unlabelled)
    cases = cohort.cases
    if not cases:
        first = next(iter(cohort.skipped.items()), None)
        raise InputError(f"{raw_dir}: no usable case" + (f" ({first[0]}: {first[1]})" if first else ""))
    if input_mode is not None:  # the command line's and the pipeline's settings (PrepareStage)
        params = PreprocessingParams.from_dict({**params.to_dict(), "input_mode": input_mode,
                                                "target_spacing_mm": target_spacing_mm}, "prepare")
    splits = make_split([c.case_id for c in cases], mode=split, test_fraction=test_fraction, seed=seed)
    # spacing-aware input: the target spacing is the training split's median (recorded in the manifest)
    params = with_target_spacing(params, [c.image for c in cases if splits[c.case_id] == "train"]
                                 or [c.image for c in cases])
    header = _cache_header(label_set, params, split, seed)
    _check_existing_cache(out_dir, header)
    created = not out_dir.exists()
    ensure_folder(out_dir)
    remove_stale_temps(out_dir)
    remove_stale_temps(out_dir / "cases")

    summary = PrepareSummary(out_dir=out_dir, skipped_files=dict(cohort.skipped), label_set=label_set)
    entries: dict[str, dict] = {}
    todo = _plan_cases(cases, splits, out_dir, label_set, params, entries, summary)
    _prepare_all(todo, workers, progress, entries, summary)

    if not entries:  # nothing usable: leave no folder that looks like a cache behind
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        first = sorted(summary.failed.items())[0] if summary.failed else ("", "no case")
        raise InputError(f"no case of {raw_dir} could be prepared ({len(summary.failed)} failed; first: "
                         f"{first[1]})")
    _write_manifest(out_dir, header, entries, summary)
    return summary


def _plan_cases(cases, splits: dict, out_dir: Path, label_set: LabelSet, params: PreprocessingParams,
                entries: dict, summary: PrepareSummary) -> list:
    """The preparation jobs: every case whose cached folder is missing or was made from other sources or settings
    (listed in ``summary.reprepared``). A case already done is put in ``entries`` and ``summary.already_done``; one
    whose sources cannot be read goes to ``summary.failed``."""
    todo = []
    for case in cases:
        try:
            provenance = case_provenance(case, splits[case.case_id], label_set, params)
        except InputError as exc:
            summary.failed[case.case_id] = str(exc)
            continue
        done = out_dir / "cases" / case.case_id / "case.json"
        if done.exists():
            try:
                entry = read_json(done)
            except InputError:
                entry = {}
            why = provenance_difference(entry.get("provenance"), provenance)
            if why is None:
                entries[case.case_id] = entry
                summary.already_done.append(case.case_id)
                continue
            summary.reprepared[case.case_id] = why
            log.info("%s: prepared again: %s", case.case_id, why)
        todo.append((out_dir, case, splits[case.case_id], label_set, params, provenance))
    return todo


def _prepare_all(todo: list, workers: int, progress: bool, entries: dict, summary: PrepareSummary) -> None:
    """Run the jobs of :func:`_plan_cases` (in ``workers`` processes when more than one), collecting each case's
    entry or error into ``entries`` / ``summary``."""
    bar = progress_bar(total=len(todo), desc="prepare", unit="case", disable=not progress or not todo)
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_prepare_one, job) for job in todo]
            try:
                for future in as_completed(futures):
                    _collect(future.result(), entries, summary)
                    bar.update()
            except BaseException:  # Ctrl-C / SIGTERM: drop the queued cases (finished ones are complete folders)
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    else:
        for job in todo:
            _collect(_prepare_one(job), entries, summary)
            bar.update()
    bar.close()


def _write_manifest(out_dir: Path, header: dict, entries: dict, summary: PrepareSummary) -> None:
    """The cache's manifest: ``header``, the prepared cases (by id) and what was skipped, written atomically."""
    manifest = dict(header)
    manifest["cases"] = [entries[cid] for cid in sorted(entries)]
    manifest["skipped"] = [{"case_id": cid, "error": msg} for cid, msg in sorted(summary.failed.items())]
    manifest["skipped_files"] = [{"file": path, "reason": why} for path, why in sorted(summary.skipped_files.items())]
    write_json(out_dir / MANIFEST, manifest)


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
    # compared as parameters, so a manifest written before preprocessing carried a schema_version still matches
    existing["preprocessing"] = PreprocessingParams.from_dict(existing.get("preprocessing"), f"{manifest_path}: "
                                                              "preprocessing").to_dict()
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
