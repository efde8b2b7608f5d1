"""Label sets: which organ each integer class stands for, and how raw BTCV label values map onto it.

A :class:`LabelSet` is a plain value that travels with prepared data (the slice-cache manifest), checkpoints and
reports, so a class index is never interpreted without its names.

Raw BTCV (Synapse multi-organ) label values, as stored in ``label/labelXXXX.nii.gz``::

    0 background, 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 esophagus, 6 liver, 7 stomach,
    8 aorta, 9 inferior vena cava, 10 portal and splenic vein, 11 pancreas, 12 right adrenal gland,
    13 left adrenal gland

The Synapse 8-organ task of the TransUNet paper uses the class order of the paper's table: 1 aorta,
2 gallbladder, 3 left kidney, 4 right kidney, 5 liver, 6 pancreas, 7 spleen, 8 stomach; the other BTCV organs
become background.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medseg.errors import ConfigError, InputError

#: Raw BTCV label value -> (key, display name). Value 0 is background.
BTCV_ORGANS: dict[int, tuple[str, str]] = {
    1: ("spleen", "Spleen"),
    2: ("kidney_right", "Kidney R"),
    3: ("kidney_left", "Kidney L"),
    4: ("gallbladder", "Gallbladder"),
    5: ("esophagus", "Esophagus"),
    6: ("liver", "Liver"),
    7: ("stomach", "Stomach"),
    8: ("aorta", "Aorta"),
    9: ("inferior_vena_cava", "IVC"),
    10: ("portal_splenic_vein", "Portal/splenic vein"),
    11: ("pancreas", "Pancreas"),
    12: ("adrenal_right", "Adrenal R"),
    13: ("adrenal_left", "Adrenal L"),
}

#: Largest raw value a BTCV label volume may hold.
BTCV_MAX_VALUE = max(BTCV_ORGANS)

# A colour per organ key (RGB, 0-255) so that every figure medseg draws uses the same palette. Liver and spleen keep
# 3D Slicer's GenericAnatomyColors; the others are distinct hues (mostly CSS named colours), so that every
# pair differs by a CIE76 colour difference of at least 35 (Slicer's liver and kidney differ by 12.5, which is why
# the kidneys do not use Slicer's kidney colour). tests/test_labels.py checks the distance.
ORGAN_COLOURS: dict[str, tuple[int, int, int]] = {
    "spleen": (157, 108, 162),  # Slicer
    "kidney_right": (0, 170, 170),  # teal
    "kidney_left": (255, 140, 0),  # darkorange
    "gallbladder": (0, 200, 0),
    "esophagus": (170, 255, 195),  # mint
    "liver": (221, 130, 101),  # Slicer
    "stomach": (0, 191, 255),  # deepskyblue
    "aorta": (220, 20, 60),  # crimson
    "inferior_vena_cava": (0, 0, 255),  # blue
    "portal_splenic_vein": (128, 0, 128),  # purple
    "pancreas": (255, 215, 0),  # gold
    "adrenal_right": (255, 105, 180),  # hotpink
    "adrenal_left": (148, 0, 211),  # darkviolet
}


@dataclass(frozen=True)
class LabelSet:
    """A segmentation task's classes.

    Attributes:
        name: identifier written into manifests, checkpoints and reports (``synapse8``, ``btcv13``).
        organs: organ keys in class order; class ``i + 1`` is ``organs[i]`` and class 0 is background.
        raw_to_class: raw BTCV label value -> class index; raw values not listed become background (0).
    """

    name: str
    organs: tuple[str, ...]
    raw_to_class: dict[int, int] = field(hash=False)

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.organs) + 1

    @property
    def display_names(self) -> tuple[str, ...]:
        """Human-readable organ names in class order (background excluded)."""
        names = {key: display for key, display in BTCV_ORGANS.values()}
        return tuple(names.get(key, key) for key in self.organs)

    @property
    def colours(self) -> tuple[tuple[int, int, int], ...]:
        """RGB colour (0-255) of each organ in class order (background excluded)."""
        return tuple(ORGAN_COLOURS.get(key, (200, 200, 200)) for key in self.organs)

    def lookup_table(self) -> np.ndarray:
        """Array ``lut`` with ``lut[raw_value] == class_index`` for raw values 0..13 (uint8)."""
        lut = np.zeros(BTCV_MAX_VALUE + 1, dtype=np.uint8)
        for raw, cls in self.raw_to_class.items():
            lut[raw] = cls
        return lut

    def to_dict(self) -> dict:
        """Plain-data form for JSON manifests and checkpoints."""
        return {
            "name": self.name,
            "organs": list(self.organs),
            "raw_to_class": {str(k): v for k, v in sorted(self.raw_to_class.items())},
        }

    @classmethod
    def from_dict(cls, data: dict) -> "LabelSet":
        """Inverse of :meth:`to_dict`; a known name with matching organs returns the built-in set."""
        try:
            organs = tuple(data["organs"])
            raw_to_class = {int(k): int(v) for k, v in data["raw_to_class"].items()}
            name = str(data["name"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"label set: malformed description ({exc!r})") from None
        return cls(name=name, organs=organs, raw_to_class=raw_to_class)


_SYNAPSE8_ORDER = ("aorta", "gallbladder", "kidney_left", "kidney_right", "liver", "pancreas", "spleen", "stomach")
_RAW_BY_KEY = {key: raw for raw, (key, _) in BTCV_ORGANS.items()}

SYNAPSE8 = LabelSet(
    name="synapse8",
    organs=_SYNAPSE8_ORDER,
    raw_to_class={_RAW_BY_KEY[key]: index + 1 for index, key in enumerate(_SYNAPSE8_ORDER)},
)

BTCV13 = LabelSet(
    name="btcv13",
    organs=tuple(key for _, (key, _) in sorted(BTCV_ORGANS.items())),
    raw_to_class={raw: raw for raw in BTCV_ORGANS},
)

LABEL_SETS: dict[str, LabelSet] = {SYNAPSE8.name: SYNAPSE8, BTCV13.name: BTCV13}


def get_label_set(name: "str | LabelSet | dict") -> LabelSet:
    """Return the label set called ``name`` (``synapse8`` or ``btcv13``); a LabelSet or its dict passes through."""
    if isinstance(name, LabelSet):
        return name
    if isinstance(name, dict):
        return LabelSet.from_dict(name)
    try:
        return LABEL_SETS[str(name).lower()]
    except KeyError:
        raise ConfigError(f"labels: unknown label set {name!r} (choose from {', '.join(LABEL_SETS)})") from None


def check_raw_labels(raw: np.ndarray, source: str = "label volume") -> None:
    """Raise :class:`InputError` if ``raw`` holds values that are not BTCV labels (integers 0..13).

    Args:
        raw: label array of any shape, as read from disk.
        source: the file name used in the error message.
    """
    if raw.size == 0:
        raise InputError(f"{source}: label volume is empty")
    if np.issubdtype(raw.dtype, np.floating):
        if not np.all(np.isfinite(raw)):
            raise InputError(f"{source}: label volume contains NaN or infinite values")
        if not np.all(raw == np.round(raw)):
            raise InputError(f"{source}: label volume holds non-integer values (is this an image, not a label map?)")
    values = np.unique(raw)
    bad = values[(values < 0) | (values > BTCV_MAX_VALUE)]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:5])
        raise InputError(f"{source}: unknown label values {shown} (BTCV labels are 0..{BTCV_MAX_VALUE})")


def remap_labels(raw: np.ndarray, label_set: LabelSet, source: str = "label volume") -> np.ndarray:
    """Map raw BTCV label values to the classes of ``label_set``.

    Args:
        raw: integer (or integral float) label array of any shape with values in 0..13.
        label_set: target label set.
        source: the file name used in error messages.

    Returns:
        uint8 array of the same shape with values in ``0 .. label_set.num_classes - 1``.
    """
    check_raw_labels(raw, source)
    return label_set.lookup_table()[np.asarray(raw).astype(np.int64)]
