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


def assert_matches_official(name: str, family: str, layout: str, fixture: str = "", main: str = "logits",
                            **overrides) -> None:
    """Build ``name`` (RGB, 9 classes, the fixture's input size), load the official weights of ``layout`` through
    the family's key map strictly, and compare the main output (``main``: the fixture array at input size) and
    every auxiliary output ``aux_<i>`` of the fixture with the official ones."""
    io = parity_io(fixture or layout)
    model = create(name, num_classes=9, img_size=io["input"].shape[-1], in_channels=3, **overrides)
    state = convert_official(family, official_weights(ZOO / f"{layout}_state_dict.tsv"), model)
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        assert_close(model(io["input"]), io[main], f"{name} {main}")
        aux = sorted(key for key in io if key.startswith("aux_"))
        if not aux:
            return
        # The auxiliary outputs: the training-mode forward with every layer in eval mode (BatchNorm, dropout,
        # stochastic depth), as the fixture evaluates the official heads.
        model.training = True  # only the top-level switch that returns the auxiliary outputs
        outputs = model(io["input"])
    assert len(outputs) == 1 + len(aux)
    assert_close(outputs[0], io[main], f"{name} {main} (training forward)")
    for output, key in zip(outputs[1:], aux):
        assert_close(output, io[key], f"{name} {key}")


REDUCED_SETR = dict(hidden_size=64, num_layers=4, num_heads=4, mlp_dim=256, decoder_channels=256, mla_head_channels=128)
REDUCED_MIT = dict(hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1], num_attention_heads=[1, 2, 2, 4],
                   decoder_hidden_size=64)


@pytest.mark.parametrize("decoder", ["Naive", "PUP", "MLA"])
def test_setr_matches_official(decoder):
    """SETR with the reduced ViT of the fixture (embed 64, depth 4, heads 4, 64 px): main and auxiliary heads."""
    assert_matches_official(f"SETR-{decoder}-S", "setr", f"setr_{decoder.lower()}_reduced_9cls", **REDUCED_SETR)


def test_topformer_tiny_matches_official():
    assert_matches_official("TopFormer-Tiny", "topformer", "topformer_tiny_9cls_64", main="logits_upsampled")


def test_bisenet_matches_official():
    """BiSeNet v1: main logits and both auxiliary heads (the 1/8 and 1/16 context features)."""
    assert_matches_official("BiSeNet-R18", "bisenet", "bisenetv1_9cls")


@pytest.mark.parametrize("layout,overrides", [("segformer_b0_9cls", {}), ("segformer_reduced_9cls", REDUCED_MIT)])
def test_segformer_matches_official(layout, overrides):
    assert_matches_official("SegFormer-B0", "segformer", layout, main="logits_upsampled", **overrides)


def test_segformer_uses_the_official_layer_norm_eps():
    """The official MiT builds its block norms and stage norms with eps 1e-6 (transformers: 1e-5); its patch-embedding
    and sequence-reduction norms with the default 1e-5."""
    model = create("SegFormer-B0", num_classes=2, img_size=64, in_channels=1, **REDUCED_MIT)
    eps = {name: module.eps for name, module in model.named_modules() if isinstance(module, torch.nn.LayerNorm)}
    official = {name: (1e-5 if ("patch_embeddings" in name or "sequence_reduction" in name) else 1e-6)
                for name in eps}
    assert eps == official
    assert sum(value == 1e-6 for value in eps.values()) == 4 * 2 + 4  # one block per stage: 2 norms each; 4 stages


def test_ds_transunet_matches_official_at_64():
    """The published model at 64 px, where every Swin grid but the first is at most one window (fine 16, 8, 4, 2;
    coarse 8, 4, 2, 1): the official rule for small grids (pad after the first norm to a full window, keep the
    shift, mask the padded grid) is what this checks, with the main output and both deep-supervision heads. 224 px
    cannot run in the official code (its coarse 1/64 grid does not line up); medseg applies the same rule there
    (``test_swin_stage_applies_the_official_rule_at_224`` in ``tests/test_ds_transunet.py``)."""
    assert_matches_official("DS-TransUNet-B", "ds_transunet", "ds_transunet_9cls", "ds_transunet_9cls_64")


# ---------------------------------------------------------------- official-codebase checkpoints load with --model
@pytest.mark.parametrize("name,layout", [("BiSeNet-R18", "bisenetv1_9cls"),
                                         ("TopFormer-Tiny", "topformer_tiny_9cls_64")])
def test_official_checkpoint_loads_by_model_name(tmp_path, name, layout):
    """A state_dict saved by the official code (here CoinCheung's BiSeNet and mmseg's TopFormer, nested under
    ``state_dict`` as mmseg saves it) loads with only the architecture named; classes are read from the weights.
    With ``in_channels=3`` the model computes the official logits; by default (1-channel CT) the first kernel is
    summed over RGB, which computes the official logits of the grey image repeated to three channels."""
    from medseg.models.checkpoint import load_checkpoint

    path = tmp_path / "official.pth"
    torch.save({"state_dict": official_weights(ZOO / f"{layout}_state_dict.tsv")}, path)
    main = "logits_upsampled" if "logits_upsampled" in parity_io(layout) else "logits"
    model, info = load_checkpoint(path, model_name=name, img_size=64, in_channels=3)
    assert info.model_config["num_classes"] == 9 and info.model_config["in_channels"] == 3
    assert info.input_adaptation is None
    io = parity_io(layout)
    with torch.no_grad():
        assert_close(model(io["input"]), io[main], name)
        grey = io["input"][:, :1]
        rgb_on_grey = model(grey.repeat(1, 3, 1, 1))
    model, info = load_checkpoint(path, model_name=name, img_size=64)
    assert info.model_config["in_channels"] == 1
    assert "summed over RGB" in info.input_adaptation
    with torch.no_grad():
        assert_close(model(grey), rgb_on_grey, f"{name} on the grey image")


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
