"""Figures of a training run, beside the report's evaluation figures (:mod:`medseg.evaluation.report`).

Plain data in (the rows of a run's ``metrics.csv``, see :func:`medseg.engine.train.read_metrics`), PNG bytes out;
matplotlib's object API is used, so no global pyplot state is touched.
"""
from __future__ import annotations

import io


def training_curve_png(rows: list[dict]) -> "bytes | None":
    """PNG of the training loss per iteration, with the validation mean Dice on a second axis when recorded.

    Args:
        rows: ``metrics.csv`` rows as dicts of strings: iteration rows carry ``iteration`` and ``loss``,
            validation rows carry ``iteration`` and ``val_dice`` (and an empty ``loss``).

    Returns:
        PNG bytes, or None when no row holds a loss.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [r for r in rows if r.get("loss") not in (None, "")]
    if not steps:
        return None
    validated = [r for r in rows if r.get("val_dice") not in (None, "", "None")]
    figure = Figure(figsize=(6, 3.2), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot([float(r["iteration"]) for r in steps], [float(r["loss"]) for r in steps], color="tab:blue")
    axes.set_xlabel("iteration")
    axes.set_ylabel("training loss", color="tab:blue")
    if validated:
        twin = axes.twinx()
        twin.plot([float(r["iteration"]) for r in validated], [float(r["val_dice"]) for r in validated], "o-",
                  color="tab:red")
        twin.set_ylabel("validation mean Dice", color="tab:red")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
