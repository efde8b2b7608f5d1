"""Comparing two evaluated runs per organ: bootstrap confidence intervals and paired Wilcoxon signed-rank tests.

Inputs are evaluation summaries (:func:`medseg.evaluation.cohort.evaluate_folders`, ``summary.json``). Values are
per case and organ; cases are the unit of resampling and of pairing, as in the segmentation literature.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io import read_json


def load_summary(path) -> dict:
    """An evaluation summary from ``summary.json``, from a folder holding it, or from a pipeline run folder
    (``<run>/evaluate/summary.json``)."""
    path = Path(path)
    for candidate in (path, path / "summary.json", path / "evaluate" / "summary.json",
                      path / "report" / "summary.json"):
        if candidate.is_file():
            summary = read_json(candidate)
            if summary.get("format") != "medseg-evaluation":
                raise InputError(f"{candidate}: not a medseg evaluation summary")
            return summary
    raise InputError(f"{path}: no evaluation summary.json found")


def organ_values(summary: dict, metric: str = "dice", protocol: str = "standard") -> dict[str, dict[str, float]]:
    """``{organ: {case_id: value}}`` for the scored (non-None) values of ``metric`` under ``protocol``."""
    if protocol not in summary:
        raise InputError(f"summary has no {protocol} protocol results (it has: "
                         f"{', '.join(p for p in ('standard', 'transunet') if p in summary)})")
    values: dict[str, dict[str, float]] = {organ: {} for organ in summary["organs"]}
    for case_id, organs in summary[protocol]["cases"].items():
        for organ, record in organs.items():
            if record.get(metric) is not None:
                values[organ][case_id] = float(record[metric])
    return values


def bootstrap_ci(values, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean.

    Args:
        values: one value per case.
        confidence: coverage of the interval (0.95 -> the 2.5th and 97.5th percentiles of resampled means).
        resamples: number of bootstrap resamples (cases drawn with replacement).
        seed: random seed; the same inputs and seed give the same interval.

    Returns:
        ``(low, high)``; ``(nan, nan)`` for no values.
    """
    values = np.asarray(list(values), dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def compare_runs(summary_a: dict, summary_b: dict, metric: str = "dice", protocol: str = "standard",
                 confidence: float = 0.95, resamples: int = 2000, seed: int = 0):
    """Per-organ comparison of two runs on the cases both scored.

    Returns:
        A pandas DataFrame indexed by organ display name with columns ``n`` (paired cases), ``mean_a``,
        ``ci_a`` (low, high), ``mean_b``, ``ci_b``, ``mean_difference`` (b - a), ``wilcoxon_statistic`` and
        ``p_value`` (two-sided paired Wilcoxon signed-rank test; NaN with fewer than 2 pairs or when all
        differences are zero). Note that with n < 6 pairs a two-sided exact Wilcoxon test cannot reach p < 0.05.
    """
    import pandas as pd
    from scipy.stats import wilcoxon

    values_a = organ_values(summary_a, metric, protocol)
    values_b = organ_values(summary_b, metric, protocol)
    names = summary_a.get("display_names", {})
    rows = []
    for organ in summary_a["organs"]:
        common = sorted(set(values_a.get(organ, {})) & set(values_b.get(organ, {})))
        a = np.array([values_a[organ][c] for c in common])
        b = np.array([values_b[organ][c] for c in common])
        statistic = p_value = float("nan")
        if len(common) >= 2 and np.any(a != b):
            result = wilcoxon(a, b, alternative="two-sided")
            statistic, p_value = float(result.statistic), float(result.pvalue)
        rows.append({
            "organ": names.get(organ, organ), "n": len(common),
            "mean_a": float(a.mean()) if a.size else float("nan"),
            "ci_a": bootstrap_ci(a, confidence, resamples, seed),
            "mean_b": float(b.mean()) if b.size else float("nan"),
            "ci_b": bootstrap_ci(b, confidence, resamples, seed),
            "mean_difference": float((b - a).mean()) if a.size else float("nan"),
            "wilcoxon_statistic": statistic, "p_value": p_value,
        })
    return pd.DataFrame(rows).set_index("organ")
