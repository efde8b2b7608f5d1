"""DS-TransUNet: sizes, shapes at 224 and 512, training outputs, gradients, state_dict round trips, determinism,
and the ImageNet Swin loader on synthetic checkpoints in the official Swin layout."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medseg.errors import CheckpointError, ConfigError
from medseg.models import create, list_models
from medseg.models.ds_transunet import (
    CONFIG_TINY,
    DSTransUNet,
    SwinEncoder,
    load_swin_imagenet,
    parameter_breakdown,
)

NUM_CLASSES = 9


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny(seed: int = 0, **overrides) -> DSTransUNet:
    torch.manual_seed(seed)
    return create("DS-TransUNet-Tiny", num_classes=NUM_CLASSES, img_size=128, **overrides)


# ------------------------------------------------------------------------------------------------------------
# Registry and sizes
# ------------------------------------------------------------------------------------------------------------
def test_variants_are_registered():
    specs = {spec.name: spec for spec in list_models() if spec.family == "ds_transunet"}
    assert set(specs) == {"DS-TransUNet-B", "DS-TransUNet-S", "DS-TransUNet-Tiny"}
    assert specs["DS-TransUNet-B"].published and specs["DS-TransUNet-B"].default_img_size == 224
    assert not specs["DS-TransUNet-Tiny"].published
    assert all(spec.img_size_multiple == 32 for spec in specs.values())


def test_full_size_parameter_count_on_meta():
    with torch.device("meta"):
        model = create("DS-TransUNet-B", num_classes=NUM_CLASSES, img_size=224)
    parts = parameter_breakdown(model)
    # Swin-B backbone without classifier (86,743,224) + the three extra per-stage norms (1,792).
    assert parts["fine_encoder"] == 86_745_016
    # Swin-T backbone without classifier (27,519,354) + per-stage norms (1,344) + 13,824 for the 8x8 patch kernel.
    # The paper says "about 171M".
    assert parts["coarse_encoder"] == 27_534_522
    assert parts["total"] == 171_450_825
    assert abs(parts["total"] - 171e6) / 171e6 < 0.01


def test_full_size_forward_shapes_on_meta():
    with torch.device("meta"):
        model = create("DS-TransUNet-B", num_classes=NUM_CLASSES, img_size=224).eval()
        assert model(torch.empty(1, 1, 224, 224)).shape == (1, NUM_CLASSES, 224, 224)
        outputs = model.train()(torch.empty(1, 1, 224, 224))
    assert len(outputs) == 3 and all(o.shape == (1, NUM_CLASSES, 224, 224) for o in outputs)


def test_small_variants_are_small():
    with torch.device("meta"):
        small = parameter_breakdown(create("DS-TransUNet-S", num_classes=NUM_CLASSES))["total"]
        smallest = parameter_breakdown(create("DS-TransUNet-Tiny", num_classes=NUM_CLASSES))["total"]
    assert smallest < small < 25e6 and smallest < 10e6


# ------------------------------------------------------------------------------------------------------------
# Forward, backward, state
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_eval() -> DSTransUNet:
    """One Tiny model in eval mode, shared by the tests that only run it."""
    return tiny().eval()


@pytest.mark.parametrize("size", [224, 512])
def test_eval_forward_shapes(tiny_eval, size):
    grids = {}  # encoder name -> grid size of its four feature maps

    def record(name):
        def hook(module, inputs, features):
            grids[name] = [feature.shape[-1] for feature in features]
        return hook

    hooks = [tiny_eval.fine_encoder.register_forward_hook(record("fine")),
             tiny_eval.coarse_encoder.register_forward_hook(record("coarse"))]
    try:
        with torch.no_grad():
            logits = tiny_eval(torch.rand(1, 1, size, size))
    finally:
        for hook in hooks:
            hook.remove()
    assert logits.shape == (1, NUM_CLASSES, size, size)
    assert torch.isfinite(logits).all()
    assert grids["fine"] == [size // 4, size // 8, size // 16, size // 32]
    # At 224 the coarse branch ends on a padded 4x4 grid (224/64 = 3.5); the fusion's x2 and crop gives 7x7.
    assert grids["coarse"] == [math.ceil(size / n) for n in (8, 16, 32, 64)]


def test_training_outputs_and_backward():
    model = tiny().train()
    assert model.aux_loss_weights == (0.6, 0.2, 0.2)
    image = torch.rand(2, 1, 64, 64)
    target = torch.randint(0, NUM_CLASSES, (2, 64, 64))
    outputs = model(image)
    assert isinstance(outputs, tuple) and len(outputs) == 3
    assert all(o.shape == (2, NUM_CLASSES, 64, 64) for o in outputs)
    loss = sum(w * F.cross_entropy(o, target) for w, o in zip(model.aux_loss_weights, outputs))
    loss.backward()
    without_grad = [name for name, p in model.named_parameters() if p.grad is None]
    assert without_grad == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_three_channel_input():
    model = tiny(in_channels=3).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, NUM_CLASSES, 64, 64)


def test_eval_is_deterministic(tiny_eval):
    image = torch.rand(2, 1, 96, 96)
    with torch.no_grad():
        assert torch.equal(tiny_eval(image), tiny_eval(image))


def test_state_dict_round_trip(tmp_path):
    model = tiny(seed=1).eval()
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    fresh = tiny(seed=2).eval()
    fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    image = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(image), fresh(image))


def test_config_errors():
    with pytest.raises(ConfigError, match="not_a_field"):
        tiny(not_a_field=3)
    with pytest.raises(ConfigError, match="fine_heads"):
        tiny(fine_heads=[3, 3, 3, 3])
    with pytest.raises(ConfigError, match="coarse_patch_size"):
        tiny(coarse_patch_size=16)
    with pytest.raises(ConfigError, match="multiple of 32"):
        create("DS-TransUNet-Tiny", num_classes=NUM_CLASSES, img_size=200)
    assert tiny(decoder_heads=[2, 2, 1]).config.decoder_heads == (2, 2, 1)  # YAML lists become tuples
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny().eval()(torch.rand(1, 1, 100, 100))


# ------------------------------------------------------------------------------------------------------------
# ImageNet Swin loader, on synthetic checkpoints in the official Swin layout
# ------------------------------------------------------------------------------------------------------------
def official_swin_state_dict(embed_dim, depths, heads, window=7, patch=4, num_classes=10, seed=0):
    """Random tensors with the keys and shapes of an official Swin classification checkpoint (Liu et al.)."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator) * 0.1

    state = {
        "patch_embed.proj.weight": rand(embed_dim, 3, patch, patch),
        "patch_embed.proj.bias": rand(embed_dim),
        "patch_embed.norm.weight": 1 + rand(embed_dim),
        "patch_embed.norm.bias": rand(embed_dim),
    }
    for i, (depth, num_heads) in enumerate(zip(depths, heads)):
        dim = embed_dim * 2**i
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            state.update({
                p + "norm1.weight": 1 + rand(dim), p + "norm1.bias": rand(dim),
                p + "attn.relative_position_bias_table": rand((2 * window - 1) ** 2, num_heads),
                p + "attn.relative_position_index": torch.zeros(window**2, window**2, dtype=torch.long),
                p + "attn.qkv.weight": rand(3 * dim, dim), p + "attn.qkv.bias": rand(3 * dim),
                p + "attn.proj.weight": rand(dim, dim), p + "attn.proj.bias": rand(dim),
                p + "norm2.weight": 1 + rand(dim), p + "norm2.bias": rand(dim),
                p + "mlp.fc1.weight": rand(4 * dim, dim), p + "mlp.fc1.bias": rand(4 * dim),
                p + "mlp.fc2.weight": rand(dim, 4 * dim), p + "mlp.fc2.bias": rand(dim),
            })
            if j % 2 == 1:
                state[p + "attn_mask"] = torch.zeros(4, window**2, window**2)
        if i < len(depths) - 1:
            state[f"layers.{i}.downsample.reduction.weight"] = rand(2 * dim, 4 * dim)
            state[f"layers.{i}.downsample.norm.weight"] = 1 + rand(4 * dim)
            state[f"layers.{i}.downsample.norm.bias"] = rand(4 * dim)
    last = embed_dim * 2 ** (len(depths) - 1)
    state.update({"norm.weight": 1 + rand(last), "norm.bias": rand(last),
                  "head.weight": rand(num_classes, last), "head.bias": rand(num_classes)})
    return state


def tiny_fine_official(**kwargs):
    return official_swin_state_dict(CONFIG_TINY.fine_embed_dim, CONFIG_TINY.fine_depths, CONFIG_TINY.fine_heads,
                                    **kwargs)


def test_loader_fine_branch_from_file(tmp_path):
    official = tiny_fine_official()
    path = tmp_path / "swin_official.pth"
    torch.save({"model": official}, path)
    model = tiny()
    report = load_swin_imagenet(model, path, branch="fine")
    state = model.state_dict()
    assert torch.equal(state["fine_encoder.layers.1.blocks.0.mlp.linear1.weight"],
                       official["layers.1.blocks.0.mlp.fc1.weight"])
    assert torch.equal(state["fine_encoder.layers.2.blocks.1.attn.relative_position_bias_table"],
                       official["layers.2.blocks.1.attn.relative_position_bias_table"])
    assert torch.equal(state["fine_encoder.patch_embed.proj.weight"], official["patch_embed.proj.weight"])
    assert report.resized == [] and report.skipped == []
    # As the reference's loader: the classifier's final norm has no place (the encoder's per-stage norms are
    # norm0..3), so it is unexpected and all four per-stage norms keep their initialisation.
    assert not torch.equal(state["fine_encoder.out_norms.3.weight"], official["norm.weight"])
    assert sorted(report.missing) == sorted(f"fine_encoder.out_norms.{i}.{w}" for i in range(4)
                                            for w in ("weight", "bias"))
    assert {"head.weight", "head.bias", "norm.weight", "norm.bias", "layers.0.blocks.1.attn_mask"} \
        <= set(report.unexpected)
    assert all(key.endswith(("attn_mask", "relative_position_index")) or key.startswith(("head.", "norm."))
               for key in report.unexpected)
    loaded_tensors = sum(1 for key in official if not key.startswith(("head.", "norm."))
                         and not key.endswith(("attn_mask", "relative_position_index")))
    assert len(report.loaded) == loaded_tensors
    assert any("final norm" in note for note in report.notes)
    # On request the final norm goes where it sits in the classifier: after stage 4.
    again = tiny()
    report = load_swin_imagenet(again, path, branch="fine", final_norm=True)
    assert torch.equal(again.state_dict()["fine_encoder.out_norms.3.weight"], official["norm.weight"])
    assert "fine_encoder.out_norms.3.weight" in report.loaded


def test_loader_coarse_branch_resizes_patch_kernel():
    official = official_swin_state_dict(CONFIG_TINY.coarse_embed_dim, CONFIG_TINY.coarse_depths,
                                        CONFIG_TINY.coarse_heads)
    model = tiny()
    report = load_swin_imagenet(model, {"state_dict": official}, branch="coarse")
    assert len(report.resized) == 1 and report.resized[0].startswith("coarse_encoder.patch_embed.proj.weight: ")
    assert report.skipped == []
    kernel8 = model.coarse_encoder.patch_embed.proj.weight.detach()
    assert kernel8.shape[-2:] == (8, 8)
    image = torch.rand(1, 3, 32, 32)
    # The 8x8 kernel is the 4x4 ImageNet kernel applied to the 2x average-pooled image.
    expected = F.conv2d(F.avg_pool2d(image, 2), official["patch_embed.proj.weight"], stride=4)
    assert torch.allclose(F.conv2d(image, kernel8, stride=8), expected, atol=1e-5)

    fresh = tiny()
    before = fresh.coarse_encoder.patch_embed.proj.weight.detach().clone()
    report = load_swin_imagenet(fresh, official, branch="coarse", resize_patch_embed=False)
    assert report.resized == [] and report.skipped[0].startswith("patch_embed.proj.weight: (24, 3, 4, 4)")
    assert torch.equal(fresh.coarse_encoder.patch_embed.proj.weight, before)


def test_loader_refuses_another_swin_size_and_ignores_extra_blocks():
    # Heads 2/4/8/16 instead of 1/2/4/8: every relative-position table is the wrong shape -> one-line error, and
    # nothing is copied.
    official = official_swin_state_dict(CONFIG_TINY.fine_embed_dim, (3, 3, 3, 3), (2, 4, 8, 16))
    model = tiny()
    before = model.fine_encoder.layers[0].blocks[0].attn.qkv.weight.detach().clone()
    with pytest.raises(CheckpointError, match="does not fit DSTransUNet: fine_encoder.layers.0.blocks.0.attn."
                                              "relative_position_bias_table"):
        load_swin_imagenet(model, official, branch="fine")
    assert torch.equal(model.fine_encoder.layers[0].blocks[0].attn.qkv.weight, before)
    # Three blocks per stage with the right heads: the third block of each stage has no place and is unexpected.
    deeper = official_swin_state_dict(CONFIG_TINY.fine_embed_dim, (3, 3, 3, 3), CONFIG_TINY.fine_heads)
    report = load_swin_imagenet(model, deeper, branch="fine")
    assert "layers.0.blocks.2.attn.qkv.weight" in report.unexpected


def test_loader_errors(tmp_path):
    model = tiny()
    with pytest.raises(ConfigError, match="branch"):
        load_swin_imagenet(model, tiny_fine_official(), branch="middle")
    with pytest.raises(CheckpointError, match="not found"):
        load_swin_imagenet(model, tmp_path / "absent.pth", branch="fine")
    with pytest.raises(CheckpointError, match="nothing in the file fits"):
        load_swin_imagenet(model, {"conv1.weight": torch.zeros(3)}, branch="fine")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model": tiny_fine_official(), "args": _NotATensor()}, unsafe)
    with pytest.raises(CheckpointError, match="not a plain tensor file"):
        load_swin_imagenet(model, unsafe, branch="fine")


class _NotATensor:
    """A pickled object that ``torch.load(weights_only=True)`` must refuse."""


def test_loaded_weights_compute_official_swin():
    """On one 7x7 window (28 px, patch 4) stage 0 equals a hand-written official Swin computation."""
    official = tiny_fine_official(seed=3)
    model = tiny()
    load_swin_imagenet(model, official, branch="fine")
    encoder: SwinEncoder = model.fine_encoder.eval()
    image = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        got = encoder(image)[0]  # (2, 32, 7, 7)

        o = official
        x = F.conv2d(image, o["patch_embed.proj.weight"], o["patch_embed.proj.bias"], stride=4)
        x = x.flatten(2).transpose(1, 2)  # (B, 49, C)
        dim = x.shape[-1]
        x = F.layer_norm(x, (dim,), o["patch_embed.norm.weight"], o["patch_embed.norm.bias"])
        rows, cols = torch.meshgrid(torch.arange(7), torch.arange(7), indexing="ij")
        rows, cols = rows.flatten(), cols.flatten()
        index = (rows[:, None] - rows[None, :] + 6) * 13 + (cols[:, None] - cols[None, :] + 6)  # (49, 49)
        heads = CONFIG_TINY.fine_heads[0]
        # The official block keeps shifting on a grid of one window: the second block rolls the 7x7 grid by -3 and
        # masks attention between the regions the roll brought together (rows/cols 0-3 and 4-6 after the roll).
        region = (torch.arange(7) >= 4).long()
        label = (region[:, None] * 2 + region[None, :]).flatten()  # (49,) region of each rolled token
        mask = torch.where(label[:, None] == label[None, :], 0.0, -100.0)
        for j in range(2):
            p = f"layers.0.blocks.{j}."
            h = F.layer_norm(x, (dim,), o[p + "norm1.weight"], o[p + "norm1.bias"])
            if j == 1:
                h = h.reshape(2, 7, 7, dim).roll((-3, -3), dims=(1, 2)).reshape(2, 49, dim)
            qkv = F.linear(h, o[p + "attn.qkv.weight"], o[p + "attn.qkv.bias"])
            q, k, v = qkv.reshape(2, 49, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            bias = o[p + "attn.relative_position_bias_table"][index].permute(2, 0, 1)  # (heads, 49, 49)
            logits = (q * (dim // heads) ** -0.5) @ k.transpose(-2, -1) + bias + (mask if j == 1 else 0.0)
            h = (logits.softmax(-1) @ v).transpose(1, 2).reshape(2, 49, dim)
            h = F.linear(h, o[p + "attn.proj.weight"], o[p + "attn.proj.bias"])
            if j == 1:
                h = h.reshape(2, 7, 7, dim).roll((3, 3), dims=(1, 2)).reshape(2, 49, dim)
            x = x + h
            h = F.layer_norm(x, (dim,), o[p + "norm2.weight"], o[p + "norm2.bias"])
            h = F.linear(F.gelu(F.linear(h, o[p + "mlp.fc1.weight"], o[p + "mlp.fc1.bias"])),
                         o[p + "mlp.fc2.weight"], o[p + "mlp.fc2.bias"])
            x = x + h
        expected = F.layer_norm(x, (dim,)).transpose(1, 2).reshape(2, dim, 7, 7)  # out_norms.0 keeps 1 and 0
    assert torch.allclose(got, expected, atol=1e-5)


def test_swin_stage_applies_the_official_rule_at_224():
    """At 224 px the coarse encoder's last grid is 4x4 (224 / 8 / 2 / 2 / 2, rounded up) and the fine encoder's 7x7:
    grids the official code only meets at other input sizes (the 64 px parity fixture has 4x4, 2x2 and 1x1 grids).
    The official Swin block, whatever the input size: LayerNorm, then pad the grid bottom/right to a multiple of the
    window, full 7x7 window, and in odd blocks the 3-token shift with the mask of the padded grid. Checked here
    against that rule written out with MONAI's window attention, and the shift is really on."""
    from monai.networks.nets.swin_unetr import compute_mask, window_partition, window_reverse

    from medseg.models.ds_transunet import SwinStage

    torch.manual_seed(0)
    stage = SwinStage(dim=16, depth=2, num_heads=2, window_size=7, mlp_ratio=2.0, drop_path=[0.0, 0.0],
                      downsample=False).eval()
    x = torch.randn(1, 4, 4, 16)
    with torch.no_grad():
        got = stage(x)
        expected = x
        mask = compute_mask([7, 7], (7, 7), (3, 3), x.device)
        for index, block in enumerate(stage.blocks):
            h = F.pad(block.norm1(expected), (0, 0, 0, 3, 0, 3))  # pad after the norm: pad tokens are zeros
            shift = 3 if index % 2 else 0
            h = torch.roll(h, (-shift, -shift), dims=(1, 2))
            h = block.attn(window_partition(h, (7, 7)), mask=mask if shift else None)
            h = torch.roll(window_reverse(h.view(-1, 7, 7, 16), (7, 7), [1, 7, 7]), (shift, shift), dims=(1, 2))
            expected = expected + h[:, :4, :4]
            expected = expected + block.mlp(block.norm2(expected))
        assert torch.allclose(got, expected, atol=1e-6)
        # MONAI's own block would run the second block unshifted on this grid: a different result.
        stage.blocks[1].shift_size = (0, 0)
        assert not torch.allclose(stage(x), got, atol=1e-4)
