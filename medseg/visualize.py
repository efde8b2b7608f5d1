"""Pictures for people: CT slices in a soft-tissue window with the label overlay, in medseg's organ colours.

The one place where medseg draws CT with labels: the prediction preview (``medseg predict --preview``), the phantom
cohort's montage (``medseg synth``), the worst-case thumbnails of evaluation reports and the notebooks all build
:class:`View` panels with the functions below and draw them with :func:`render_views`.

Conventions:

* Volumes are first brought into medseg's slice orientation (P, L, S; see :mod:`medseg.data.orientation`) by
  :func:`oriented_case`, so every view is shown as a radiologist expects: the patient's right on the image's left,
  anterior (axial) or superior (coronal, sagittal) at the top.
* A view's ``aspect`` is its row spacing over its column spacing (mm / mm, from the affine with
  :func:`medseg.io.spacing_from_affine`), so ``imshow(aspect=...)`` draws square millimetres.
* CT values are HU shown through :data:`SOFT_TISSUE_WINDOW` (level 40, width 400) unless a window is given; an image
  already scaled to [0, 1] is shown with ``window=(0, 1)``.
"""
from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from medseg.data.orientation import reorient
from medseg.io import Volume, atomic_path, spacing_from_affine
from medseg.labels import LabelSet

#: Abdominal soft-tissue display window in HU (level 40, width 400).
SOFT_TISSUE_WINDOW = (-160.0, 240.0)
#: Display range of an image already scaled to [0, 1].
UNIT_WINDOW = (0.0, 1.0)
#: Opacity of the organ colours over the CT.
OVERLAY_ALPHA = 0.45
#: Opacity of the organ a view emphasises (see :attr:`View.outline`), and of the others beside it.
EMPHASIS_ALPHA, DIMMED_ALPHA = 0.85, 0.35
#: Grey level shown where no CT is available (labels only).
NO_IMAGE_GREY = 0.3


@dataclass(frozen=True)
class View:
    """One panel: a 2D CT slice (HU, or [0, 1]; None when no CT is available), its 2D class map (classes of the
    label set, 0 = background), a title, the aspect (row spacing / column spacing) and optionally a boolean mask
    outlined in white (the organ the panel is about)."""

    title: str
    image: "np.ndarray | None"
    labels: np.ndarray
    aspect: float
    outline: "np.ndarray | None" = None


def window_to_unit(image_slice: np.ndarray, window=SOFT_TISSUE_WINDOW) -> np.ndarray:
    """Map values to [0, 1] grey levels through a display window ``(low, high)`` (HU for CT)."""
    low, high = window
    return np.clip((np.asarray(image_slice, dtype=np.float32) - low) / (high - low), 0.0, 1.0)


def label_overlay(image_slice: "np.ndarray | None", label_slice: np.ndarray, label_set: LabelSet,
                  window=SOFT_TISSUE_WINDOW, alpha: float = OVERLAY_ALPHA, emphasis: "int | None" = None) -> np.ndarray:
    """Blend a label map over a CT slice.

    Args:
        image_slice: 2D array of HU values ``(rows, columns)``; pass ``window=(0, 1)`` for an image already
            scaled to [0, 1]; None: a plain grey background (:data:`NO_IMAGE_GREY`).
        label_slice: 2D class map of the same shape, classes of ``label_set`` (0 = background).
        label_set: gives each organ its colour.
        window: display window (HU for CT).
        alpha: opacity of the organ colours.
        emphasis: a class drawn at :data:`EMPHASIS_ALPHA` while the others are dimmed to :data:`DIMMED_ALPHA`.

    Returns:
        RGB float array ``(rows, columns, 3)`` in [0, 1], ready for ``imshow``.
    """
    labels = np.asarray(label_slice).astype(np.int64)
    if image_slice is None:
        grey = np.full(labels.shape, NO_IMAGE_GREY, dtype=np.float32)
    else:
        grey = window_to_unit(image_slice, window)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    palette = np.array([(0, 0, 0)] + list(label_set.colours), dtype=np.float32) / 255.0
    opacity = np.full(len(palette), alpha if emphasis is None else DIMMED_ALPHA, dtype=np.float32)
    if emphasis is not None and 0 < emphasis < len(palette):
        opacity[emphasis] = EMPHASIS_ALPHA
    mask = labels > 0
    classes = np.clip(labels[mask], 0, len(palette) - 1)
    weight = opacity[classes][:, None]
    rgb[mask] = (1.0 - weight) * rgb[mask] + weight * palette[classes]
    return rgb


# ----------------------------------------------------------------------------------------------------------------
# Views


def oriented_case(image: "Volume | None", labels: Volume) -> tuple["np.ndarray | None", np.ndarray, np.ndarray]:
    """CT and labels in medseg's slice orientation (P, L, S) with their voxel spacing.

    Returns:
        ``(ct, labels, spacing)``: arrays indexed ``[P, L, S]`` (rows anterior -> posterior, columns right -> left,
        slices inferior -> superior); ``ct`` is None when no image is given or its grid differs from the labels';
        ``spacing`` is the voxel size in mm along those three axes.
    """
    lab, affine = reorient(np.asarray(labels.array), labels.affine)
    ct = None
    if image is not None and tuple(image.shape) == tuple(labels.shape):
        ct = reorient(np.asarray(image.array), image.affine)[0]
    return ct, lab, np.asarray(spacing_from_affine(affine))


def _cut(volume: "np.ndarray | None", index) -> "np.ndarray | None":
    return None if volume is None else volume[index]


def axial_view(ct, lab, spacing, k: int, title: str = "axial", organ: "int | None" = None) -> View:
    """Axial slice ``k`` (rows anterior -> posterior, columns patient right -> left) of oriented arrays."""
    labels = lab[:, :, k]
    return View(title, _cut(ct, np.s_[:, :, k]), labels, float(spacing[0] / spacing[1]),
                None if organ is None else labels == organ)


def coronal_view(ct, lab, spacing, row: int, title: str = "coronal") -> View:
    """Coronal slice at P-row ``row`` (rows superior -> inferior, columns patient right -> left)."""
    cut = np.s_[row, :, ::-1]
    image = _cut(ct, cut)
    return View(title, None if image is None else image.T, lab[cut].T, float(spacing[2] / spacing[1]))


def sagittal_view(ct, lab, spacing, column: int, title: str = "sagittal") -> View:
    """Sagittal slice at L-column ``column`` (rows superior -> inferior, columns anterior -> posterior)."""
    cut = np.s_[:, column, ::-1]
    image = _cut(ct, cut)
    return View(title, None if image is None else image.T, lab[cut].T, float(spacing[2] / spacing[0]))


def preview_views(image: "Volume | None", labels: Volume) -> list[View]:
    """Axial, coronal and sagittal slices through the centre of the labelled voxels (the volume's centre if none)."""
    ct, lab, spacing = oriented_case(image, labels)
    foreground = np.argwhere(lab > 0)
    centre = (foreground.mean(axis=0) if len(foreground) else np.asarray(lab.shape) / 2).astype(int)
    i, j, k = (int(np.clip(c, 0, s - 1)) for c, s in zip(centre, lab.shape))
    return [axial_view(ct, lab, spacing, k), coronal_view(ct, lab, spacing, i), sagittal_view(ct, lab, spacing, j)]


# ----------------------------------------------------------------------------------------------------------------
# Figures


def legend_classes(views, label_set: LabelSet, legend: str) -> list[int]:
    """Classes named in the legend: ``"all"`` the label set's organs, ``"shown"`` those drawn in any view, ``"none"``."""
    if legend == "none":
        return []
    if legend == "all":
        return list(range(1, label_set.num_classes))
    present = set()
    for view in views:
        present.update(int(v) for v in np.unique(view.labels) if v > 0)
    return sorted(c for c in present if c < label_set.num_classes)


def render_views(rows: list[list[View]], label_set: LabelSet, *, title: str = "", window=SOFT_TISSUE_WINDOW,
                 legend: str = "shown", emphasis: "int | None" = None, panel_inches: float = 3.0,
                 font_size: float = 8) -> Figure:
    """A figure with one panel per view (a grid of ``rows``), organs overlaid, and a colour legend below.

    Args:
        rows: views, one list per figure row (rows may differ in length).
        label_set: organ names and colours.
        title: figure title; the window and "patient right on the left" are appended.
        window: display window of the CT (HU), or :data:`UNIT_WINDOW` for images in [0, 1].
        legend: ``"shown"`` (organs drawn in the views), ``"all"`` or ``"none"``.
        emphasis: a class drawn more opaque than the others (see :func:`label_overlay`).
        panel_inches: size of one panel.
    """
    columns = max(len(row) for row in rows)
    figure = Figure(figsize=(panel_inches * columns, panel_inches * len(rows) + 0.9), dpi=90, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(columns):
            axis = axes[r, c]
            axis.set_axis_off()
            if c >= len(row):
                continue
            view = row[c]
            axis.imshow(label_overlay(view.image, view.labels, label_set, window, emphasis=emphasis),
                        aspect=view.aspect, interpolation="nearest")
            if view.outline is not None and view.outline.any():
                axis.contour(view.outline, levels=[0.5], colors="white", linewidths=0.8)
            axis.set_title(view.title, fontsize=font_size)
    classes = legend_classes([v for row in rows for v in row], label_set, legend)
    if classes:
        colours = np.asarray(label_set.colours, dtype=float) / 255.0
        handles = [Patch(facecolor=colours[c - 1], label=label_set.display_names[c - 1]) for c in classes]
        figure.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7), frameon=False,
                      fontsize=font_size)
    window_text = "intensity 0..1" if tuple(window) == UNIT_WINDOW else \
        f"window L{(window[0] + window[1]) / 2:g} W{window[1] - window[0]:g} HU"
    heading = f"{title}  ({window_text}; patient right on the left)".strip()
    characters = int(panel_inches * columns * 72 / (0.55 * (font_size + 2)))  # about what fits across the figure
    figure.suptitle("\n".join(textwrap.fill(line, characters) for line in heading.splitlines()),
                    fontsize=font_size + 2)
    return figure


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def save_png(figure: Figure, path: "str | Path") -> Path:
    """Write the figure as a PNG file, atomically (nothing half-written is left on failure)."""
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png")
    return path


def write_case_preview(path: "str | Path", image: "Volume | None", labels: Volume, label_set: LabelSet, *,
                       title: str = "", window=SOFT_TISSUE_WINDOW, hu: bool = True) -> Path:
    """A PNG with the three views of :func:`preview_views`: CT in a window, organs overlaid, a legend of the organs
    present.

    Args:
        window: display range in HU (default level 40, width 400); ignored when ``hu`` is False (image in [0, 1]).
    """
    figure = render_views([preview_views(image, labels)], label_set, title=title,
                          window=window if hu else UNIT_WINDOW, panel_inches=4.0, font_size=9)
    return save_png(figure, path)
