"""Checkpoints: medseg round trips (weights, metadata, training state), bare reference state_dicts, refusal of files
carrying pickled code, and one-line errors for missing, corrupt and mismatched files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medseg.errors import CheckpointError, ConfigError
from medseg.labels import SYNAPSE8
from medseg.models import create, registry
from medseg.models.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
)

from helpers import DATA_DIR as DATA

PREPROCESSING = {"schema_version": 1, "hu_min": -125.0, "hu_max": 275.0, "img_size": 64}


pytestmark = pytest.mark.usefixtures("single_thread")

# Set if the payload of the "malicious" checkpoint ever runs.
CODE_RAN = []


def _record_code_ran(*args):
    CODE_RAN.append(args)
    return 0


class _RunsCodeWhenUnpickled:
    """An object whose unpickling would call a function: the kind of file medseg must refuse."""

    def __reduce__(self):
        return (_record_code_ran, ("payload",))


def tiny_model(seed: int = 0, num_classes: int = 9) -> nn.Module:
    torch.manual_seed(seed)
    model = create("TransUNet-Tiny", num_classes=num_classes, img_size=64)
    model.train()
    with torch.no_grad():  # move the BatchNorm running statistics away from their defaults
        model(torch.rand(2, 1, 64, 64))
    return model.eval()


def save_tiny(path: Path, model: nn.Module, **kwargs) -> Path:
    defaults = dict(model_name="TransUNet-Tiny", model_config={"num_classes": 9, "img_size": 64, "in_channels": 1},
                    label_set=SYNAPSE8, preprocessing=PREPROCESSING)
    defaults.update(kwargs)
    return save_checkpoint(path, model, **defaults)


# --------------------------------------------------------------------------------------------------------------
# medseg checkpoints
# --------------------------------------------------------------------------------------------------------------
def test_round_trip_restores_weights_metadata_and_predictions(tmp_path):
    model = tiny_model()
    path = save_tiny(tmp_path / "run" / "model.pt", model, extra={"epoch": np.int64(3), "dice": np.float32(0.75),
                                                                 "history": [np.float64(0.5), 0.6]})
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary file left behind

    loaded, info = load_checkpoint(path)
    assert not loaded.training
    assert info.kind == "medseg" and info.model_name == "TransUNet-Tiny"
    assert info.model_config == {"num_classes": 9, "img_size": 64, "in_channels": 1, "overrides": {}}
    assert info.label_set == SYNAPSE8
    assert info.preprocessing == PREPROCESSING
    assert info.extra == {"epoch": 3, "dice": 0.75, "history": [0.5, 0.6]}
    assert type(info.extra["epoch"]) is int
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))

    # The file is tensors and plain data: plain torch.load(weights_only=True) reads it.
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == CHECKPOINT_FORMAT and raw["version"] == 1


def test_overrides_are_stored_and_used(tmp_path):
    torch.manual_seed(0)
    model = create("TransUNet-Tiny", num_classes=3, img_size=64, hidden_size=64, num_layers=1)
    path = save_checkpoint(tmp_path / "m.pt", model, model_name="TransUNet-Tiny",
                           model_config={"num_classes": 3, "img_size": 64, "hidden_size": 64, "num_layers": 1},
                           label_set=None, preprocessing=None)
    loaded, info = load_checkpoint(path)
    assert info.model_config["overrides"] == {"hidden_size": 64, "num_layers": 1}
    assert info.label_set is None
    assert loaded.config.hidden_size == 64 and len(loaded.transformer.encoder.layer) == 1


def test_training_state_round_trip(tmp_path):
    model = tiny_model().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: (1 - it / 100) ** 0.9)
    loss = model(torch.rand(2, 1, 64, 64)).square().mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.default_rng(5).bit_generator.state,  # holds 128-bit Python ints
        "iteration": 1,
    }
    path = save_tiny(tmp_path / "resume.pt", model, training_state=state)
    _, info = load_checkpoint(path)
    restored = info.training_state
    assert restored["iteration"] == 1
    assert torch.equal(restored["torch_rng"], state["torch_rng"])
    assert restored["numpy_rng"] == state["numpy_rng"]
    fresh = torch.optim.SGD(create("TransUNet-Tiny", num_classes=9, img_size=64).parameters(), lr=0.5, momentum=0.9)
    fresh.load_state_dict(restored["optimizer"])
    assert fresh.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    first = next(iter(optimizer.state.values()))["momentum_buffer"]
    assert torch.equal(next(iter(fresh.state.values()))["momentum_buffer"], first)


def test_wrapped_models_are_saved_without_prefix(tmp_path):
    model = tiny_model()
    path = save_tiny(tmp_path / "dp.pt", nn.DataParallel(model))
    keys = torch.load(path, weights_only=True)["state_dict"].keys()
    assert not any(key.startswith("module.") for key in keys)
    load_checkpoint(path)


def test_save_refuses_what_would_not_load(tmp_path):
    model = tiny_model()
    with pytest.raises(CheckpointError, match=r"extra\['callback'\] is a function"):
        save_tiny(tmp_path / "m.pt", model, extra={"callback": lambda: None})
    with pytest.raises(ConfigError, match="does not describe the model"):
        save_tiny(tmp_path / "m.pt", model, model_config={"num_classes": 9, "img_size": 64, "hidden_size": 32})
    with pytest.raises(ConfigError, match="unknown model"):
        save_tiny(tmp_path / "m.pt", model, model_name="No-Such-Model")
    with pytest.raises(ConfigError, match="label set synapse8 has 9 classes"):
        save_tiny(tmp_path / "m.pt", tiny_model(num_classes=4),
                  model_config={"num_classes": 4, "img_size": 64})
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_arguments_that_contradict_the_checkpoint(tmp_path):
    path = save_tiny(tmp_path / "m.pt", tiny_model())
    with pytest.raises(CheckpointError, match="num_classes 9, not 4"):
        load_checkpoint(path, num_classes=4)
    with pytest.raises(CheckpointError, match="model_name 'TransUNet-Tiny', not 'R50-ViT-B_16'"):
        load_checkpoint(path, model_name="R50-ViT-B_16")
    model, _ = load_checkpoint(path, model_name="TransUNet-Tiny", num_classes=9, img_size=64)
    assert model.num_classes == 9


# --------------------------------------------------------------------------------------------------------------
# Bare state_dicts (reference TransUNet .pth)
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["", "module."])
def test_reference_state_dict_loads_when_the_architecture_is_named(tmp_path, prefix):
    weights = torch.load(DATA / "transunet_small_parity_weights.pt", weights_only=True)
    path = tmp_path / "epoch_149.pth"
    torch.save({prefix + key: value for key, value in weights.items()}, path)

    model, info = load_checkpoint(path, model_name="TransUNet-S")  # num_classes read from the head: 9
    assert info.kind == "state_dict"
    assert info.model_config == {"num_classes": 9, "img_size": 224, "in_channels": 1, "overrides": {}}
    fixture = np.load(DATA / "transunet_small_parity_io.npz")
    with torch.no_grad():
        logits = model(torch.from_numpy(fixture["input"])).numpy()
    assert np.linalg.norm(logits - fixture["logits"]) / np.linalg.norm(fixture["logits"]) < 1e-5

    with pytest.raises(CheckpointError, match="name the architecture"):
        load_checkpoint(path)


def test_wrong_architecture_lists_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "small.pth"
    torch.save(torch.load(DATA / "transunet_small_parity_weights.pt", weights_only=True), path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, model_name="TransUNet-Tiny", img_size=224)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert "missing keys transformer.encoder.layer.2." in message
    assert "unexpected keys transformer.embeddings.hybrid_model.body.block1.unit2." in message
    assert "shape mismatch" in message and "more)" in message


def test_img_size_of_a_bare_state_dict_must_match(tmp_path):
    path = tmp_path / "small.pth"
    torch.save(torch.load(DATA / "transunet_small_parity_weights.pt", weights_only=True), path)
    with pytest.raises(CheckpointError, match="position_embeddings \\(file 1x196x64, model 1x1024x64\\)"):
        load_checkpoint(path, model_name="TransUNet-S", img_size=512)


def test_load_model_weights_into_a_built_model():
    source = tiny_model(seed=1)
    target = create("TransUNet-Tiny", num_classes=9, img_size=64)
    load_model_weights(target, {"module." + k: v for k, v in source.state_dict().items()})
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())
    with pytest.raises(CheckpointError, match="missing keys segmentation_head.0.bias"):
        load_model_weights(target, {k: v for k, v in source.state_dict().items() if k != "segmentation_head.0.bias"})


# --------------------------------------------------------------------------------------------------------------
# Any registered model, not only TransUNet
# --------------------------------------------------------------------------------------------------------------
class _PixelClassifier(nn.Module):
    """A model of another family: 1x1 convolutions, the class count in two tensors."""

    def __init__(self, num_classes, img_size, in_channels):
        super().__init__()
        self.features = nn.Conv2d(in_channels, 4, 1)
        self.head = nn.Conv2d(4, num_classes, 1)
        self.aux = nn.Linear(4, 2 * num_classes + 1)

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture
def other_family(monkeypatch):
    """Register ``Test-Pixel`` for this test only."""
    registry._load_architectures()
    spec = registry.ModelSpec("Test-Pixel", "test", lambda num_classes, img_size, in_channels: _PixelClassifier(
        num_classes, img_size, in_channels), "test model", 32, False, 16)
    monkeypatch.setitem(registry._REGISTRY, "Test-Pixel", spec)
    return "Test-Pixel"


def test_other_families_round_trip_and_infer_classes(tmp_path, other_family):
    torch.manual_seed(0)
    model = create(other_family, num_classes=5, img_size=32)
    path = save_checkpoint(tmp_path / "pixel.pt", model, model_name=other_family,
                           model_config={"num_classes": 5, "img_size": 32}, label_set=None, preprocessing={})
    loaded, info = load_checkpoint(path)
    assert isinstance(loaded, _PixelClassifier) and info.model_config["num_classes"] == 5
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())

    bare = tmp_path / "pixel.pth"
    torch.save(model.state_dict(), bare)
    loaded, info = load_checkpoint(bare, model_name=other_family)
    assert info.model_config["num_classes"] == 5


# --------------------------------------------------------------------------------------------------------------
# Unsafe and broken files
# --------------------------------------------------------------------------------------------------------------
def test_a_checkpoint_carrying_pickled_code_is_refused(tmp_path):
    path = tmp_path / "malicious.pt"
    payload = {"format": CHECKPOINT_FORMAT, "version": 1, "state_dict": tiny_model().state_dict(),
               "extra": _RunsCodeWhenUnpickled()}
    torch.save(payload, path)
    for action in (lambda: load_checkpoint(path), lambda: load_checkpoint(path, model_name="TransUNet-Tiny")):
        with pytest.raises(CheckpointError) as caught:
            action()
        assert str(caught.value) == (f"{path}: refused: the file carries pickled code/objects; medseg loads "
                                     "tensors and plain data only")
    assert CODE_RAN == []


def test_a_checkpoint_carrying_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "objects.pt"
    torch.save({"state_dict": tiny_model().state_dict(), "labels": SYNAPSE8}, path)  # a dataclass instance
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path, model_name="TransUNet-Tiny")


def test_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt: file not found"):
        load_checkpoint(tmp_path / "nope.pt")

    good = save_tiny(tmp_path / "good.pt", tiny_model())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(truncated)

    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(text)

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt: file is empty"):
        load_checkpoint(empty)

    numbers = tmp_path / "numbers.pt"
    torch.save({"epoch": 3}, numbers)
    with pytest.raises(CheckpointError, match="neither a medseg checkpoint nor a state_dict"):
        load_checkpoint(numbers, model_name="TransUNet-Tiny")

    future = tmp_path / "future.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": 99, "state_dict": {}}, future)
    with pytest.raises(CheckpointError, match="newer than this medseg"):
        load_checkpoint(future)
