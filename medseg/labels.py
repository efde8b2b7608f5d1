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

Label files in another numbering (AMOS, WORD, TotalSegmentator, FLARE, the Medical Segmentation Decathlon, ...)
are read through a **label map** (:class:`LabelMap`, :func:`read_label_map`): an nnU-Net ``dataset.json`` (its
``labels``) or a small JSON of organ name -> value. Its names are matched to medseg's organ keys with the common
aliases (:func:`organ_for_name`); :func:`with_label_map` gives the label set whose ``raw_to_class`` reads that
numbering and which records the map (content hash and mapping) wherever the label set is recorded.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

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
        raw_to_class: raw label value -> class index; raw values not listed become background (0). Raw values
            are BTCV's (0..13), or those of ``label_map`` when there is one.
        label_map: the record of the label map the raw values follow (:meth:`LabelMap.to_dict`), or None for
            BTCV numbering.
    """

    name: str
    organs: tuple[str, ...]
    raw_to_class: dict[int, int] = field(hash=False)
    label_map: "dict | None" = field(default=None, hash=False)

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

    @property
    def raw_values(self) -> tuple[int, ...]:
        """The raw label values a label file may hold: 0..13 in BTCV numbering, else 0 and the label map's values."""
        if self.label_map is None:
            return tuple(range(BTCV_MAX_VALUE + 1))
        return tuple(sorted({0} | {int(value) for value in self.label_map["values"]}))

    def lookup_table(self) -> np.ndarray:
        """Array ``lut`` with ``lut[raw_value] == class_index`` for raw values 0 .. max(:attr:`raw_values`) (uint8)."""
        lut = np.zeros(max(self.raw_values) + 1, dtype=np.uint8)
        for raw, cls in self.raw_to_class.items():
            lut[raw] = cls
        return lut

    def to_dict(self) -> dict:
        """Plain-data form for JSON manifests and checkpoints (``label_map`` only when there is one)."""
        data = {
            "name": self.name,
            "organs": list(self.organs),
            "raw_to_class": {str(k): v for k, v in sorted(self.raw_to_class.items())},
        }
        if self.label_map is not None:
            data["label_map"] = self.label_map
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "LabelSet":
        """Inverse of :meth:`to_dict`; a known name with matching organs returns the built-in set."""
        try:
            organs = tuple(data["organs"])
            raw_to_class = {int(k): int(v) for k, v in data["raw_to_class"].items()}
            name = str(data["name"])
            label_map = data.get("label_map")
            if label_map is not None and not isinstance(label_map.get("values"), dict):
                raise TypeError("label_map without values")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"label set: malformed description ({exc!r})") from None
        return cls(name=name, organs=organs, raw_to_class=raw_to_class, label_map=label_map)


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


def check_raw_labels(raw: np.ndarray, source: str = "label volume", label_set: "LabelSet | None" = None) -> None:
    """Raise :class:`InputError` if ``raw`` holds values that are not raw labels: BTCV's integers 0..13, or with a
    ``label_set`` that follows a label map, 0 and the map's values.

    Args:
        raw: label array of any shape, as read from disk.
        source: the file name used in the error message.
        label_set: the label set whose :attr:`LabelSet.raw_values` are allowed (default: BTCV numbering).
    """
    if raw.size == 0:
        raise InputError(f"{source}: label volume is empty")
    if np.issubdtype(raw.dtype, np.floating):
        if not np.all(np.isfinite(raw)):
            raise InputError(f"{source}: label volume contains NaN or infinite values")
        if not np.all(raw == np.round(raw)):
            raise InputError(f"{source}: label volume holds non-integer values (is this an image, not a label map?)")
    values = np.unique(raw)
    if label_set is None or label_set.label_map is None:
        bad = values[(values < 0) | (values > BTCV_MAX_VALUE)]
        known = f"BTCV labels are 0..{BTCV_MAX_VALUE}"
    else:
        bad = values[~np.isin(values, label_set.raw_values)]
        known = (f"the label map {label_set.label_map['source']} names "
                 f"{', '.join(str(v) for v in label_set.raw_values)}")
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:5])
        raise InputError(f"{source}: unknown label values {shown} ({known})")


def remap_labels(raw: np.ndarray, label_set: LabelSet, source: str = "label volume") -> np.ndarray:
    """Map raw BTCV label values to the classes of ``label_set``.

    Args:
        raw: integer (or integral float) label array of any shape with values in 0..13, or in the label map's
            values when ``label_set`` follows one (:func:`with_label_map`).
        label_set: target label set.
        source: the file name used in error messages.

    Returns:
        uint8 array of the same shape with values in ``0 .. label_set.num_classes - 1``.
    """
    check_raw_labels(raw, source, label_set)
    return label_set.lookup_table()[np.asarray(raw).astype(np.int64)]


# ----------------------------------------------------------------------------------------------------------------
# Label maps: label files in another dataset's numbering
# ----------------------------------------------------------------------------------------------------------------
#: A cohort folder's nnU-Net dataset description, used as its label map without being asked.
DATASET_JSON = "dataset.json"

#: Names of medseg's organs in the public abdominal CT sets (BTCV, AMOS, WORD, TotalSegmentator, FLARE, MSD) and in
#: medseg itself. Matching ignores case, punctuation, word order and the side written as ``L``/``R``
#: (:func:`normalise_organ_name`), so ``kidney_right``, ``Right kidney`` and ``Kidney R`` are one name.
ORGAN_ALIASES: dict[str, tuple[str, ...]] = {
    "spleen": ("spleen",),
    "kidney_right": ("right kidney", "rk"),
    "kidney_left": ("left kidney", "lk"),
    "gallbladder": ("gallbladder", "gall bladder", "gb"),
    "esophagus": ("esophagus", "oesophagus"),
    "liver": ("liver",),
    "stomach": ("stomach",),
    "aorta": ("aorta", "arota"),  # "arota": AMOS's dataset.json spells it so
    "inferior_vena_cava": ("inferior vena cava", "postcava", "ivc", "vena cava inferior"),
    "portal_splenic_vein": ("portal vein and splenic vein", "portal splenic vein", "portal and splenic vein",
                            "portal vein splenic vein", "portal and splenic veins", "psv"),
    "pancreas": ("pancreas",),
    "adrenal_right": ("right adrenal gland", "adrenal right", "rag"),
    "adrenal_left": ("left adrenal gland", "adrenal left", "lag"),
}

#: Structures of those sets that are none of medseg's organs: their voxels become background (and the map says
#: so). Unsided adrenal glands and kidneys (WORD, some MSD-style sets) are here: no side can be chosen for them.
OTHER_STRUCTURES: tuple[str, ...] = (
    "background", "duodenum", "bladder", "urinary bladder", "prostate", "uterus", "prostate uterus", "colon",
    "intestine", "small bowel", "small intestine", "bowel", "rectum", "head of femur left", "head of femur right",
    "femur left", "femur right", "adrenal", "adrenal gland", "adrenal glands", "kidney", "kidneys", "tumour",
    "tumor", "cancer", "lesion", "liver tumour", "liver tumor", "pancreas tumour", "pancreas tumor",
    "kidney tumour", "kidney tumor", "cyst", "kidney cyst left", "kidney cyst right", "vessel", "hepatic vessel",
    "lung", "lungs", "heart", "trachea", "thyroid gland", "thyroid", "brain", "skull", "spinal cord", "sternum",
    "costal cartilages", "sacrum", "superior vena cava", "pulmonary vein", "pulmonary artery",
    "brachiocephalic trunk", "atrial appendage left", "celiac trunk", "portal vein", "splenic vein",
)
# TotalSegmentator's numbered and sided families (vertebrae_L1, rib_left_3, gluteus_maximus_right, ...).
_OTHER_PATTERNS = re.compile(
    r"(vertebrae? [cstl]\d+|rib (left|right) \d+|lung .*lobe.*|(humerus|scapula|clavicula|femur|hip|gluteus \w+|"
    r"autochthon|iliopsoas|iliac artery|iliac vena|common carotid artery|subclavian artery|brachiocephalic vein|"
    r"kidney cyst) (left|right)|heart .*|face)")

_SIDE_WORDS = {"l": "left", "r": "right", "lt": "left", "rt": "right"}


def normalise_organ_name(name: str) -> str:
    """``name`` lower-cased, punctuation to spaces, ``L``/``R`` to ``left``/``right``, words sorted and joined by one
    space: the form organ names are matched in (``"Kidney_R"`` and ``"right kidney"`` give ``"kidney right"``)."""
    words = re.sub(r"[^0-9a-z]+", " ", str(name).lower()).split()
    return " ".join(sorted(_SIDE_WORDS.get(word, word) for word in words))


def _ordered(name: str) -> str:
    """``name`` lower-cased with punctuation as spaces, words in their order (for the ordered patterns)."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", str(name).lower()).split())


_ORGAN_BY_NAME = {normalise_organ_name(alias): key for key, aliases in ORGAN_ALIASES.items()
                  for alias in (*aliases, key, dict(BTCV_ORGANS.values())[key])}
_OTHER_NAMES = {normalise_organ_name(name) for name in OTHER_STRUCTURES}


def organ_for_name(name: str, source: str = "label map") -> "str | None":
    """medseg's organ key for a label name of another dataset, or None for a known structure outside medseg's organs
    (duodenum, bladder, vertebrae, ...; and ``background``).

    Raises:
        ConfigError: an unknown name (one line listing the known organ names).
    """
    normal = normalise_organ_name(name)
    if normal in _ORGAN_BY_NAME:
        return _ORGAN_BY_NAME[normal]
    ordered = _ordered(name)
    if normal in _OTHER_NAMES or _OTHER_PATTERNS.fullmatch(ordered):
        return None
    raise ConfigError(f"{source}: unknown organ name {name!r} ({known_names_text()})")


def known_names_text() -> str:
    """The organ names a label map may use, for one-line errors."""
    known = "; ".join(f"{key}: {', '.join(aliases)}" for key, aliases in ORGAN_ALIASES.items())
    return (f"known organ names: {known}; and structures outside medseg's organs, mapped to background: "
            f"{', '.join(OTHER_STRUCTURES[1:12])}, ...")


@dataclass(frozen=True)
class LabelMap:
    """Another dataset's label numbering, read from a file (:func:`read_label_map`).

    Attributes:
        source: the file.
        sha256: SHA-256 of its contents.
        names: label value -> the name the file gives it (background included when the file lists it).
        organs: label value -> medseg organ key, or None for structures outside medseg's organs (background).
    """

    source: str
    sha256: str
    names: dict[int, str] = field(hash=False)
    organs: dict[int, "str | None"] = field(hash=False)

    def to_dict(self, label_set: "LabelSet | None" = None) -> dict:
        """Plain-data record: source, sha256, and per value the name, organ key and class in ``label_set``; values
        that become background are listed with why under ``background``."""
        values, background = {}, {}
        for value in sorted(self.organs):
            organ = self.organs[value]
            cls = label_set.organs.index(organ) + 1 if label_set and organ in label_set.organs else 0
            values[str(value)] = {"name": self.names[value], "organ": organ, "class": cls}
            if cls == 0 and value != 0 and label_set is not None:
                background[str(value)] = (f"{self.names[value]}: not one of medseg's organs" if organ is None
                                          else f"{self.names[value]}: {organ} is not in label set {label_set.name}")
        return {"source": self.source, "sha256": self.sha256, "values": values, "background": background}


def read_label_map(path: "str | Path") -> LabelMap:
    """Read a label map: an nnU-Net ``dataset.json`` (``labels`` as name -> value, v2, or value -> name, v1) or a
    JSON object of organ name -> value.

    Raises:
        ConfigError: unreadable file, no labels, a value that is not a non-negative integer (nnU-Net region labels
            included), an unknown organ name, or an ambiguous map (two values for one organ, one value twice).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        content = json.loads(data)
    except OSError as exc:
        raise ConfigError(f"{path}: label map cannot be read ({exc.strerror or type(exc).__name__})") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: label map is not valid JSON ({exc})") from None
    labels = content.get("labels", content) if isinstance(content, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise ConfigError(f"{path}: label map holds no labels (expected a dataset.json with 'labels' or a JSON "
                          "object of organ name -> value)")
    names = {}
    for name, value in _name_value_pairs(labels, path):
        if value in names:
            raise ConfigError(f"{path}: label map is ambiguous: value {value} is both {names[value]!r} and {name!r}")
        names[value] = name
    organs = {value: organ_for_name(name, str(path)) for value, name in names.items()}
    seen: dict[str, int] = {}
    for value, organ in sorted(organs.items()):
        if organ is not None and organ in seen:
            raise ConfigError(f"{path}: label map is ambiguous: {names[seen[organ]]!r} ({seen[organ]}) and "
                              f"{names[value]!r} ({value}) are both {organ} ({known_names_text()})")
        if organ is not None:
            seen[organ] = value
    if organs.get(0) is not None:
        raise ConfigError(f"{path}: label map gives value 0 (background) to {names[0]!r}")
    return LabelMap(source=str(path), sha256=hashlib.sha256(data).hexdigest(), names=names, organs=organs)


def _name_value_pairs(labels: dict, path: Path) -> list[tuple[str, int]]:
    """``(name, value)`` pairs of a ``labels`` object in either direction (v1: ``{"1": "liver"}``; v2 and small maps:
    ``{"liver": 1}``)."""
    pairs = []
    for key, item in labels.items():
        if isinstance(item, str) and re.fullmatch(r"\d+", str(key)):
            name, value = item, int(key)
        elif isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            name, value = str(key), item
        else:
            raise ConfigError(f"{path}: label {key!r}: expected a non-negative integer value, got {item!r} "
                              "(nnU-Net region labels are not supported)")
        pairs.append((name, value))
    return pairs


#: Label folders whose parent is a dataset root (nnU-Net's ``labelsTr``, BTCV's ``label``, ...).
_LABEL_FOLDER_NAMES = ("labelsTr", "labelsTs", "label", "labels")


def find_label_map(cohort_dir: "str | Path | None", explicit: "str | Path | None" = None) -> "Path | None":
    """The label map to use: ``explicit`` when given (it must exist), else ``cohort_dir/dataset.json`` when present
    (for a label folder such as ``labelsTr/``, its parent's ``dataset.json``), else None (BTCV numbering).

    Raises:
        ConfigError: ``explicit`` is not a file.
    """
    if explicit is not None:
        explicit = Path(explicit)
        if not explicit.is_file():
            raise ConfigError(f"--label-map: {explicit}: no such file")
        return explicit
    if cohort_dir is None:
        return None
    folder = Path(cohort_dir)
    candidates = [folder / DATASET_JSON]
    if folder.name in _LABEL_FOLDER_NAMES:
        candidates.append(folder.parent / DATASET_JSON)
    return next((path for path in candidates if path.is_file()), None)


def with_label_map(label_set: "str | LabelSet | dict", label_map: "LabelMap | str | Path | None") -> LabelSet:
    """``label_set`` reading raw values in ``label_map``'s numbering (unchanged when ``label_map`` is None).

    Organs of the map outside the label set (and structures outside medseg's organs) map to background; the
    result's ``label_map`` record lists them (:meth:`LabelMap.to_dict`).
    """
    base = get_label_set(label_set)
    if label_map is None:
        return base
    if not isinstance(label_map, LabelMap):
        label_map = read_label_map(label_map)
    raw_to_class = {value: base.organs.index(organ) + 1 for value, organ in label_map.organs.items()
                    if organ in base.organs}
    return LabelSet(name=base.name, organs=base.organs, raw_to_class=raw_to_class,
                    label_map=label_map.to_dict(base))


def describe_label_map(label_set: LabelSet) -> "str | None":
    """One line saying which label map a label set reads and which of its labels become background (None if none)."""
    record = label_set.label_map
    if record is None:
        return None
    used = sum(1 for item in record["values"].values() if item["class"])
    text = (f"label map {record['source']} (sha256 {record['sha256'][:12]}): {used} labels mapped to "
            f"{label_set.name} classes")
    if record["background"]:
        text += "; mapped to background: " + ", ".join(f"{value} {why}" for value, why in record["background"].items())
    return text
