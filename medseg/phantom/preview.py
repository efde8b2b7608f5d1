"""A PNG montage of a few phantom (or any labelled) cases with the label overlay (:func:`render_preview`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.errors import ConfigError
from medseg.io import Volume
from medseg.labels import BTCV13, BTCV_ORGANS, ORGAN_COLOURS
from medseg.phantom.painting import LABEL
from medseg.visualize import label_overlay

def _best_slice(label: np.ndarray, keys: tuple[str, ...]) -> int:
    """Axial slice index (last axis) with the most voxels of the given organs; the middle slice if none."""
    mask = np.isin(label, [LABEL[k] for k in keys])
    counts = mask.sum(axis=(0, 1))
    return int(np.argmax(counts)) if counts.max() > 0 else label.shape[2] // 2


def _preview_views(image: Volume, label: Volume) -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    """The montage views of one case: (title, image 2D, label 2D, aspect) in medseg's slice orientation."""
    from medseg.data.orientation import reorient

    img, affine = reorient(image.array, image.affine)
    lab, _ = reorient(label.array, label.affine)
    d_row, d_col, d_slice = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    views = []
    upper = _best_slice(lab, ("liver", "spleen", "stomach"))
    kidneys = _best_slice(lab, ("kidney_right", "kidney_left"))
    lower = kidneys // 2
    for title, k in (("upper abdomen", upper), ("kidneys", kidneys), ("lower", lower)):
        views.append((f"{title} (slice {k})", img[:, :, k], lab[:, :, k], d_row / d_col))
    kidney = np.isin(lab, [LABEL["kidney_right"], LABEL["kidney_left"], LABEL["aorta"]])
    row = int(np.round(np.nonzero(kidney)[0].mean())) if kidney.any() else img.shape[0] // 2
    # Coronal: rows superior -> inferior, columns patient right -> left.
    views.append((f"coronal (row {row})", img[row, :, ::-1].T, lab[row, :, ::-1].T, d_slice / d_col))
    return views


def render_preview(source, path: "str | Path", max_cases: int = 4, title: "str | None" = None) -> Path:
    """Save a PNG montage: per case three axial slices (most liver/spleen/stomach, most kidney, half-way from
    there to the lowest slice) and a coronal view, with the label overlay in medseg's organ colours.

    Args:
        source: a cohort folder (img/ + label/, e.g. written by :func:`write_cohort`), or a list of
            ``(case_id, image Volume, label Volume)``.
        path: the PNG to write (atomically).
        max_cases: at most this many cases are shown (the first ones).
        title: the figure's title (default: the phantom cohort's).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from medseg.io import atomic_path, read_volume

    if isinstance(source, (str, Path)):
        from medseg.data.cohort import discover_cases

        chosen = [c for c in discover_cases(source) if c.label is not None][:max_cases]
        cases = [(c.case_id, read_volume(c.image), read_volume(c.label)) for c in chosen]
    else:
        cases = list(source)[:max_cases]
    if not cases:
        raise ConfigError(f"{source}: no labelled case to preview")

    figure = Figure(figsize=(12, 3.1 * len(cases) + 0.8), dpi=90, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(cases), 4, squeeze=False)
    for row, (case_id, image, label) in enumerate(cases):
        for col, (view, img2d, lab2d, aspect) in enumerate(_preview_views(image, label)):
            ax = axes[row, col]
            ax.imshow(label_overlay(img2d, lab2d, BTCV13), aspect=aspect, interpolation="nearest")
            ax.set_title(f"{case_id}: {view}", fontsize=8)
            ax.set_axis_off()
    handles = [Patch(color=np.array(ORGAN_COLOURS[key]) / 255.0, label=name) for key, name in BTCV_ORGANS.values()]
    figure.legend(handles=handles, loc="outside lower center", ncol=7, fontsize=8, frameon=False)
    figure.suptitle(title or "medseg phantom cohort (window L40 W400; patient's right on the image left)",
                    fontsize=10)
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png")
    return path
