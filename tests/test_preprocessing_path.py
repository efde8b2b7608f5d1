"""One preprocessing path: what inference feeds the model equals what ``medseg prepare`` caches (real CT)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from helpers import DATA_DIR
from medseg.data.slice_cache import load_case_arrays, prepare_cohort
from medseg.engine import inference
from medseg.engine.inference import make_predictor, predict_volume
from medseg.io import read_volume
from medseg.preprocessing import PreprocessingParams, hu_window

REAL_CT = DATA_DIR / "realct"  # TotalSegmentator's example CT (see its README for the attribution)


class _Empty(nn.Module):
    """Predicts background everywhere (the test looks only at the inputs)."""

    def forward(self, x):
        return torch.zeros(x.shape[0], 9, x.shape[2], x.shape[3])


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    out = tmp_path_factory.mktemp("realct_cache")
    prepare_cohort(REAL_CT, out, split="all-test", progress=False)
    image, _ = load_case_arrays(out, "case0001", mmap=False)
    return image  # (D, H, W) float32 in [0, 1]


@pytest.mark.parametrize("resize, spied", [("torch", "resize_to_model"), ("scipy", "resize_to_model_scipy")])
def test_predict_feeds_the_model_what_prepare_caches(cached, monkeypatch, resize, spied):
    seen = []
    original = getattr(inference, spied)

    def spy(slices, size, *args, **kwargs):
        array = slices.cpu().numpy() if torch.is_tensor(slices) else np.asarray(slices)
        seen.append(array.copy())
        return original(slices, size, *args, **kwargs)

    monkeypatch.setattr(inference, spied, spy)
    predictor = make_predictor(_Empty(), "empty", "synapse8", PreprocessingParams(img_size=32), "cpu")
    labels = predict_volume(REAL_CT / "img" / "img0001.nii.gz", predictor, batch_size=7, resize=resize)
    fed = np.concatenate(seen)  # (D, H, W): the windowed, oriented slices, before resizing to the model size
    assert fed.dtype == np.float32 and fed.shape == cached.shape
    assert np.array_equal(fed, cached)
    assert labels.shape == (122, 101, 30)


def test_hu_window_is_the_same_for_numpy_and_torch():
    hu = read_volume(REAL_CT / "img" / "img0001.nii.gz").array
    params = PreprocessingParams()
    as_numpy = hu_window(hu, params.hu_min, params.hu_max)
    as_torch = hu_window(torch.from_numpy(np.array(hu)), params.hu_min, params.hu_max).numpy()
    assert np.array_equal(as_numpy, as_torch) and as_numpy.min() == 0.0 and as_numpy.max() == 1.0


def test_volume_in_another_voxel_order_gives_the_cached_slices(cached):
    """Inference orients with the prepare chain's step: a flipped/permuted copy of the file feeds the same slices."""
    volume = read_volume(REAL_CT / "img" / "img0001.nii.gz")
    flipped = volume.array[::-1].transpose(2, 0, 1)
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, volume.shape[0] - 1
    affine = (volume.affine @ flip)[:, [2, 0, 1, 3]]
    oriented = inference.orient_view(flipped, affine)
    window = PreprocessingParams()
    assert np.array_equal(np.moveaxis(hu_window(oriented, window.hu_min, window.hu_max), -1, 0), cached)
