"""The demo pipeline end to end on a small phantom cohort (the notebooks on a demo run: tests/test_notebooks.py)."""
import json
from pathlib import Path

import numpy as np
import pytest

from medseg.io import read_provenance, read_volume

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"


def test_every_stage_leaves_its_outputs(tiny_runs):
    run = tiny_runs["a"]
    for stage in ("synth", "prepare", "train", "postprocess", "predict", "evaluate", "report"):
        assert json.loads((run / stage / "stage.json").read_text())["key"]
    # post-processing: rules beside the checkpoint, the raw output kept, both scored; quality flags written
    assert (run / "train" / "run" / "last.postprocess.json").is_file()
    assert (run / "evaluate" / "summary_without_postprocessing.json").is_file()
    assert (run / "predict" / "labels" / "quality_flags.csv").read_text().startswith("case_id,organ,flag,detail")
    manifest = json.loads((run / "prepare" / "slices" / "manifest.json").read_text())
    held_out = [e for e in manifest["cases"] if e["split"] == "test"]
    assert len(held_out) == 3
    for entry in held_out:  # a prediction per held-out case, on its CT's own grid
        prediction = read_volume(run / "predict" / "labels" / f"{entry['case_id']}.nii.gz")
        image = read_volume(entry["source_image"])
        assert prediction.shape == image.shape
        assert np.allclose(prediction.affine, image.affine)
        assert prediction.array.dtype == np.uint8 and prediction.array.max() <= 8
    summary = json.loads((run / "evaluate" / "summary.json").read_text())
    assert summary["counts"]["evaluated"] == 3 and summary["protocol"] == "both"
    _check_report(run / "report", summary)
    # the report names the checkpoint by the hash recorded in the predictions it evaluates
    recorded = read_provenance(run / "predict" / "labels" / f"{held_out[0]['case_id']}.nii.gz")["checkpoint_sha256"]
    assert recorded in (run / "report" / "report.md").read_text()


def _check_report(report: Path, summary: dict) -> None:
    """The report shows what summary.json holds: the per-organ DSC row, every figure (linked in report.md, embedded
    byte for byte in report.html) and per_case.csv with one row per case x organ x metric x protocol."""
    import base64

    import pandas as pd

    markdown = (report / "report.md").read_text()
    lines = markdown.splitlines()
    header = next(line for line in lines if line.startswith("|  | Mean |")).strip("| ").split(" | ")
    assert header == ["Mean"] + [summary["display_names"][o] for o in summary["organs"]]
    block = summary["standard"]
    dsc = next(line for line in lines if line.startswith("| DSC (%) |")).strip("| ").split(" | ")

    def percent(value):
        return "\u2014" if value is None else f"{value * 100:.2f}"

    assert dsc[1:] == [percent(block["foreground_mean"]["dice"])] + [percent(block["organs"][o]["dice"]["mean"])
                                                                      for o in summary["organs"]]
    page = (report / "report.html").read_text()
    for name in ("dice_boxplot", "hd95_boxplot", "training_curve"):
        png = (report / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and base64.b64encode(png).decode("ascii") in page
        assert f"]({name}.png)" in markdown
    table = pd.read_csv(report / "per_case.csv")
    protocols = [p for p in ("standard", "transunet") if p in summary]
    assert len(table) == sum(len(summary[p]["metrics"]) for p in protocols) * len(summary["organs"]) * len(
        block["cases"])
    dice = table[(table.protocol == "standard") & (table.metric == "dice")].set_index(["case", "organ"])["value"]
    for case_id, organs in block["cases"].items():
        for organ, record in organs.items():
            expected = record.get("dice")
            assert (np.isnan(dice[(case_id, organ)]) if expected is None
                    else dice[(case_id, organ)] == pytest.approx(expected))


def test_rerun_skips_everything(tiny_runs, capsys):
    from medseg.cli import main
    from helpers import TINY_RUN_SETTINGS

    demo = Path(__file__).parents[1] / "pipelines" / "demo.yaml"
    sets = [arg for s in TINY_RUN_SETTINGS + [f"run_dir={tiny_runs['a']}"] for arg in ("--set", s)]
    assert main(["run", str(demo), *sets, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("cached") == 7 and "mean Dice" in out and "report:" in out


def test_run_comparison_statistics(tiny_runs):
    from medseg.evaluation.compare import compare_runs, load_summary

    a, b = load_summary(tiny_runs["a"]), load_summary(tiny_runs["b"])
    table = compare_runs(a, b, "dice")
    assert list(table.index)[:2] == ["Aorta", "Gallbladder"]
    for organ, name in zip(a["organs"], table.index):  # paired over the cases both runs scored
        scored_a, scored_b = a["standard"]["organs"][organ]["dice"], b["standard"]["organs"][organ]["dice"]
        assert table.loc[name, "n"] <= min(scored_a["n"], scored_b["n"])
        if table.loc[name, "n"] == scored_a["n"] == scored_b["n"] > 0:  # every case paired: the runs' own means
            assert table.loc[name, "mean_a"] == pytest.approx(scored_a["mean"])
            assert table.loc[name, "mean_b"] == pytest.approx(scored_b["mean"])
    assert (table.n == 3).any()  # the three held-out cases pair for at least one organ


def test_bootstrap_interval_of_the_mean():
    """The percentile bootstrap of a mean: for 40 values its 95 % interval is close to mean +- 1.96 sd / sqrt(n) (sd
    with ddof=0, the plug-in estimate the bootstrap resamples from), its 50 % interval to +- 0.674 sd / sqrt(n). A
    resampling without replacement gives a zero-width interval, wrong tails a narrower or wider one."""
    from medseg.evaluation.compare import bootstrap_ci

    values = np.random.default_rng(7).normal(0.8, 0.1, 40)
    low, high = bootstrap_ci(values, resamples=4000, seed=1)
    half_width = 1.96 * values.std() / np.sqrt(values.size)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)
    assert (low + high) / 2 == pytest.approx(values.mean(), abs=0.1 * half_width)
    assert bootstrap_ci(values, resamples=4000, seed=1) == (low, high)
    narrower = bootstrap_ci(values, confidence=0.5, resamples=4000, seed=1)
    assert (narrower[1] - narrower[0]) / 2 == pytest.approx(0.674 * values.std() / np.sqrt(values.size), rel=0.1)


def test_repository_paths_work_from_the_notebooks_folder(monkeypatch):
    from medseg.paths import repo_path, repository_root

    root = NOTEBOOKS.parent
    for where in (root, NOTEBOOKS):
        monkeypatch.chdir(where)
        assert repository_root() == root.resolve()
        assert repo_path("pipelines/demo.yaml").resolve() == (root / "pipelines" / "demo.yaml").resolve()
        # the same folder from both places, whether or not a demo run has created it
        assert repo_path("runs/demo").resolve() == root.resolve() / "runs" / "demo"
    assert repo_path("/abs/where") == Path("/abs/where")
