"""Training precision on the CPU: native bf16 detection, what ``amp: auto`` resolves to, and the record of it."""
from pathlib import Path

import pytest
import torch

import medseg.engine.inference as inference
from medseg.data.slice_cache import prepare_cohort
from medseg.engine.config import TrainConfig
from medseg.engine.inference import cpu_native_bf16, resolve_amp
from medseg.engine.train import train, training_amp
from medseg.errors import ConfigError

CPU = torch.device("cpu")
FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f {extra}\nmodel name\t: test\n"


@pytest.mark.parametrize("extra, native", [("avx512_bf16", True), ("amx_bf16 amx_tile", True), ("avx512_vnni", False),
                                           ("", False)])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, extra, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(FLAGS.format(extra=extra))
    assert cpu_native_bf16(str(cpuinfo)) is (native and torch.backends.mkldnn.is_available())


def test_no_cpuinfo_means_no_native_bf16(tmp_path):
    assert cpu_native_bf16(str(tmp_path / "missing")) is False


@pytest.mark.parametrize("native", [True, False])
def test_auto_resolves_by_device_cpu_and_threads(monkeypatch, native):
    monkeypatch.setattr(inference, "cpu_native_bf16", lambda: native)
    assert resolve_amp("auto", CPU) == "off"  # inference keeps fp32 on the CPU
    assert resolve_amp("auto", CPU, cpu_bf16=True) == ("bf16" if native else "off")
    assert resolve_amp("fp32", CPU, cpu_bf16=True) == resolve_amp("off", CPU, cpu_bf16=True) == "off"
    assert resolve_amp("bf16", CPU) == "bf16"  # asked for: bf16 whatever the CPU
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert training_amp("auto", CPU) == ("bf16" if native else "off")
        torch.set_num_threads(2)
        assert training_amp("auto", CPU) == "off"  # spinning bf16 weight-gradient barriers: fp32 on 2+ threads
        assert training_amp("bf16", CPU) == "bf16"
    finally:
        torch.set_num_threads(previous)
    with pytest.raises(ConfigError, match="amp: expected auto, bf16, fp32 or off, got 'fp16'"):
        resolve_amp("fp16", CPU)


@pytest.fixture(scope="module")
def prepared(tiny_cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "cache"
    prepare_cohort(tiny_cohort, out, split="seeded", test_fraction=0.5, progress=False)
    return out


@pytest.mark.parametrize("threads, amp, expected", [(1, "auto", "bf16"), (2, "auto", "off"), (1, "fp32", "off")])
def test_the_checkpoint_records_the_precision_that_ran(prepared, tmp_path, monkeypatch, threads, amp, expected):
    monkeypatch.setattr(inference, "cpu_native_bf16", lambda: True)
    seen = []
    original = inference.autocast

    def recording_autocast(device, resolved):
        seen.append(resolved)
        return original(device, resolved)

    import medseg.engine.train as train_module
    monkeypatch.setattr(train_module, "autocast", recording_autocast)
    config = TrainConfig.from_dict({"model": "TransUNet-Tiny", "img_size": 32, "batch_size": 4, "epochs": 1,
                                    "workers": 0, "progress": False, "threads": threads, "tensorboard": False,
                                    "amp": amp, "data": str(prepared), "out": str(tmp_path / "run")})
    train(config)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["training_state"]
    assert state["amp"] == expected and state["config"]["amp"] == amp
    assert seen and set(seen) == {expected}
