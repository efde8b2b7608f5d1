"""Reports a researcher reads: provenance header, penalised results apart, mean / std / median tables, extended
overlap metrics derived exactly, worst-case thumbnails."""
from __future__ import annotations

import html
import json
import os
import re

import numpy as np
import pytest

from helpers import tiny_case
from medseg.evaluation import evaluate_folders, write_reports
from medseg.evaluation.report import box_plot_figure, overlap_metrics, penalised_counts
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


def _overlaps(a, b) -> bool:
    """Whether two display bounding boxes (pixels) share any area."""
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_penalised_results_are_counted_and_plotted_apart(summary):
    summary, _ = summary
    counts = penalised_counts(summary, "standard", "hd95_mm")
    assert counts["spleen"] == 1 and sum(counts.values()) == 1
    spleen = summary["standard"]["cases"]["case0002"]["spleen"]
    assert spleen["status"] == "pred_empty"
    position = summary["organs"].index("spleen") + 1
    measured_hd95 = [case[o]["hd95_mm"] for case in summary["standard"]["cases"].values() for o in summary["organs"]
                     if case[o]["status"] == "scored"]
    for metric, penalty in (("hd95_mm", spleen["hd95_mm"]), ("dice", 0.0)):
        figure = box_plot_figure(summary, "standard", metric)
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        marked = [axis for axis in figure.axes if axis.collections]
        assert len(marked) == 1  # the crosses are drawn on one axis, at the penalty
        offsets = marked[0].collections[0].get_offsets()
        assert offsets.tolist() == [[position, pytest.approx(penalty * (100.0 if metric == "dice" else 1.0))]]
        if metric == "hd95_mm":  # apart: the crosses on their own panel above the boxes' axis, which they do not stretch
            boxes = [axis for axis in figure.axes if axis is not marked[0]]
            assert len(figure.axes) == 2 and len(boxes) == 1
            assert max(measured_hd95) <= boxes[0].get_ylim()[1] < penalty
            assert marked[0].get_ylim()[0] < penalty < marked[0].get_ylim()[1]
        # the legend of the crosses covers no plot and no organ name
        (legend,) = figure.legends + [axis.get_legend() for axis in figure.axes if axis.get_legend()]
        box = legend.get_window_extent(renderer)
        for axis in figure.axes:
            assert not _overlaps(box, axis.get_window_extent(renderer)), metric
            for tick in axis.get_xticklabels():
                assert not tick.get_text() or not _overlaps(box, tick.get_window_extent(renderer)), metric


def test_report_names_what_it_evaluates_and_gives_the_statistics(summary, tmp_path):
    summary, root = summary
    provenance = {"model": "TransUNet-Tiny", "checkpoint": "runs/demo/train/run/last.pt",
                  "training": {"epochs": 3, "lr": 0.1}, "data": "phantom",
                  "pipeline_record": str(tmp_path / "r" / "pipeline.json")}
    paths = write_reports(summary, tmp_path / "r", provenance=provenance, extended=True, thumbnails=2)
    markdown = paths["markdown"].read_text()
    assert "## What was evaluated" in markdown and "**Model:** TransUNet-Tiny" in markdown
    assert "**Training settings:** epochs=3, lr=0.1" in markdown
    assert "[pipeline.json](pipeline.json)" in markdown
    assert "population standard deviation (ddof=0)" in markdown
    assert "1 organ results carry worst-case values" in markdown and "Spleen 1" in markdown
    stats = markdown.split("## Per-organ statistics")[1].splitlines()
    assert stats[2].startswith("| Organ | DSC (%) mean | std | median | HD95 (mm) mean | std | median | n |")
    # every statistic of the table, recomputed here from the per-case values (population std, penalties included)
    table = stats[4:stats.index("", 4)]
    rows = {line.strip("| ").split(" | ")[0]: line.strip("| ").split(" | ") for line in table}
    for organ, name in zip(summary["organs"], summary["display_names"].values()):
        records = [case[organ] for case in summary["standard"]["cases"].values()
                   if case[organ]["status"] != "both_empty"]
        dice = np.array([r["dice"] for r in records]) * 100.0
        hd95 = np.array([r["hd95_mm"] for r in records])
        expected = ["\u2014"] * 6
        if records:
            statistics = (dice.mean(), dice.std(), np.median(dice), hd95.mean(), hd95.std(), np.median(hd95))
            expected = [f"{v:.2f}" for v in statistics]
        assert rows[name][1:9] == expected + [str(len(records)),
                                              str(sum(r["status"] in ("pred_empty", "ref_empty") for r in records))]
    assert rows["Spleen"][8] == "1" and float(rows["Spleen"][2]) > 0  # the missed spleen widens its DSC spread
    assert "## Overlap and volume errors" in markdown
    page = paths["html"].read_text()
    assert '<a href="pipeline.json">pipeline.json</a>' in page
    thumbnails = sorted(p.name for p in (tmp_path / "r").glob("worst_*.png"))
    assert len(thumbnails) == 2 and "worst_case0002_spleen.png" in thumbnails
    assert page.count('alt="worst_') == 2
    # without a provenance the predictions' predict_summary.json is used
    default = write_reports(summary, tmp_path / "d", thumbnails=0)["markdown"].read_text()
    assert "**Checkpoint:** runs/x/best.pt" in default and not list((tmp_path / "d").glob("worst_*"))


def test_record_links_work_from_the_report_folder(summary, tmp_path, monkeypatch):
    """evaluate run from a folder that is neither the predictions' nor the report's parent, with relative paths:
    the report's link to predict_summary.json must lead to the file when followed from the report's folder."""
    summary, root = summary
    monkeypatch.chdir(root)
    relative = dict(summary, prediction_dir="pred")
    out = tmp_path / "deep" / "report"
    paths = write_reports(relative, os.path.relpath(out, root), thumbnails=0)
    markdown = paths["markdown"].read_text()
    href = re.search(r"\*\*Prediction record:\*\* \[[^]]*\]\(([^)]+)\)", markdown).group(1)
    assert (out / href).resolve() == (root / "pred" / "predict_summary.json").resolve()
    html_href = re.search(r'<a href="([^"]+predict_summary.json)">', paths["html"].read_text()).group(1)
    assert html_href == href


def test_markdown_and_html_say_the_same(summary, tmp_path):
    """Both reports come from one description: every heading, table cell and list item of report.md is in
    report.html, in the same order."""
    summary, _ = summary
    paths = write_reports(summary, tmp_path / "r", extended=True, thumbnails=1)
    markdown, page = paths["markdown"].read_text(), html.unescape(paths["html"].read_text())
    headings = re.findall(r"^## (.+)$", markdown, flags=re.M)
    assert headings == re.findall(r"<h2>(.+?)</h2>", page) and len(headings) >= 6
    cells = [c.strip() for line in markdown.splitlines() if line.startswith("| ") for c in line.strip("|").split(" | ")]
    tables = "".join(re.findall(r"<table><thead>.*?</table>", page))  # the data tables (not the provenance fields)
    assert [c for c in cells if c] == [c for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", tables) if c]
    fields = [(label, re.sub(r"\[(.*?)\]\(.*?\)", r"\1", text))
              for label, text in re.findall(r"^- \*\*(.+?):\*\* (.+)$", markdown, flags=re.M)]
    html_fields = [(label, re.sub(r"<a href=.*?>(.*?)</a>", r"\1", text))
                   for label, text in re.findall(r"<tr><th>(.+?)</th><td>(.+?)</td></tr>", page)]
    assert fields and fields == html_fields
    assert re.findall(r"^\*\*(\w+\.)\*\*", markdown, flags=re.M) == re.findall(r"<p[^>]*><b>(\w+\.)</b>", page)


def test_worst_case_thumbnail_names_the_organs_it_shows(summary, monkeypatch):
    """The thumbnail carries a colour legend of exactly the organs drawn on its slice."""
    from medseg.evaluation import report
    from medseg.labels import get_label_set

    summary, _ = summary
    drawn = {}
    original = report.render_views

    def spy(rows, label_set, **kwargs):
        figure = original(rows, label_set, **kwargs)
        drawn["shown"] = sorted({int(v) for row in rows for view in row for v in np.unique(view.labels) if v})
        drawn["legend"] = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
        return figure

    monkeypatch.setattr(report, "render_views", spy)
    row = {"case": "case0002", "organ": "spleen", "dice": 0.0, "hd95": None, "status": "pred_empty"}
    assert report.worst_case_thumbnail(summary, row).startswith(b"\x89PNG")
    names = get_label_set(summary["label_set"]).display_names
    assert drawn["shown"] and drawn["legend"] == [names[c - 1] for c in drawn["shown"]]
    assert "Spleen" in drawn["legend"]


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
