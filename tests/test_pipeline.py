"""YAML pipelines: validation errors name the key, paper pipelines validate, stages are cached and re-run."""
import json
from pathlib import Path

import pytest

from medseg.cli import main
from medseg.errors import ConfigError
from medseg.pipeline import load_pipeline, run_pipeline, stage_keys

PIPELINES = Path(__file__).parents[1] / "pipelines"


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["synapse_transunet.yaml", "synapse_ds_transunet.yaml"])
def test_paper_pipelines_validate_with_a_data_folder(name, tiny_cohort, capsys):
    assert main(["run", str(PIPELINES / name), "--dry-run", "--set", f"data={tiny_cohort}",
                 "--set", "run_dir=/nonexistent/never-written"]) == 0
    out = capsys.readouterr().out
    assert "configuration is valid" in out
    assert not Path("/nonexistent/never-written").exists()
    pipeline = load_pipeline(PIPELINES / name, [f"data={tiny_cohort}"])
    assert pipeline.stages["prepare"]["split"] == "paper"
    assert pipeline.stages["train"]["epochs"] == 150 and pipeline.stages["train"]["batch_size"] == 24


def test_paper_pipeline_without_data_names_the_key(capsys):
    assert main(["run", str(PIPELINES / "synapse_transunet.yaml"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data: required" in err[0]


def test_demo_pipeline_validates():
    pipeline = load_pipeline(PIPELINES / "demo.yaml")
    assert list(pipeline.stages) == ["synth", "prepare", "train", "predict", "evaluate", "report"]
    assert pipeline.data is None


@pytest.mark.parametrize("text, message", [
    ("stages:\n  synth: {cases: 3}\n  prepare: {labls: synapse8}\n", "stages.prepare.labls: unknown key (did you mean labels?)"),
    ("stages:\n  synth: {cases: three}\n", "stages.synth.cases: expected an integer, got 'three'"),
    ("stages:\n  synth: {cases: 3}\n  prepare: {}\n  train: {model: TransUNet-Huge}\n",
     "stages.train.model: unknown model 'TransUNet-Huge'"),
    ("stages:\n  synth: {cases: 3}\n  prepare: {}\n  train: {model: TransUNet-Tiny, epoch: 3}\n",
     "stages.train.epoch: unknown key (did you mean epochs?)"),
    ("data: /definitely/not/here\nstages:\n  prepare: {}\n", "data: /definitely/not/here: folder not found"),
    ("stages:\n  synth: {}\n  predict: {}\n", "stages.predict: needs the train stage"),
    ("stages:\n  sinth: {}\n", "stages.sinth: unknown stage (did you mean synth?)"),
    ("nmae: x\nstages:\n  synth: {}\n", "nmae: unknown key (did you mean name?)"),
    ("stages: [synth\n", "not valid YAML (line 2)"),
    ("stages:\n  synth: {cases: 3}\n  prepare: {}\n  train: {model: TransUNet-Tiny, augment: maybe}\n",
     "stages.train.augment: expected true or false, got 'maybe'"),
])
def test_config_errors_are_one_line_naming_the_key(tmp_path, capsys, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_pipeline(path)
    assert message in str(raised.value)
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_set_overrides_and_bad_overrides(tmp_path):
    path = _write(tmp_path, "stages:\n  synth: {cases: 3}\n")
    assert load_pipeline(path, ["synth.cases=5"]).stages["synth"]["cases"] == 5
    assert load_pipeline(path, ["stages.synth.seed=9"]).stages["synth"]["seed"] == 9
    with pytest.raises(ConfigError, match="expected key=value"):
        load_pipeline(path, ["synth.cases"])


def test_stage_keys_chain_downstream(tmp_path):
    path = _write(tmp_path, "stages:\n  synth: {cases: 3}\n  prepare: {split: seeded}\n")
    base = stage_keys(load_pipeline(path))
    changed = stage_keys(load_pipeline(path, ["synth.seed=1"]))
    assert base["synth"] != changed["synth"] and base["prepare"] != changed["prepare"]
    only_prepare = stage_keys(load_pipeline(path, ["prepare.test_fraction=0.5"]))
    assert base["synth"] == only_prepare["synth"] and base["prepare"] != only_prepare["prepare"]


def test_a_new_phantom_generator_reruns_synth(tmp_path, monkeypatch):
    from medseg.data import phantom

    path = _write(tmp_path, "stages:\n  synth: {cases: 3}\n  prepare: {split: seeded}\n")
    base = stage_keys(load_pipeline(path))
    monkeypatch.setattr(phantom, "GENERATOR_VERSION", phantom.GENERATOR_VERSION + "-next")
    changed = stage_keys(load_pipeline(path))
    assert base["synth"] != changed["synth"] and base["prepare"] != changed["prepare"]


def test_cached_stages_are_skipped_and_changes_rerun(tmp_path):
    text = f"run_dir: {tmp_path / 'run'}\nstages:\n  synth: {{cases: 2, seed: 3}}\n  prepare: {{split: seeded}}\n"
    path = _write(tmp_path, text)
    first = run_pipeline(load_pipeline(path), progress=False)
    assert [r.status for r in first] == ["ran", "ran"]
    again = run_pipeline(load_pipeline(path), progress=False)
    assert [r.status for r in again] == ["cached", "cached"]
    changed = run_pipeline(load_pipeline(path, ["prepare.test_fraction=0.5"]), progress=False)
    assert [r.status for r in changed] == ["cached", "ran"]
    forced = run_pipeline(load_pipeline(path, ["prepare.test_fraction=0.5"]), force=["synth"], progress=False)
    assert [r.status for r in forced] == ["ran", "ran"]
    record = json.loads((tmp_path / "run" / "prepare" / "stage.json").read_text())
    assert record["params"]["test_fraction"] == 0.5 and record["outputs"]["cases"] == 2
