"""Spacing-aware input (medseg.data.spacing): resampling, crops, tiles, inference back onto the input grid."""
import numpy as np
import pytest
import torch

from medseg.data.spacing import (crop_offsets, fit_to_input, median_inplane_spacing, resample, resampled_size,
                                 sliding_window_probabilities, tile_starts, to_native)
from medseg.data.transforms import PreprocessingParams
from medseg.errors import MedsegError
from medseg.labels import SYNAPSE8

torch.set_num_threads(1)


class PointwiseModel(torch.nn.Module):
    """Logits that depend only on each pixel's value: class 1 where the windowed value is above 0.5."""

    num_classes = 9

    def forward(self, x):
        logits = torch.full((x.shape[0], self.num_classes) + tuple(x.shape[-2:]), -20.0)
        logits[:, 0] = 0.0
        logits[:, 1] = 40.0 * (x[:, 0] - 0.5)
        return logits


def _pointwise_probabilities(images):
    return torch.softmax(PointwiseModel()(images), dim=1)


def test_resampled_size_keeps_the_extent_in_mm():
    assert resampled_size((512, 400), (0.8, 1.0), 2.0) == (205, 200)
    assert resampled_size((3, 3), (0.1, 0.1), 5.0) == (1, 1)
    with pytest.raises(MedsegError, match="target_spacing_mm"):
        resampled_size((10, 10), (1.0, 1.0), 0.0)


@pytest.mark.parametrize("length, size", [(96, 96), (97, 96), (300, 96), (50, 96)])
def test_tiles_cover_every_pixel_with_overlap(length, size):
    starts = tile_starts(length, size)
    assert starts[0] == 0 and (length <= size or starts[-1] == length - size)
    covered = np.zeros(max(length, size), bool)
    for s in starts:
        covered[s:s + size] = True
    assert covered[:length].all()
    assert all(b - a <= int(size * 0.75) for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("shape", [(1, 1, 40, 30), (2, 1, 200, 130), (1, 1, 64, 64)])
def test_sliding_window_of_a_pointwise_model_equals_the_model_on_the_whole_slice(shape):
    images = torch.rand(shape)
    tiled = sliding_window_probabilities(images, 64, _pointwise_probabilities)
    assert tiled.shape == (shape[0], 9) + shape[2:]
    torch.testing.assert_close(tiled, _pointwise_probabilities(images), atol=1e-5, rtol=1e-5)


def test_crop_and_pad_to_the_input():
    image = torch.arange(12.0).reshape(1, 3, 4)
    padded = fit_to_input(image, 6, crop_offsets((3, 4), 6, np.random.default_rng(0)))
    assert padded.shape == (1, 6, 6) and padded.sum() == image.sum() and padded[0, 1, 1] == 0.0
    assert torch.equal(padded[0, 1:4, 1:5], image[0])
    big = torch.arange(100.0).reshape(10, 10)
    offsets = crop_offsets((10, 10), 4, np.random.default_rng(3))
    assert all(0 <= o <= 6 for o in offsets)
    assert torch.equal(fit_to_input(big, 4, offsets), big[offsets[0]:offsets[0] + 4, offsets[1]:offsets[1] + 4])


def test_resample_and_back_are_inverse_grids():
    labels = torch.zeros(1, 1, 20, 20, dtype=torch.int64)
    labels[0, 0, 4:12, 6:16] = 3
    fine = resample(labels, (40, 40), labels=True)
    assert fine.dtype == torch.int64 and int((fine == 3).sum()) == 4 * int((labels == 3).sum())
    one_hot = torch.nn.functional.one_hot(fine[:, 0], 9).permute(0, 3, 1, 2).float()
    assert torch.equal(to_native(one_hot, (20, 20)).argmax(1), labels[:, 0])


def test_median_spacing_of_a_cohort():
    assert median_inplane_spacing([(0.7, 0.7, 5.0), (0.9, 0.9, 2.5), (3.0, 3.0, 3.0)]) == 0.9


def test_preprocessing_stores_spacing_mode_only_when_used():
    assert "input_mode" not in PreprocessingParams().to_dict()
    stored = PreprocessingParams(input_mode="spacing", target_spacing_mm=1.5).to_dict()
    assert PreprocessingParams.from_dict(stored).target_spacing_mm == 1.5
    with pytest.raises(MedsegError, match="only used with input_mode spacing"):
        PreprocessingParams.from_dict({"target_spacing_mm": 1.0})


def _predictor(target_mm):
    from medseg.engine.inference import make_predictor

    params = PreprocessingParams(img_size=32, input_mode="spacing", target_spacing_mm=target_mm)
    return make_predictor(PointwiseModel(), "pointwise", SYNAPSE8, params, "cpu")


def test_inference_maps_labels_back_onto_the_input_grid():
    from medseg.engine.inference import segment_oriented

    hu = np.full((50, 70, 3), -1000.0, np.float32)
    hu[10:30, 20:60, :] = 400.0  # windowed to 1: class 1
    # target = native spacing: resampling is the identity and 6 overlapping tiles give exact labels
    labels, _ = segment_oriented(_predictor(1.0), hu, batch_size=2, spacing_hw=(1.0, 1.0))
    assert np.array_equal(labels, (hu > 0).astype(np.uint8))
    # a coarser target: the same labels on the input's own grid (block edges on whole target pixels)
    labels, probs = segment_oriented(_predictor(2.0), hu, batch_size=2, spacing_hw=(1.0, 1.0), probabilities=True)
    assert labels.shape == hu.shape and probs.shape == hu.shape + (9,)
    assert np.array_equal(labels, (hu > 0).astype(np.uint8))
    with pytest.raises(MedsegError, match="in-plane spacing is needed"):
        segment_oriented(_predictor(2.0), hu)


def test_dataset_gives_organs_their_size_in_mm(tmp_path):
    """A 2 mm slice resampled to 1 mm: the organ covers 4x the pixels, the sample has the model's size."""
    import json

    from medseg.data.dataset import SliceDataset

    case = tmp_path / "cases" / "case0001"
    case.mkdir(parents=True)
    image = np.zeros((2, 20, 24), np.float32)
    label = np.zeros((2, 20, 24), np.uint8)
    image[:, 5:10, 5:15], label[:, 5:10, 5:15] = 0.8, 5
    np.save(case / "image.npy", image)
    np.save(case / "label.npy", label)
    params = PreprocessingParams(input_mode="spacing", target_spacing_mm=1.0).to_dict()
    manifest = {"format": "medseg-slices", "version": 2, "label_set": SYNAPSE8.to_dict(), "preprocessing": params,
                "cases": [{"case_id": "case0001", "split": "train", "has_label": True, "num_slices": 2,
                           "organ_slices": [0, 1], "spacing": [2.0, 2.0, 3.0]}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    dataset = SliceDataset(tmp_path, split="train", img_size=64, augment=False)
    sample = dataset[0]
    assert sample["image"].shape == (1, 64, 64) and sample["label"].shape == (64, 64)
    assert int((sample["label"] == 5).sum()) == 4 * 50
