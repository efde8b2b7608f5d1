"""One TransUNet test volume file (``test_vol_h5/caseXXXX.npy.h5``): the reader prediction and the layout share.

Apart from :mod:`medseg.data.transunet_format` (which also writes the layout and imports the slice cache and its
MONAI chain), so that ``medseg predict`` reads an h5 volume without importing MONAI.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.errors import InputError


def read_volume_h5(path) -> tuple[np.ndarray, "np.ndarray | None"]:
    """Read a TransUNet test volume: ``(image float32 (D, H, W), label uint8 (D, H, W) or None)``."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        with h5py.File(path, "r") as f:
            image = np.asarray(f["image"], dtype=np.float32)
            label = as_labels(np.asarray(f["label"]), path) if "label" in f else None
    except (OSError, KeyError) as exc:
        raise InputError(f"{path}: not a readable TransUNet h5 volume ({exc})") from None
    if image.ndim != 3:
        raise InputError(f"{path}: expected a (D, H, W) volume, got shape {image.shape}")
    if label is not None and label.shape != image.shape:
        raise InputError(f"{path}: label shape {label.shape} does not match image shape {image.shape}")
    return image, label


def as_labels(label: np.ndarray, path) -> np.ndarray:
    """``label`` as uint8 class indices; values that are not whole numbers in 0..255 are an InputError (``path``)."""
    if not np.all(label == np.round(label)) or label.min() < 0 or label.max() > 255:
        raise InputError(f"{path}: label holds values that are not class indices")
    return label.astype(np.uint8)
