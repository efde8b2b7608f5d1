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
from medseg.engine.train import EpochSampler, poly_lr, read_metrics, train
from medseg.errors import ConfigError

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
    result = train(_config(prepared, tmp_path / "ds", model="DS-TransUNet-Tiny", img_size=64, batch_size=4,
                           epochs=1, stop_after=2))
    assert result.iterations == 2 and result.final_loss is not None and result.final_loss > 0


def test_existing_run_needs_resume_and_same_schedule(prepared, tmp_path):
    train(_config(prepared, tmp_path / "run", stop_after=1))
    with pytest.raises(ConfigError, match="--resume"):
        train(_config(prepared, tmp_path / "run"))
    with pytest.raises(ConfigError, match="lr"):
        train(_config(prepared, tmp_path / "run", lr=0.02, resume=True))


def test_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="'bogus'"):
        TrainConfig.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig.from_dict({"epochs": "ten"})
    with pytest.raises(ConfigError, match="amp"):
        TrainConfig.from_dict({"amp": "fp8"})
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("model: TransUNet-Tiny\nepochs: 5\nbatchsize: 3\n")
    with pytest.raises(ConfigError, match=f"{yaml_file}: unknown key 'batchsize'"):
        load_config(yaml_file)
    yaml_file.write_text("model: TransUNet-Tiny\nepochs: 5\nlr: 0.02\n")
    config = load_config(yaml_file, ["epochs=7", "model_options.hidden_size=64"], {"lr": None, "batch_size": 6})
    assert (config.epochs, config.lr, config.batch_size) == (7, 0.02, 6)
    assert config.model_options == {"hidden_size": 64}
    assert TrainConfig().batch_size == 24 and TrainConfig().lr == 0.01 and TrainConfig().seed == 1234
    with pytest.raises(ConfigError):
        parse_set_options(["epochs"])


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
        "indices": result.epoch_indices, "final_loss": result.final_loss, "iterations": result.iterations,
        "wrote_checkpoint": result.last_checkpoint is not None,
    }))


@pytest.mark.slow
def test_ddp_two_cpu_processes_gloo(prepared, tmp_path):
    config = {**TINY, "data": str(prepared), "out": str(tmp_path / "run"), "epochs": 1}
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), config, str(tmp_path)), nprocs=2, join=True)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    shard0, shard1 = reports[0]["indices"], reports[1]["indices"]
    assert len(shard0) == len(shard1) == 10
    assert not set(shard0) & set(shard1) and sorted(shard0 + shard1) == list(range(20))
    assert reports[0]["iterations"] == reports[1]["iterations"] == 5  # global batch 4 = 2 per process
    assert reports[0]["final_loss"] == reports[1]["final_loss"]  # the logged loss is the mean over processes
    assert reports[0]["wrote_checkpoint"] and not reports[1]["wrote_checkpoint"]
    assert (tmp_path / "run" / "last.pt").is_file() and (tmp_path / "run" / "metrics.csv").is_file()
