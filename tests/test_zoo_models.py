"""The rest of the model zoo: SETR, SegFormer, BiSeNet, TopFormer and the U-Net baseline.

Each family: registration, parameter counts (pinned, and checked against the published sizes), output shapes at 224
and 512 (small variants at 512), backward pass, training-mode auxiliary outputs, state_dict round trip and eval
determinism. Construction of the large variants happens on the ``meta`` device (no memory, no init cost); the
behaviour tests use small builds at 64 px so that the file stays well under a minute on a 2-core CPU.
"""
from __future__ import annotations

import io

import pytest
import torch

from medseg.errors import ConfigError
from medseg.models import create, get_spec, list_models

NUM_CLASSES = 9

# Parameters of create(name, 9, default img_size, in_channels=1): the zoo table. A change here is a change of the
# architecture; update it deliberately.
PINNED_PARAMETERS = {
    "SETR-Naive-B16": 86_843_684,
    "SETR-PUP-B16": 96_679_981,
    "SETR-MLA-B16": 91_016_457,
    "SETR-Naive-L16": 304_691_236,
    "SETR-PUP-L16": 317_215_021,
    "SETR-MLA-L16": 308_863_497,
    "SETR-Naive-S": 21_991_588,
    "SETR-PUP-S": 24_452_141,
    "SETR-MLA-S": 23_045_769,
    "SegFormer-B0": 3_713_321,
    "SegFormer-B1": 13_673_289,
    "SegFormer-B2": 27_347_273,
    "SegFormer-B3": 47_223_113,
    "SegFormer-B4": 63_993_673,
    "SegFormer-B5": 84_593_993,
    "BiSeNet-R18": 13_409_307,
    "BiSeNet-R18-Small": 3_358_235,
    "TopFormer-Tiny": 1_371_177,
    "TopFormer-Small": 3_007_161,
    "TopFormer-Base": 5_026_121,
    "UNet": 6_500_060,
    "UNet-Small": 1_627_884,
}
FAMILIES = {"setr", "segformer", "bisenet", "topformer", "unet"}
SMALL = {"SETR-Naive-S", "SETR-PUP-S", "SETR-MLA-S", "BiSeNet-R18-Small", "UNet-Small"}

# A very narrow SETR: the same code paths as the published ones at a fraction of the cost.
TINY_SETR = dict(hidden_size=32, num_layers=4, num_heads=2, mlp_dim=64, decoder_channels=16, mla_head_channels=8)

# (registry name, overrides) of the builds used for the behaviour tests; id -> number of training outputs.
BEHAVIOUR_MODELS = {
    "setr-naive": ("SETR-Naive-S", TINY_SETR, 4),
    "setr-pup": ("SETR-PUP-S", TINY_SETR, 5),
    "setr-mla": ("SETR-MLA-S", TINY_SETR, 5),
    "segformer": ("SegFormer-B0", {}, 1),
    "bisenet": ("BiSeNet-R18-Small", {}, 3),
    "topformer": ("TopFormer-Tiny", {}, 1),
    "unet": ("UNet-Small", {}, 1),
}


def count(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def build_on_meta(name: str, num_classes: int = NUM_CLASSES, img_size: int | None = None, in_channels: int = 1,
                  **overrides) -> torch.nn.Module:
    with torch.device("meta"):
        return create(name, num_classes, img_size or get_spec(name).default_img_size, in_channels, **overrides)


def build(key: str, img_size: int = 64, seed: int = 0, in_channels: int = 1) -> torch.nn.Module:
    name, overrides, _ = BEHAVIOUR_MODELS[key]
    torch.manual_seed(seed)
    return create(name, NUM_CLASSES, img_size, in_channels, **overrides)


pytestmark = pytest.mark.usefixtures("single_thread")


# --- registry and sizes --------------------------------------------------------------------------------------


def test_every_variant_is_registered_with_its_family():
    specs = {spec.name: spec for spec in list_models() if spec.family in FAMILIES}
    assert set(specs) == set(PINNED_PARAMETERS)
    assert {spec.family for spec in specs.values()} == FAMILIES
    for name, spec in specs.items():
        assert spec.published == (name not in SMALL), name
        assert spec.default_img_size % spec.img_size_multiple == 0
        assert 224 % spec.img_size_multiple == 0 and 512 % spec.img_size_multiple == 0, name
        assert spec.description


@pytest.mark.parametrize("name", sorted(PINNED_PARAMETERS))
def test_parameter_count_is_pinned(name):
    assert count(build_on_meta(name)) == PINNED_PARAMETERS[name]


def test_setr_encoders_are_vit_b16_and_vit_l16():
    # timm's ViT-B/16 classifier at 224 has 86,567,656 parameters; without the 1000-class head (769,000) and the
    # final LayerNorm (1,536) it is 85,797,120 (Naive/PUP keep the class token, as the official SETR); MLA's official
    # backbone drops the class token, so medseg's MLA has neither it nor its position row (768 each): 85,795,584.
    # ViT-L/16: 304,326,632 less 1,025,000 and 2,048 (less 2 x 1,024 more for MLA).
    for decoder, class_token in (("Naive", True), ("PUP", True), ("MLA", False)):
        base = build_on_meta(f"SETR-{decoder}-B16", img_size=224, in_channels=3)
        assert count(base.encoder) == 85_795_584 + class_token * 2 * 768
        large = build_on_meta(f"SETR-{decoder}-L16", img_size=224, in_channels=3)
        assert count(large.encoder) == 303_297_536 + class_token * 2 * 1024
    # MLA taps the quarter points: 6/12/18/24 of ViT-L, 3/6/9/12 of ViT-B.
    assert build_on_meta("SETR-MLA-L16").mla_layers == (6, 12, 18, 24)
    assert build_on_meta("SETR-MLA-B16").mla_layers == (3, 6, 9, 12)
    # Position embedding for the built size: (512/16)^2 x 768 more than at 224.
    assert count(build_on_meta("SETR-PUP-B16", img_size=512)) - count(build_on_meta("SETR-PUP-B16", img_size=224)) \
        == (32 * 32 - 14 * 14) * 768


@pytest.mark.parametrize("name, published_millions", [
    ("SegFormer-B0", 3.8), ("SegFormer-B1", 13.7), ("SegFormer-B2", 27.5), ("SegFormer-B3", 47.3),
    ("SegFormer-B4", 64.1), ("SegFormer-B5", 84.7),
    ("TopFormer-Tiny", 1.4), ("TopFormer-Small", 3.1), ("TopFormer-Base", 5.1),
])
def test_published_parameter_counts(name, published_millions):
    # The papers count RGB models with the 150 ADE20K classes.
    millions = count(build_on_meta(name, num_classes=150, in_channels=3)) / 1e6
    assert abs(millions - published_millions) / published_millions < 0.025, millions


def test_segformer_b0_has_the_published_shape():
    model = build_on_meta("SegFormer-B0")
    config = model.config
    assert config.hidden_sizes == [32, 64, 160, 256] and config.depths == [2, 2, 2, 2]
    assert config.num_attention_heads == [1, 2, 5, 8] and config.sr_ratios == [8, 4, 2, 1]
    assert config.decoder_hidden_size == 256 and config.num_channels == 1
    assert 3.6e6 < count(model) < 3.8e6  # about 3.7M with 9 classes


def test_bisenet_context_path_is_resnet18():
    # torchvision's resnet18 has 11,689,512 parameters, 513,000 of them in the 1000-class fc layer.
    model = build_on_meta("BiSeNet-R18", in_channels=3)
    assert count(model.context_path.backbone) == 11_176_512


# --- forward shapes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [224, 512])
@pytest.mark.parametrize("key", sorted(BEHAVIOUR_MODELS))
def test_forward_shape(key, size):
    model = build(key, img_size=size).eval()
    with torch.inference_mode():
        logits = model(torch.randn(1, 1, size, size))
    assert logits.shape == (1, NUM_CLASSES, size, size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["SETR-PUP-S", "BiSeNet-R18", "UNet"])
def test_forward_shape_of_full_width_variants_at_224(name):
    torch.manual_seed(0)
    model = create(name, NUM_CLASSES, 224, 1).eval()
    with torch.inference_mode():
        logits = model(torch.randn(1, 1, 224, 224))
    assert logits.shape == (1, NUM_CLASSES, 224, 224)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("key", ["setr-pup", "segformer", "bisenet", "topformer", "unet"])
def test_three_channel_input_and_another_size(key):
    name = BEHAVIOUR_MODELS[key][0]
    size = 3 * get_spec(name).img_size_multiple  # 48 or 96
    model = build(key, img_size=size, in_channels=3).eval()
    with torch.inference_mode():
        assert model(torch.randn(2, 3, size, size)).shape == (2, NUM_CLASSES, size, size)


def test_setr_resizes_its_position_embedding_for_other_inputs():
    model = build("setr-mla", img_size=64).eval()
    with torch.inference_mode():
        assert model(torch.randn(1, 1, 96, 96)).shape == (1, NUM_CLASSES, 96, 96)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.randn(1, 1, 72, 72))


def test_wrong_size_and_unknown_override_are_config_errors():
    with pytest.raises(ConfigError, match="multiple of 32"):
        create("TopFormer-Tiny", NUM_CLASSES, 240)
    # One check for every builder: the same error type and message form, naming the model and the option.
    for name in ("SETR-PUP-S", "SegFormer-B0", "BiSeNet-R18", "TopFormer-Tiny", "UNet", "R50-ViT-B_16",
                 "DS-TransUNet-Tiny"):
        with pytest.raises(ConfigError, match=r"^model .*: unknown option\(s\) 'no_such_option' \(known: "):
            build_on_meta(name, no_such_option=1)
    with pytest.raises(ConfigError, match="mla_layers"):
        build_on_meta("SETR-MLA-S", mla_layers=(3, 6))
    with pytest.raises(ConfigError, match="outside 1..12"):
        build_on_meta("SETR-PUP-S", aux_layers=(4, 8, 13))
    # One check of the class and channel counts, in create() for every model and in the TransUNets' constructors.
    for name in ("UNet", "TransUNet-Tiny", "DS-TransUNet-Tiny"):
        with pytest.raises(ConfigError, match=r"^num_classes: must be at least 1, got 0$"):
            create(name, 0, 128)
        with pytest.raises(ConfigError, match=r"^in_channels: must be at least 1, got 0$"):
            create(name, NUM_CLASSES, 128, in_channels=0)
    from medseg.models.transunet import TINY, TransUNet

    with pytest.raises(ConfigError, match=r"^num_classes: must be at least 1, got 0$"):
        TransUNet(TINY, 0, 128)


# --- training ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(BEHAVIOUR_MODELS))
def test_training_outputs_and_backward(key):
    model = build(key).train()
    images = torch.randn(2, 1, 64, 64)
    labels = torch.randint(0, NUM_CLASSES, (2, 64, 64))
    outputs = model(images)
    expected = BEHAVIOUR_MODELS[key][2]
    if expected == 1:
        assert isinstance(outputs, torch.Tensor)
        outputs, weights = (outputs,), (1.0,)
    else:
        assert isinstance(outputs, tuple) and len(outputs) == expected
        weights = model.aux_loss_weights
        assert len(weights) == expected and weights[0] == 1.0
    for logits in outputs:
        assert logits.shape == (2, NUM_CLASSES, 64, 64)
    loss = sum(w * torch.nn.functional.cross_entropy(logits, labels) for w, logits in zip(weights, outputs))
    loss.backward()
    missing = [name for name, parameter in model.named_parameters() if parameter.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert all(torch.isfinite(parameter.grad).all() for parameter in model.parameters())


def test_auxiliary_loss_weights_follow_the_papers():
    assert build("bisenet").aux_loss_weights == (1.0, 1.0, 1.0)  # BiSeNet: alpha = 1
    assert build("setr-pup").aux_loss_weights == (1.0, 0.4, 0.4, 0.4, 0.4)  # SETR configs: 0.4 per aux head
    assert build_on_meta("SETR-PUP-L16").aux_layers == (10, 15, 20, 24)
    assert build_on_meta("SETR-Naive-L16").aux_layers == (10, 15, 20)
    assert build_on_meta("SETR-Naive-B16").aux_layers == (3, 6, 9)
    plain = create("SETR-MLA-S", NUM_CLASSES, 64, 1, aux_heads=False, **TINY_SETR).train()
    assert isinstance(plain(torch.randn(2, 1, 64, 64)), torch.Tensor) and plain.aux_loss_weights == (1.0,)
    plain = create("BiSeNet-R18-Small", NUM_CLASSES, 64, 1, aux_heads=False).train()
    assert isinstance(plain(torch.randn(2, 1, 64, 64)), torch.Tensor)


# --- checkpoints ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(BEHAVIOUR_MODELS))
def test_state_dict_round_trip_and_eval_determinism(key):
    model = build(key, seed=0)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 1, 64, 64))  # moves the BatchNorm running statistics away from their initial values
    model.eval()
    images = torch.randn(1, 1, 64, 64)
    with torch.inference_mode():
        expected = model(images)
        assert torch.equal(model(images), expected)  # eval mode is deterministic

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state_dict = torch.load(buffer, weights_only=True)
    assert state_dict.keys() == model.state_dict().keys()

    fresh = build(key, seed=1).eval()
    with torch.inference_mode():
        assert not torch.equal(fresh(images), expected)
    fresh.load_state_dict(state_dict, strict=True)
    with torch.inference_mode():
        assert torch.equal(fresh(images), expected)
