"""One phantom case from ``(seed, case, size)`` (:func:`generate_case`) and a whole cohort written in the raw BTCV
layout with its ``phantom.json`` description (:func:`write_cohort`).
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from medseg.data.orientation import reorient
from medseg.errors import ConfigError
from medseg.io import Volume, read_json, spacing_from_affine, write_json, write_volume
from medseg.phantom.anatomy import make_anatomy
from medseg.phantom.geometry import case_geometry, check_size, coverage_of
from medseg.phantom.painting import render_anatomy
from medseg.phantom.preview import render_preview
from medseg.phantom.scanner import draw_scanner, form_image
from medseg.phantom.streams import STREAM_NOISE, case_rng
from medseg.progress import progress_bar

log = logging.getLogger(__name__)

#: Bumped whenever the same (seed, case, size) would give different volumes.
GENERATOR_VERSION = "2"


def _check_case(case_index, seed) -> None:
    if isinstance(case_index, bool) or not isinstance(case_index, (int, np.integer)) or case_index < 1:
        raise ConfigError(f"case index: must be an integer >= 1, got {case_index!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed: must be an integer >= 0, got {seed!r}")


def _generate(case_index: int, seed: int, size: str) -> tuple[Volume, Volume, dict]:
    """Image, label and a description (shape, spacing, axis codes, omitted organs) of one case."""
    _check_case(case_index, seed)
    check_size(size)
    anatomy = make_anatomy(seed, case_index)
    geometry = case_geometry(seed, case_index, size, anatomy)
    hu, label = render_anatomy(anatomy, geometry)
    noise_rng = case_rng(seed, STREAM_NOISE, case_index)
    scanner = draw_scanner(noise_rng)
    image = form_image(hu, geometry, noise_rng, scanner.noise_sd, scanner)
    del hu
    painting_affine = geometry.painting_affine()
    image, affine = reorient(image, painting_affine, geometry.axcodes)
    label, _ = reorient(label, painting_affine, geometry.axcodes)
    info = {
        "case_id": f"case{case_index:04d}",
        "shape": list(image.shape),
        "spacing": [round(v, 4) for v in spacing_from_affine(affine)],
        "axcodes": "".join(geometry.axcodes),
        "omitted_organs": list(anatomy.omitted),
        "contrast_phase": anatomy.params["phase"],
        "oral_contrast": anatomy.params["oral_contrast"],
        "noise_sd_hu": round(scanner.noise_sd, 2),
        "blur_mm": round(scanner.blur_mm, 2),
        "patient_scale": round(anatomy.scale, 4),
        "field_of_view_mm": round(geometry.shape[0] * geometry.spacing[0], 1),
    }
    if size == "varied":
        info["coverage"] = coverage_of(case_index)
    return Volume(image, affine), Volume(label, affine), info


def generate_case(case_index: int, seed: int, size: str = "small") -> tuple[Volume, Volume]:
    """One phantom case: ``(image, label)``.

    Pure and deterministic: case ``case_index`` (1-based, like ``img0001``) of ``seed`` is the same whatever else is
    generated.

    Args:
        case_index: 1, 2, ...
        seed: integer >= 0.
        size: ``small`` (128 x 128 x 44-56, CPU tests), ``full`` (512 x 512 x 85-198, Synapse-sized) or ``varied``
            (512 x 512 at 0.6-1.0 mm, thin or thick slices, five coverages from the lower chest to the pelvis:
            :func:`medseg.phantom.geometry.varied_extent`).

    Returns:
        ``image``: int16 HU and ``label``: uint8 raw BTCV values 0..13, both in the case's stored voxel order with
        the same affine (see :class:`medseg.io.Volume`).
    """
    image, label, _ = _generate(case_index, seed, size)
    return image, label


# ----------------------------------------------------------------------------------------------------------------

def image_path(out_dir: "str | Path", case_index: int) -> Path:
    """``OUT_DIR/img/imgXXXX.nii.gz``."""
    return Path(out_dir) / "img" / f"img{case_index:04d}.nii.gz"


def label_path(out_dir: "str | Path", case_index: int) -> Path:
    """``OUT_DIR/label/labelXXXX.nii.gz``."""
    return Path(out_dir) / "label" / f"label{case_index:04d}.nii.gz"


def _write_case(out_dir: str, case_index: int, seed: int, size: str) -> dict:
    """Generate one case and write its image and label atomically; returns its description."""
    started = time.perf_counter()
    image, label, info = _generate(case_index, seed, size)
    write_volume(image_path(out_dir, case_index), image, dtype=np.int16)
    write_volume(label_path(out_dir, case_index), label, dtype=np.uint8)
    info["image"] = f"img/{image_path(out_dir, case_index).name}"
    info["label"] = f"label/{label_path(out_dir, case_index).name}"
    info["seconds"] = round(time.perf_counter() - started, 2)
    return info


def _check_out_dir(out_dir: Path) -> "dict | None":
    """Refuse an output that is a file or an existing non-phantom cohort; return the old phantom.json if any."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: exists and is not a folder")
    manifest = out_dir / "phantom.json"
    if manifest.exists():
        old = read_json(manifest)
        if not isinstance(old, dict) or old.get("format") != "medseg-phantom":
            raise ConfigError(f"{manifest}: not a medseg phantom description; choose another output folder")
        return old
    for sub in ("img", "label"):
        folder = out_dir / sub
        if folder.is_dir() and any(p.name.endswith((".nii", ".nii.gz")) for p in folder.iterdir()):
            raise ConfigError(f"{out_dir}: already holds a cohort that medseg synth did not write "
                              f"(no phantom.json); choose an empty folder")
    return None


def write_cohort(out_dir: "str | Path", cases: int, seed: int, size: str = "small", workers: int = 1,
                 progress: bool = True, preview: bool = True) -> dict:
    """Write a phantom cohort in the raw BTCV layout (see the module docstring).

    Each file is written atomically. Writing into a folder that holds an earlier phantom cohort overwrites it and
    removes the cases beyond ``cases``; a folder holding another cohort is refused.

    Args:
        out_dir: output folder (created).
        cases: number of cases, written as img0001 .. imgNNNN.
        seed: integer >= 0.
        size: ``small``, ``full`` or ``varied``.
        workers: processes generating cases in parallel (1: in this process).
        progress: show progress (a bar on a terminal, log lines elsewhere; medseg.progress).
        preview: also render ``preview.png``.

    Returns:
        Summary: ``out_dir``, ``cases``, ``seed``, ``size``, ``seconds``, ``preview`` (path or None),
        ``omitted`` (case id -> omitted organs), ``manifest`` (path of phantom.json).
    """
    out_dir = Path(out_dir)
    if isinstance(cases, bool) or not isinstance(cases, (int, np.integer)) or cases < 1:
        raise ConfigError(f"cases: must be an integer >= 1, got {cases!r}")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ConfigError(f"workers: must be an integer >= 1, got {workers!r}")
    _check_case(1, seed)
    check_size(size)
    old = _check_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    header = {"format": "medseg-phantom", "generator_version": GENERATOR_VERSION, "seed": int(seed), "size": size,
              "num_cases": int(cases), "complete": False}
    write_json(out_dir / "phantom.json", {**header, "cases": []})
    if old is not None:
        _remove_stale_cases(out_dir, old, cases)

    infos: dict[int, dict] = {}
    bar = progress_bar(total=cases, desc=f"synth {size}", unit="case", disable=not progress)
    try:
        if workers == 1:
            for index in range(1, cases + 1):
                infos[index] = _write_case(str(out_dir), index, seed, size)
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=min(workers, cases)) as pool:
                futures = {pool.submit(_write_case, str(out_dir), index, seed, size): index
                           for index in range(1, cases + 1)}
                for future in as_completed(futures):
                    infos[futures[future]] = future.result()
                    bar.update(1)
    finally:
        bar.close()

    case_list = [infos[index] for index in sorted(infos)]
    seconds = time.perf_counter() - started
    write_json(out_dir / "phantom.json", {**header, "complete": True, "seconds": round(seconds, 2),
                                          "cases": case_list})
    preview_path = None
    if preview:
        preview_path = render_preview(out_dir, out_dir / "preview.png")
    seconds = time.perf_counter() - started
    log.debug("phantom cohort: %d %s cases in %.1f s -> %s", cases, size, seconds, out_dir)
    return {
        "out_dir": str(out_dir),
        "cases": int(cases),
        "seed": int(seed),
        "size": size,
        "seconds": round(seconds, 2),
        "preview": None if preview_path is None else str(preview_path),
        "omitted": {info["case_id"]: info["omitted_organs"] for info in case_list if info["omitted_organs"]},
        "manifest": str(out_dir / "phantom.json"),
    }


def _remove_stale_cases(out_dir: Path, old: dict, cases: int) -> None:
    """Delete files of an earlier phantom cohort in ``out_dir`` that the new one (``cases`` cases) does not have."""
    old_count = int(old.get("num_cases", len(old.get("cases", []))))
    for index in range(cases + 1, old_count + 1):
        image_path(out_dir, index).unlink(missing_ok=True)
        label_path(out_dir, index).unlink(missing_ok=True)


