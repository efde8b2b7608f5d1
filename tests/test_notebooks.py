"""The research notebooks as a user runs them, and what they show.

A user runs the README's demo (``medseg run pipelines/demo.yaml`` at the repository root, output in ``runs/demo/``)
and opens a notebook in Jupyter: the kernel starts in ``notebooks/`` with no MEDSEG_* variable set. The fixture below
builds that situation in a temporary copy of the repository layout (``notebooks/``, ``pipelines/``) with a tiny
demo run, and each test executes a notebook there with nbclient, then checks the values it shows against what
medseg's own modules compute from the files.
"""
from __future__ import annotations

import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import nbclient  # the test extra: a missing one fails the module, it does not skip it
import nbformat
import numpy as np
import pytest

from helpers import TINY_RUN_SETTINGS
from medseg.data.slice_cache import load_manifest, prepare_cohort, recorded_source
from medseg.data.transunet_format import export_transunet
from medseg.io import read_volume
from medseg.labels import get_label_set

REPOSITORY = Path(__file__).parents[1]
NOTEBOOKS = sorted(p.name for p in (REPOSITORY / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def user_repo(tmp_path_factory) -> Path:
    """A copy of the repository's ``notebooks/`` and ``pipelines/`` after the README's demo command, run at its
    root with the tiny settings of the suite (6 phantom cases, 3 held out, one short epoch)."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(REPOSITORY / "notebooks", root / "notebooks",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copytree(REPOSITORY / "pipelines", root / "pipelines")
    from medseg.cli import main

    sets = [arg for setting in TINY_RUN_SETTINGS for arg in ("--set", setting)]
    previous = Path.cwd()
    os.chdir(root)
    try:
        assert main(["run", "pipelines/demo.yaml", *sets, "--no-progress"]) == 0
    finally:
        os.chdir(previous)
    return root


def run_notebook(name: str, repo: Path):
    """Execute ``repo/notebooks/name`` as Jupyter does: kernel in ``notebooks/``, no MEDSEG_* variable set."""
    notebook = nbformat.read(repo / "notebooks" / name, as_version=4)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MEDSEG_")}
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(repo / "notebooks")}})
    client.execute(env=environment)
    return notebook


def printed(cell) -> str:
    """What a cell printed to stdout (warnings go to stderr), concatenated."""
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.output_type == "stream" and o.get("name") == "stdout")


def shown_table(cell) -> list[list[str]]:
    """The rows (header row first) of the HTML table a cell shows as its result (a pandas DataFrame)."""
    html = next(o.data["text/html"] for o in cell.outputs
                if o.output_type in ("execute_result", "display_data") and "text/html" in o.get("data", {}))
    parser = _TableParser()
    parser.feed(html)
    return parser.rows


class _TableParser(HTMLParser):
    """Cells of the first table's rows, as text (pandas' ``DataFrame._repr_html_``: a header row, then one row
    per index value with the index in a ``th``)."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: "list[str] | None" = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def table_by_index(rows: list[list[str]]) -> dict[str, dict[str, str]]:
    """``{index: {column: cell}}`` of :func:`shown_table` rows: the first row names the columns after the index; a
    row naming the index (pandas adds one when the index has a name) holds no values and is left out."""
    columns = rows[0][1:]
    return {row[0]: dict(zip(columns, row[1:])) for row in rows[1:]
            if len(row) == len(rows[0]) and any(row[1:])}


def cell_with(notebook, text: str):
    """The one code cell whose source holds ``text``."""
    found = [c for c in notebook.cells if c.cell_type == "code" and text in c.source]
    assert len(found) == 1, f"{len(found)} cells hold {text!r}"
    return found[0]


def test_committed_notebooks_carry_no_outputs():
    assert NOTEBOOKS == ["01_cohort_exploration.ipynb", "02_volume_inference.ipynb", "03_model_comparison.ipynb"]
    for name in NOTEBOOKS:
        notebook = nbformat.read(REPOSITORY / "notebooks" / name, as_version=4)
        assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), name


# ----------------------------------------------------------------------------------------------------------------
# Source paths of a slice cache do not depend on the working directory


def test_manifest_source_paths_resolve_from_another_working_directory(tiny_cohort, tmp_path, monkeypatch):
    """A cache prepared from relative paths (as the demo pipeline does at the repository root) names its sources
    relative to itself, so a notebook in another folder finds them; absolute paths stay absolute."""
    project = tmp_path / "project"
    shutil.copytree(tiny_cohort, project / "cohort")
    monkeypatch.chdir(project)
    prepare_cohort("cohort", "runs/slices", labels="synapse8", split="seeded", test_fraction=0.5, progress=False)
    recorded = json.loads((project / "runs" / "slices" / "manifest.json").read_text())["cases"][0]
    assert recorded["source_image"] == "../../cohort/img/img0001.nii.gz"
    elsewhere = tmp_path / "project" / "notebooks"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for entry in load_manifest("../runs/slices")["cases"]:
        assert Path(entry["source_image"]).resolve() == (project / "cohort" / "img" / f"img{entry['case_id'][-4:]}"
                                                         ".nii.gz")
        assert read_volume(entry["source_label"]).shape == read_volume(entry["source_image"]).shape
    assert recorded_source(project / "cohort" / "img" / "img0001.nii.gz", "runs/slices") == \
        str(project / "cohort" / "img" / "img0001.nii.gz")
    # prepared again from the notebooks folder with the same cohort: every case is reused, the record is the same
    summary = prepare_cohort("../cohort", "../runs/slices", labels="synapse8", split="seeded", test_fraction=0.5,
                             progress=False)
    assert summary.written == [] and len(summary.already_done) == 4
    # a copy of the manifest written elsewhere (a TransUNet export's) does not claim its paths are relative to it
    export_transunet("../runs/slices", "../export")
    assert "source_paths" not in json.loads((project / "export" / "medseg_manifest.json").read_text())


# ----------------------------------------------------------------------------------------------------------------
# The notebooks, run as a user does


@pytest.mark.slow
def test_notebook_01_shows_the_demo_cohort(user_repo):
    from medseg.data.cohort import discover_cases
    from medseg.labels import BTCV13

    notebook = run_notebook("01_cohort_exploration.ipynb", user_repo)
    cohort = user_repo / "runs" / "demo" / "synth" / "cohort"
    cases = discover_cases(cohort)
    assert len(cases) == 6
    assert printed(cell_with(notebook, "labelled cases in")).strip() == \
        f"6 of 6 labelled cases in {cohort.resolve()} (at most MEDSEG_MAX_CASES=8)"
    table = table_by_index(shown_table(cell_with(notebook, "table = pd.DataFrame(rows)")))
    assert sorted(table) == sorted(c.case_id for c in cases)
    for case in cases:  # every organ's volume as medseg.io reads the label file: voxels x voxel volume
        label = read_volume(case.label)
        voxel_ml = float(np.prod(label.spacing)) / 1000.0
        for value, name in enumerate(BTCV13.display_names, start=1):
            expected = round(int((label.array == value).sum()) * voxel_ml, 1)
            assert float(table[case.case_id][name]) == pytest.approx(expected, abs=0.051), (case.case_id, name)
    summary = table_by_index(shown_table(cell_with(notebook, "cases missing the organ")))
    liver = [float(table[c.case_id]["Liver"]) for c in cases]
    assert float(summary["Liver"]["mean"]) == pytest.approx(np.mean(liver), abs=0.051)
    assert int(summary["Gallbladder"]["cases missing the organ"]) == \
        sum(float(table[c.case_id]["Gallbladder"]) == 0 for c in cases)


@pytest.mark.slow
def test_notebook_02_predicts_the_held_out_cases_with_resume(user_repo):
    """The three-line folder prediction (medseg.predict_cases) of the demo's held-out CTs, one case's prediction on
    its CT's grid, its organ volumes as the label file gives them, its scores as the demo's evaluation has them;
    the same request again reuses every case."""
    from medseg import PredictRequest, predict_cases
    from medseg.evaluation.compare import load_summary

    notebook = run_notebook("02_volume_inference.ipynb", user_repo)
    run = user_repo / "runs" / "demo"
    inputs, output = run / "predict" / "inputs", user_repo / "runs" / "demo_predictions"
    names = sorted(p.name for p in inputs.iterdir())
    assert len(names) == 3  # the tiny demo's held-out cases
    assert printed(cell_with(notebook, "summary = predict_cases(")).strip() == \
        f"3 predicted, 0 reused, 0 failed -> {output.resolve()}"

    shown = names[0]
    ct, prediction = read_volume(inputs / shown), read_volume(output / shown)
    assert prediction.shape == ct.shape and np.allclose(prediction.affine, ct.affine)
    assert printed(cell_with(notebook, "read_volume(image_path)")).splitlines()[0].startswith(
        f"{shown}: prediction {ct.shape}, CT {ct.shape}")
    # the same labels as the demo's own predict stage made with this checkpoint
    assert np.array_equal(prediction.array, read_volume(run / "predict" / "labels" / shown).array)

    volumes = table_by_index(shown_table(cell_with(notebook, "stats = read_json(")))
    voxel_ml = abs(float(np.linalg.det(prediction.affine[:3, :3]))) / 1000.0
    label_set = get_label_set("synapse8")
    assert sorted(volumes) == sorted(label_set.display_names)
    for value, name in enumerate(label_set.display_names, start=1):
        expected = int((prediction.array == value).sum()) * voxel_ml
        assert float(volumes[name]["volume_ml"]) == pytest.approx(expected, abs=0.051), name

    scores = table_by_index(shown_table(cell_with(notebook, "evaluate_case(")))
    evaluated = load_summary(run)["standard"]["cases"][shown.split(".")[0]]
    for organ, record in evaluated.items():
        name = label_set.display_names[label_set.organs.index(organ)]
        assert scores[name]["status"] == record["status"], organ
        if record["hd95_mm"] is not None:
            assert float(scores[name]["hd95_mm"]) == pytest.approx(record["hd95_mm"], rel=1e-3), organ

    # resume: the notebook's request made again reuses every case and rewrites none
    written = {name: (output / name).stat().st_mtime_ns for name in names}
    again = predict_cases(PredictRequest(input=inputs, output=output, checkpoint=run / "train" / "run" / "last.pt",
                                         statistics=True, progress=False))
    assert sorted(again.reused) == names and again.predicted == [] and again.failed == {}
    assert {name: (output / name).stat().st_mtime_ns for name in names} == written


@pytest.mark.slow
def test_notebook_03_makes_and_compares_a_second_run(user_repo):
    from medseg.evaluation.compare import load_summary

    figures = user_repo / "figures"
    notebook = run_notebook("03_model_comparison.ipynb", user_repo)
    run_a, run_b = user_repo / "runs" / "demo", user_repo / "runs" / "demo_ds"
    record_b = json.loads((run_b / "report" / "pipeline.json").read_text())
    record_a = json.loads((run_a / "report" / "pipeline.json").read_text())
    assert record_b["stages"]["train"]["params"]["model"] == "DS-TransUNet-Tiny"
    for stage in ("prepare", "train", "predict", "evaluate"):  # only the model differs
        params_a, params_b = record_a["stages"][stage]["params"], record_b["stages"][stage]["params"]
        assert {k: v for k, v in params_b.items() if k != "model"} == {k: v for k, v in params_a.items()
                                                                      if k != "model"}, stage
    summary_a, summary_b = load_summary(run_a), load_summary(run_b)
    assert sorted(summary_b["standard"]["cases"]) == sorted(summary_a["standard"]["cases"])  # same held-out cases
    assert "TransUNet-Tiny (" in printed(cell_with(notebook, "summary_a, summary_b = load_summary"))
    assert "; 3 cases in both" in printed(cell_with(notebook, "summary_a, summary_b = load_summary"))

    means = table_by_index(shown_table(cell_with(notebook, "means = organ_means(")))
    names = summary_a["display_names"]
    spread = 0
    for model, summary in (("TransUNet-Tiny", summary_a), ("DS-TransUNet-Tiny", summary_b)):
        for organ in summary["organs"]:  # mean and population std (ddof=0) as the evaluation summary has them
            for metric in ("dice", "hd95_mm"):
                stats = summary["standard"]["organs"][organ][metric]
                if not stats["n"]:
                    continue
                shown = means[names[organ]]
                assert float(shown[f"{model} {metric} mean"]) == pytest.approx(stats["mean"], abs=5e-4, rel=1e-3)
                assert float(shown[f"{model} {metric} std"]) == pytest.approx(stats["std"], abs=5e-4, rel=1e-3)
                spread += stats["std"] > 0.01
    assert spread >= 4  # enough values that differ for ddof=1 to show (the tiny models' HD95 vary between cases)

    box_cell = cell_with(notebook, "box_plot_png(")
    images = [o for o in box_cell.outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) == 4  # Dice and HD95 of each run, as the reports draw them
    footnote = printed(cell_with(notebook, "footnote = ")).splitlines()[-1]
    assert footnote.startswith("Mean Dice per organ over the held-out cases both runs scored (of 3)")
    assert (figures / "dice_comparison.pdf").stat().st_size > 0

    # executed again, run B is found and every one of its stages is cached
    notebook = run_notebook("03_model_comparison.ipynb", user_repo)
    statuses = printed(cell_with(notebook, "run_pipeline(pipeline_b")).splitlines()
    assert statuses and all(line.endswith(": cached") for line in statuses)
