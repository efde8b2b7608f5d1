"""Cohort discovery and train/test splits.

Three folder layouts are recognised (labels are optional: images alone are an inference cohort):

* raw BTCV / Synapse: ``img/img0001.nii.gz`` with ``label/label0001.nii.gz`` (also below ``RawData/Training/``);
* nnU-Net: ``imagesTr/NAME_0000.nii.gz`` with ``labelsTr/NAME.nii.gz`` (and ``imagesTs/``);
* plain: ``images/`` with ``labels/`` holding files of the same case, or one flat folder of NIfTI files where a
  label file is named like its image with a ``_label``/``_seg``/``_gt`` suffix.

An image may also be a DICOM series: a sub-folder (``img/img0001/``) or ``.zip`` (``img/img0001.zip``) in the
image folder, with its label as NIfTI on the series' grid (the grid :func:`medseg.dicom.read_series` gives).

Every case gets an id in the ``case0001`` style: the last run of digits in the file name, zero-padded to four.
A name without digits keeps its stem as the id.

In a labelled cohort (a label folder, or label files in a flat folder) an image without a label is reported and
skipped unless unlabelled cases are asked for explicitly (``allow_unlabelled``, ``medseg prepare
--allow-unlabelled``): it would otherwise slip into a training set as a case without a reference. A file in
``img/`` or ``imagesTr/`` that does not follow its layout's naming (``img0001``, ``NAME_0000``) is reported and
skipped. :func:`discover_cohort` returns both lists; :func:`discover_cases` only the cases (and logs the skips).
"""
from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from medseg.dicom import is_dicom_input
from medseg.errors import ConfigError, InputError
from medseg.io import is_nifti, strip_nifti_suffix

#: The TransUNet paper's Synapse split (by case id).
SYNAPSE_TEST_IDS: tuple[str, ...] = tuple(
    f"case{n:04d}" for n in (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)
)
SYNAPSE_TRAIN_IDS: tuple[str, ...] = tuple(
    f"case{n:04d}" for n in (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)
)

#: File-name endings that mark a label file in a flat folder.
LABEL_SUFFIXES = ("_label", "_labels", "_seg", "_gt", "_mask")
#: Folder names that hold images and labels, in order of preference.
IMAGE_DIR_NAMES = ("img", "imagesTr", "images", "image")
LABEL_DIR_NAMES = ("label", "labelsTr", "labels")
_NNUNET_CHANNEL = re.compile(r"_(\d{4})$")
#: File-name stems each layout's image folder expects (other files there are reported and skipped).
IMAGE_NAMING = {"img": (re.compile(r"^img\d+$"), "img<NNNN>"),
                "imagesTr": (re.compile(r"^.+_0000$"), "NAME_0000"),
                "imagesTs": (re.compile(r"^.+_0000$"), "NAME_0000")}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Case:
    """One case of a cohort.

    Attributes:
        case_id: ``case0001`` style identifier.
        image: path of the CT volume (NIfTI, or a DICOM series folder / .zip: see :func:`medseg.dicom.read_image`).
        label: path of the reference label volume, or None for an inference-only case.
    """

    case_id: str
    image: Path
    label: "Path | None" = None


@dataclass
class Cohort:
    """The cases of a cohort folder and the files that were left out.

    Attributes:
        cases: usable cases sorted by id.
        skipped: ``{file path: reason}`` for images left out (no label in a labelled cohort, or a name that does
            not follow the layout).
        labelled: the cohort holds labels (a label folder or label files).
    """

    cases: list[Case]
    skipped: dict[str, str] = field(default_factory=dict)
    labelled: bool = False


def case_id_from_path(path: "str | Path") -> str:
    """Case id of a NIfTI file name: ``img0001.nii.gz`` -> ``case0001``, ``BTCV_12_0000.nii.gz`` -> ``case0012``.

    The nnU-Net channel suffix ``_0000`` and label suffixes such as ``_seg`` are ignored.
    """
    stem = strip_nifti_suffix(Path(path).name)
    stem = _NNUNET_CHANNEL.sub("", stem) if _NNUNET_CHANNEL.search(stem) and re.search(r"\d", stem[:-5]) else stem
    for suffix in LABEL_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    digits = re.findall(r"\d+", stem)
    return f"case{int(digits[-1]):04d}" if digits else stem


def nifti_files(folder: Path) -> list[Path]:
    """The NIfTI files directly in ``folder`` (hidden files skipped), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p) and not p.name.startswith("."))


def image_files(folder: Path) -> list[Path]:
    """The images directly in ``folder``: NIfTI files and DICOM series (sub-folders or ``.zip`` files), by name."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")
                  and ((p.is_file() and is_nifti(p)) or is_dicom_input(p)))


def index_by_case(files: list[Path], folder: Path) -> dict[str, Path]:
    """``{case_id: path}``; two files with the same case id are an :class:`InputError` naming both."""
    indexed: dict[str, Path] = {}
    for path in files:
        case_id = case_id_from_path(path)
        if case_id in indexed:
            raise InputError(f"{folder}: {indexed[case_id].name} and {path.name} both map to case id {case_id}")
        indexed[case_id] = path
    return indexed


def _follows_naming(path: Path, folder: Path) -> "str | None":
    """None when ``path`` is named as its layout's image folder expects, else the expected pattern."""
    rule = IMAGE_NAMING.get(folder.name)
    if rule is None:
        return None
    pattern, shown = rule
    stem = strip_nifti_suffix(path.name)
    stem = stem[:-4] if stem.lower().endswith(".zip") else stem  # a zipped DICOM series
    return None if pattern.match(stem) else shown


def _pair(image_dir: Path, label_dir: "Path | None", skipped: dict) -> list[Case]:
    files = []
    for path in image_files(image_dir):
        expected = _follows_naming(path, image_dir)
        if expected is None:
            files.append(path)
        else:
            skipped[str(path)] = f"file name does not follow the {expected} naming of {image_dir.name}/"
    images = index_by_case(files, image_dir)
    if not images:
        raise InputError(f"{image_dir}: no NIfTI images (.nii or .nii.gz) found")
    labels = index_by_case(nifti_files(label_dir), label_dir) if label_dir is not None else {}
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise InputError(f"{label_dir / labels[orphans[0]].name}: label has no matching image in {image_dir}")
    return [Case(case_id, images[case_id], labels.get(case_id)) for case_id in sorted(images)]


def _first_existing(root: Path, names: tuple[str, ...]) -> "Path | None":
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def discover_cohort(root: "str | Path", allow_unlabelled: bool = False) -> Cohort:
    """Find the cases of a cohort folder in any of the supported layouts, and the files left out.

    Args:
        root: cohort folder (raw BTCV, nnU-Net, or plain layout; see the module docstring).
        allow_unlabelled: keep images without a label in a labelled cohort (as cases with ``label`` None); by
            default they are skipped and listed. A cohort without any label is always an inference cohort.

    Returns:
        A :class:`Cohort`: cases sorted by id, and ``skipped`` ``{file: reason}``.

    Raises:
        InputError: the folder is missing or empty, file names collide on a case id, or a label has no image.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: cohort folder not found")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    nested = root / "RawData" / "Training"
    if nested.is_dir():
        root = nested

    skipped: dict[str, str] = {}
    image_dir = _first_existing(root, IMAGE_DIR_NAMES)
    if image_dir is not None:
        label_dir = _first_existing(root, LABEL_DIR_NAMES)
        cases = _pair(image_dir, label_dir, skipped)
        test_dir = root / "imagesTs" if image_dir.name == "imagesTr" else None
        if test_dir is not None and test_dir.is_dir():
            known = {c.case_id for c in cases}
            cases += [c for c in _pair(test_dir, None, skipped) if c.case_id not in known]
        labelled = label_dir is not None and any(c.label is not None for c in cases)
    else:
        files = nifti_files(root)
        if not files:
            raise InputError(f"{root}: no NIfTI files and no img/, imagesTr/ or images/ folder found")
        labels = [p for p in files if strip_nifti_suffix(p.name).lower().endswith(LABEL_SUFFIXES)]
        images = [p for p in files if p not in labels]
        if not images:
            raise InputError(f"{root}: only label files found, no images")
        image_index = index_by_case(images, root)
        label_index = index_by_case(labels, root)
        orphans = sorted(set(label_index) - set(image_index))
        if orphans:
            raise InputError(f"{label_index[orphans[0]]}: label has no matching image")
        cases = [Case(cid, image_index[cid], label_index.get(cid)) for cid in sorted(image_index)]
        labelled = bool(label_index)
    if labelled and not allow_unlabelled:
        for case in cases:
            if case.label is None:
                skipped[str(case.image)] = ("image has no label in a labelled cohort "
                                            "(pass --allow-unlabelled to keep it as an unlabelled case)")
        cases = [c for c in cases if c.label is not None]
    return Cohort(sorted(cases, key=lambda c: c.case_id), skipped, labelled)


def discover_cases(root: "str | Path", allow_unlabelled: bool = False) -> list[Case]:
    """The cases of :func:`discover_cohort`; each skipped file is logged as a warning."""
    cohort = discover_cohort(root, allow_unlabelled=allow_unlabelled)
    for path, reason in cohort.skipped.items():
        log.warning("%s: skipped: %s", path, reason)
    return cohort.cases


def make_split(case_ids, mode: str = "auto", test_fraction: float = 0.4, seed: int = 1234) -> dict[str, str]:
    """Assign each case to ``train`` or ``test``.

    Args:
        case_ids: the cohort's case ids.
        mode: ``paper`` (the TransUNet Synapse split: 18 train / 12 test by id; cases outside it are an error),
            ``seeded`` (a shuffled split with ``seed``), ``all-train``/``all-test``, or ``auto``: the paper split
            when the cohort holds all 30 Synapse training ids, else seeded.
        test_fraction: share of cases in the test set for a seeded split (at least one case each side when there
            are two or more cases).
        seed: random seed of the seeded split; the same ids and seed always give the same split.

    Returns:
        ``{case_id: "train" | "test"}``.
    """
    ids = sorted(set(case_ids))
    paper_ids = set(SYNAPSE_TEST_IDS) | set(SYNAPSE_TRAIN_IDS)
    if mode == "auto":
        mode = "paper" if paper_ids <= set(ids) else "seeded"
    if mode == "paper":
        unknown = [i for i in ids if i not in paper_ids]
        if unknown:
            raise ConfigError(f"split: case {unknown[0]} is not in the Synapse paper split (use split: seeded)")
        return {i: ("test" if i in SYNAPSE_TEST_IDS else "train") for i in ids}
    if mode in ("all-train", "all-test"):
        return {i: mode.split("-")[1] for i in ids}
    if mode != "seeded":
        raise ConfigError(f"split: unknown mode {mode!r} (auto, paper, seeded, all-train, all-test)")
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test_fraction: must be in [0, 1), got {test_fraction}")
    shuffled = list(ids)
    random.Random(seed).shuffle(shuffled)
    n_test = round(len(ids) * test_fraction)
    if len(ids) >= 2 and test_fraction > 0:
        n_test = min(max(n_test, 1), len(ids) - 1)
    test = set(shuffled[:n_test])
    return {i: ("test" if i in test else "train") for i in ids}
