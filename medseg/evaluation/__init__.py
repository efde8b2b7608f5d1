"""Evaluation: per-organ surface metrics, cohort evaluation, reports and plots."""
