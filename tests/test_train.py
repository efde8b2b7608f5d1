"""The training loop: checkpoints and metrics, exact resume, SIGTERM, DDP on CPU with gloo, config validation."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medseg.data.slice_cache import prepare_cohort
from medseg.engine.config import TrainConfig, load_config, parse_set_options
from medseg.engine.train import EpochSampler, poly_lr, read_metrics, torch_settings, train
from medseg.errors import ConfigError, InputError

TINY = dict(model="TransUNet-Tiny", img_size=32, batch_size=4, epochs=2, workers=0, progress=False,
            deterministic=True, threads=1, tensorboard=False)


@pytest.fixture(scope="module")
def prepared(tiny_cohort, tmp_path_factory) -> Path:
    """Slice cache of the 4-case tiny cohort: 2 training cases (20 slices), 2 held-out cases."""
    out = tmp_path_factory.mktemp("prepared") / "cache"
    prepare_cohort(tiny_cohort, out, split="seeded", test_fraction=0.5, progress=False)
    return out


def _config(prepared: Path, out: Path, **changes) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, "data": str(prepared), "out": str(out), **changes})


def test_tiny_run_writes_checkpoints_and_metrics(prepared, tmp_path):
    from medseg.models.checkpoint import load_checkpoint

    result = train(_config(prepared, tmp_path / "run", val_every=1))
    assert result.finished and result.exit_code == 0
    assert result.epochs_completed == 2 and result.iterations == result.max_iterations == 10
    for name in ("last.pt", "best.pt", "metrics.csv", "config.json", "train.log"):
        assert (tmp_path / "run" / name).is_file(), name
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    train_rows = [r for r in rows if r["loss"]]
    val_rows = [r for r in rows if r["val_dice"]]
    assert [int(r["iteration"]) for r in train_rows] == list(range(1, 11))
    assert len(val_rows) == 2 and len(result.val_history) == 2
    assert float(train_rows[0]["lr"]) == pytest.approx(0.01)
    assert float(train_rows[-1]["lr"]) == pytest.approx(poly_lr(0.01, 9, 10))
    # the checkpoint carries everything predict needs
    model, info = load_checkpoint(tmp_path / "run" / "last.pt")
    assert info.model_name == "TransUNet-Tiny" and info.label_set.name == "synapse8"
    assert info.model_config["img_size"] == 32 and info.preprocessing["img_size"] == 32
    assert info.preprocessing["hu_min"] == -125.0 and info.preprocessing["axcodes"] == "PLS"
    assert info.training_state["iteration"] == 10 and not info.training_state["interrupted"]


def test_resume_reproduces_the_uninterrupted_loss_curve(prepared, tmp_path):
    reference = train(_config(prepared, tmp_path / "a"))
    first = train(_config(prepared, tmp_path / "b", stop_after=3))  # stops inside epoch 1
    assert not first.finished and first.stop_reason == "stop_after" and first.iterations == 3
    second = train(_config(prepared, tmp_path / "b", stop_after=4, resume=True))  # crosses the epoch boundary
    assert second.iterations == 7
    third = train(_config(prepared, tmp_path / "b", resume=True))
    assert third.finished and third.iterations == reference.iterations

    def curve(run):
        return [(r["epoch"], r["iteration"], r["loss"], r["lr"]) for r in read_metrics(tmp_path / run / "metrics.csv")]

    assert curve("a") == curve("b")
    weights_a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["state_dict"]
    weights_b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(weights_a[key], weights_b[key]) for key in weights_a)


def test_ds_transunet_trains_with_deep_supervision(prepared, tmp_path):
    """The auxiliary outputs enter the loss with their weights: other weights give another first loss."""
    def first_loss(name, weights):
        return train(_config(prepared, tmp_path / name, model="DS-TransUNet-Tiny", img_size=64, batch_size=4,
                             epochs=1, stop_after=1, aux_weights=weights)).final_loss

    main_only = first_loss("main", [1.0, 0.0, 0.0])
    supervised = first_loss("deep", [0.6, 0.2, 0.2])
    assert main_only != pytest.approx(supervised, rel=1e-4)
    with pytest.raises(ConfigError, match="aux_weights: loss: 3 model outputs but 2 loss weights"):
        first_loss("wrong", [0.5, 0.5])


def test_existing_run_needs_resume_and_same_schedule(prepared, tmp_path):
    train(_config(prepared, tmp_path / "run", stop_after=1))
    with pytest.raises(ConfigError, match="--resume"):
        train(_config(prepared, tmp_path / "run"))
    with pytest.raises(ConfigError, match="lr"):
        train(_config(prepared, tmp_path / "run", lr=0.02, resume=True))


@pytest.mark.parametrize("data, message", [
    ({"bogus": 1}, "config: bogus: unknown key (known: "),
    ({"epochs": "ten"}, "config: epochs: expected an integer, got 'ten'"),
    ({"epochs": 0}, "config: epochs: must be at least 1, got 0"),
    ({"lr": True}, "config: lr: expected a number, got True"),
    ({"amp": "fp8"}, "config: amp: expected one of auto, bf16, fp32, off, got 'fp8'"),
    ({"threads": 0}, "config: threads: must be at least 1, got 0"),
    ({"val_max_cases": None, "augment": "yes"}, "config: augment: expected true or false, got 'yes'"),
    ({"schema_version": 2}, "config: schema_version: 2 is newer than this medseg understands (1)"),
])
def test_config_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as raised:
        TrainConfig.from_dict(data)
    assert str(raised.value).startswith(message)


def test_stored_config_round_trips_with_its_version():
    stored = TrainConfig(model="TransUNet-Tiny", epochs=3).to_dict()
    assert stored["schema_version"] == 1
    assert TrainConfig.from_dict(stored) == TrainConfig(model="TransUNet-Tiny", epochs=3)
    del stored["schema_version"]  # config.json of a run from before versions: read as version 1
    assert TrainConfig.from_dict(stored).epochs == 3


def test_config_validation(tmp_path):
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("model: TransUNet-Tiny\nepochs: 5\nbatchsize: 3\n")
    with pytest.raises(ConfigError, match=f"{yaml_file}: batchsize: unknown key \\(did you mean batch_size\\?\\)"):
        load_config(yaml_file)
    yaml_file.write_text("model: TransUNet-Tiny\nepochs: 5\nlr: 0.02\n")
    config = load_config(yaml_file, ["epochs=7", "model_options.hidden_size=64"], {"lr": None, "batch_size": 6})
    assert (config.epochs, config.lr, config.batch_size) == (7, 0.02, 6)
    assert config.model_options == {"hidden_size": 64}
    assert TrainConfig().batch_size == 24 and TrainConfig().lr == 0.01 and TrainConfig().seed == 1234
    with pytest.raises(ConfigError, match="--set epochs: expected key=value"):
        parse_set_options(["epochs"])
    with pytest.raises(ConfigError, match="--set aux_weights: cannot read value"):
        parse_set_options(["aux_weights=[0.5, 0.5"])


def test_torch_settings_are_restored(prepared, tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    threads = torch.get_num_threads()
    assert not torch.are_deterministic_algorithms_enabled()
    result = train(_config(prepared, tmp_path / "run", deterministic=True, threads=threads + 1, stop_after=1))
    assert result.iterations == 1
    assert not torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert torch.get_num_threads() == threads
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with pytest.raises(RuntimeError):  # also when the run fails
        with torch_settings(True, 1, torch.device("cpu")):
            assert torch.are_deterministic_algorithms_enabled()
            raise RuntimeError("boom")
    assert not torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == threads
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8" and torch.backends.cudnn.benchmark is False


def _damaged_copy(prepared, tmp_path, file_name: str, damage) -> str:
    """Copy the cache to ``tmp_path/cache``, apply ``damage(bytes) -> bytes`` to one training case's
    ``file_name`` and return that case's id."""
    import shutil

    copy = tmp_path / "cache"
    shutil.copytree(prepared, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    case = next(e["case_id"] for e in manifest["cases"] if e["split"] == "train")
    path = copy / "cases" / case / file_name
    path.write_bytes(damage(path.read_bytes()))
    return case


@pytest.mark.parametrize("file_name, damage, message", [
    ("image_hu.npy", lambda data: data[:-100], "image_hu.npy has .* bytes, .* were written; run medseg prepare"),
    # same size, other contents (a label edited in place): the SHA-256 recorded when it was written differs
    ("label.npy", lambda data: data[:-1] + bytes([data[-1] ^ 1]), "label.npy was altered .*run medseg prepare again"),
])
def test_a_damaged_or_altered_cache_is_refused_before_the_run_folder_exists(prepared, tmp_path, file_name, damage,
                                                                              message):
    case = _damaged_copy(prepared, tmp_path, file_name, damage)
    with pytest.raises(InputError, match=f"{case}: {message}"):
        train(_config(tmp_path / "cache", tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_the_steps_run_alone(prepared, tmp_path):
    """Data, model and one epoch, without train(): the position advances by one epoch's batches."""
    from medseg.engine import distributed as D
    from medseg.engine.train import (MetricsLog, Position, TrainingRun, StopRequest, build_model,
                                     load_training_data, train_one_epoch)

    config = _config(prepared, tmp_path / "run")
    context, device = D.DistContext(), torch.device("cpu")
    data = load_training_data(config, context, device)
    assert (len(data.dataset), data.batches_per_epoch, data.max_iterations) == (20, 5, 10)
    model, optimizer, model_config = build_model(config, data.label_set, device)
    assert model_config == {"num_classes": 9, "img_size": 32, "in_channels": 1, "overrides": {}}
    run = TrainingRun(config=config, context=context, device=device, amp="off", data=data, model=model,
                      unwrapped=model, optimizer=optimizer, model_config=model_config, position=Position(),
                      metrics=MetricsLog(tmp_path / "metrics.csv", enabled=False), run_dir=tmp_path, started=0.0)

    class Bar:
        def update(self, n): pass
        def set_postfix(self, **values): pass

    assert train_one_epoch(run, StopRequest(), Bar()) is None
    assert (run.position.iteration, run.position.batch_in_epoch, len(run.epoch_losses)) == (5, 5, 5)
    assert run.final_loss == run.epoch_losses[-1] and run.last_lr == pytest.approx(poly_lr(0.01, 4, 10))


def test_epoch_sampler_shards_and_restarts():
    full = EpochSampler(10, seed=3).indices(1)
    assert sorted(full) == list(range(10))
    assert EpochSampler(10, seed=3).indices(2) != full
    rank0 = EpochSampler(10, seed=3, rank=0, world_size=2).indices(1)
    rank1 = EpochSampler(10, seed=3, rank=1, world_size=2).indices(1)
    assert not set(rank0) & set(rank1) and sorted(rank0 + rank1) == list(range(10))
    sampler = EpochSampler(10, seed=3)
    sampler.set_epoch(1, start=4)
    assert [index for _, index in sampler] == full[4:]


# ---------------------------------------------------------------------------------------------------------------
# Processes: SIGTERM and DDP


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "medseg", *args]


@pytest.mark.slow
def test_sigterm_saves_and_resume_completes(prepared, tmp_path):
    run_dir = tmp_path / "run"
    common = ["--model", "TransUNet-Tiny", "--data", str(prepared), "--out", str(run_dir), "--img-size", "32",
              "--batch-size", "2", "--epochs", "3", "--workers", "0", "--threads", "1", "--deterministic",
              "--no-progress"]
    process = subprocess.Popen(_cli("-v", "train", *common), stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    seen = []
    deadline = time.monotonic() + 120
    for line in process.stderr:
        seen.append(line)
        if "iteration 2/" in line or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, "".join(seen) + rest
    assert "Traceback" not in rest
    state = torch.load(run_dir / "last.pt", weights_only=True)["training_state"]
    assert state["interrupted"] and 2 <= state["iteration"] < 30
    resumed = subprocess.run(_cli("train", *common, "--resume"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rows = [r for r in read_metrics(run_dir / "metrics.csv") if r["loss"]]
    assert [int(r["iteration"]) for r in rows] == list(range(1, 31))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, config: dict, report_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    result = train(TrainConfig.from_dict(config))
    Path(report_dir, f"rank{rank}.json").write_text(json.dumps({
        "final_loss": result.final_loss, "iterations": result.iterations,
        "wrote_checkpoint": result.last_checkpoint is not None,
    }))


@pytest.mark.slow
def test_ddp_two_cpu_processes_gloo(prepared, tmp_path):
    config = {**TINY, "data": str(prepared), "out": str(tmp_path / "run"), "epochs": 1}
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), config, str(tmp_path)), nprocs=2, join=True)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert reports[0]["iterations"] == reports[1]["iterations"] == 5  # global batch 4 = 2 per process
    assert reports[0]["final_loss"] == reports[1]["final_loss"]  # the logged loss is the mean over processes
    assert reports[0]["wrote_checkpoint"] and not reports[1]["wrote_checkpoint"]
    assert (tmp_path / "run" / "last.pt").is_file() and (tmp_path / "run" / "metrics.csv").is_file()


def test_resume_refuses_a_stored_config_with_an_unknown_key(prepared, tmp_path):
    run_dir = tmp_path / "run"
    train(_config(prepared, run_dir, stop_after=1))
    payload = torch.load(run_dir / "last.pt", weights_only=True)
    payload["training_state"]["config"]["warmup_epochs"] = 5  # written by a medseg that knows more keys
    torch.save(payload, run_dir / "last.pt")
    with pytest.raises(ConfigError, match="training_state.config: warmup_epochs: unknown key"):
        train(_config(prepared, run_dir, resume=True))


def test_command_line_flags_come_from_the_config_fields():
    import argparse

    from medseg.commands.train import add_arguments
    from medseg.schema import flag_values

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--epochs", "3", "--lr", "0.02", "--drop-empty", "--amp", "off", "--data", "cache"])
    assert flag_values(args, TrainConfig) == {"epochs": 3, "lr": 0.02, "drop_empty": True, "amp": "off",
                                              "data": "cache"}
    with pytest.raises(SystemExit):
        parser.parse_args(["--amp", "fp8"])  # the Literal's choices
    assert "passes over all training slices" in parser.format_help()  # the field's help text
