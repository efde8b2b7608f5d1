"""Shared fixtures: tiny synthetic cohorts written in the raw BTCV layout (fast, no phantom needed)."""
from __future__ import annotations

import os
from pathlib import Path

# As the command line does: OpenMP threads wait passively, so torch is not slowed down many times over when the
# cores are shared (data-loader workers, notebook kernels, parallel evaluation). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

from helpers import TINY_RUN_SETTINGS, write_tiny_cohort


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


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> dict:
    """Two finished demo-pipeline runs on one small phantom cohort: TransUNet-Tiny (a) and DS-TransUNet-Tiny (b).

    Trained for one short epoch at 64 px, so their scores are low; they exist to exercise every stage and the
    run comparison (the notebooks run on a demo run of their own: tests/test_notebooks.py).
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
