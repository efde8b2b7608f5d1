"""Reports a researcher reads: provenance header, penalised results apart, mean / std / median tables, extended
overlap metrics derived exactly, worst-case thumbnails."""
from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import tiny_case
from medseg.evaluation import evaluate_folders, write_reports
from medseg.evaluation.report import box_plot_png, overlap_metrics, penalised_counts
from medseg.io import Volume, write_volume
from medseg.labels import SYNAPSE8, remap_labels


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    """A cohort (img/ + label/) of three cases; case 2 misses the spleen (a penalised result)."""
    root = tmp_path_factory.mktemp("report")
    for n in (1, 2, 3):
        image, label = tiny_case(n, shape=(20, 18, 6))
        write_volume(root / "cohort" / "img" / f"img{n:04d}.nii.gz", image)
        write_volume(root / "cohort" / "label" / f"label{n:04d}.nii.gz", label)
        classes = remap_labels(label.array, SYNAPSE8)
        prediction = np.roll(classes, n - 1, axis=0)
        if n == 2:
            prediction[prediction == SYNAPSE8.organs.index("spleen") + 1] = 0
        write_volume(root / "pred" / f"case{n:04d}.nii.gz", Volume(prediction, label.affine), dtype=np.uint8)
    (root / "pred" / "predict_summary.json").write_text(json.dumps({"checkpoint": "runs/x/best.pt",
                                                                    "input": "cohort/img"}))
    return evaluate_folders(root / "cohort", root / "pred", labels="synapse8", protocol="both", workers=1,
                            progress=False), root


def test_penalised_results_are_counted_and_plotted_apart(summary):
    summary, _ = summary
    counts = penalised_counts(summary, "standard", "hd95_mm")
    assert counts["spleen"] == 1 and sum(counts.values()) == 1
    assert summary["standard"]["cases"]["case0002"]["spleen"]["status"] == "pred_empty"
    for metric in ("dice", "hd95_mm"):
        assert box_plot_png(summary, "standard", metric).startswith(b"\x89PNG")


def test_report_names_what_it_evaluates_and_gives_the_statistics(summary, tmp_path):
    summary, root = summary
    provenance = {"model": "TransUNet-Tiny", "checkpoint": "runs/demo/train/run/last.pt",
                  "training": {"epochs": 3, "lr": 0.1}, "data": "phantom", "pipeline_record": "pipeline.json"}
    paths = write_reports(summary, tmp_path / "r", provenance=provenance, extended=True, thumbnails=2)
    markdown = paths["markdown"].read_text()
    assert "## What was evaluated" in markdown and "**Model:** TransUNet-Tiny" in markdown
    assert "**Training settings:** epochs=3, lr=0.1" in markdown
    assert "[pipeline.json](pipeline.json)" in markdown
    assert "population standard deviation (ddof=0)" in markdown
    assert "1 organ results carry worst-case values" in markdown and "Spleen 1" in markdown
    stats = markdown.split("## Per-organ statistics")[1].splitlines()
    assert stats[2].startswith("| Organ | DSC (%) mean | std | median | HD95 (mm) mean | std | median | n |")
    assert "## Overlap and volume errors" in markdown
    page = paths["html"].read_text()
    assert '<a href="pipeline.json">pipeline.json</a>' in page
    thumbnails = sorted(p.name for p in (tmp_path / "r").glob("worst_*.png"))
    assert len(thumbnails) == 2 and "worst_case0002_spleen.png" in thumbnails
    assert page.count('alt="worst_') == 2
    # without a provenance the predictions' predict_summary.json is used
    default = write_reports(summary, tmp_path / "d", thumbnails=0)["markdown"].read_text()
    assert "**Checkpoint:** runs/x/best.pt" in default and not list((tmp_path / "d").glob("worst_*"))


def test_extended_metrics_are_exact():
    dice, pred, ref = 2 * 30 / (40 + 50), 40.0, 50.0  # TP 30, FP 10, FN 20
    derived = overlap_metrics({"dice": dice, "pred_volume_ml": pred, "ref_volume_ml": ref})
    assert derived == pytest.approx({"iou": 30 / 60, "precision": 30 / 40, "recall": 30 / 50, "tp_ml": 30.0,
                                     "fp_ml": 10.0, "fn_ml": 20.0})
    assert overlap_metrics({"dice": None, "pred_volume_ml": 1.0, "ref_volume_ml": 0.0}) is None


def test_evaluate_command_options(summary, tmp_path):
    from medseg.cli import main

    _, root = summary
    assert main(["evaluate", str(root / "cohort"), str(root / "pred"), "-o", str(tmp_path / "r"), "--workers", "1",
                 "--no-progress", "--extended-metrics", "--thumbnails", "1"]) == 0
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "## Overlap and volume errors" in markdown and "| IoU (%) |" in markdown
    assert len(list((tmp_path / "r").glob("worst_*.png"))) == 1
