"""One TransUNet test volume file (``test_vol_h5/caseXXXX.npy.h5``): the reader prediction and the layout share.

Apart from :mod:`medseg.data.transunet_format` (which also writes the layout and imports the slice cache and its
MONAI chain), so that ``medseg predict`` reads an h5 volume without importing MONAI.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.errors import InputError


def read_volume_h5(path) -> tuple[np.ndarray, "np.ndarray | None"]:
    """Read a TransUNet test volume: ``(image float32 (D, H, W), label uint8 (D, H, W) or None)``.

    Raises:
        InputError: unreadable, not 3D, no slices, image outside [0, 1] (HU values: not TransUNet's
            preprocessing), label not class indices or of another shape.
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        with h5py.File(path, "r") as f:
            image = np.asarray(f["image"], dtype=np.float32)
            label = as_labels(np.asarray(f["label"]), path) if "label" in f else None
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise InputError(f"{path}: not a readable TransUNet h5 volume ({exc})") from None
    if image.ndim != 3:
        raise InputError(f"{path}: expected a (D, H, W) volume, got shape {image.shape}")
    if min(image.shape) == 0:
        raise InputError(f"{path}: volume holds no voxels (shape {image.shape}: zero slices or an empty axis)")
    if label is not None and label.shape != image.shape:
        raise InputError(f"{path}: label shape {label.shape} does not match image shape {image.shape}")
    check_scaled_image(image, path)
    return image, label


#: TransUNet's preprocessed images hold CT windowed to [-125, 275] HU and scaled to [0, 1]; a little float slack.
SCALED_RANGE = (-1e-3, 1.0 + 1e-3)


def check_scaled_image(image: np.ndarray, path) -> None:
    """InputError unless ``image`` holds finite values in [0, 1] (HU values mean the file was not preprocessed)."""
    if image.size == 0:
        return
    if not np.all(np.isfinite(image)):
        raise InputError(f"{path}: image holds NaN or infinite values")
    low, high = float(image.min()), float(image.max())
    if low < SCALED_RANGE[0] or high > SCALED_RANGE[1]:
        raise InputError(f"{path}: image values {low:g}..{high:g} are outside [0, 1]: TransUNet's layout holds CT "
                         "windowed to [-125, 275] HU and scaled to [0, 1] (HU values? prepare the NIfTI cohort "
                         "instead)")


def as_labels(label: np.ndarray, path) -> np.ndarray:
    """``label`` as uint8 class indices; values that are not whole numbers in 0..255 are an InputError (``path``)."""
    if label.size and (not np.all(label == np.round(label)) or label.min() < 0 or label.max() > 255):
        raise InputError(f"{path}: label holds values that are not class indices")
    return label.astype(np.uint8)
