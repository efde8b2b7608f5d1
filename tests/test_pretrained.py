"""Pretrained initialisation for every family through ``load_pretrained(model, family, path)``.

Each loader is fed a synthetic file in the official layout: the key list of ``tests/data/zoo/pretrained_formats``
(see the README there), narrowed where the model is configurable so that the test stays fast, with random values.
Checked: what lands where (loaded, resized, missing, unexpected), the 1-channel rule of each family, and one-line
errors for a file of another family or a truncated file.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.errors import CheckpointError, ConfigError
from medseg.models import create
from medseg.models.pretrained import PretrainedReport, load_pretrained
from zoo_reference import ZOO, read_layout

FORMATS = ZOO / "pretrained_formats"
pytestmark = pytest.mark.usefixtures("single_thread")


def synthetic(layout: str, narrow: "dict[int, int] | None" = None, seed: int = 0,
              keep=lambda key, shape: shape) -> dict[str, torch.Tensor]:
    """Random tensors in the layout of ``pretrained_formats/<layout>.tsv`` (``model/`` prefix kept as given).

    ``narrow`` maps an official width to a smaller one: every dimension that is a multiple of the width is scaled
    (``2304 = 3 x 768 -> 3 x 64``); ``keep(key, shape)`` may rewrite a shape first (heads, token counts).
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in read_layout(FORMATS / f"{layout}.tsv"):
        shape = keep(key, shape)
        if narrow:
            for wide, small in narrow.items():
                shape = tuple(d // wide * small if d % wide == 0 else d for d in shape)
        if dtype.startswith("int"):
            state[key] = torch.zeros(shape, dtype=torch.int64)
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.1
    return state


def nest_model(state: dict) -> dict:
    """``model/key`` entries -> ``{'model': {key: ...}}`` (Microsoft's Swin files)."""
    return {"model": {key[len("model/"):]: value for key, value in state.items()}}


def save(tmp_path: Path, name: str, payload) -> Path:
    path = tmp_path / name
    torch.save(payload, path)
    return path


def encoder_state(model, prefix: str) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(prefix)}


# ---------------------------------------------------------------- SETR <- timm ViT-B/16 (.pth and .npz)
SETR_TEST = dict(hidden_size=64, num_layers=4, num_heads=4, mlp_dim=256, decoder_channels=32, mla_head_channels=16)


def _vit_b16(tmp_path) -> tuple[dict, Path]:
    """timm ViT-B/16 narrowed to width 64 with a 7x7 position grid (1 + 49 tokens)."""
    def tokens(key, shape):
        return (1, 50, shape[2]) if key == "pos_embed" else shape
    state = synthetic("timm_vit_base_patch16_224", {768: 64}, keep=tokens)
    return state, save(tmp_path, "vit_base_patch16_224.pth", state)


def _as_google_npz(state: dict, path: Path) -> Path:
    """The same weights in the Google ViT ``.npz`` layout (the format timm's npz loader reads)."""
    dim = state["cls_token"].shape[-1]
    heads = 4
    arrays = {"embedding/kernel": state["patch_embed.proj.weight"].permute(2, 3, 1, 0),
              "embedding/bias": state["patch_embed.proj.bias"], "cls": state["cls_token"],
              "Transformer/posembed_input/pos_embedding": state["pos_embed"],
              "Transformer/encoder_norm/scale": state["norm.weight"],
              "Transformer/encoder_norm/bias": state["norm.bias"],
              "head/kernel": state["head.weight"].T, "head/bias": state["head.bias"]}
    for index in range(12):
        b, t = f"blocks.{index}.", f"Transformer/encoderblock_{index}/"
        att = t + "MultiHeadDotProductAttention_1/"
        q, k, v = state[b + "attn.qkv.weight"].chunk(3)
        qb, kb, vb = state[b + "attn.qkv.bias"].chunk(3)
        for name, weight, bias in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
            arrays[att + f"{name}/kernel"] = weight.T.reshape(dim, heads, dim // heads)
            arrays[att + f"{name}/bias"] = bias.reshape(heads, dim // heads)
        arrays[att + "out/kernel"] = state[b + "attn.proj.weight"].T.reshape(heads, dim // heads, dim)
        arrays[att + "out/bias"] = state[b + "attn.proj.bias"]
        for norm, name in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            arrays[t + f"{name}/scale"] = state[b + f"{norm}.weight"]
            arrays[t + f"{name}/bias"] = state[b + f"{norm}.bias"]
        for fc, dense in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
            arrays[t + f"MlpBlock_3/{dense}/kernel"] = state[b + f"mlp.{fc}.weight"].T
            arrays[t + f"MlpBlock_3/{dense}/bias"] = state[b + f"mlp.{fc}.bias"]
    np.savez(path, **{key: value.numpy() for key, value in arrays.items()})
    return path


def test_setr_loads_timm_vit_pth_and_npz_alike(tmp_path):
    state, path = _vit_b16(tmp_path)
    model = create("SETR-PUP-S", num_classes=9, img_size=64, in_channels=1, **SETR_TEST)
    report = load_pretrained(model, "setr", path)
    assert isinstance(report, PretrainedReport) and report.family == "setr"
    loaded = model.state_dict()
    assert torch.equal(loaded["encoder.cls_token"], state["cls_token"])
    assert torch.equal(loaded["encoder.layers.3.attn.qkv.weight"], state["blocks.3.attn.qkv.weight"])
    # Class row kept, 7x7 grid resized to the 4x4 grid of a 64 px model; patch kernel summed over RGB.
    assert torch.equal(loaded["encoder.pos_embed"][:, 0], state["pos_embed"][:, 0])
    assert loaded["encoder.pos_embed"].shape == (1, 17, 64)
    assert torch.allclose(loaded["encoder.patch_embed.weight"], state["patch_embed.proj.weight"].sum(1, keepdim=True))
    assert any(line.startswith("encoder.pos_embed: (1, 50, 64) -> (1, 17, 64)") for line in report.resized)
    assert {"norm.weight", "head.weight", "blocks.4.attn.qkv.weight"} <= set(report.unexpected)
    assert all(key.startswith(("decode_head.", "aux_heads.")) for key in report.missing)
    assert not any(key.startswith("decode_head.") for key in report.loaded)

    # The Google .npz of the same weights gives the same encoder (timm reads both).
    other = create("SETR-PUP-S", num_classes=9, img_size=64, in_channels=1, **SETR_TEST)
    load_pretrained(other, "setr", _as_google_npz(state, tmp_path / "ViT-B_16.npz"))
    for key, value in encoder_state(model, "encoder.").items():
        assert torch.allclose(other.state_dict()[key], value, atol=1e-6), key


def test_setr_mla_drops_the_class_row(tmp_path):
    state, path = _vit_b16(tmp_path)
    model = create("SETR-MLA-S", num_classes=9, img_size=64, in_channels=3, **SETR_TEST)
    report = load_pretrained(model, "setr", path)
    assert model.encoder.cls_token is None and "cls_token" in report.unexpected
    assert model.state_dict()["encoder.pos_embed"].shape == (1, 16, 64)
    assert torch.equal(model.state_dict()["encoder.patch_embed.weight"], state["patch_embed.proj.weight"])


# ---------------------------------------------------------------- SegFormer <- mit_b0.pth and a Hugging Face folder
def test_segformer_loads_mit_b0(tmp_path):
    state = synthetic("mit_b0")
    model = create("SegFormer-B0", num_classes=9, img_size=64, in_channels=1)
    report = load_pretrained(model, "segformer", save(tmp_path, "mit_b0.pth", {"state_dict": state}))
    loaded = model.state_dict()
    prefix = "model.segformer.stages."
    key, value = state["block1.0.attn.kv.weight"].chunk(2)
    assert torch.equal(loaded[prefix + "0.blocks.0.attention.k_proj.weight"], key)
    assert torch.equal(loaded[prefix + "0.blocks.0.attention.v_proj.weight"], value)
    assert torch.equal(loaded[prefix + "3.layer_norm.weight"], state["norm4.weight"])
    assert torch.allclose(loaded[prefix + "0.patch_embeddings.proj.weight"],
                          state["patch_embed1.proj.weight"].sum(1, keepdim=True))
    assert report.unexpected == ["head.weight", "head.bias"] and report.missing == []
    kv = sum(1 for name in state if ".attn.kv." in name)
    assert len(report.loaded) + len(report.resized) == len(state) - 2 + kv  # every kv split into k and v


def test_segformer_loads_a_hugging_face_folder(tmp_path):
    source = create("SegFormer-B0", num_classes=150, img_size=64, in_channels=3)
    folder = tmp_path / "mit-b0"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "segformer"}))
    from safetensors.torch import save_file

    save_file({key[len("model."):]: value.contiguous() for key, value in source.state_dict().items()},
              str(folder / "model.safetensors"))
    model = create("SegFormer-B0", num_classes=9, img_size=64, in_channels=3)
    report = load_pretrained(model, "segformer", folder)
    for key, value in encoder_state(source, "model.").items():
        if "classifier" not in key:
            assert torch.equal(model.state_dict()[key], value), key
    assert sorted(line.split(":")[0] for line in report.skipped) == ["model.decode_head.classifier.bias",
                                                                       "model.decode_head.classifier.weight"]
    # A folder saved before transformers 5 (the hub's nvidia/mit-b0 layout: encoder.block.*, attention.self.*).
    old_names = [("stages.0.patch_embeddings.", "encoder.patch_embeddings.0."), ("layernorm_before", "layer_norm_1"),
                 ("attention.q_proj", "attention.self.query"), ("attention.k_proj", "attention.self.key"),
                 ("attention.v_proj", "attention.self.value"), ("attention.o_proj", "attention.output.dense"),
                 ("attention.sequence_reduction.sequence_reduction", "attention.self.sr"),
                 ("attention.sequence_reduction.layer_norm", "attention.self.layer_norm"),
                 ("layernorm_after", "layer_norm_2"), ("mlp.fc1", "mlp.dense1"), ("mlp.fc2", "mlp.dense2")]
    old = {}
    for key, value in source.state_dict().items():
        if not key.startswith("model.segformer."):
            continue
        key = key[len("model."):]
        for new, former in old_names:
            key = key.replace(new, former)
        key = re.sub(r"stages\.(\d+)\.blocks\.", r"encoder.block.\1.", key)
        key = re.sub(r"stages\.(\d+)\.patch_embeddings\.", r"encoder.patch_embeddings.\1.", key)
        key = re.sub(r"stages\.(\d+)\.layer_norm", r"encoder.layer_norm.\1", key)
        old[key] = value.contiguous()
    assert "segformer.encoder.block.0.0.attention.self.query.weight" in old
    save_file(old, str(folder / "model.safetensors"))
    again = create("SegFormer-B0", num_classes=9, img_size=64, in_channels=3)
    report = load_pretrained(again, "segformer", folder)
    assert report.unexpected == [] and all(key.startswith("model.decode_head.") for key in report.missing)
    for key, value in encoder_state(source, "model.segformer.").items():
        assert torch.equal(again.state_dict()[key], value), key

    (folder / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(CheckpointError, match="'vit' model, not SegFormer"):
        load_pretrained(model, "segformer", folder)


# ---------------------------------------------------------------- BiSeNet <- torchvision ResNet-18
@pytest.mark.parametrize("with_counters", [True, False])
def test_bisenet_loads_torchvision_resnet18(tmp_path, with_counters):
    state = synthetic("torchvision_resnet18")
    if not with_counters:  # older torchvision files have no num_batches_tracked
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    model = create("BiSeNet-R18", num_classes=9, img_size=64, in_channels=1)
    report = load_pretrained(model, "bisenet", save(tmp_path, "resnet18-f37072fd.pth", state))
    loaded = model.state_dict()
    backbone = "context_path.backbone."
    assert torch.allclose(loaded[backbone + "stem.0.weight"], state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(loaded[backbone + "layer3.0.shortcut.0.weight"], state["layer3.0.downsample.0.weight"])
    assert torch.equal(loaded[backbone + "layer4.1.bn2.running_var"], state["layer4.1.bn2.running_var"])
    assert report.unexpected == ["fc.weight", "fc.bias"] and report.missing == []


# ---------------------------------------------------------------- TopFormer <- official ImageNet backbone
def test_topformer_loads_official_backbone(tmp_path):
    state = synthetic("topformer_tiny_backbone_keys")
    state["classifier.weight"] = torch.zeros(1000, 96)
    payload = {"state_dict_ema": {"backbone." + k: v for k, v in state.items()}, "epoch": torch.tensor(300)}
    model = create("TopFormer-Tiny", num_classes=9, img_size=64, in_channels=1)
    report = load_pretrained(model, "topformer", save(tmp_path, "topformer-T-224-66.2.pth", payload))
    loaded = model.state_dict()
    assert torch.allclose(loaded["pyramid.stem.0.0.weight"], state["tpm.stem.0.c.weight"].sum(1, keepdim=True))
    assert torch.equal(loaded["pyramid.layers.8.conv.2.0.weight"], state["tpm.layer9.conv.2.c.weight"])
    assert torch.equal(loaded["transformer.3.mlp.1.weight"], state["trans.transformer_blocks.3.mlp.dwconv.weight"])
    assert report.missing == [] and report.unexpected == ["classifier.weight"]
    # A Small backbone into a Tiny model: one-line error naming the first tensor that does not fit.
    small = synthetic("topformer_small_backbone_keys")
    with pytest.raises(CheckpointError, match=r"^topformer-S.pth: TopFormer ImageNet checkpoint does not fit"):
        load_pretrained(model, "topformer", save(tmp_path, "topformer-S.pth", small))


# ---------------------------------------------------------------- DS-TransUNet <- Swin-B (fine) + Swin-T (coarse)
def _swin(layout: str, width: int, small: int, heads_divisor: int) -> dict:
    def heads(key, shape):
        if key.endswith("relative_position_bias_table"):
            return (shape[0], shape[1] // heads_divisor)
        return shape
    return synthetic(layout, {width: small}, keep=heads)


def test_ds_transunet_loads_swin_b_and_swin_t(tmp_path):
    # DS-TransUNet-Tiny: fine embed 32 heads 1/2/4/8 (Swin-B / 4), coarse embed 24 heads 1/2/4/8 (Swin-T / 4, / 3).
    fine = nest_model(_swin("swin_base_patch4_window7_224_22k", 128, 32, 4))
    coarse = nest_model(_swin("swin_tiny_patch4_window7_224", 96, 24, 3))
    paths = f"{save(tmp_path, 'swin_b.pth', fine)},{save(tmp_path, 'swin_t.pth', coarse)}"
    model = create("DS-TransUNet-Tiny", num_classes=9, img_size=64, in_channels=1)
    report = load_pretrained(model, "ds_transunet", paths)
    loaded = model.state_dict()
    assert torch.equal(loaded["fine_encoder.layers.1.blocks.1.mlp.linear2.weight"],
                       fine["model"]["layers.1.blocks.1.mlp.fc2.weight"])
    assert torch.equal(loaded["coarse_encoder.layers.3.downsample.reduction.weight"]
                       if "coarse_encoder.layers.3.downsample.reduction.weight" in loaded
                       else loaded["coarse_encoder.layers.2.downsample.reduction.weight"],
                       coarse["model"]["layers.2.downsample.reduction.weight"])
    # 1-channel CT is repeated to 3 channels by the model: the RGB kernels are used as they are.
    assert torch.equal(loaded["fine_encoder.patch_embed.proj.weight"], fine["model"]["patch_embed.proj.weight"])
    kernel = coarse["model"]["patch_embed.proj.weight"]
    assert torch.equal(loaded["coarse_encoder.patch_embed.proj.weight"],
                       kernel.repeat_interleave(2, 2).repeat_interleave(2, 3) / 4)
    assert len(report.resized) == 1 and report.resized[0].startswith("coarse_encoder.patch_embed.proj.weight")
    # Final norms ignored (as the reference), so every per-stage norm of both encoders keeps its initialisation.
    assert sorted(report.missing) == sorted(f"{b}_encoder.out_norms.{i}.{p}" for b in ("fine", "coarse")
                                            for i in range(4) for p in ("weight", "bias"))
    assert "layers.2.blocks.5.attn.qkv.weight" in report.unexpected  # Swin-T stage 3 is deeper than Tiny's
    assert "norm.weight" in report.unexpected and "head.weight" in report.unexpected
    assert not any(key.startswith(("interactive_fusions", "swin_decoder")) for key in report.loaded)

    # One file goes into the encoder of its width; a Swin of neither width is a one-line error.
    single = create("DS-TransUNet-Tiny", num_classes=9, img_size=64, in_channels=1)
    report = load_pretrained(single, "ds_transunet", tmp_path / "swin_t.pth")
    assert report.loaded and all(key.startswith("coarse_encoder.") for key in report.loaded)
    with pytest.raises(CheckpointError, match="not a Swin checkpoint of this model's widths"):
        load_pretrained(single, "ds_transunet", save(tmp_path, "swin_s.pth", nest_model(
            _swin("swin_tiny_patch4_window7_224", 96, 40, 3))))


# ---------------------------------------------------------------- errors common to every loader
def test_file_of_another_family_and_truncated_file_are_one_line_errors(tmp_path):
    resnet = save(tmp_path, "resnet18.pth", synthetic("torchvision_resnet18"))
    model = create("SETR-Naive-S", num_classes=9, img_size=64, in_channels=1, **SETR_TEST)
    with pytest.raises(CheckpointError, match="^resnet18.pth: nothing in the file fits SETR") as caught:
        load_pretrained(model, "setr", resnet)
    assert "\n" not in str(caught.value)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(resnet.read_bytes()[: resnet.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as caught:
        load_pretrained(create("BiSeNet-R18-Small", num_classes=9, img_size=64), "bisenet", truncated)
    assert "\n" not in str(caught.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(model, "setr", tmp_path / "absent.pth")
    with pytest.raises(ConfigError, match="no pretrained weights are known for the unet family"):
        load_pretrained(create("UNet-Small", num_classes=9, img_size=64), "unet", resnet)


# ---------------------------------------------------------------- through training: medseg train --pretrained
def test_train_pretrained_writes_the_report_to_train_log(tiny_cohort, tmp_path):
    """``medseg train --pretrained FILE`` for a family other than TransUNet: the report lands in train.log and the
    trained model started from the file (a bad file stops before the run folder has a checkpoint)."""
    from medseg.cli import main
    from medseg.data.slice_cache import prepare_cohort

    prepared = tmp_path / "prepared"
    prepare_cohort(tiny_cohort, prepared, split="seeded", test_fraction=0.5, progress=False)
    weights = save(tmp_path, "topformer-T-224-66.2.pth", {"state_dict": synthetic("topformer_tiny_backbone_keys")})
    common = ["train", "--model", "TopFormer-Tiny", "--data", str(prepared), "--set", "img_size=64",
              "--set", "batch_size=4", "--set", "epochs=1", "--set", "stop_after=1", "--set", "workers=0",
              "--set", "val_every=0", "--set", "tensorboard=false"]
    assert main(common + ["--out", str(tmp_path / "run"), "--pretrained", str(weights)]) in (0, 130, 143)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "pretrained topformer-T-224-66.2.pth -> topformer:" in log
    assert "pyramid.stem.0.0.weight: (16, 3, 3, 3) -> (16, 1, 3, 3) (summed over RGB)" in log
    import hashlib

    assert f"sha256 {hashlib.sha256(weights.read_bytes()).hexdigest()} topformer-T-224-66.2.pth" in log
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(weights.read_bytes()[:1000])
    assert main(common + ["--out", str(tmp_path / "bad"), "--pretrained", str(truncated)]) == 2
    assert not (tmp_path / "bad" / "last.pt").exists()


def test_summed_kernel_equals_the_rgb_network_on_a_repeated_grey_image():
    from medseg.models.pretrained import adapt_input_channels

    rgb = torch.randn(8, 3, 7, 7)
    grey = torch.randn(2, 1, 32, 32)
    summed = adapt_input_channels(rgb, 1)
    assert torch.allclose(torch.nn.functional.conv2d(grey, summed),
                          torch.nn.functional.conv2d(grey.expand(-1, 3, -1, -1), rgb), atol=1e-5)
    assert adapt_input_channels(rgb, 3) is rgb
    assert adapt_input_channels(rgb, 4).shape == (8, 4, 7, 7)
