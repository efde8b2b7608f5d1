"""The 2D slice cache written by ``medseg prepare``: every volume decoded once, its slices stored ready to train.

Layout (see docs/architecture.md)::

    OUT/manifest.json              format, label set, preprocessing, split, one entry per case, skipped cases
    OUT/cases/<case_id>/image_hu.npy  int16 (D, H, W) CT values in HU, slice-first, oriented (rows P, columns L);
                                      float32 HU where the values are not whole numbers in the int16 range
    OUT/cases/<case_id>/image.npy     instead of image_hu.npy: float32 (D, H, W) already in [0, 1] (caches of
                                      version 2 and older, and cases imported from the TransUNet layout)
    OUT/cases/<case_id>/label.npy     uint8 (D, H, W) classes of the label set (labelled cases only)
    OUT/cases/<case_id>/case.json     the case's manifest entry

The HU window is applied when a slice is read (:func:`load_case_arrays`), with the same float32 operations
(:func:`medseg.data.transforms.hu_window`) that version 2 applied before storing, so the slices a model sees are
bit for bit those of a version-2 cache, at half the size (int16 against float32). The entry's ``arrays`` record
names each array's file, encoding, dtype, shape, size in bytes and SHA-256 as written; a re-run reuses a case only
when its files still have that size and hash (a deleted, truncated or altered array is prepared again and the
reason reported). An entry without an ``arrays`` record (version 2 and older) is read as float32 [0, 1]
``image.npy``; a manifest of a newer cache version than this medseg knows is refused.

Source paths (``source_image``, ``source_label``) given relative are recorded relative to the cache folder
(``../../synth/cohort/img/img0001.nii.gz``), so :func:`load_manifest` finds them from any working directory (a
notebook's kernel runs in ``notebooks/``); absolute ones are recorded as they are.

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
from medseg.data.transforms import IMAGE, LABEL, PreprocessingParams, hu_window, volume_preprocessing
from medseg.errors import ConfigError, InputError, MedsegError
from medseg.io import (current_umask, check_output_path, ensure_folder, file_sha256, make_temp_dir, read_json,
                       remove_stale_temps, spacing_from_affine, write_json)
from medseg.labels import LabelSet, describe_label_map, find_label_map, with_label_map
from medseg.progress import progress_bar

log = logging.getLogger(__name__)

CACHE_FORMAT = "medseg-slices"
CACHE_VERSION = 3  # bump whenever the arrays a case holds would change for the same sources and settings
MANIFEST = "manifest.json"
SCALED_IMAGE_FILE = "image.npy"  # float32 in [0, 1]: the window already applied
HU_IMAGE_FILE = "image_hu.npy"  # HU (int16, or float32 where int16 would not hold them exactly); windowed when read
LABEL_FILE = "label.npy"


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


#: The manifest header's ``source_paths`` value of caches whose relative source paths are relative to the cache.
SOURCES_RELATIVE_TO_CACHE = "relative to this folder"


def recorded_source(path, out_dir) -> "str | None":
    """How the cache at ``out_dir`` records a source file: an absolute ``path`` as given, a relative one (from the
    working directory) relative to ``out_dir``, so the record does not depend on where it is read from."""
    if path is None:
        return None
    if Path(path).is_absolute():
        return str(path)
    return os.path.relpath(os.path.abspath(path), os.path.abspath(out_dir))


def resolve_source(recorded: "str | None", prepared_dir) -> "str | None":
    """The path of a source file recorded by :func:`recorded_source`, usable from the working directory: an
    absolute record as it is, a relative one joined to ``prepared_dir`` (lexically normalised, as it was made)."""
    if recorded is None or Path(recorded).is_absolute():
        return recorded
    return os.path.normpath(Path(prepared_dir) / recorded)


def case_provenance(case: Case, split: str, label_set: LabelSet, params: PreprocessingParams,
                    out_dir=".") -> dict:
    """What shapes a prepared case: its source files' content hashes and every setting (plain JSON data); source
    paths as the cache at ``out_dir`` records them (:func:`recorded_source`).

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
        "source_image": recorded_source(case.image, out_dir),
        "source_image_sha256": hashes["image"],
        "source_label": recorded_source(case.label, out_dir),
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


def preprocess_case(case: Case, label_set: LabelSet, params: PreprocessingParams, window: bool = True) -> dict:
    """Run the volume chain on one case.

    Returns:
        The chain's output dict: ``image`` float32 ``(D, H, W)`` (in [0, 1] with ``window``, else HU), ``label``
        uint8 ``(D, H, W)`` when the case has one, ``organ_slices``, source and oriented geometry.
    """
    data = {IMAGE: str(case.image)}
    if case.label is not None:
        data[LABEL] = str(case.label)
    return volume_preprocessing(label_set, params, window=window)(data)


def compact_hu(hu: np.ndarray) -> np.ndarray:
    """The smallest exact storage of HU values: int16 when every value is a whole number in the int16 range
    (CT stored as integers, as scanners write it), else the float32 values unchanged."""
    hu = np.asarray(hu, dtype=np.float32)
    info = np.iinfo(np.int16)
    if hu.size and np.isfinite(hu).all() and hu.min() >= info.min and hu.max() <= info.max:
        as_int = hu.astype(np.int16)
        if np.array_equal(as_int.astype(np.float32), hu):
            return as_int
    return hu


class WindowedStack:
    """A read-only slice stack ``(D, H, W)`` of HU values that hands out windowed float32 values.

    Indexing (``stack[k]``, ``stack[a:b]``) windows only what it reads (:func:`medseg.data.transforms.hu_window`),
    so a memory-mapped stack stays cheap to sample; ``np.asarray(stack)`` windows the whole stack.
    """

    dtype = np.dtype(np.float32)

    def __init__(self, hu: np.ndarray, hu_min: float, hu_max: float):
        self.hu, self.hu_min, self.hu_max = hu, float(hu_min), float(hu_max)

    @property
    def shape(self) -> tuple:
        return self.hu.shape

    @property
    def ndim(self) -> int:
        return self.hu.ndim

    def __len__(self) -> int:
        return len(self.hu)

    def __getitem__(self, index) -> np.ndarray:
        return hu_window(self.hu[index], self.hu_min, self.hu_max)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        windowed = hu_window(self.hu, self.hu_min, self.hu_max)
        return windowed if dtype is None else windowed.astype(dtype, copy=False)


def case_entry(case: Case, split: str, result: dict, provenance: "dict | None" = None, out_dir=".") -> dict:
    """The manifest entry of a prepared case (plain JSON data), with its provenance record; source paths as the
    cache at ``out_dir`` records them (:func:`recorded_source`)."""
    oriented_affine = np.asarray(result["oriented_affine"])
    return {
        "case_id": case.case_id,
        "split": split,
        "source_image": recorded_source(case.image, out_dir),
        "source_label": recorded_source(case.label, out_dir),
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


def array_record(path: Path, array: np.ndarray, **extra) -> dict:
    """What :func:`verify_case_arrays` checks of a written ``.npy`` file: its name, dtype, shape, size in bytes and
    SHA-256 (plus ``extra`` keys such as the encoding)."""
    return {"file": path.name, "dtype": str(array.dtype), "shape": [int(s) for s in array.shape], **extra,
            "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def write_case_folder(out_dir, case_id: str, image: np.ndarray, label: "np.ndarray | None", entry: dict,
                      window: "tuple[float, float] | None" = None) -> dict:
    """Write one case's slice stacks and manifest entry to ``out_dir/cases/<case_id>/`` atomically.

    Args:
        image: ``(D, H, W)``: HU values when ``window`` is given (stored as :func:`compact_hu` in
            ``image_hu.npy``, windowed to ``window = (hu_min, hu_max)`` when read), else float32 values in [0, 1]
            (``image.npy``).
        label: uint8 ``(D, H, W)`` or None.
        entry: the manifest entry; its ``arrays`` record (file, dtype, shape, bytes, SHA-256) is added here.

    The folder is built under a temporary name and renamed into place, so it exists only when complete.
    """
    cases_dir = ensure_folder(Path(out_dir) / "cases")
    tmp = make_temp_dir(cases_dir, case_id)
    try:
        if window is None:
            stored = np.ascontiguousarray(image, dtype=np.float32)
            extra = {"encoding": "scaled"}
            path = tmp / SCALED_IMAGE_FILE
        else:
            stored = np.ascontiguousarray(compact_hu(image))
            extra = {"encoding": "hu", "hu_min": float(window[0]), "hu_max": float(window[1])}
            path = tmp / HU_IMAGE_FILE
        np.save(path, stored)
        arrays = {"image": array_record(path, stored, **extra)}
        if label is not None:
            stored_label = np.ascontiguousarray(label, dtype=np.uint8)
            np.save(tmp / LABEL_FILE, stored_label)
            arrays["label"] = array_record(tmp / LABEL_FILE, stored_label)
        entry = {**entry, "arrays": arrays}
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
        provenance = case_provenance(case, split, label_set, params, out_dir)
    result = preprocess_case(case, label_set, params, window=False)
    entry = case_entry(case, split, result, provenance, out_dir)
    return write_case_folder(out_dir, case.case_id, result[IMAGE], result.get(LABEL), entry,
                             window=(params.hu_min, params.hu_max))


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
        "source_paths": SOURCES_RELATIVE_TO_CACHE,
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
    """The preparation jobs: every case whose cached folder is missing, was made from other sources or settings, or
    whose arrays are no longer the files written (:func:`verify_case_arrays`; listed in ``summary.reprepared``). A
    case already done is put in ``entries`` and ``summary.already_done``; one whose sources cannot be read goes to
    ``summary.failed``."""
    todo = []
    for case in cases:
        try:
            provenance = case_provenance(case, splits[case.case_id], label_set, params, out_dir)
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
                why = verify_case_arrays(done.parent, entry)
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
    """Read and check a slice cache's manifest; each entry's ``source_image`` / ``source_label`` is a path usable
    from the working directory (:func:`resolve_source`; a manifest written before source paths were recorded
    relative to the cache keeps them as written).

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
    version = manifest.get("version")
    if not isinstance(version, int) or version > CACHE_VERSION:
        raise InputError(f"{path}: slice cache version {version!r} is newer than this medseg reads "
                         f"(up to {CACHE_VERSION}); prepare the cohort again or update medseg")
    return _with_resolved_sources(manifest, prepared_dir)


def _with_resolved_sources(manifest: dict, prepared_dir: Path) -> dict:
    """``manifest`` with its entries' source paths resolved against ``prepared_dir`` (see :func:`load_manifest`);
    the ``source_paths`` mark is dropped, as the paths are now relative to the working directory (a copy written
    elsewhere, such as a TransUNet export's ``medseg_manifest.json``, does not claim otherwise)."""
    if manifest.pop("source_paths", None) != SOURCES_RELATIVE_TO_CACHE:
        return manifest
    for entry in manifest.get("cases", []):
        for key in ("source_image", "source_label"):
            entry[key] = resolve_source(entry.get(key), prepared_dir)
    return manifest


def verify_case_arrays(folder: Path, entry: dict) -> "str | None":
    """None when every array file of a cached case is the one written (same size and SHA-256 as its ``arrays``
    record), else a short reason naming the file (missing, truncated or grown, altered). Reads each file once."""
    arrays = entry.get("arrays")
    if not isinstance(arrays, dict) or "image" not in arrays:
        return "no record of its arrays (prepared by an older medseg)"
    for record in arrays.values():
        path = Path(folder) / str(record.get("file"))
        try:
            size = path.stat().st_size
        except OSError:
            return f"{path.name} is missing"
        if size != record.get("bytes"):
            return f"{path.name} has {size} bytes, {record.get('bytes')} were written"
        if file_sha256(path) != record.get("sha256"):
            return f"{path.name} was altered (SHA-256 differs from the one recorded when written)"
    return None


def load_case_arrays(prepared_dir, case_id: str, mmap: bool = True, entry: "dict | None" = None
                     ) -> tuple["np.ndarray | WindowedStack", "np.ndarray | None"]:
    """The slice stacks of one prepared case: image float32 ``(D, H, W)`` in [0, 1] and label uint8 ``(D, H, W)``
    or None.

    Args:
        entry: the case's manifest entry (read from its ``case.json`` when not given): its ``arrays`` record says
            which file holds the image and how it is encoded.
        mmap: memory-map the arrays read-only (cheap random access to single slices); an HU-encoded image then
            comes as a :class:`WindowedStack` that windows each slice as it is read. Without ``mmap`` the image is
            a windowed float32 array in memory.

    Raises:
        InputError: naming the case folder when its record or arrays are missing, corrupt or of another type.
    """
    folder = Path(prepared_dir) / "cases" / case_id
    if entry is None:
        entry = read_json(folder / "case.json") if (folder / "case.json").exists() else {}
    record = (entry.get("arrays") or {}).get("image") or {"file": SCALED_IMAGE_FILE, "encoding": "scaled",
                                                         "dtype": "float32"}
    mode = "r" if mmap else None
    try:
        image = np.load(folder / str(record["file"]), mmap_mode=mode)
        label_path = folder / LABEL_FILE
        label = np.load(label_path, mmap_mode=mode) if label_path.exists() else None
    except FileNotFoundError:
        raise InputError(f"{folder}: prepared case is missing its arrays") from None
    except ValueError as exc:
        raise InputError(f"{folder}: prepared case arrays are corrupt ({exc})") from None
    if str(image.dtype) != record.get("dtype"):
        raise InputError(f"{folder / record['file']}: holds {image.dtype}, its record says {record.get('dtype')}")
    if record.get("encoding") == "hu":
        stack = WindowedStack(image, record["hu_min"], record["hu_max"])
        return (stack if mmap else np.asarray(stack)), label
    if record.get("encoding") != "scaled":
        raise InputError(f"{folder}: unknown image encoding {record.get('encoding')!r}")
    return image, label
