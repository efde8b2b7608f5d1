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
    assert list(pipeline.stages) == ["synth", "prepare", "train", "postprocess", "predict", "evaluate", "report"]
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
    import medseg.pipeline as pipeline_module

    path = _write(tmp_path, "stages:\n  synth: {cases: 3}\n  prepare: {split: seeded}\n")
    base = stage_keys(load_pipeline(path))
    monkeypatch.setattr(pipeline_module, "GENERATOR_VERSION", pipeline_module.GENERATOR_VERSION + "-next")
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


@pytest.mark.parametrize("sets, message", [
    (["predict.checkpoint=best"], "stages.predict.checkpoint: best needs validation (set train.val_every > 0)"),
    (["predict.checkpoint=bset"], "stages.predict.checkpoint: expected one of best, last, got 'bset'"),
    (["predict.resize=cubic"], "stages.predict.resize: expected one of torch, scipy, got 'cubic'"),
    (["predict.device=gpu"], "stages.predict.device: expected auto|cpu|cuda[:N], got 'gpu'"),
    (["predict.organs=''"], "stages.predict.organs: empty"),
    (["predict.output_types=[png]"], "stages.predict.output_types: unknown type 'png'"),
    (["predict.statistcs=true"], "stages.predict.statistcs: unknown key (did you mean statistics?)"),
    (["train.lr=0"], "stages.train: lr: must be positive"),
    (["train.data=/elsewhere"], "stages.train.data: unknown key"),
    (["report.title=[oops"], "--set report.title: cannot read value '[oops'"),
    (["train.aux_weights=[0.6, 0.2"], "--set train.aux_weights: cannot read value"),
])
def test_bad_stage_settings_are_one_line_errors(sets, message, capsys):
    sets = [arg for s in sets for arg in ("--set", s)]
    assert main(["run", str(PIPELINES / "demo.yaml"), "--dry-run", *sets]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_the_set_parser_is_the_one_train_uses():
    from medseg.engine.config import parse_set_options
    from medseg.schema import parse_assignment

    assert parse_assignment("train.aux_weights=[0.6, 0.2, 0.2]") == (["train", "aux_weights"], [0.6, 0.2, 0.2])
    assert parse_set_options(["aux_weights=[0.6, 0.2, 0.2]"]) == {"aux_weights": [0.6, 0.2, 0.2]}
    for parse in (parse_assignment, parse_set_options):
        with pytest.raises(ConfigError, match="cannot read value"):
            parse("title=[oops" if parse is parse_assignment else ["title=[oops"])


def test_validated_pipeline_with_best_checkpoint_and_report(tiny_cohort, tmp_path):
    """Validation on (val_every > 0): predict uses best.pt and the report's training curve shows the validation."""
    path = _write(tmp_path, f"run_dir: {tmp_path / 'run'}\ndata: {tiny_cohort}\nstages:\n"
                            "  prepare: {split: seeded, test_fraction: 0.5}\n"
                            "  train: {model: TransUNet-Tiny, img_size: 32, epochs: 2, batch_size: 8, workers: 0,"
                            " threads: 1, val_every: 1, tensorboard: false}\n"
                            "  predict: {checkpoint: best, statistics: true, preview: true, organs: [liver, spleen]}\n"
                            "  evaluate: {}\n  report: {}\n")
    results = {r.name: r for r in run_pipeline(load_pipeline(path), progress=False)}
    assert results["predict"].outputs["checkpoint"] == str(tmp_path / "run" / "train" / "run" / "best.pt")
    # the predict stage takes medseg predict's options (same names) and writes through the same library
    labels = tmp_path / "run" / "predict" / "labels"
    cases = sorted(p.name[: -len("_record.json")] for p in labels.glob("*_record.json"))
    assert cases and results["predict"].outputs["cases"] == len(cases)
    for case in cases:
        assert (labels / f"{case}_preview.png").read_bytes().startswith(b"\x89PNG")
        assert set(json.loads((labels / f"{case}_statistics.json").read_text())["organs"]) == {"liver", "spleen"}
    assert json.loads((labels / "labels.json").read_text())["organs_kept"] == ["liver", "spleen"]
    summary = json.loads((labels / "predict_summary.json").read_text())
    assert summary["checkpoint_sha256"] == results["predict"].outputs["checkpoint_sha256"]
    assert Path(results["report"].outputs["training_curve"]).stat().st_size > 1000


def test_stopped_training_ends_the_pipeline_with_its_own_exit_code(tiny_cohort, tmp_path, monkeypatch, capsys):
    import medseg.engine.train as engine_train
    import medseg.pipeline as pipeline_module

    def stopped(config):
        return engine_train.RunResult(run_dir=Path(config.out), last_checkpoint=Path(config.out) / "last.pt",
                                      iterations=3, max_iterations=10, stop_reason="SIGTERM", exit_code=143)

    monkeypatch.setattr(pipeline_module, "train", stopped)
    path = _write(tmp_path, f"run_dir: {tmp_path / 'run'}\ndata: {tiny_cohort}\nstages:\n"
                            "  prepare: {split: seeded, test_fraction: 0.5}\n  train: {model: TransUNet-Tiny}\n")
    assert main(["run", str(path), "--no-progress"]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train: stopped (SIGTERM) at iteration 3 of 10" in err[0] and "resume" in err[0]
    assert "interrupted" not in err[0]


def test_training_curve_with_validation_rows():
    from medseg.evaluation.plots import training_curve_png

    rows = [{"iteration": "1", "loss": "0.9", "val_dice": ""}, {"iteration": "2", "loss": "0.7", "val_dice": ""},
            {"iteration": "2", "loss": "", "val_dice": "0.41"}]
    assert training_curve_png(rows).startswith(b"\x89PNG")
    assert training_curve_png([]) is None


@pytest.mark.slow
def test_sigterm_during_training_ends_the_pipeline_with_143(tiny_cohort, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    path = _write(tmp_path, f"run_dir: {tmp_path / 'run'}\ndata: {tiny_cohort}\nstages:\n"
                            "  prepare: {split: seeded, test_fraction: 0.5}\n"
                            "  train: {model: TransUNet-Tiny, img_size: 32, epochs: 50, batch_size: 2, workers: 0,"
                            " threads: 1, tensorboard: false}\n")
    process = subprocess.Popen([sys.executable, "-m", "medseg", "-v", "run", str(path), "--no-progress"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    for line in process.stderr:
        if "iteration 2/" in line or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=120)
    assert process.returncode == 143, rest
    last = rest.strip().splitlines()[-1]
    assert "train: stopped (SIGTERM)" in last and "run the pipeline again to resume" in last
    assert "Traceback" not in rest and (tmp_path / "run" / "train" / "run" / "last.pt").is_file()


POSTPROCESS_PIPELINE = ("prepare: {split: seeded, test_fraction: 0.5}\n"
                        "  train: {model: TransUNet-Tiny, img_size: 32, epochs: 1, batch_size: 8, workers: 0,"
                        " threads: 1, tensorboard: false}\n"
                        "  postprocess: {cases: 2}\n  predict: {}\n  evaluate: {workers: 1}\n  report: {}\n")


def test_postprocess_stage_chooses_rules_that_predict_applies(tiny_cohort, tmp_path):
    """The rules are chosen on the training split (a data folder), stored beside the checkpoint with its hash,
    applied by the predict stage (the raw output kept), and the evaluation scores both."""
    import numpy as np

    from medseg.io import read_provenance, read_volume
    from medseg.postprocess import apply_rules, load_rules, rules_path

    path = _write(tmp_path, f"run_dir: {tmp_path / 'run'}\ndata: {tiny_cohort}\nstages:\n  {POSTPROCESS_PIPELINE}")
    results = {r.name: r for r in run_pipeline(load_pipeline(path), progress=False)}
    post, predicted = results["postprocess"].outputs, results["predict"].outputs
    checkpoint = Path(predicted["checkpoint"])
    assert Path(post["rules"]) == rules_path(checkpoint) and post["source"].startswith("2 training-split cases")
    rules = load_rules(post["rules"])
    assert rules.checkpoint_sha256 == predicted["checkpoint_sha256"]
    assert predicted["postprocess"] == rules.describe()
    for final_path in sorted(Path(predicted["predictions"]).glob("*.nii.gz")):
        raw = read_volume(Path(predicted["predictions_raw"]) / final_path.name)
        final = read_volume(final_path)
        assert np.array_equal(final.array, apply_rules(raw.array, raw.spacing, rules)[0])
        assert read_provenance(final_path)["postprocess"] == post["rules_sha256"]
    evaluated = results["evaluate"].outputs
    assert Path(evaluated["summary_without_postprocessing"]).is_file()
    assert any(line.startswith("without post-processing: mean Dice") for line in evaluated["headline"])
    assert Path(predicted["quality_flags"]).read_text().startswith("case_id,organ,flag,detail")
    report = Path(results["report"].outputs["markdown"]).read_text()
    assert "Quality flags" in report and "Post processing" in report

    # --set predict.postprocess=false: the model's own labels, no raw copy, the predict stage re-runs
    again = {r.name: r for r in run_pipeline(load_pipeline(path, ["predict.postprocess=false"]), progress=False)}
    assert again["postprocess"].status == "cached" and again["predict"].status == "ran"
    assert again["predict"].outputs["postprocess"] is None and "predictions_raw" not in again["predict"].outputs
    for final_path in sorted(Path(again["predict"].outputs["predictions"]).glob("*.nii.gz")):
        assert read_provenance(final_path)["postprocess"] is None


@pytest.mark.parametrize("sets, message", [
    (["postprocess.checkpoint=best", "predict.checkpoint=last"], "stages.postprocess.checkpoint: best, but the "
                                                                 "predict stage uses last"),
    (["postprocess.validation=phantoms", "data=."], "stages.postprocess.validation: phantoms needs the synth stage"),
])
def test_postprocess_stage_settings_are_checked(tmp_path, sets, message, capsys):
    path = _write(tmp_path, PIPELINES.joinpath("demo.yaml").read_text())
    sets = [arg for s in sets for arg in ("--set", s)]
    assert main(["run", str(path), "--dry-run", *sets]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_postprocess_stage_validates_on_fresh_phantoms(tmp_path):
    """With the synth stage, the rules are chosen on phantoms of another seed (never trained on)."""
    path = _write(tmp_path, f"run_dir: {tmp_path / 'run'}\nstages:\n  synth: {{cases: 2, seed: 5}}\n"
                            "  prepare: {split: all-train}\n"
                            "  train: {model: TransUNet-Tiny, img_size: 32, epochs: 1, batch_size: 8, workers: 0,"
                            " threads: 1, tensorboard: false}\n  postprocess: {cases: 1, seed: 6}\n")
    results = {r.name: r for r in run_pipeline(load_pipeline(path), progress=False)}
    outputs = results["postprocess"].outputs
    assert outputs["source"] == "1 fresh phantoms (seed 6, size small)" and outputs["validation_cases"] == 1
    with pytest.raises(ConfigError, match="stages.postprocess.seed: 5 is the synth stage's seed"):
        run_pipeline(load_pipeline(path, ["postprocess.seed=5"]), progress=False)
