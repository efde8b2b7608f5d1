"""Pictures for people: CT slices in a soft-tissue window with the label overlay, in medseg's organ colours."""
from __future__ import annotations

import numpy as np

from medseg.labels import LabelSet

#: Abdominal soft-tissue display window in HU (level 40, width 400).
SOFT_TISSUE_WINDOW = (-160.0, 240.0)


def window_to_unit(image_slice: np.ndarray, window=SOFT_TISSUE_WINDOW) -> np.ndarray:
    """Map HU values to [0, 1] grey levels through a display window ``(low, high)`` in HU."""
    low, high = window
    return np.clip((np.asarray(image_slice, dtype=np.float32) - low) / (high - low), 0.0, 1.0)


def label_overlay(image_slice: np.ndarray, label_slice: np.ndarray, label_set: LabelSet,
                  window=SOFT_TISSUE_WINDOW, alpha: float = 0.45) -> np.ndarray:
    """Blend a label map over a CT slice.

    Args:
        image_slice: 2D array of HU values ``(rows, columns)``; pass ``window=(0, 1)`` for an image already
            scaled to [0, 1].
        label_slice: 2D class map of the same shape, classes of ``label_set`` (0 = background).
        label_set: gives each organ its colour.
        window: display window in HU.
        alpha: opacity of the organ colours.

    Returns:
        RGB float array ``(rows, columns, 3)`` in [0, 1], ready for ``matplotlib.pyplot.imshow``.
    """
    grey = window_to_unit(image_slice, window)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    palette = np.array([(0, 0, 0)] + list(label_set.colours), dtype=np.float32) / 255.0
    labels = np.asarray(label_slice).astype(np.int64)
    mask = labels > 0
    rgb[mask] = (1.0 - alpha) * rgb[mask] + alpha * palette[np.clip(labels[mask], 0, len(palette) - 1)]
    return rgb
