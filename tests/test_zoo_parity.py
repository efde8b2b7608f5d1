"""Parity of the zoo with the official implementations.

For each family with a fixture in ``tests/data/zoo`` (see its README): the official weights are regenerated from the
key list, renamed by the family's official key map (the one that also lets an official-codebase checkpoint load with
``--model NAME``), loaded strictly, and medseg's eval-mode outputs, main and auxiliary, must equal the official ones
within the fixture's tolerance ``max|a - e| <= 1e-4 * max(1, max|e|)``.
"""
from __future__ import annotations

import pytest
import torch

from medseg.models import create
from medseg.models.pretrained import convert_official
from zoo_reference import ZOO, assert_close, official_shapes, official_weights, parity_io

pytestmark = pytest.mark.usefixtures("single_thread")


def _load_official(model, family: str, layout: str) -> None:
    state = convert_official(family, official_weights(ZOO / f"{layout}_state_dict.tsv"), model)
    model.load_state_dict(state, strict=True)
    model.eval()


def _training_outputs(model, x):
    """The auxiliary outputs: the model's training-mode forward with every layer in eval mode (BatchNorm, dropout,
    stochastic depth), as the fixture evaluates the official heads."""
    model.eval()
    model.training = True  # only the top-level switch that returns the auxiliary outputs
    with torch.no_grad():
        outputs = model(x)
    model.eval()
    return outputs


# ---------------------------------------------------------------- SETR (reduced ViT: embed 64, depth 4, heads 4)
REDUCED_SETR = dict(hidden_size=64, num_layers=4, num_heads=4, mlp_dim=256, decoder_channels=256, mla_head_channels=128)


@pytest.mark.parametrize("decoder", ["naive", "pup", "mla"])
def test_setr_matches_official(decoder):
    name = f"SETR-{ {'naive': 'Naive', 'pup': 'PUP', 'mla': 'MLA'}[decoder]}-S"
    model = create(name, num_classes=9, img_size=64, in_channels=3, **REDUCED_SETR)
    _load_official(model, "setr", f"setr_{decoder}_reduced_9cls")
    io = parity_io(f"setr_{decoder}_reduced_9cls")
    with torch.no_grad():
        assert_close(model(io["input"]), io["logits"], f"SETR-{decoder} logits")
    outputs = _training_outputs(model, io["input"])
    aux = [key for key in sorted(io) if key.startswith("aux_")]
    assert len(outputs) == 1 + len(aux)
    for output, key in zip(outputs[1:], aux):
        assert_close(output, io[key], f"SETR-{decoder} {key}")


# ---------------------------------------------------------------- TopFormer-Tiny
def test_topformer_tiny_matches_official():
    model = create("TopFormer-Tiny", num_classes=9, img_size=64, in_channels=3)
    _load_official(model, "topformer", "topformer_tiny_9cls_64")
    io = parity_io("topformer_tiny_9cls_64")
    with torch.no_grad():
        assert_close(model(io["input"]), io["logits_upsampled"], "TopFormer-Tiny logits")


# ---------------------------------------------------------------- BiSeNet v1 (ResNet-18)
def test_bisenet_matches_official():
    model = create("BiSeNet-R18", num_classes=9, img_size=64, in_channels=3)
    _load_official(model, "bisenet", "bisenetv1_9cls")
    io = parity_io("bisenetv1_9cls")
    with torch.no_grad():
        assert_close(model(io["input"]), io["logits"], "BiSeNet logits")
    main, aux8, aux16 = _training_outputs(model, io["input"])
    assert_close(main, io["logits"], "BiSeNet logits (training forward)")
    assert_close(aux8, io["aux_0"], "BiSeNet aux_0 (1/8 context)")
    assert_close(aux16, io["aux_1"], "BiSeNet aux_1 (1/16 context)")


# ---------------------------------------------------------------- SegFormer (B0 and a reduced MiT)
@pytest.mark.parametrize("layout,overrides", [
    ("segformer_b0_9cls", {}),
    ("segformer_reduced_9cls", dict(hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                                    num_attention_heads=[1, 2, 2, 4], decoder_hidden_size=64)),
])
def test_segformer_matches_official(layout, overrides):
    model = create("SegFormer-B0", num_classes=9, img_size=64, in_channels=3, **overrides)
    _load_official(model, "segformer", layout)
    io = parity_io(layout)
    with torch.no_grad():
        assert_close(model(io["input"]), io["logits_upsampled"], f"{layout} logits")


# ---------------------------------------------------------------- DS-TransUNet-B (published size, 64 px)
def test_ds_transunet_matches_official_at_64():
    """The published model at 64 px, where every Swin grid but the first is at most one window (fine 16, 8, 4, 2;
    coarse 8, 4, 2, 1): the official rule for small grids (pad after the first norm to a full window, keep the
    shift, mask the padded grid) is what this checks. 224 px cannot run in the official code (its coarse 1/64 grid
    does not line up); medseg applies the same rule there (see ``test_swin_stage_applies_the_official_rule_at_224``
    in ``tests/test_ds_transunet.py``)."""
    model = create("DS-TransUNet-B", num_classes=9, img_size=64, in_channels=3)
    _load_official(model, "ds_transunet", "ds_transunet_9cls")
    io = parity_io("ds_transunet_9cls_64")
    with torch.no_grad():
        assert_close(model(io["input"]), io["logits"], "DS-TransUNet logits")
    main, aux_bottleneck, aux_quarter = _training_outputs(model, io["input"])
    assert_close(aux_bottleneck, io["aux_0"], "DS-TransUNet aux_0 (loss1)")
    assert_close(aux_quarter, io["aux_1"], "DS-TransUNet aux_1 (loss2)")


# ---------------------------------------------------------------- official-codebase checkpoints load with --model
@pytest.mark.parametrize("name,layout", [("BiSeNet-R18", "bisenetv1_9cls"),
                                         ("TopFormer-Tiny", "topformer_tiny_9cls_64")])
def test_official_checkpoint_loads_by_model_name(tmp_path, name, layout):
    """A state_dict saved by the official code (here CoinCheung's BiSeNet and mmseg's TopFormer, nested under
    ``state_dict`` as mmseg saves it) loads with only the architecture named; classes and RGB input are read from
    the weights, and the model computes the official logits."""
    from medseg.models.checkpoint import load_checkpoint

    path = tmp_path / "official.pth"
    torch.save({"state_dict": official_weights(ZOO / f"{layout}_state_dict.tsv")}, path)
    model, info = load_checkpoint(path, model_name=name, img_size=64)
    assert info.model_config["num_classes"] == 9 and info.model_config["in_channels"] == 3
    io = parity_io(layout)
    with torch.no_grad():
        assert_close(model(io["input"]), io["logits_upsampled" if "logits_upsampled" in io else "logits"], name)


# ---------------------------------------------------------------- published SETR sizes: the official layout loads
@pytest.mark.parametrize("decoder", ["Naive", "PUP", "MLA"])
def test_setr_l16_takes_the_official_ade20k_layout_strictly(decoder):
    """The official ADE20K ViT-L/16 checkpoints' layout (keys and shapes, no values) maps onto SETR-*-L16 built
    with 150 classes and RGB input, strictly: every medseg tensor has an official counterpart of the same shape."""
    with torch.device("meta"):
        model = create(f"SETR-{decoder}-L16", num_classes=150, img_size=512, in_channels=3)
    layout = official_shapes(ZOO / f"setr_{decoder.lower()}_L16_512_ade20k_150cls_state_dict.tsv")
    state = convert_official("setr", layout, model)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert {key: tuple(value.shape) for key, value in state.items()} == expected
