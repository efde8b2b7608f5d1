"""TransUNet: published sizes and key layout, parity with the reference implementation, shapes, gradients, and the
ImageNet-21k npz loader (on npz files built here in the layout of the original ViT release)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.ndimage
import torch

from medseg.errors import CheckpointError, ConfigError
from medseg.models import create
from medseg.models.transunet import load_vit_npz

from helpers import DATA_DIR as DATA


pytestmark = pytest.mark.usefixtures("single_thread")


def read_tsv(name: str) -> dict[str, tuple[int, ...]]:
    """key -> shape from a reference state_dict listing (``scalar`` is shape ())."""
    shapes = {}
    for line in (DATA / name).read_text().splitlines()[1:]:
        key, shape = line.split("\t")
        shapes[key] = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
    return shapes


def build_on_meta(name: str, num_classes: int = 9, img_size: int = 224, **overrides):
    with torch.device("meta"):
        return create(name, num_classes, img_size=img_size, **overrides)


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def parity_overrides() -> dict:
    """The parity fixture's configuration as ``create`` overrides."""
    config = json.loads((DATA / "transunet_small_parity_config.json").read_text())
    assert config["patch_grid"] == [config["img_size"] // 16] * 2
    assert config["skip_channels"][: config["n_skip"]] == [512, 256, 64]
    return {
        "hidden_size": config["hidden_size"],
        "mlp_dim": config["mlp_dim"],
        "num_heads": config["num_heads"],
        "num_layers": config["num_layers"],
        "resnet_num_layers": config["resnet_num_layers"],
        "resnet_width_factor": config["resnet_width_factor"],
        "decoder_channels": config["decoder_channels"],
        "decoder_head_channels": config["decoder_head_channels"],
        "n_skip": config["n_skip"],
    }


def relative_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --------------------------------------------------------------------------------------------------------------
# Published sizes and the reference key layout (built on the meta device: no memory, no time)
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, tsv, expected", [
    ("R50-ViT-B_16", "transunet_r50_vit_b16_state_dict.tsv", 105_277_081),
    ("ViT-B_16", "transunet_vit_b16_state_dict.tsv", 91_674_201),
])
def test_published_variants_match_reference_keys_shapes_and_counts(name, tsv, expected):
    model = build_on_meta(name)
    assert parameter_count(model) == expected
    ours = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    reference = read_tsv(tsv)
    assert ours == reference
    assert list(ours) == list(reference)  # same order too


def test_r50_vit_l16_structure():
    model = build_on_meta("R50-ViT-L_16")
    assert len(model.transformer.encoder.layer) == 24
    assert model.transformer.embeddings.position_embeddings.shape == (1, 196, 1024)
    assert model.transformer.encoder.layer[0].ffn.fc1.weight.shape == (4096, 1024)
    assert parameter_count(model) == 324_024_729
    # Same ResNet and decoder as R50-ViT-B_16; only the transformer (and conv_more's input) differ.
    base = {k: v.shape for k, v in build_on_meta("R50-ViT-B_16").state_dict().items()}
    large = {k: v.shape for k, v in model.state_dict().items()}
    shared = [k for k in base if "hybrid_model" in k or k.startswith(("decoder.blocks", "segmentation_head"))]
    assert all(base[k] == large[k] for k in shared)


@pytest.mark.parametrize("name", ["R50-ViT-B_16", "ViT-B_16"])
def test_full_variant_at_512_has_a_32x32_grid(name):
    model = build_on_meta(name, img_size=512).eval()
    assert model.transformer.embeddings.grid_size == (32, 32)
    assert model.transformer.embeddings.position_embeddings.shape == (1, 1024, 768)
    with torch.device("meta"):
        logits = model(torch.empty(1, 1, 512, 512))
    assert logits.shape == (1, 9, 512, 512)


# --------------------------------------------------------------------------------------------------------------
# Parity with the reference implementation
# --------------------------------------------------------------------------------------------------------------
def test_parity_fixture_loads_strictly_and_reproduces_reference_logits():
    state_dict = torch.load(DATA / "transunet_small_parity_weights.pt", weights_only=True)
    fixture = np.load(DATA / "transunet_small_parity_io.npz")
    model = create("TransUNet-S", num_classes=9, img_size=224, in_channels=1, **parity_overrides())
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(fixture["input"])).numpy()
    assert logits.shape == fixture["logits"].shape == (2, 9, 224, 224)
    assert relative_l2(logits, fixture["logits"]) < 1e-5


def test_small_variant_is_the_parity_configuration():
    reference = {key: tuple(value.shape) for key, value in
                 torch.load(DATA / "transunet_small_parity_weights.pt", weights_only=True).items()}
    model = build_on_meta("TransUNet-S")
    assert {key: tuple(value.shape) for key, value in model.state_dict().items()} == reference


# --------------------------------------------------------------------------------------------------------------
# Shapes, channels, gradients, determinism
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("img_size", [64, 160, 224, 512])
def test_forward_shapes_at_sizes_divisible_by_16(img_size):
    torch.manual_seed(0)
    model = create("TransUNet-Tiny", num_classes=5, img_size=img_size).eval()
    with torch.no_grad():
        logits = model(torch.rand(1, 1, img_size, img_size))
    assert logits.shape == (1, 5, img_size, img_size)
    assert torch.isfinite(logits).all()


def test_pure_vit_variant_forward_without_skips():
    torch.manual_seed(0)
    model = create("ViT-B_16", num_classes=3, img_size=64, hidden_size=32, mlp_dim=64, num_heads=2, num_layers=1,
                   decoder_head_channels=32).eval()
    assert model.transformer.embeddings.hybrid_model is None
    with torch.no_grad():
        assert model(torch.rand(2, 1, 64, 64)).shape == (2, 3, 64, 64)


def test_one_channel_input_is_repeated_to_three_and_three_channels_pass_through():
    torch.manual_seed(0)
    grey = create("TransUNet-Tiny", num_classes=4, img_size=64, in_channels=1).eval()
    colour = create("TransUNet-Tiny", num_classes=4, img_size=64, in_channels=3).eval()
    colour.load_state_dict(grey.state_dict(), strict=True)  # same keys and shapes
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), colour(x.repeat(1, 3, 1, 1)))
    with pytest.raises(ValueError, match="input channel"):
        grey(torch.rand(1, 3, 64, 64))


def test_wrong_input_size_is_a_clear_error():
    model = create("TransUNet-Tiny", num_classes=2, img_size=64).eval()
    with pytest.raises(ValueError, match="img_size 64"):
        model(torch.rand(1, 1, 96, 96))


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = create("TransUNet-Tiny", num_classes=4, img_size=64).train()
    x = torch.rand(2, 1, 64, 64)
    target = torch.randint(0, 4, (2, 64, 64))
    loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    assert model.transformer.embeddings.position_embeddings.grad.abs().sum() > 0


def test_eval_is_deterministic_and_dropout_only_acts_in_training():
    torch.manual_seed(0)
    model = create("TransUNet-Tiny", num_classes=3, img_size=64)
    x = torch.rand(2, 1, 64, 64)
    model.eval()
    with torch.no_grad():
        first, second = model(x), model(x)
    assert torch.equal(first, second)
    model.train()
    with torch.no_grad():
        torch.manual_seed(1)
        train_a = model(x)
        torch.manual_seed(2)
        train_b = model(x)
    assert not torch.equal(train_a, train_b)


def test_standardised_weights_are_cached_in_eval_and_refreshed_when_the_weights_change():
    from medseg.models.transunet import StdConv2d, _standardize

    torch.manual_seed(0)
    conv = StdConv2d(4, 8, kernel_size=3, padding=1, bias=False)
    x = torch.rand(2, 4, 8, 8)

    def fresh():  # the reference arithmetic, recomputed
        return torch.nn.functional.conv2d(x, _standardize(conv.weight.detach()), padding=1)

    conv.eval()
    with torch.no_grad():
        assert torch.equal(conv(x), fresh())
        cached = conv._standardized[1]
        conv(x)
        assert conv._standardized[1] is cached  # reused, not recomputed
        conv.weight.mul_(2.0).add_(0.1)  # an in-place change (what an optimiser step does)
        assert torch.equal(conv(x), fresh())
        conv.load_state_dict({"weight": torch.rand(8, 4, 3, 3)})
        assert torch.equal(conv(x), fresh())
    # gradient-enabled forwards never use the cache, in eval mode either
    conv(x).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    conv.train()
    assert conv._standardized is None
    optimiser = torch.optim.SGD(conv.parameters(), lr=0.5)
    conv(x).square().sum().backward()
    optimiser.step()
    conv.eval()
    with torch.no_grad():
        assert torch.equal(conv(x), fresh())  # after a training step, eval sees the new weights


def test_config_errors():
    with pytest.raises(ConfigError, match="multiple of 16"):
        create("R50-ViT-B_16", num_classes=9, img_size=200)
    with pytest.raises(ConfigError, match="model TransUNet: unknown option"):
        create("TransUNet-Tiny", num_classes=9, img_size=64, hidden=3)
    with pytest.raises(ConfigError, match="multiple of 32"):
        create("TransUNet-Tiny", num_classes=9, img_size=64, resnet_width_factor=0.25)
    with pytest.raises(ConfigError, match="divisible by num_heads"):
        create("TransUNet-Tiny", num_classes=9, img_size=64, num_heads=5)


# --------------------------------------------------------------------------------------------------------------
# ImageNet-21k npz loader, on npz files written here in the layout of the original ViT release
# --------------------------------------------------------------------------------------------------------------
def to_vit_npz_layout(model, *, class_token: bool = True) -> dict[str, np.ndarray]:
    """The arrays an ``R50+ViT-B_16.npz`` / ``ViT-B_16.npz`` file would hold for ``model``'s weights.

    JAX layouts: conv kernels HWIO, dense kernels (in, out), attention kernels (D, heads, head_dim) for
    query/key/value and (heads, head_dim, D) for out, biases (heads, head_dim); a class token in front of the
    position embedding; a classifier head the loader must ignore.
    """
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    hidden = model.config.hidden_size
    heads = model.config.num_heads

    def conv(key):  # OIHW -> HWIO
        return sd[key].transpose(2, 3, 1, 0)

    emb = "transformer.embeddings."
    arrays = {
        "embedding/kernel": conv(emb + "patch_embeddings.weight"),
        "embedding/bias": sd[emb + "patch_embeddings.bias"],
        "Transformer/encoder_norm/scale": sd["transformer.encoder.encoder_norm.weight"],
        "Transformer/encoder_norm/bias": sd["transformer.encoder.encoder_norm.bias"],
        "head/kernel": np.zeros((hidden, 21843), np.float32),
        "head/bias": np.zeros((21843,), np.float32),
    }
    position = sd[emb + "position_embeddings"]
    if class_token:
        position = np.concatenate([np.full((1, 1, hidden), 7.0, np.float32), position], axis=1)
    arrays["Transformer/posembed_input/pos_embedding"] = position
    for i in range(model.config.num_layers):
        ours, theirs = f"transformer.encoder.layer.{i}.", f"Transformer/encoderblock_{i}/"
        attention = theirs + "MultiHeadDotProductAttention_1/"
        for name in ("query", "key", "value"):
            arrays[attention + f"{name}/kernel"] = sd[ours + f"attn.{name}.weight"].T.reshape(hidden, heads, -1)
            arrays[attention + f"{name}/bias"] = sd[ours + f"attn.{name}.bias"].reshape(heads, -1)
        arrays[attention + "out/kernel"] = sd[ours + "attn.out.weight"].T.reshape(heads, -1, hidden)
        arrays[attention + "out/bias"] = sd[ours + "attn.out.bias"]
        arrays[theirs + "MlpBlock_3/Dense_0/kernel"] = sd[ours + "ffn.fc1.weight"].T
        arrays[theirs + "MlpBlock_3/Dense_0/bias"] = sd[ours + "ffn.fc1.bias"]
        arrays[theirs + "MlpBlock_3/Dense_1/kernel"] = sd[ours + "ffn.fc2.weight"].T
        arrays[theirs + "MlpBlock_3/Dense_1/bias"] = sd[ours + "ffn.fc2.bias"]
        for norm, layer_norm in (("attention_norm", "LayerNorm_0"), ("ffn_norm", "LayerNorm_2")):
            arrays[theirs + f"{layer_norm}/scale"] = sd[ours + f"{norm}.weight"]
            arrays[theirs + f"{layer_norm}/bias"] = sd[ours + f"{norm}.bias"]
    if model.config.hybrid:
        res = emb + "hybrid_model."
        arrays["conv_root/kernel"] = conv(res + "root.conv.weight")
        arrays["gn_root/scale"] = sd[res + "root.gn.weight"]
        arrays["gn_root/bias"] = sd[res + "root.gn.bias"]
        for key in sd:
            if ".body." not in key:
                continue
            block, unit, layer, kind = key.split(".body.")[1].split(".")
            if layer == "downsample":
                arrays[f"{block}/{unit}/conv_proj/kernel"] = conv(key)
            elif layer.startswith("conv"):
                arrays[f"{block}/{unit}/{layer}/kernel"] = conv(key)
            else:
                arrays[f"{block}/{unit}/{layer}/{'scale' if kind == 'weight' else 'bias'}"] = sd[key]
    return arrays


def randomised(model, seed: int):
    """``model`` with every parameter set to random values (so that a load is visible)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model


def test_npz_loader_hybrid_same_grid(tmp_path):
    source = randomised(create("TransUNet-S", num_classes=9, img_size=64), seed=1)
    path = tmp_path / "R50+ViT-B_16.npz"
    np.savez(path, **to_vit_npz_layout(source))

    target = randomised(create("TransUNet-S", num_classes=9, img_size=64), seed=2)
    decoder_before = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("decoder.")}
    report = load_vit_npz(target, path)

    source_sd, target_sd = source.state_dict(), target.state_dict()
    for key in target_sd:
        if key.startswith("transformer."):
            torch.testing.assert_close(target_sd[key], source_sd[key], rtol=0, atol=0, msg=key)
    for key, value in decoder_before.items():
        assert torch.equal(target_sd[key], value), key
    assert sorted(report.unexpected) == ["head/bias", "head/kernel"]
    assert report.resized == []
    assert report.missing and all(k.startswith(("decoder.", "segmentation_head.")) for k in report.missing)
    assert len(report.loaded) == sum(1 for k, _ in target.named_parameters() if k.startswith("transformer."))
    assert "loaded" in report.summary()


def test_npz_loader_resizes_the_position_embedding_like_the_reference(tmp_path):
    source = randomised(create("TransUNet-S", num_classes=9, img_size=224), seed=3)  # 14x14 grid
    arrays = to_vit_npz_layout(source)
    path = tmp_path / "R50+ViT-B_16.npz"
    np.savez(path, **arrays)

    target = create("TransUNet-S", num_classes=9, img_size=512)  # 32x32 grid
    report = load_vit_npz(target, path)
    assert report.resized == ["transformer.embeddings.position_embeddings"]

    # The reference: drop the class token, then scipy.ndimage.zoom(order=1) over the 2D grid.
    hidden = source.config.hidden_size
    grid = arrays["Transformer/posembed_input/pos_embedding"][0, 1:].reshape(14, 14, hidden)
    expected = scipy.ndimage.zoom(grid, (32 / 14, 32 / 14, 1), order=1).reshape(1, 32 * 32, hidden)
    ours = target.transformer.embeddings.position_embeddings.detach().numpy()
    assert ours.shape == (1, 1024, hidden)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    # Everything else is copied as is; the model runs at 512.
    torch.testing.assert_close(target.transformer.encoder.layer[1].attn.out.weight,
                               source.transformer.encoder.layer[1].attn.out.weight)


def test_npz_loader_pure_vit(tmp_path):
    options = dict(hidden_size=32, mlp_dim=64, num_heads=2, num_layers=2, decoder_head_channels=32)
    source = randomised(create("ViT-B_16", num_classes=2, img_size=64, **options), seed=4)
    path = tmp_path / "ViT-B_16.npz"
    np.savez(path, **to_vit_npz_layout(source))
    target = create("ViT-B_16", num_classes=2, img_size=64, **options)
    load_vit_npz(target, path)
    for key, value in source.state_dict().items():
        if key.startswith("transformer."):
            torch.testing.assert_close(target.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert target.transformer.embeddings.patch_embeddings.weight.shape == (32, 3, 16, 16)


def test_npz_loader_errors(tmp_path):
    model = create("TransUNet-S", num_classes=9, img_size=64)
    with pytest.raises(CheckpointError, match="file not found"):
        load_vit_npz(model, tmp_path / "missing.npz")

    wrong_width = create("TransUNet-S", num_classes=9, img_size=64, hidden_size=32, num_heads=2)
    path = tmp_path / "other.npz"
    np.savez(path, **to_vit_npz_layout(wrong_width))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="do not fit"):
        load_vit_npz(model, path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # nothing copied

    # strict=False loads what fits (the ResNet of the same width, the MLP biases of the same mlp_dim) and lists
    # the rest.
    report = load_vit_npz(model, path, strict=False)
    assert report.loaded and all(".hybrid_model." in key or key.endswith("ffn.fc1.bias") for key in report.loaded)
    assert any(line.startswith("Transformer/encoderblock_0/") for line in report.skipped)
    torch.testing.assert_close(model.transformer.embeddings.hybrid_model.root.conv.weight,
                               wrong_width.transformer.embeddings.hybrid_model.root.conv.weight)

    unrelated = tmp_path / "unrelated.npz"
    np.savez(unrelated, something=np.zeros(3))
    with pytest.raises(CheckpointError, match="none of the expected"):
        load_vit_npz(model, unrelated)

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not an npz at all")
    with pytest.raises(CheckpointError, match="garbage.npz"):
        load_vit_npz(model, garbage)


def test_position_embedding_resize_is_align_corners_bilinear():
    """Sanity check of the equivalence the loader relies on (scipy zoom order 1 == align_corners bilinear)."""
    grid = np.random.default_rng(0).normal(size=(5, 5, 3)).astype(np.float32)
    expected = scipy.ndimage.zoom(grid, (9 / 5, 9 / 5, 1), order=1)
    ours = torch.nn.functional.interpolate(torch.from_numpy(grid).permute(2, 0, 1)[None], size=(9, 9),
                                           mode="bilinear", align_corners=True)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
    assert math.isclose(float(ours[0, 0, 0]), float(grid[0, 0, 0]), rel_tol=1e-6)
