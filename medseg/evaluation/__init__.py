"""Evaluation: per-organ surface metrics, cohort evaluation, reports and plots.

The three calls a notebook needs::

    from medseg.evaluation import evaluate_case, evaluate_folders, write_reports

    scores = evaluate_case(pred, ref, spacing=(0.76, 0.76, 3.0), label_set="synapse8", protocol="both")
    summary = evaluate_folders("data/Synapse", "runs/predictions", labels="synapse8", protocol="both", workers=4)
    write_reports(summary, "runs/report")   # summary.json, per_case.csv, report.md, report.html, box plots

Metric definitions, the empty-mask policy and the two protocols are documented in
:mod:`medseg.evaluation.metrics`; pairing, parallelism and the summary layout in :mod:`medseg.evaluation.cohort`.
"""
from __future__ import annotations

from medseg.evaluation.cohort import (
    CasePair,
    aggregate,
    evaluate_folders,
    evaluate_pair,
    find_predictions,
    find_references,
    pair_cases,
    summarize,
)
from medseg.evaluation.metrics import (
    DEFAULT_TOLERANCE_MM,
    PROTOCOLS,
    STANDARD_METRICS,
    TRANSUNET_METRICS,
    boundary,
    evaluate_case,
    image_diagonal_mm,
    standard_metrics,
    surface_distances,
    transunet_metrics,
)
from medseg.evaluation.report import per_case_table, write_reports

__all__ = [
    "DEFAULT_TOLERANCE_MM",
    "PROTOCOLS",
    "STANDARD_METRICS",
    "TRANSUNET_METRICS",
    "CasePair",
    "aggregate",
    "boundary",
    "evaluate_case",
    "evaluate_folders",
    "evaluate_pair",
    "find_predictions",
    "find_references",
    "image_diagonal_mm",
    "pair_cases",
    "per_case_table",
    "standard_metrics",
    "summarize",
    "surface_distances",
    "transunet_metrics",
    "write_reports",
]
