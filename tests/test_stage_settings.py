"""One definition of each stage's settings: ``medseg synth`` / ``prepare`` / ``evaluate`` take their flags from the
same dataclasses (``medseg.schema``) as the pipeline's stages, so defaults, choices and checks cannot drift."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from medseg import schema
from medseg.cli import build_parser, main
from medseg.data.cohort import make_split
from medseg.errors import ConfigError
from medseg.evaluation.metrics import DEFAULT_TOLERANCE_MM, PROTOCOLS
from medseg.labels import LABEL_SETS
from medseg.phantom import SIZES
from medseg.pipeline import stage_params
from medseg.schema import EvaluateStage, PrepareStage, SynthStage

STAGES = {"synth": SynthStage, "prepare": PrepareStage, "evaluate": EvaluateStage}
POSITIONALS = {"synth": ["out"], "prepare": ["raw", "out"], "evaluate": ["ref", "pred", "-o", "report"]}


def _command_parser(command: str) -> argparse.ArgumentParser:
    parser = build_parser(load_commands=[command])
    return next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction)).choices[
        command]


@pytest.mark.parametrize("command", list(STAGES))
def test_the_command_line_and_the_pipeline_read_the_same_defaults(command):
    cls = STAGES[command]
    args = _command_parser(command).parse_args(POSITIONALS[command])
    from_flags = dataclasses.asdict(schema.build(cls, schema.check_flags(args, cls), "command line"))
    assert from_flags == dataclasses.asdict(cls()) == stage_params(command, {}, "test.yaml")


@pytest.mark.parametrize("command", list(STAGES))
def test_every_setting_is_a_flag_with_the_fields_choices(command):
    cls = STAGES[command]
    actions = {action.dest: action for action in _command_parser(command)._actions}
    for name, kind in schema.field_kinds(cls).items():
        assert name in actions, f"{command}: {name} has no flag"
        assert tuple(actions[name].choices or ()) == (kind.choices or ())


def test_the_choices_are_what_the_library_accepts():
    assert schema.field_kinds(SynthStage)["size"].choices == SIZES
    assert schema.field_kinds(EvaluateStage)["protocol"].choices == PROTOCOLS
    assert EvaluateStage().tolerance_mm == DEFAULT_TOLERANCE_MM
    assert schema.field_kinds(PrepareStage)["labels"].choices == tuple(LABEL_SETS)
    ids = [f"case{n:04d}" for n in range(1, 11)]
    for mode in schema.field_kinds(PrepareStage)["split"].choices:
        try:
            make_split(ids, mode=mode)
        except ConfigError as exc:  # e.g. the paper split needs the Synapse ids; the mode itself is known
            assert "unknown mode" not in str(exc)
    with pytest.raises(ConfigError, match="unknown mode"):
        make_split(ids, mode="random")


@pytest.mark.parametrize("argv, message", [
    (["synth", "out", "--cases", "0"], "medseg synth: error: --cases: must be at least 1, got 0"),
    (["synth", "out", "--seed", "-1"], "medseg synth: error: --seed: must be at least 0, got -1"),
    (["prepare", "raw", "out", "--workers", "0"], "medseg prepare: error: --workers: must be at least 1, got 0"),
    (["prepare", "raw", "out", "--test-fraction", "-0.1"],
     "medseg prepare: error: --test-fraction: must be at least 0, got -0.1"),
    (["evaluate", "ref", "pred", "-o", "report", "--tolerance", "-1"],
     "medseg evaluate: error: --tolerance: must be at least 0, got -1.0"),
    (["evaluate", "ref", "pred", "-o", "report", "--workers", "0"],
     "medseg evaluate: error: --workers: must be at least 1, got 0"),
])
def test_a_bad_flag_is_one_line_naming_it_before_anything_runs(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == message
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_the_pipeline_refuses_a_split_the_command_line_refuses():
    with pytest.raises(ConfigError, match=r"test.yaml: stages.prepare.split: expected one of auto, paper, seeded, "
                                          r"all-train, all-test, got 'random'"):
        stage_params("prepare", {"split": "random"}, "test.yaml")


def test_synth_flags_reach_the_library(tmp_path, monkeypatch):
    import medseg.phantom as phantom

    calls = []

    def record(out_dir, **kwargs):
        calls.append(kwargs)
        return {"cases": 3, "size": "full", "seed": 5, "out_dir": out_dir, "seconds": 0.0, "omitted": {},
                "preview": None}

    monkeypatch.setattr(phantom, "write_cohort", record)
    assert main(["synth", str(tmp_path / "out"), "--cases", "3", "--seed", "5", "--size", "full", "--workers", "2",
                 "--no-preview"]) == 0
    assert calls == [{"cases": 3, "seed": 5, "size": "full", "workers": 2, "progress": True, "preview": False}]
