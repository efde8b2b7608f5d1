"""A PNG montage of a few phantom (or any labelled) cases with the label overlay (:func:`render_preview`).

Which slices a row shows is chosen here; drawing is :func:`medseg.visualize.render_views`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.data.cohort import discover_cases
from medseg.errors import ConfigError
from medseg.io import Volume, read_volume
from medseg.labels import BTCV13
from medseg.phantom.painting import LABEL
from medseg.visualize import View, axial_view, coronal_view, oriented_case, render_views, save_png

#: Default title of the montage.
DEFAULT_TITLE = "medseg phantom cohort"


def _best_slice(label: np.ndarray, keys: tuple[str, ...]) -> int:
    """Axial slice index (last axis) with the most voxels of the given organs; the middle slice if none."""
    mask = np.isin(label, [LABEL[k] for k in keys])
    counts = mask.sum(axis=(0, 1))
    return int(np.argmax(counts)) if counts.max() > 0 else label.shape[2] // 2


def montage_views(case_id: str, image: Volume, label: Volume) -> list[View]:
    """The montage views of one case (raw BTCV label values), in medseg's slice orientation: three axial slices
    (most liver/spleen/stomach, most kidney, half-way from there to the lowest slice) and a coronal view through
    the kidneys and aorta."""
    ct, lab, spacing = oriented_case(image, label)
    upper = _best_slice(lab, ("liver", "spleen", "stomach"))
    kidneys = _best_slice(lab, ("kidney_right", "kidney_left"))
    views = [axial_view(ct, lab, spacing, k, f"{case_id}: {title} (slice {k})")
             for title, k in (("upper abdomen", upper), ("kidneys", kidneys), ("lower", kidneys // 2))]
    kidney = np.isin(lab, [LABEL["kidney_right"], LABEL["kidney_left"], LABEL["aorta"]])
    row = int(np.round(np.nonzero(kidney)[0].mean())) if kidney.any() else lab.shape[0] // 2
    views.append(coronal_view(ct, lab, spacing, row, f"{case_id}: coronal (row {row})"))
    return views


def render_preview(source, path: "str | Path", max_cases: int = 4, title: "str | None" = None) -> Path:
    """Save a PNG montage: per case the views of :func:`montage_views`, with the label overlay in medseg's organ
    colours and a legend of every BTCV organ.

    Args:
        source: a cohort folder (img/ + label/, e.g. written by :func:`medseg.phantom.write_cohort`), or a list of
            ``(case_id, image Volume, label Volume)`` with raw BTCV label values.
        path: the PNG to write (atomically).
        max_cases: at most this many cases are shown (the first ones).
        title: the figure's title (default: :data:`DEFAULT_TITLE`).
    """
    if isinstance(source, (str, Path)):
        chosen = [c for c in discover_cases(source) if c.label is not None][:max_cases]
        cases = [(c.case_id, read_volume(c.image), read_volume(c.label)) for c in chosen]
    else:
        cases = list(source)[:max_cases]
    if not cases:
        raise ConfigError(f"{source}: no labelled case to preview")
    rows = [montage_views(case_id, image, label) for case_id, image, label in cases]
    figure = render_views(rows, BTCV13, title=title or DEFAULT_TITLE, legend="all")
    return save_png(figure, path)
