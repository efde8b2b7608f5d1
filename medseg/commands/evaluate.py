"""``medseg evaluate REF_DIR PRED_DIR -o REPORT_DIR``: per-organ metrics of predictions against references.

Writes summary.json, per_case.csv, report.md, report.html and box plots into REPORT_DIR (see
:mod:`medseg.evaluation`). Missing and unscorable predictions are scored as failures and stay in the means. Exit
code 0 when every case was scored; 1 when some cases failed (missing or unscorable predictions, unreadable
references: counted, listed in the reports and on stderr); 2 when the inputs are unusable (missing folders, no
matching cases, bad options, predictions of another label set than ``--labels``, of several label sets or kept
organs, or no prediction could be scored; the reports are still written in that last case). The label set and the
organs scored come from the predictions' own records (:mod:`medseg.evaluation.origin`).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging

from medseg import schema
from medseg.labels import LABEL_SETS
from medseg.schema import EvaluateStage

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``medseg evaluate``: the folders, the evaluate stage's settings (:class:`EvaluateStage`) and the
    command's own label, reference-format and report options."""
    from medseg.evaluation.cohort import REFERENCE_FORMATS

    parser.add_argument("ref_dir", metavar="REF_DIR",
                        help="reference labels: a cohort folder (img/ + label/, imagesTr/ + labelsTr/, ...) or a "
                             "flat folder of label files")
    parser.add_argument("pred_dir", metavar="PRED_DIR",
                        help="flat folder of predicted label maps (NIfTI), one per case")
    parser.add_argument("-o", "--output", required=True, metavar="REPORT_DIR", help="folder for the reports")
    parser.add_argument("--labels", default=None, choices=sorted(LABEL_SETS),
                        help="label set of the predictions (default: the one their headers name, else synapse8; "
                             "another set than the headers' is an error)")
    schema.add_arguments(parser, EvaluateStage, defaults=True)
    parser.add_argument("--reference-format", default="auto", choices=REFERENCE_FORMATS,
                        help="raw: references hold raw BTCV values 0..13 (remapped to the label set); classes: "
                             "they hold the label set's classes; auto (default): raw for a label/ or labelsTr/ "
                             "cohort, else decided once from all files' values (a mixed folder is an error)")
    parser.add_argument("--extended-metrics", action="store_true",
                        help="also report IoU, precision, recall and TP / FP / FN volumes per organ")
    parser.add_argument("--thumbnails", type=int, default=4, metavar="N",
                        help="overlay thumbnails of the N worst (case, organ) results (default 4; 0: none)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Evaluate, write the reports, log the per-organ means; returns the exit code."""
    import sys

    from medseg.errors import EXIT_OK, EXIT_SOME_FAILED, InputError
    from medseg.evaluation.cohort import evaluate_folders
    from medseg.evaluation.report import write_reports
    from medseg.io import check_output_path, remove_stale_temps

    settings = schema.build(EvaluateStage, schema.check_flags(args, EvaluateStage), "command line")
    check_output_path(args.output, "report folder", folder=True)
    remove_stale_temps(args.output)
    summary = evaluate_folders(args.ref_dir, args.pred_dir, labels=args.labels, **dataclasses.asdict(settings),
                               reference_format=args.reference_format, progress=not args.no_progress)
    paths = write_reports(summary, args.output, extended=args.extended_metrics, thumbnails=max(args.thumbnails, 0))
    _log_summary(summary)
    from medseg.labels import describe_label_map, get_label_set

    map_line = describe_label_map(get_label_set(summary["label_set"]))
    if map_line:
        print(map_line)
    logger.info("reports written to %s (%s)", args.output, ", ".join(p.name for p in paths.values()))
    counts = summary["counts"]
    for warning in summary["warnings"]:
        print(f"medseg evaluate: warning: {warning}", file=sys.stderr)
    for failure in summary["failures"]:
        print(f"failed {failure['case_id']} ({failure['reason']}): {failure['message']}", file=sys.stderr)
    if counts["evaluated"] == 0:
        first = summary["failures"][0]
        raise InputError(f"no case could be scored ({counts['failed']} failed, listed in {paths['summary']}); "
                         f"first: {first['case_id']}: {first['message']}")
    return EXIT_SOME_FAILED if counts["failed"] else EXIT_OK


def _log_summary(summary: dict) -> None:
    names = summary["display_names"]
    for protocol, dice_key, hd_key, unit in (("standard", "dice", "hd95_mm", "mm"),
                                             ("transunet", "dice", "hd95_voxels", "voxels")):
        if protocol not in summary:
            continue
        block = summary[protocol]
        logger.info("%s protocol: mean DSC %s %%, mean HD95 %s %s", protocol,
                    _pct(block["foreground_mean"][dice_key]), _num(block["foreground_mean"][hd_key]), unit)
        for organ in summary["organs"]:
            stats = block["organs"][organ]
            logger.info("  %-12s DSC %6s %%  HD95 %7s %s  (n=%d)", names.get(organ, organ),
                        _pct(stats[dice_key]["mean"]), _num(stats[hd_key]["mean"]), unit, stats[dice_key]["n"])
    _log_flags(summary)
    counts = summary["counts"]
    logger.info("%d cases: %d evaluated, %d failed (%d missing predictions, %d unscorable predictions, both scored as "
                "empty; %d unreadable references)", counts["cases"], counts["evaluated"], counts["failed"],
                counts["missing_predictions"], counts["unscorable_predictions"], counts["reference_errors"])


def _log_flags(summary: dict) -> None:
    """The quality flags of each case next to its mean DSC, and whether flagged results score worse."""
    from medseg.quality import comparison_line

    block = summary.get("standard") or summary.get("transunet")
    for case_id, flags in sorted(summary.get("flags", {}).items()):
        if not flags:
            continue
        scores = [r["dice"] for r in block["cases"].get(case_id, {}).values() if r.get("dice") is not None]
        mean = _pct(sum(scores) / len(scores)) if scores else "-"
        logger.info("  flagged %s (mean DSC %s %%): %s", case_id, mean,
                    "; ".join(f"{f['organ']} {f['flag']} ({f['detail']})" for f in flags))
    if "flag_comparison" in summary:
        logger.info("%s", comparison_line(summary["flag_comparison"]))


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _num(value) -> str:
    return "-" if value is None else f"{value:.2f}"
