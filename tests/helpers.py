"""Plain helpers the tests share: the test data folder and tiny synthetic cohorts in the raw BTCV layout.

Imported by name (``from helpers import tiny_case``) from the test modules and from ``conftest.py``; fixtures live
in ``conftest.py``. (Test modules never import ``conftest`` itself: pytest loads it under its own name, and a second
import under another name would make a second copy.)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.io import Volume, write_volume

#: Committed test fixtures (reference parity files, the real CT sample).
DATA_DIR = Path(__file__).parent / "data"


def tiny_case(seed: int, shape=(24, 20, 10), affine=None) -> tuple[Volume, Volume]:
    """A small CT-like volume (int16 HU) with a few raw BTCV organs as boxes and balls.

    Axis order is the file's voxel order; the default affine is 0.8 x 0.8 x 3 mm, RAS-aligned.
    """
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 20, shape).astype(np.float32) - 50
    label = np.zeros(shape, dtype=np.uint8)
    i, j, k = np.indices(shape)
    centre = np.array(shape) / 2 + rng.uniform(-1, 1, 3)
    liver = ((i - centre[0] + 4) ** 2 / 36 + (j - centre[1]) ** 2 / 25 + (k - centre[2]) ** 2 / 9) < 1
    label[liver] = 6
    image[liver] = 120
    label[2:6, 3:7, 2:8] = 8  # aorta
    image[2:6, 3:7, 2:8] = 250
    label[-6:-2, -6:-2, 1:4] = 1  # spleen
    image[-6:-2, -6:-2, 1:4] = 110
    if affine is None:
        affine = np.diag([0.8, 0.8, 3.0, 1.0])
        affine[:3, 3] = [-10.0, -8.0, -15.0]
    return Volume(image.round().astype(np.int16), affine), Volume(label, affine)


def write_tiny_cohort(root: Path, n_cases: int = 4, shape=(24, 20, 10)) -> Path:
    """Write ``n_cases`` tiny cases as ``img/imgXXXX.nii.gz`` + ``label/labelXXXX.nii.gz`` under ``root``."""
    for n in range(1, n_cases + 1):
        image, label = tiny_case(n, shape)
        write_volume(root / "img" / f"img{n:04d}.nii.gz", image)
        write_volume(root / "label" / f"label{n:04d}.nii.gz", label)
    return root


TINY_RUN_SETTINGS = [
    "synth.cases=6", "prepare.test_fraction=0.5", "train.img_size=64", "train.epochs=1", "train.batch_size=8",
    "predict.batch_size=16", "evaluate.workers=1", "postprocess.cases=2",
]
