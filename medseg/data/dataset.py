"""Torch datasets over a prepared slice cache.

:class:`SliceDataset` yields one axial slice at a time for training: ``image`` float32 ``(1, S, S)`` in [0, 1],
``label`` int64 ``(S, S)``, where ``S`` is the model input size, plus ``case_id`` and ``slice_index``. Slices are
read from memory-mapped ``.npy`` stacks, so a data-loader worker touches only the slices it serves; a cache that
stores HU (int16) is windowed to [0, 1] as each slice is read, before augmentation, giving the float32 values a
cache that stored them windowed gives (:func:`medseg.data.slice_cache.load_case_arrays`).

Augmentation randomness is a pure function of ``(seed, epoch, index)``: call :meth:`SliceDataset.set_epoch` at the
start of every epoch. The same run then draws the same augmentations whatever the number of workers, and a resumed
run continues exactly where an uninterrupted one would be.

A cache prepared with ``input_mode: spacing`` (:mod:`medseg.data.spacing`) gives each slice resampled to the
cache's ``target_spacing_mm`` and cropped (at a random position drawn from the sample's seed) or padded to
``S x S`` before the augmentation, which then keeps that size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from medseg.data.domain_randomisation import DomainRandomisationd
from medseg.data.slice_cache import MANIFEST, load_case_arrays, load_manifest
from medseg.data.spacing import crop_offsets, fit_to_input, resample, resampled_size
from medseg.data.transforms import (AUGMENTATION_MODES, IMAGE, LABEL, PaperAugmentd,
                                    ResizeSliced)
from medseg.errors import ConfigError, InputError
from medseg.labels import LabelSet
from medseg.preprocessing import PreprocessingParams


class SliceDataset(Dataset):
    """Axial slices of the prepared cases of one split.

    Args:
        prepared_dir: slice cache folder written by ``medseg prepare``.
        split: ``train``, ``test`` or ``all``; or an explicit list of case ids.
        img_size: model input size in pixels (slices are resized to ``img_size x img_size``).
        augment: apply the TransUNet augmentation (training) or only resize (evaluation).
        augmentation: its resampling mode, ``fused`` (one torch resampling, fast) or ``paper`` (the reference's
            rotate/zoom steps, identical arrays); see :class:`medseg.data.transforms.PaperAugmentd`.
        drop_empty: keep only slices that hold an organ.
        seed: base seed of the augmentation draws.
        image_interpolation: ``bicubic`` (paper) or ``bilinear``.
        domain_randomisation: with ``augment``, also vary intensity, contrast, noise, blur and scale
            (:mod:`medseg.data.domain_randomisation`).
    """

    def __init__(self, prepared_dir, split="train", img_size: int = 224, augment: bool = True,
                 drop_empty: bool = False, seed: int = 1234, image_interpolation: str = "bicubic",
                 augmentation: str = "fused", domain_randomisation: bool = False):
        self.prepared_dir = Path(prepared_dir)
        self.manifest = load_manifest(self.prepared_dir)
        self.label_set = LabelSet.from_dict(self.manifest["label_set"])
        self.img_size = int(img_size)
        self.seed = int(seed)
        self.epoch = 0
        if isinstance(split, str):
            if split not in ("train", "test", "all"):
                raise ConfigError(f"split: expected train, test or all, got {split!r}")
            entries = [e for e in self.manifest["cases"] if split == "all" or e["split"] == split]
        else:
            wanted = set(split)
            entries = [e for e in self.manifest["cases"] if e["case_id"] in wanted]
        entries = [e for e in entries if e.get("has_label", True)]
        if not entries:
            raise InputError(f"{self.prepared_dir}: no labelled cases in split {split!r}")
        self.entries = entries
        self.case_ids = [e["case_id"] for e in entries]
        self.preprocessing = PreprocessingParams.from_dict(self.manifest.get("preprocessing"),
                                                           f"{self.prepared_dir / MANIFEST}: preprocessing")
        self.image_interpolation = image_interpolation
        self.spacings = [tuple(float(s) for s in e["spacing"][:2]) for e in entries]  # in-plane mm, rows/columns
        self.index: list[tuple[int, int]] = []
        for case_number, entry in enumerate(entries):
            slices = entry["organ_slices"] if drop_empty else range(entry["num_slices"])
            self.index.extend((case_number, int(k)) for k in slices)
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if augmentation not in AUGMENTATION_MODES:
            raise ConfigError(f"augmentation: expected one of {', '.join(AUGMENTATION_MODES)}, got {augmentation!r}")
        if augment:
            self.transform = PaperAugmentd(self.img_size, image_interpolation, mode=augmentation)
        else:
            self.transform = ResizeSliced(self.img_size, image_interpolation)
        if augment and domain_randomisation:
            from monai.transforms import Compose

            self.transform = Compose([self.transform, DomainRandomisationd()])

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call before iterating an epoch)."""
        self.epoch = int(epoch)

    def _case(self, case_number: int) -> tuple[np.ndarray, np.ndarray]:
        if case_number not in self._arrays:
            self._arrays[case_number] = load_case_arrays(self.prepared_dir, self.case_ids[case_number], mmap=True,
                                                         entry=self.entries[case_number])
        return self._arrays[case_number]

    def sample_seed(self, index: int) -> int:
        """The augmentation seed of sample ``index`` in the current epoch."""
        return (self.seed * 1_000_003 + self.epoch * 7_919 * len(self) + index) % (2**63 - 1)

    def __getitem__(self, index: int) -> dict:
        case_number, k = self.index[index]
        image, label = self._case(case_number)
        sample = {
            IMAGE: torch.from_numpy(np.array(image[k], dtype=np.float32))[None],
            LABEL: torch.from_numpy(np.array(label[k], dtype=np.int64)),
            "seed": self.sample_seed(index),
        }
        if self.preprocessing.input_mode == "spacing":
            sample.update(self.spacing_input(sample[IMAGE], sample[LABEL], self.spacings[case_number], sample["seed"]))
        sample = self.transform(sample)
        sample["case_id"] = self.case_ids[case_number]
        sample["slice_index"] = k
        return sample

    def spacing_input(self, image: torch.Tensor, label: torch.Tensor, spacing_hw, seed: int) -> dict:
        """One slice (``(1, H, W)`` image, ``(H, W)`` label) resampled to the target spacing and cropped or padded
        to the model size (:mod:`medseg.data.spacing`); the crop position comes from ``seed``."""
        size_hw = resampled_size(image.shape[-2:], spacing_hw, self.preprocessing.target_spacing_mm)
        image = resample(image[None], size_hw, interpolation=self.image_interpolation)[0]
        label = resample(label[None, None], size_hw, labels=True)[0, 0]
        offsets = crop_offsets(size_hw, self.img_size, np.random.default_rng([int(seed), 104729]))
        return {IMAGE: fit_to_input(image, self.img_size, offsets), LABEL: fit_to_input(label, self.img_size, offsets)}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arrays"] = {}  # memory maps are reopened in each worker process
        return state
