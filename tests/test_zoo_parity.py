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
from zoo_reference import ZOO, assert_close, errors, official_shapes, official_weights, parity_io

pytestmark = pytest.mark.usefixtures("single_thread")


def _load_official(model, family: str, layout: str) -> None:
    state = convert_official(family, official_weights(ZOO / f"{layout}_state_dict.tsv"), model)
    model.load_state_dict(state, strict=True)
    model.eval()


def _training_outputs(model, x):
    """The auxiliary outputs: training-mode forward with BatchNorm and dropout in eval mode (as the fixture)."""
    model.train()
    for module in model.modules():
        if isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.Dropout, torch.nn.Dropout2d)):
            module.eval()
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
