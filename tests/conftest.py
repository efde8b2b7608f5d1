"""Shared fixtures: tiny synthetic cohorts written in the raw BTCV layout (fast, no phantom needed)."""
from __future__ import annotations

import os
from pathlib import Path

# As the command line does: OpenMP threads wait passively, so torch is not slowed down many times over when the
# cores are shared (data-loader workers, notebook kernels, parallel evaluation). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest

from medseg.io import Volume, write_volume

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


@pytest.fixture(scope="module")
def single_thread():
    """Run a test module's small models on one torch thread (faster for tiny models, and steady on a busy machine)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """A 4-case tiny cohort in the raw BTCV layout (read-only: copy it before modifying)."""
    return write_tiny_cohort(tmp_path_factory.mktemp("tiny_cohort"))


TINY_RUN_SETTINGS = [
    "synth.cases=6", "prepare.test_fraction=0.5", "train.img_size=64", "train.epochs=1", "train.batch_size=8",
    "predict.batch_size=16", "evaluate.workers=1",
]


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> dict:
    """Two finished demo-pipeline runs on one small phantom cohort: TransUNet-Tiny (a) and DS-TransUNet-Tiny (b).

    Trained for one short epoch at 64 px, so their scores are low; they exist to exercise every stage, the
    notebooks and the run comparison.
    """
    from medseg.pipeline import load_pipeline, run_pipeline

    root = tmp_path_factory.mktemp("runs")
    demo = Path(__file__).parents[1] / "pipelines" / "demo.yaml"
    run_a = root / "run_a"
    run_pipeline(load_pipeline(demo, TINY_RUN_SETTINGS + [f"run_dir={run_a}"]), progress=False)
    cohort = run_a / "synth" / "cohort"
    run_b = root / "run_b"
    settings_b = [s for s in TINY_RUN_SETTINGS if not s.startswith("synth.")]
    pipeline_b = load_pipeline(demo, settings_b + [f"run_dir={run_b}", f"data={cohort}", "train.model=DS-TransUNet-Tiny"])
    assert "synth" not in pipeline_b.stages  # a data folder replaces the phantom cohort
    run_pipeline(pipeline_b, progress=False)
    return {"a": run_a, "b": run_b, "cohort": cohort}
