"""Prediction as a library: :func:`predict_cases` with a :class:`~medseg.schema.PredictRequest` predicts a set of
cases into a folder, reuses what is up to date and returns a :class:`PredictSummary`. ``medseg predict``, the
pipeline's predict stage and notebooks all call it.

Modules: :mod:`~medseg.prediction.cases` (inputs, DICOM series, output names), :mod:`~medseg.prediction.record`
(what made each case and the reuse rule), :mod:`~medseg.prediction.outputs` (labels.json, viewer tables, split
masks, previews, statistics), :mod:`~medseg.prediction.run` (the run itself).
"""
from __future__ import annotations

from medseg.prediction.run import PredictSummary, predict_cases
from medseg.schema import PredictRequest

__all__ = ["PredictRequest", "PredictSummary", "predict_cases"]
