"""Evaluation reports: summary.json, per_case.csv, report.md, report.html and box plots, written atomically.

All files are derived from the summary dict of :func:`medseg.evaluation.cohort.evaluate_folders` (its layout is
documented in :mod:`medseg.evaluation.cohort`), so a notebook can rebuild any of them from a saved summary.json.

* ``summary.json``: the summary itself.
* ``per_case.csv``: tidy table, one row per case x organ x protocol x metric, columns
  ``case, organ, metric, value, protocol, status`` (value empty where an organ is not scored).
* ``dice_boxplot.png`` / ``hd95_boxplot.png``: one box per organ over cases (standard protocol when it was run,
  otherwise the TransUNet protocol).
* ``report.md`` / ``report.html``, rendered by the Jinja2 templates in ``medseg/evaluation/templates`` from one
  description of the sections (:func:`report_sections`), so both hold the same content: what was evaluated (model, checkpoint, training settings, data and a link to
  the pipeline record, when known); the per-organ table in the label set's class order (for ``synapse8`` the
  TransUNet paper's column order: Aorta, Gallbladder, Kidney L, Kidney R, Liver, Pancreas, Spleen, Stomach) with the
  mean DSC and HD95; per-organ mean, std and median (std is the population std, ddof=0, everywhere); optionally
  IoU, precision, recall and TP / FP / FN volumes; the box plots (embedded in the HTML); the worst cases with
  overlay thumbnails and a colour legend; missing predictions, errors, and a line on the protocol used. Links to
  records (``predict_summary.json``, ``pipeline.json``) are relative to the report's folder.

Penalised results (a missed organ, an organ predicted where the reference has none, a missing prediction) carry
worst-case values: HD95 = the image diagonal (hundreds of mm), DSC 0. The box plots draw them apart from the boxes
(HD95: on a separate panel above a broken axis; DSC: as red crosses at 0), with their count, so a penalty never
stretches the axis of the real distances, and the tables give the count beside each mean.

Extended overlap metrics (``extended=True``) are derived per case and organ from the standard protocol's DSC and the
two volumes: ``TP = DSC (P + R) / 2``, ``FP = P - TP``, ``FN = R - TP`` (ml), ``IoU = TP / (P + R - TP)``,
``precision = TP / P``, ``recall = TP / R``; exact up to the 0.001 ml rounding of the stored volumes.
"""
from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medseg.data.cohort import discover_cases
from medseg.errors import MedsegError
from medseg.io import Volume, atomic_path, read_json, read_provenance, read_volume, write_json, write_text
from medseg.labels import describe_label_map, get_label_set, remap_labels
from medseg.quality import comparison_line, write_flags_csv
from medseg.visualize import axial_view, oriented_case, png_bytes, render_views

#: Row label, unit scale and decimals of each metric in the report tables.
_METRIC_ROWS = {
    ("standard", "dice"): ("DSC (%)", 100.0, 2),
    ("standard", "hd95_mm"): ("HD95 (mm)", 1.0, 2),
    ("standard", "assd_mm"): ("ASSD (mm)", 1.0, 2),
    ("standard", "nsd"): ("NSD @ {tol:g} mm (%)", 100.0, 2),
    ("standard", "ref_volume_ml"): ("Reference volume (ml)", 1.0, 2),
    ("standard", "pred_volume_ml"): ("Predicted volume (ml)", 1.0, 2),
    ("transunet", "dice"): ("DSC (%), TransUNet protocol", 100.0, 2),
    ("transunet", "hd95_voxels"): ("HD95 (voxels), TransUNet protocol", 1.0, 2),
}

_PROTOCOL_LINES = {
    "standard": (
        "Standard protocol: Dice; HD95 = the larger of the two directed 95th percentiles of boundary distances, in mm "
        "with each reference's spacing (as MONAI compute_hausdorff_distance(percentile=95)); ASSD = mean of the "
        "pooled boundary distances of both directions (mm); NSD at {tol:g} mm. Empty masks: both empty = not scored "
        "(counted); one empty or a missing prediction = a scored failure with Dice 0, NSD 0 and HD95 = ASSD = the "
        "image diagonal in mm."
    ),
    "transunet": (
        "TransUNet protocol (the paper's): medpy Dice and medpy HD95 (one 95th percentile over the pooled distances "
        "of both directions) in voxel units without spacing; prediction non-empty and reference empty = (DSC 1, "
        "HD95 0); prediction empty = (0, 0); every case enters the means."
    ),
}


def write_reports(summary: dict, out_dir: "str | Path", *, worst: int = 10, title: str = "",
                  extra_figures: "dict[str, bytes] | None" = None, provenance: "dict | None" = None,
                  extended: bool = False, thumbnails: int = 4,
                  images: "dict[str, str | Path] | None" = None) -> dict[str, Path]:
    """Write summary.json, per_case.csv, the box plots, report.md and report.html into ``out_dir``.

    Args:
        summary: the dict returned by :func:`medseg.evaluation.cohort.evaluate_folders`.
        out_dir: report folder (created if missing).
        worst: number of worst (case, organ) results listed.
        title: report heading (default "medseg evaluation report").
        extra_figures: more PNG figures ``{file stem: png bytes}`` (a training curve, say), saved beside the
            report and shown after the box plots.
        provenance: what was evaluated, ``{"model", "checkpoint", "training", "data", "pipeline_record", ...}``
            (any subset; plain values); default: read from the predictions' ``predict_summary.json`` when present.
        extended: also report IoU, precision, recall and TP / FP / FN volumes (standard protocol).
        thumbnails: overlay thumbnails of this many worst (case, organ) results (0: none).
        images: ``{case_id: CT file}`` shown under the thumbnails (default: found in the reference cohort folder).

    Returns:
        ``{"summary": path, "per_case": path, "markdown": path, "html": path, "dice_boxplot": path, ...}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"summary": write_json(out_dir / "summary.json", summary)}

    table = per_case_table(summary)
    paths["per_case"] = out_dir / "per_case.csv"
    with atomic_path(paths["per_case"], suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    if "flags" in summary:
        paths["quality_flags"] = write_flags_csv(out_dir / "quality_flags.csv", summary["flags"])

    figures = {}
    protocol = primary_protocol(summary)
    for metric in summary[protocol]["metrics"][:2]:  # dice and the HD95 of that protocol
        name = "dice_boxplot" if metric == "dice" else "hd95_boxplot"
        png = box_plot_png(summary, protocol, metric)
        paths[name] = out_dir / f"{name}.png"
        with atomic_path(paths[name], suffix=".png") as tmp:
            tmp.write_bytes(png)
        figures[name] = png
    for name, png in (extra_figures or {}).items():
        paths[name] = out_dir / f"{name}.png"
        with atomic_path(paths[name], suffix=".png") as tmp:
            tmp.write_bytes(png)
        figures[name] = png

    worst_rows = worst_cases(summary, worst)
    thumbs = {}
    for row in worst_rows[:thumbnails]:
        png = worst_case_thumbnail(summary, row, image_path=(images or {}).get(row["case"]))
        if png is not None:
            name = f"worst_{row['case']}_{row['organ']}"
            paths[name] = out_dir / f"{name}.png"
            with atomic_path(paths[name], suffix=".png") as tmp:
                tmp.write_bytes(png)
            thumbs[name] = png
    if provenance is None:
        provenance = provenance_from_predictions(summary)
    context = {"provenance": provenance or {}, "extended": extended, "thumbnails": thumbs, "report_dir": out_dir}
    title = title or DEFAULT_TITLE
    paths["markdown"] = write_text(out_dir / "report.md",
                                   render_markdown(summary, worst_rows, title, figures, context=context))
    paths["html"] = write_text(out_dir / "report.html",
                               render_html(summary, worst_rows, figures, title, context=context))
    return paths


#: Statuses whose values are penalties (worst-case values), not measurements.
PENALISED = ("pred_empty", "ref_empty", "missing_prediction")
STD_CONVENTION = "std is the population standard deviation (ddof=0) over the scored cases"


def provenance_from_predictions(summary: dict) -> dict:
    """What ``medseg predict`` recorded next to the predictions (checkpoint, input), when it did: its
    ``predict_summary.json``, or else (a single-file prediction, a folder of copied files) the model and settings that
    every prediction's own header names (``prediction_origin``), when they all name the same."""
    folder = summary.get("prediction_dir")
    if not folder or not (Path(folder) / "predict_summary.json").is_file():
        groups = summary.get("prediction_origin") or []
        if not folder or len(groups) != 1 or not groups[0].get("model"):
            return {}
        try:  # every file was made alike (one group): the first one's header says by what
            record = read_provenance(Path(folder) / groups[0]["files"][0]) or {}
        except Exception:  # an unreadable header only loses these lines, never the report
            return {}
        return {"model": record.get("model_name"), "checkpoint": record.get("checkpoint"),
                "checkpoint_sha256": record.get("checkpoint_sha256"),
                "data": record.get("input") if len(groups[0]["files"]) == 1 else None}
    try:
        record = read_json(Path(folder) / "predict_summary.json")
    except Exception:  # an unreadable record only loses the header, never the report
        return {}
    return {"checkpoint": record.get("checkpoint"), "data": record.get("input"),
            "prediction_record": str(Path(folder) / "predict_summary.json")}


def penalised_counts(summary: dict, protocol: str, metric: str) -> dict[str, int]:
    """Per organ, how many cases carry a penalty value for ``metric`` (see :data:`PENALISED`)."""
    counts = {}
    for organ in summary["organs"]:
        counts[organ] = sum(1 for case in summary[protocol]["cases"].values()
                            if case[organ]["status"] in PENALISED and case[organ].get(metric) is not None)
    return counts


def overlap_metrics(record: dict) -> "dict | None":
    """IoU, precision, recall and TP / FP / FN volumes (ml) of one standard-protocol record (None if unscored).

    Derived from DSC and the two volumes (see the module docstring); precision / recall are None for an empty
    prediction / reference.
    """
    dice, pred, ref = record.get("dice"), record.get("pred_volume_ml"), record.get("ref_volume_ml")
    if dice is None or pred is None or ref is None:
        return None
    tp = min(dice * (pred + ref) / 2.0, pred, ref)
    union = pred + ref - tp
    return {"iou": tp / union if union > 0 else None, "precision": tp / pred if pred > 0 else None,
            "recall": tp / ref if ref > 0 else None, "tp_ml": tp, "fp_ml": max(pred - tp, 0.0),
            "fn_ml": max(ref - tp, 0.0)}


_EXTENDED = (("iou", "IoU (%)", 100.0), ("precision", "Precision (%)", 100.0), ("recall", "Recall (%)", 100.0),
             ("tp_ml", "TP volume (ml)", 1.0), ("fp_ml", "FP volume (ml)", 1.0), ("fn_ml", "FN volume (ml)", 1.0))


def extended_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Per organ: mean (std) of IoU, precision, recall and TP / FP / FN volumes over the scored cases."""
    names = summary.get("display_names", {})
    header = ["Organ"] + [label for _, label, _ in _EXTENDED]
    rows = []
    for organ in summary["organs"]:
        values = {key: [] for key, _, _ in _EXTENDED}
        for case in summary["standard"]["cases"].values():
            derived = overlap_metrics(case[organ]) if case[organ]["status"] != "both_empty" else None
            for key in values:
                if derived is not None and derived[key] is not None:
                    values[key].append(derived[key])
        cells = []
        for key, _, scale in _EXTENDED:
            v = values[key]
            cells.append(f"{np.mean(v) * scale:.2f} ({np.std(v) * scale:.2f})" if v else "\u2014")
        rows.append([names.get(organ, organ)] + cells)
    return header, rows


def statistics_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Per organ (rows): mean, std and median of DSC and HD95 of the primary protocol, n and penalised counts."""
    protocol = primary_protocol(summary)
    block = summary[protocol]
    dice_key, hd_key = block["metrics"][0], block["metrics"][1]
    dice_label, dice_scale, _ = _METRIC_ROWS[(protocol, dice_key)]
    hd_label, hd_scale, _ = _METRIC_ROWS[(protocol, hd_key)]
    names = summary.get("display_names", {})
    header = ["Organ", f"{dice_label} mean", "std", "median", f"{hd_label} mean", "std", "median", "n",
              "penalised"]
    penalised = penalised_counts(summary, protocol, hd_key)
    rows = []
    for organ in summary["organs"]:
        d, h = block["organs"][organ][dice_key], block["organs"][organ][hd_key]
        rows.append([names.get(organ, organ), _fmt(d["mean"], dice_scale), _fmt(d["std"], dice_scale),
                     _fmt(d["median"], dice_scale), _fmt(h["mean"], hd_scale), _fmt(h["std"], hd_scale),
                     _fmt(h["median"], hd_scale), str(d["n"]), str(penalised[organ])])
    return header, rows


def provenance_rows(provenance: dict) -> list[tuple[str, str]]:
    """``(label, text)`` rows of the "What was evaluated" block, in a fixed order, values flattened."""
    labels = {"model": "Model", "checkpoint": "Checkpoint", "checkpoint_sha256": "Checkpoint sha256",
              "training": "Training settings", "data": "Data", "prediction_record": "Prediction record",
              "pipeline_record": "Pipeline record"}
    rows = []
    for key in list(labels) + sorted(set(provenance) - set(labels)):
        value = provenance.get(key)
        if value in (None, "", {}):
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        rows.append((labels.get(key, key.replace("_", " ").capitalize()), str(value)))
    return rows


def primary_protocol(summary: dict) -> str:
    """``standard`` when the summary holds it, otherwise ``transunet``."""
    return "standard" if "standard" in summary else "transunet"


def per_case_table(summary: dict):
    """Tidy pandas DataFrame: one row per case x organ x protocol x metric.

    Columns: ``case, organ, metric, value, protocol, status``; ``value`` is NaN where the organ is not scored.
    """
    rows = []
    for protocol in ("standard", "transunet"):
        if protocol not in summary:
            continue
        metrics = summary[protocol]["metrics"]
        for case_id, organs in sorted(summary[protocol]["cases"].items()):
            for organ in summary["organs"]:
                record = organs[organ]
                for metric in metrics:
                    rows.append({"case": case_id, "organ": organ, "metric": metric, "value": record.get(metric),
                                 "protocol": protocol, "status": record["status"]})
    columns = ["case", "organ", "metric", "value", "protocol", "status"]
    table = pd.DataFrame(rows, columns=columns)
    table["value"] = pd.to_numeric(table["value"], errors="coerce")
    return table


def worst_cases(summary: dict, n: int = 10) -> list[dict]:
    """The ``n`` (case, organ) results with the lowest Dice of the primary protocol (ties: larger HD95 first)."""
    protocol = primary_protocol(summary)
    hd_key = summary[protocol]["metrics"][1]
    rows = []
    for case_id, organs in summary[protocol]["cases"].items():
        for organ, record in organs.items():
            if record.get("dice") is None:
                continue
            flags = [f["flag"] for f in summary.get("flags", {}).get(case_id, []) if f["organ"] == organ]
            rows.append({"case": case_id, "organ": organ, "dice": record["dice"], "hd95": record.get(hd_key),
                         "status": record["status"], "flags": ", ".join(flags)})
    rows.sort(key=lambda r: (r["dice"], -(r["hd95"] or 0.0), r["case"], r["organ"]))
    return rows[:n]


def organ_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """The per-organ table: header ``["", "Mean", organ names...]`` and formatted rows (organ means over cases)."""
    organs = summary["organs"]
    names = summary.get("display_names", {})
    header = ["", "Mean"] + [names.get(o, o) for o in organs]
    rows = []
    for (protocol, metric), (label, scale, digits) in _METRIC_ROWS.items():
        if protocol not in summary:
            continue
        block = summary[protocol]
        label = label.format(tol=summary.get("tolerance_mm", 0.0))
        mean = "" if metric.endswith("_ml") else _fmt(block["foreground_mean"].get(metric), scale, digits)
        cells = [_fmt(block["organs"][o][metric]["mean"], scale, digits) for o in organs]
        rows.append([label, mean] + cells)
    protocol = primary_protocol(summary)
    counts = []
    for organ in organs:
        c = summary[protocol]["organs"][organ]["status_counts"]
        failures = c["pred_empty"] + c["ref_empty"] + c["missing_prediction"] + c.get("unscorable_prediction", 0)
        counts.append(f"{c['scored']} / {failures} / {c['both_empty']}")
    rows.append(["scored / failures / both empty", ""] + counts)
    return header, rows


def box_plot_png(summary: dict, protocol: str, metric: str) -> bytes:
    """PNG bytes of :func:`box_plot_figure`."""
    return png_bytes(box_plot_figure(summary, protocol, metric))


def box_plot_figure(summary: dict, protocol: str, metric: str) -> Figure:
    """A box plot with one box per organ over the measured (scored) cases.

    Penalised results (:data:`PENALISED`) are drawn apart with their count: for a distance (HD95), as red crosses
    on a separate panel above a broken axis at the penalty values; for DSC, as red crosses at 0. The legend of the
    crosses sits below the plot, outside every axis, so it never hides a mark. Both-empty organs are not scored and
    not drawn.
    """
    organs = summary["organs"]
    names = summary.get("display_names", {})
    label_set = get_label_set(summary["label_set"])
    colours = dict(zip(label_set.organs, label_set.colours))  # by key: summary organs may be a kept subset
    label, scale, _ = _METRIC_ROWS[(protocol, metric)]
    label = label.format(tol=summary.get("tolerance_mm", 0.0))
    data, positions, ticks, penalties = [], [], [], []
    for position, organ in enumerate(organs, start=1):
        measured, penalised = [], []
        for case in summary[protocol]["cases"].values():
            record = case[organ]
            if record.get(metric) is None or record["status"] == "both_empty":
                continue
            (penalised if record["status"] in PENALISED else measured).append(record[metric] * scale)
        ticks.append(names.get(organ, organ))
        if measured:
            data.append(measured)
            positions.append(position)
        penalties += [(position, value) for value in penalised]
    distance = metric.startswith("hd95")
    apart = distance and bool(penalties)
    width = max(6.0, 0.8 * len(organs) + 1.5)
    figure = Figure(figsize=(width, (4.4 if apart else 3.8) + (0.4 if penalties else 0.0)), dpi=100,
                    layout="constrained")
    FigureCanvasAgg(figure)
    if apart:
        top, axes = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 4]})
    else:
        top, axes = None, figure.add_subplot(1, 1, 1)
    if data:
        boxes = axes.boxplot(data, positions=positions, widths=0.6, patch_artist=True, showfliers=True,
                             medianprops={"color": "black"})
        for patch, position in zip(boxes["boxes"], positions):
            red, green, blue = colours.get(organs[position - 1], (200, 200, 200))
            patch.set_facecolor((red / 255, green / 255, blue / 255, 0.6))
    note = ""
    if penalties:
        xs = [p for p, _ in penalties]
        ys = [v for _, v in penalties]
        marks = (top if apart else axes).scatter(
            xs, ys, marker="x", color="#c0392b", zorder=3, clip_on=False,
            label=f"penalty ({len(penalties)} organ results: missed, spurious or missing prediction)")
        figure.legend(handles=[marks], loc="outside lower center", fontsize=8, frameon=False)
        note = f"; {len(penalties)} penalised shown apart"
    if apart:
        low, high = min(v for _, v in penalties), max(v for _, v in penalties)
        margin = max(0.05 * (high - low), 0.02 * high, 1.0)
        top.set_ylim(low - margin, high + margin)
        top.spines["bottom"].set_visible(False)
        axes.spines["top"].set_visible(False)
        top.tick_params(axis="x", bottom=False)
        for axis, y in ((top, 0.0), (axes, 1.0)):  # the broken-axis marks
            axis.plot([0, 0.012], [y - 0.03, y + 0.03], transform=axis.transAxes, color="black", clip_on=False,
                      linewidth=1)
        top.set_ylabel("penalty", fontsize=8)
        top.grid(axis="y", alpha=0.3)
        if data:
            axes.set_ylim(bottom=0.0)
    axes.set_xticks(range(1, len(organs) + 1))
    axes.set_xticklabels(ticks, rotation=30, ha="right")
    axes.set_xlim(0.4, len(organs) + 0.6)
    axes.set_ylabel(label)
    title = "standard protocol" if protocol == "standard" else "TransUNet protocol"
    (top or axes).set_title(f"{label} per organ ({title}{note})", fontsize=10)
    axes.grid(axis="y", alpha=0.3)
    return figure


def worst_case_thumbnail(summary: dict, row: dict, image_path: "str | Path | None" = None) -> "bytes | None":
    """PNG bytes: reference and prediction side by side on the axial slice where they disagree most on the organ,
    with a colour legend of the organs shown (:func:`medseg.visualize.render_views`).

    The CT (``image_path``, or the case's image in the reference cohort folder) is shown underneath in a soft-tissue
    window when found; None when the label files cannot be read (the report is still written without it).
    """
    info = summary.get("case_info", {}).get(row["case"], {})
    label_set = get_label_set(summary["label_set"])
    try:
        reference = read_volume(info["reference"])
        ref = np.asarray(reference.array)
        if info.get("reference_format") == "raw":
            ref = remap_labels(ref, label_set)
        pred = np.zeros_like(ref) if not info.get("prediction") else np.asarray(read_volume(info["prediction"]).array)
        image = read_volume(image_path) if image_path else _case_image(summary, row["case"])
    except (KeyError, MedsegError, OSError, ValueError):
        return None
    if pred.shape != ref.shape:
        return None
    ct, ref, spacing = oriented_case(image, Volume(ref.astype(np.uint8), reference.affine))
    _, pred, _ = oriented_case(None, Volume(pred.astype(np.uint8), reference.affine))
    index = label_set.organs.index(row["organ"]) + 1
    k = worst_slice(ref, pred, index)
    names = summary.get("display_names", {})
    views = [[axial_view(ct, ref, spacing, k, "reference", organ=index),
              axial_view(ct, pred, spacing, k, "prediction", organ=index)]]
    title = (f"{row['case']} {names.get(row['organ'], row['organ'])}: DSC {_fmt(row['dice'], 100.0)} %, "
             f"slice {k} of {ref.shape[2]} ({row['status']})")
    return png_bytes(render_views(views, label_set, title=title, emphasis=index, panel_inches=2.6, font_size=7))


def worst_slice(reference: np.ndarray, prediction: np.ndarray, organ: int) -> int:
    """Index along the last axis where reference and prediction disagree on the most voxels of class ``organ``."""
    disagreement = ((reference == organ) != (prediction == organ)).sum(axis=(0, 1))
    return int(np.argmax(disagreement))


def _case_image(summary: dict, case_id: str):
    """The CT of ``case_id`` when the reference folder is a cohort with images (else None)."""
    reference_dir = summary.get("reference_dir")
    if not reference_dir:
        return None
    try:
        cases = {c.case_id: c for c in discover_cases(reference_dir)}
        case = cases.get(case_id)
        if case is None or case.image is None or case.label is None:
            return None
        return read_volume(case.image)
    except (MedsegError, OSError):
        return None


def protocol_lines(summary: dict) -> list[str]:
    """One sentence per protocol run, describing it."""
    names = ("standard", "transunet") if summary["protocol"] == "both" else (summary["protocol"],)
    return [_PROTOCOL_LINES[n].format(tol=summary.get("tolerance_mm", 0.0)) for n in names]


DEFAULT_TITLE = "medseg evaluation report"


def report_sections(summary: dict, worst_rows: list[dict], figures: "dict[str, bytes] | None" = None,
                    context: "dict | None" = None) -> list[dict]:
    """The one description of a report's content that both report.md and report.html are rendered from.

    Returns a list of sections ``{"heading": str or None, "blocks": [...]}``; a block is one of
    ``{"kind": "paragraph", "label", "text", "style"}``, ``{"kind": "fields", "rows": [{"label", "text", "href"}]}``,
    ``{"kind": "table", "header", "rows"}``, ``{"kind": "list", "entries": [{"label", "text"}]}`` or
    ``{"kind": "figures", "figures": [{"name", "caption", "file", "base64"}]}``. Texts are plain (the templates
    escape them).

    Args:
        summary, worst_rows: as for :func:`write_reports`.
        figures: ``{file stem: png bytes}`` of the figures section.
        context: ``{"provenance": dict, "extended": bool, "thumbnails": {file stem: png}, "report_dir": folder}``;
            linked provenance paths are given relative to ``report_dir`` (default: the current folder).
    """
    context = context or {}
    protocol = primary_protocol(summary)
    report_dir = Path(context.get("report_dir") or ".")
    sections = []
    fields = [{"label": label, "text": text, "href": link_target(text, report_dir)}
              for label, text in provenance_rows(context.get("provenance") or {})]
    for field in fields:  # a linked record is shown as its link, so that the text works from the report's folder
        field["text"] = field["href"] or field["text"]
    if fields:
        sections.append({"heading": "What was evaluated", "blocks": [{"kind": "fields", "rows": fields}]})
    intro = [_paragraph(_intro(summary))]
    intro += [_paragraph(line, "Protocol.", "note") for line in protocol_lines(summary)]
    intro.append(_paragraph(_counts_line(summary), "Counts."))
    intro += [_paragraph(warning, "Warning.", "warning") for warning in summary.get("warnings", [])]
    sections.append({"heading": None, "blocks": intro})
    header, rows = organ_table(summary)
    sections.append({"heading": "Per-organ results (mean over cases)", "blocks": [
        _table(header, rows), _paragraph(_penalised_line(summary), "Penalised results.", "note")]})
    sections.append({"heading": f"Per-organ statistics ({protocol} protocol)", "blocks": [
        _table(*statistics_table(summary)),
        _paragraph(f'{STD_CONVENTION}; "penalised" counts the worst-case values inside the statistics.', style="note")]})
    if context.get("extended") and "standard" in summary:
        sections.append({"heading": "Overlap and volume errors (standard protocol)", "blocks": [
            _paragraph("Mean (std) over scored cases, derived from DSC and the two volumes.", style="note"),
            _table(*extended_table(summary))]})
    sections.append({"heading": "Figures", "blocks": [_figures(figures or {}, FIGURE_CAPTIONS)]})
    worst = [_table(*_worst_table(summary, worst_rows))]
    if summary.get("flag_comparison"):  # do flagged results score worse? (medseg.quality)
        worst.append(_paragraph(f"{comparison_line(summary['flag_comparison'])} (quality_flags.csv)", style="note"))
    thumbnails = context.get("thumbnails") or {}
    if thumbnails:
        worst.append(_paragraph("Reference and prediction on the slice where they disagree most on the organ (the "
                                "organ outlined in white and drawn more opaque than its neighbours).", style="note"))
        worst.append(_figures(thumbnails, {}))
    sections.append({"heading": f"Worst cases (lowest DSC, {protocol} protocol)", "blocks": worst})
    problems = (("Missing predictions (scored as failures)", [{"label": None, "text": c}
                                                                for c in summary["missing_predictions"]]),
                ("Errors (unscorable predictions are scored as failures)",
                 [{"label": e["case_id"], "text": e["message"]} for e in summary["errors"]]),
                ("Predictions without a reference (ignored)", [{"label": None, "text": n}
                                                                for n in summary.get("unmatched_predictions", [])]))
    sections += [{"heading": heading, "blocks": [{"kind": "list", "entries": entries}]}
                 for heading, entries in problems if entries]
    return sections


#: Captions of the report's standard figures (others: the file stem with spaces).
FIGURE_CAPTIONS = {"dice_boxplot": "DSC per organ", "hd95_boxplot": "HD95 per organ",
                   "training_curve": "Training curve"}

_TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                                autoescape=jinja2.select_autoescape(["html.j2"]), trim_blocks=True,
                                lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
_TEMPLATES.filters["md_cell"] = lambda cell: str(cell).replace("|", "\\|").replace("\n", " ")


def render_markdown(summary: dict, worst_rows: list[dict], title: str = DEFAULT_TITLE,
                    figures: "dict[str, bytes] | None" = None, context: "dict | None" = None) -> str:
    """report.md text from :func:`report_sections` (the figures are linked as the PNG files beside it)."""
    text = _TEMPLATES.get_template("report.md.j2").render(
        title=title, sections=report_sections(summary, worst_rows, figures, context))
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def render_html(summary: dict, worst_rows: list[dict], figures: dict[str, bytes], title: str = DEFAULT_TITLE,
                context: "dict | None" = None) -> str:
    """report.html text from :func:`report_sections`: a self-contained page with the PNG figures embedded."""
    text = _TEMPLATES.get_template("report.html.j2").render(
        title=title, sections=report_sections(summary, worst_rows, figures, context))
    return "\n".join(line for line in text.splitlines() if line.strip()) + "\n"


def link_target(value: str, report_dir: "str | Path") -> "str | None":
    """Where a report links a record path (a .json/.html/.yaml/.md file named in the provenance); None for other
    values.

    ``value`` is a path as the writing process sees it (absolute, or relative to its current folder). The link is
    relative to ``report_dir``, so it works wherever the report is opened from and moves with the run folder; an
    absolute path where no relative one exists (another drive).
    """
    if not _is_link(value):
        return None
    target = os.path.abspath(value)
    try:
        return Path(os.path.relpath(target, os.path.abspath(report_dir))).as_posix()
    except ValueError:
        return Path(target).as_posix()


def _is_link(value: str) -> bool:
    return value.endswith((".json", ".html", ".yaml", ".yml", ".md")) and "\n" not in value and " " not in value


def _paragraph(text: str, label: "str | None" = None, style: str = "") -> dict:
    return {"kind": "paragraph", "label": label, "text": text, "style": style}


def _table(header: list[str], rows: list[list[str]]) -> dict:
    return {"kind": "table", "header": header, "rows": rows}


def _figures(pngs: dict[str, bytes], captions: dict[str, str]) -> dict:
    return {"kind": "figures", "figures": [
        {"name": name, "caption": captions.get(name, name.replace("_", " ")), "file": f"{name}.png",
         "base64": base64.b64encode(png).decode("ascii")} for name, png in pngs.items()]}


def _intro(summary: dict) -> str:
    label_set = summary["label_set"]["name"]
    formats = [info.get("reference_format") for info in summary.get("case_info", {}).values()]
    raw, classes = formats.count("raw"), formats.count("classes")
    label_map = describe_label_map(get_label_set(summary["label_set"]))
    return (f"medseg {summary['medseg_version']}; label set {label_set}; protocol {summary['protocol']}; "
            f"NSD tolerance {summary['tolerance_mm']:g} mm; spacing from the {summary['spacing_source']}; "
            f"references {summary.get('reference_dir')} (reference format {summary.get('reference_format')}: "
            f"{raw} read as raw {'label-map' if label_map else 'BTCV'} values mapped to {label_set}, {classes} as "
            f"{label_set} classes); predictions {summary.get('prediction_dir')}."
            + (f" Raw values read through the {label_map}." if label_map else ""))


def _counts_line(summary: dict) -> str:
    counts = summary["counts"]
    organ = counts["organ_status"]
    return (f"{counts['cases']} reference cases, {counts['evaluated']} evaluated, "
            f"{counts['missing_predictions']} missing and {counts.get('unscorable_predictions', 0)} unscorable "
            f"predictions (scored as failures), {counts.get('reference_errors', counts['errors'])} unreadable "
            f"references (not scored). Organ results: {organ['scored']} scored, "
            f"{organ['pred_empty']} empty predictions, {organ['ref_empty']} predictions of an organ absent from the "
            f"reference, {organ['missing_prediction']} from missing predictions, {organ['both_empty']} both empty "
            "(not scored).")


def _worst_table(summary: dict, worst_rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    protocol = primary_protocol(summary)
    hd_label = "HD95 (mm)" if protocol == "standard" else "HD95 (voxels)"
    names = summary.get("display_names", {})
    header = ["Case", "Organ", "DSC (%)", hd_label, "Status", "Quality flags"]
    rows = [[r["case"], names.get(r["organ"], r["organ"]), _fmt(r["dice"], 100.0, 2), _fmt(r["hd95"], 1.0, 2),
             r["status"], r.get("flags") or "-"] for r in worst_rows]
    return header, rows


def _penalised_line(summary: dict) -> str:
    protocol = primary_protocol(summary)
    hd_key = summary[protocol]["metrics"][1]
    counts = penalised_counts(summary, protocol, hd_key)
    total = sum(counts.values())
    if not total:
        return "none (every organ result is a measurement)."
    names = summary.get("display_names", {})
    listed = ", ".join(f"{names.get(o, o)} {n}" for o, n in counts.items() if n)
    penalty = "HD95 = image diagonal, DSC 0" if protocol == "standard" else "the paper's (DSC, HD95) pairs"
    return (f"{total} organ results carry worst-case values ({penalty}): {listed}. They enter the means and are "
            "drawn apart in the box plots.")


def _fmt(value, scale: float = 1.0, digits: int = 2) -> str:
    """A number scaled and rounded for a table; an em dash for a missing value."""
    if value is None:
        return "\u2014"
    return f"{value * scale:.{digits}f}"
