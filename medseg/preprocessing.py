"""What turns a CT volume into model input: the stored parameters and the HU window.

A light module (numpy and :mod:`medseg.schema` only), so that reading a checkpoint or predicting a volume does not
import the MONAI transform chain of :mod:`medseg.data.transforms`, which wraps these same pieces for ``medseg
prepare``. Both the prepare chain and inference call :func:`hu_window`, so a model sees exactly the values the slice
cache holds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from medseg import schema
from medseg.errors import ConfigError
from medseg.schema import setting

#: medseg's slice orientation as nibabel axis codes: rows anterior -> posterior, columns patient right -> left,
#: axis 2 (the slice axis) inferior -> superior (see :mod:`medseg.data.orientation`).
SLICE_AXCODES: tuple[str, str, str] = ("P", "L", "S")


@dataclass(frozen=True)
class PreprocessingParams:
    """Everything that defines how a CT volume becomes model input; stored in manifests and checkpoints.

    Attributes:
        hu_min, hu_max: HU window; values are clipped to it and scaled linearly to [0, 1].
        axcodes: orientation the volume is brought into before slicing (slice axis last).
        img_size: model input height and width in pixels.
        image_interpolation: ``bicubic`` (the paper's cubic zoom) or ``bilinear`` for image resizing; labels are
            always resized with nearest neighbour.
        input_mode: ``resize`` (the paper: every slice stretched to ``img_size``) or ``spacing`` (every slice
            resampled to ``target_spacing_mm`` per pixel, then cropped/padded to ``img_size`` in training and
            tiled at inference; :mod:`medseg.data.spacing`).
        target_spacing_mm: in-plane pixel size of ``spacing`` mode in mm; None until ``medseg prepare`` sets it
            to the training split's median (a checkpoint always records the value used).
    """

    SCHEMA_VERSION = 1

    hu_min: float = -125.0
    hu_max: float = 275.0
    axcodes: str = "".join(SLICE_AXCODES)
    img_size: int = setting(224, minimum=1)
    image_interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    input_mode: Literal["resize", "spacing"] = "resize"
    target_spacing_mm: "float | None" = setting(None, minimum=0.01)

    def to_dict(self) -> dict:
        """Plain data with the schema version, as manifests and checkpoints store it. The paper's ``resize`` mode
        is stored without the two spacing keys, so caches and checkpoints made before they existed still match."""
        stored = schema.to_stored(self)
        if self.input_mode == "resize":
            del stored["input_mode"], stored["target_spacing_mm"]
        return stored

    @classmethod
    def from_dict(cls, data: "dict | None", source: str = "preprocessing") -> "PreprocessingParams":
        """Read stored parameters; an unknown key (e.g. ``hu_window``) or a wrong type is a ConfigError naming
        ``source`` and the key, never a silent default. Data stored before versions existed (no
        ``schema_version``) is read as version 1."""
        params = schema.build(cls, dict(data or {}), source)
        if params.hu_max <= params.hu_min:
            raise ConfigError(f"{source}: hu_max: must be above hu_min ({params.hu_min}), got {params.hu_max}")
        if params.input_mode == "resize" and params.target_spacing_mm is not None:
            raise ConfigError(f"{source}: target_spacing_mm: only used with input_mode spacing")
        return params


def hu_window(values, hu_min: float, hu_max: float):
    """CT values in HU -> float32 in [0, 1]: ``clip((values - hu_min) / (hu_max - hu_min), 0, 1)``.

    Args:
        values: a numpy array (or a number) or a torch tensor, of any shape (HU); integer types are converted to
            float32 first.
        hu_min, hu_max: the window in HU.

    Returns:
        The same kind (numpy array or tensor, on the tensor's device) of float32 values, same shape. Both kinds
        perform the same float32 operations, so they agree bit for bit.
    """
    scale = float(hu_max) - float(hu_min)
    if isinstance(values, (np.ndarray, np.generic, int, float)):
        scaled = (np.asarray(values, dtype=np.float32) - np.float32(hu_min)) / np.float32(scale)
        return np.clip(scaled, np.float32(0.0), np.float32(1.0))
    return ((values.float() - float(hu_min)) / scale).clamp_(0.0, 1.0)  # a torch tensor
