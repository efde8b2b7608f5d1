"""``medseg predict --model NAME -m official.pth``: an official codebase's RGB checkpoint of every family predicts
1-channel CT.

Each file is in the official layout (the key lists of ``tests/data/zoo``, narrowed to a small variant where the
published one is large) with values drawn by the fixtures' weight rule. The command must exit 0 and write labels
equal to those of the RGB model (loaded with ``in_channels=3``) applied to the grey image repeated three times.
"""
from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from helpers import tiny_case
from medseg.cli import main
from medseg.data.transforms import PreprocessingParams
from medseg.engine.inference import make_predictor, predict_volume
from medseg.io import write_volume
from medseg.models.checkpoint import load_checkpoint
from zoo_reference import ZOO, read_layout, weights_for_layout

pytestmark = pytest.mark.usefixtures("single_thread")

IMG_SIZE = 64

# SETR's official ADE20K ViT-L/16 layout narrowed to SETR-*-S at 64 px: widths (ViT 1024 -> 384, qkv, MLP, decoder
# 256 -> 128, MLA head 128 -> 64), 24 -> 12 blocks, 150 -> 9 classes, a 4 x 4 position grid plus the class token.
_SETR_S = {1024: 384, 3072: 1152, 4096: 1536, 256: 128, 128: 64, 512: 256, 150: 9, 1025: 17}


def _setr_s(rows):
    return [(key, tuple(_SETR_S.get(d, d) for d in shape), dtype) for key, shape, dtype in rows
            if not (match := re.search(r"blocks\.(\d+)\.", key)) or int(match.group(1)) < 12]


def _half_width(rows):
    """CoinCheung's BiSeNet v1 R18 at half width (BiSeNet-R18-Small): every multiple of 64 channels halved."""
    return [(key, tuple(d // 64 * 32 if d % 64 == 0 else d for d in shape), dtype) for key, shape, dtype in rows]


# registry name, key list, how it is narrowed (None: as listed)
FAMILIES = [
    ("BiSeNet-R18-Small", "bisenetv1_9cls", _half_width),
    ("TopFormer-Tiny", "topformer_tiny_9cls_64", None),
    ("SegFormer-B0", "segformer_b0_9cls", None),
    ("SETR-Naive-S", "setr_naive_L16_512_ade20k_150cls", _setr_s),
]


class GreyAsRGB(nn.Module):
    """An RGB model applied to a grey image repeated to three channels."""

    def __init__(self, rgb: nn.Module):
        super().__init__()
        self.rgb = rgb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rgb(x.repeat(1, 3, 1, 1))


@pytest.mark.parametrize("name,layout,narrow", FAMILIES, ids=[row[0] for row in FAMILIES])
def test_official_rgb_checkpoint_predicts_ct_from_the_cli(tmp_path, name, layout, narrow):
    rows = read_layout(ZOO / f"{layout}_state_dict.tsv")
    weights = weights_for_layout(narrow(rows) if narrow else rows)
    checkpoint = tmp_path / "official.pth"
    torch.save({"state_dict": weights}, checkpoint)  # as mmseg saves it
    image, _ = tiny_case(3, shape=(20, 18, 4))
    write_volume(tmp_path / "ct.nii.gz", image)

    code = main(["predict", "-i", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "out.nii.gz"), "-m",
                 str(checkpoint), "--model", name, "--img-size", str(IMG_SIZE), "--device", "cpu", "--no-progress",
                 "--save-probabilities"])
    assert code == 0
    predicted = np.asarray(nib.load(tmp_path / "out.nii.gz").dataobj)
    with np.load(tmp_path / "out_probabilities.npz") as saved:
        probabilities = saved["probabilities"].astype(np.float32)

    rgb, info = load_checkpoint(checkpoint, model_name=name, img_size=IMG_SIZE, in_channels=3)
    assert info.model_config["in_channels"] == 3 and info.input_adaptation is None
    reference = make_predictor(GreyAsRGB(rgb), name, "synapse8", PreprocessingParams(img_size=IMG_SIZE), "cpu")
    expected, expected_probabilities = predict_volume(image, reference, return_probabilities=True)
    np.testing.assert_array_equal(predicted, expected.array)
    # The probabilities too (float16 on disk), so that a model whose labels hardly vary on this image is still
    # compared everywhere; and they do depend on the image.
    np.testing.assert_allclose(probabilities, expected_probabilities.astype(np.float32), atol=2e-3, rtol=0)
    assert probabilities.std(axis=(0, 1, 2)).max() > 1e-3


def test_the_loaded_checkpoint_says_how_rgb_became_grey(tmp_path):
    """The default load (1-channel CT) names the folded kernel; its sum over RGB is what the model holds."""
    weights = weights_for_layout(read_layout(ZOO / "topformer_tiny_9cls_64_state_dict.tsv"))
    checkpoint = tmp_path / "official.pth"
    torch.save(weights, checkpoint)
    model, info = load_checkpoint(checkpoint, model_name="TopFormer-Tiny", img_size=IMG_SIZE)
    assert info.model_config["in_channels"] == 1
    key = next(key for key, value in weights.items() if value.ndim == 4 and value.shape[1] == 3)
    assert info.input_adaptation.startswith("first kernel ") and "summed over RGB" in info.input_adaptation
    folded = [value for value in model.state_dict().values() if value.ndim == 4 and value.shape[1] == 1
              and value.shape[0] == weights[key].shape[0] and value.shape[2:] == weights[key].shape[2:]]
    assert any(torch.equal(value, weights[key].sum(1, keepdim=True)) for value in folded)
