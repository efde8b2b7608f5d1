"""Evaluation reports: summary.json, per_case.csv, report.md, report.html and box plots, written atomically.

All files are derived from the summary dict of :func:`medseg.evaluation.cohort.evaluate_folders` (its layout is
documented in :mod:`medseg.evaluation.cohort`), so a notebook can rebuild any of them from a saved summary.json.

* ``summary.json``: the summary itself.
* ``per_case.csv``: tidy table, one row per case x organ x protocol x metric, columns
  ``case, organ, metric, value, protocol, status`` (value empty where an organ is not scored).
* ``dice_boxplot.png`` / ``hd95_boxplot.png``: one box per organ over cases (standard protocol when it was run,
  otherwise the TransUNet protocol).
* ``report.md`` / ``report.html``: the per-organ table in the label set's class order (for ``synapse8`` the
  TransUNet paper's column order: Aorta, Gallbladder, Kidney L, Kidney R, Liver, Pancreas, Spleen, Stomach) with the
  mean DSC and HD95, the box plots (embedded in the HTML), the worst cases, missing predictions, errors, and a line
  on the protocol used.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from medseg.io import atomic_path, write_json, write_text

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
                  extra_figures: "dict[str, bytes] | None" = None) -> dict[str, Path]:
    """Write summary.json, per_case.csv, the box plots, report.md and report.html into ``out_dir``.

    Args:
        summary: the dict returned by :func:`medseg.evaluation.cohort.evaluate_folders`.
        out_dir: report folder (created if missing).
        worst: number of worst (case, organ) results listed.
        title: report heading (default "medseg evaluation report").
        extra_figures: more PNG figures ``{file stem: png bytes}`` (a training curve, say), saved beside the
            report and shown after the box plots.

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
    title = title or DEFAULT_TITLE
    paths["markdown"] = write_text(out_dir / "report.md", render_markdown(summary, worst_rows, title, figures))
    paths["html"] = write_text(out_dir / "report.html", render_html(summary, worst_rows, figures, title))
    return paths


def primary_protocol(summary: dict) -> str:
    """``standard`` when the summary holds it, otherwise ``transunet``."""
    return "standard" if "standard" in summary else "transunet"


def per_case_table(summary: dict):
    """Tidy pandas DataFrame: one row per case x organ x protocol x metric.

    Columns: ``case, organ, metric, value, protocol, status``; ``value`` is NaN where the organ is not scored.
    """
    import pandas as pd

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
            rows.append({"case": case_id, "organ": organ, "dice": record["dice"], "hd95": record.get(hd_key),
                         "status": record["status"]})
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
    """PNG bytes of a box plot with one box per organ over the cases (scored values only)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from medseg.labels import get_label_set

    organs = summary["organs"]
    names = summary.get("display_names", {})
    colours = dict(zip(organs, get_label_set(summary["label_set"]).colours))
    label, scale, _ = _METRIC_ROWS[(protocol, metric)]
    label = label.format(tol=summary.get("tolerance_mm", 0.0))
    data, positions, ticks = [], [], []
    for position, organ in enumerate(organs, start=1):
        values = [case[organ][metric] * scale for case in summary[protocol]["cases"].values()
                  if case[organ].get(metric) is not None and case[organ]["status"] != "both_empty"]
        ticks.append(names.get(organ, organ))
        if values:
            data.append(values)
            positions.append(position)

    figure = Figure(figsize=(max(6.0, 0.8 * len(organs) + 1.5), 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    if data:
        boxes = axes.boxplot(data, positions=positions, widths=0.6, patch_artist=True, showfliers=True,
                               medianprops={"color": "black"})
        for patch, position in zip(boxes["boxes"], positions):
            red, green, blue = colours.get(organs[position - 1], (200, 200, 200))
            patch.set_facecolor((red / 255, green / 255, blue / 255, 0.6))
    axes.set_xticks(range(1, len(organs) + 1))
    axes.set_xticklabels(ticks, rotation=30, ha="right")
    axes.set_xlim(0.4, len(organs) + 0.6)
    axes.set_ylabel(label)
    title = "standard protocol" if protocol == "standard" else "TransUNet protocol"
    axes.set_title(f"{label} per organ ({title})", fontsize=10)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def protocol_lines(summary: dict) -> list[str]:
    """One sentence per protocol run, describing it."""
    names = ("standard", "transunet") if summary["protocol"] == "both" else (summary["protocol"],)
    return [_PROTOCOL_LINES[n].format(tol=summary.get("tolerance_mm", 0.0)) for n in names]


DEFAULT_TITLE = "medseg evaluation report"


def render_markdown(summary: dict, worst_rows: list[dict], title: str = DEFAULT_TITLE,
                    figures: "dict[str, bytes] | None" = None) -> str:
    """report.md text (the figures are linked as the PNG files beside it)."""
    lines = [f"# {title}", ""]
    lines += [_intro(summary), ""]
    for line in protocol_lines(summary):
        lines += [f"**Protocol.** {line}", ""]
    lines += [f"**Counts.** {_counts_line(summary)}", ""]
    header, rows = organ_table(summary)
    lines += ["## Per-organ results (mean over cases)", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "## Figures", ""]
    captions = {"dice_boxplot": "DSC per organ", "hd95_boxplot": "HD95 per organ", "training_curve": "Training curve"}
    for name in figures or ("dice_boxplot", "hd95_boxplot"):
        lines += [f"![{captions.get(name, name.replace('_', ' '))}]({name}.png)", ""]
    lines += _worst_markdown(summary, worst_rows)
    lines += _problems_markdown(summary)
    return "\n".join(lines).rstrip() + "\n"


def render_html(summary: dict, worst_rows: list[dict], figures: dict[str, bytes], title: str = DEFAULT_TITLE) -> str:
    """report.html text: a self-contained page with the PNG figures embedded as base64."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>',
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
        "th,td{border:1px solid #bbb;padding:4px 8px;text-align:right}th:first-child,td:first-child{text-align:left}"
        "th{background:#eee}.note{color:#444}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>{esc(_intro(summary))}</p>",
    ]
    parts += [f'<p class="note"><b>Protocol.</b> {esc(line)}</p>' for line in protocol_lines(summary)]
    parts.append(f"<p><b>Counts.</b> {esc(_counts_line(summary))}</p>")
    parts += [f'<p class="warning"><b>Warning.</b> {esc(w)}</p>' for w in summary.get("warnings", [])]
    header, rows = organ_table(summary)
    parts.append("<h2>Per-organ results (mean over cases)</h2>")
    parts.append(_html_table(header, rows))
    parts.append("<h2>Figures</h2>")
    for name, png in figures.items():
        encoded = base64.b64encode(png).decode("ascii")
        parts.append(f'<p><img alt="{esc(name)}" src="data:image/png;base64,{encoded}"></p>')
    protocol = primary_protocol(summary)
    parts.append(f"<h2>Worst cases (lowest DSC, {esc(protocol)} protocol)</h2>")
    parts.append(_html_table(*_worst_table(summary, worst_rows)))
    if summary["missing_predictions"]:
        parts.append("<h2>Missing predictions (scored as failures)</h2>")
        parts.append("<ul>" + "".join(f"<li>{esc(c)}</li>" for c in summary["missing_predictions"]) + "</ul>")
    if summary["errors"]:
        parts.append("<h2>Errors (unscorable predictions are scored as failures)</h2>")
        parts.append("<ul>" + "".join(f"<li><b>{esc(e['case_id'])}</b>: {esc(e['message'])}</li>"
                                      for e in summary["errors"]) + "</ul>")
    if summary.get("unmatched_predictions"):
        parts.append("<h2>Predictions without a reference (ignored)</h2>")
        parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in summary["unmatched_predictions"]) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _intro(summary: dict) -> str:
    label_set = summary["label_set"]["name"]
    formats = [info.get("reference_format") for info in summary.get("case_info", {}).values()]
    raw, classes = formats.count("raw"), formats.count("classes")
    return (f"medseg {summary['medseg_version']}; label set {label_set}; protocol {summary['protocol']}; "
            f"NSD tolerance {summary['tolerance_mm']:g} mm; spacing from the {summary['spacing_source']}; "
            f"references {summary.get('reference_dir')} (reference format {summary.get('reference_format')}: "
            f"{raw} read as raw BTCV values mapped to {label_set}, {classes} as {label_set} classes); "
            f"predictions {summary.get('prediction_dir')}.")


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
    header = ["Case", "Organ", "DSC (%)", hd_label, "Status"]
    rows = [[r["case"], names.get(r["organ"], r["organ"]), _fmt(r["dice"], 100.0, 2), _fmt(r["hd95"], 1.0, 2),
             r["status"]] for r in worst_rows]
    return header, rows


def _worst_markdown(summary: dict, worst_rows: list[dict]) -> list[str]:
    header, rows = _worst_table(summary, worst_rows)
    lines = [f"## Worst cases (lowest DSC, {primary_protocol(summary)} protocol)", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def _problems_markdown(summary: dict) -> list[str]:
    lines = []
    if summary.get("warnings"):
        lines += ["## Warnings", ""] + [f"- **{w}**" for w in summary["warnings"]] + [""]
    if summary["missing_predictions"]:
        lines += ["## Missing predictions (scored as failures)", ""]
        lines += [f"- {case_id}" for case_id in summary["missing_predictions"]] + [""]
    if summary["errors"]:
        lines += ["## Errors (unscorable predictions are scored as failures)", ""]
        lines += [f"- **{e['case_id']}**: {e['message']}" for e in summary["errors"]] + [""]
    if summary.get("unmatched_predictions"):
        lines += ["## Predictions without a reference (ignored)", ""]
        lines += [f"- {name}" for name in summary["unmatched_predictions"]] + [""]
    return lines


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value, scale: float = 1.0, digits: int = 2) -> str:
    """A number scaled and rounded for a table; an em dash for a missing value."""
    if value is None:
        return "\u2014"
    return f"{value * scale:.{digits}f}"
