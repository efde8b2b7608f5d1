"""Domain randomisation of training slices: scanner-like variation of intensity, contrast, noise, blur and scale.

A model trained on one kind of image (the phantom cohort, or one hospital's scanner) learns its exact CT numbers,
noise and sharpness. Domain randomisation varies those per training slice so that the model has to rely on shape
and context instead. It is a training option (``domain_randomisation: true`` in a recipe or pipeline, off by
default) applied after the geometric augmentation and the resize to the model size, on the windowed image
(values in [0, 1], i.e. HU -125..275 with the default window), in this order:

======================  ======  ==========================================================================
step (MONAI)            prob.   what it does
======================  ======  ==========================================================================
RandAffined             0.5     anisotropic zoom, each in-plane axis by its own factor in [0.85, 1.15]
                                (field-of-view and pixel-size differences; label resampled nearest)
RandTissueContrastd     0.5     a random offset per organ class, U(-0.12, 0.12) each (about +-50 HU; the
                                organs' enhancement differs between phases and patients), softened at the
                                edges; medseg's own step, in the spirit of SynthSeg's random tissue contrasts
RandGaussianSmoothd     0.3     Gaussian blur, sigma 0.25-1.0 pixel per axis (soft reconstruction kernels)
RandAdjustContrastd     0.5     gamma 0.7-1.5 (changes the contrast *between* tissues, e.g. enhancement)
RandScaleIntensityd     0.5     scale by 1 + U(-0.15, 0.15) (about +-50 HU at the top of the window)
RandShiftIntensityd     0.5     shift by U(-0.08, 0.08) (about +-30 HU: calibration, contrast phase)
RandGaussianNoised      0.5     Gaussian noise, sd up to 0.04 (about 16 HU)
======================  ======================================================================================

Values are clipped back to [0, 1]. The draws come from the slice's ``seed`` (see
:class:`medseg.data.dataset.SliceDataset`), so a run is reproducible and a resumed run draws the same.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (Compose, MapTransform, RandAdjustContrastd, RandAffined, RandGaussianNoised,
                              RandGaussianSmoothd, RandomizableTransform, RandScaleIntensityd,
                              RandShiftIntensityd)

from medseg.data.transforms import IMAGE, LABEL


class RandTissueContrastd(RandomizableTransform, MapTransform):
    """With probability ``prob``, add to the image a random offset per organ class of the label.

    Each foreground class gets its own offset, uniform in ``[-max_offset, max_offset]`` (image units, [0, 1] =
    the HU window); the background is unchanged. The offset map is averaged over 3 x 3 pixels, so that the
    change is as soft at the organ's edge as the image itself and does not draw the label outline.

    Input: ``image`` float (1, H, W), ``label`` float (1, H, W) of class numbers.
    """

    def __init__(self, prob: float = 0.5, max_offset: float = 0.12):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, [IMAGE, LABEL])
        self.max_offset = float(max_offset)

    def __call__(self, data):
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        label = torch.as_tensor(d[LABEL]).long()
        classes = int(label.max()) + 1
        offsets = torch.from_numpy(self.R.uniform(-self.max_offset, self.max_offset, classes).astype(np.float32))
        offsets[0] = 0.0
        offset_map = F.avg_pool2d(offsets[label].float()[None], 3, stride=1, padding=1,
                                  count_include_pad=False)[0]
        d[IMAGE] = torch.as_tensor(d[IMAGE]) + offset_map
        return d


def domain_randomisation_steps() -> Compose:
    """The MONAI steps of the table in the module docstring, on ``image`` (1, H, W) and ``label`` (1, H, W)."""
    return Compose([
        RandAffined(keys=[IMAGE, LABEL], prob=0.5, scale_range=((-0.15, 0.15), (-0.15, 0.15)),
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandTissueContrastd(prob=0.5, max_offset=0.12),
        RandGaussianSmoothd(keys=IMAGE, prob=0.3, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0)),
        RandAdjustContrastd(keys=IMAGE, prob=0.5, gamma=(0.7, 1.5)),
        RandScaleIntensityd(keys=IMAGE, prob=0.5, factors=0.15),
        RandShiftIntensityd(keys=IMAGE, prob=0.5, offsets=0.08),
        RandGaussianNoised(keys=IMAGE, prob=0.5, mean=0.0, std=0.04),
    ])


class DomainRandomisationd(MapTransform):
    """Apply :func:`domain_randomisation_steps` to a resized training slice.

    Input and output: ``image`` float (1, H, W) in [0, 1], ``label`` int64 (H, W) (optional), ``seed`` int.
    """

    def __init__(self):
        super().__init__([IMAGE, LABEL], allow_missing_keys=True)
        self.steps = domain_randomisation_steps()

    def __call__(self, data):
        d = dict(data)
        self.steps.set_random_state(seed=(int(d["seed"]) * 2_654_435_761 + 97) % (2 ** 32))
        sample = {IMAGE: d[IMAGE].float()}
        has_label = d.get(LABEL) is not None
        sample[LABEL] = d[LABEL][None].float() if has_label else torch.zeros_like(sample[IMAGE])
        # Plain tensors, no MetaTensor bookkeeping: ten times faster for a 2D slice (the slice carries no affine).
        # The flag is global to the process; it is restored at once.
        tracking = get_track_meta()
        set_track_meta(False)
        try:
            out = self.steps(sample)
        finally:
            set_track_meta(tracking)
        d[IMAGE] = torch.as_tensor(out[IMAGE]).float().clamp_(0.0, 1.0)
        if has_label:
            d[LABEL] = torch.as_tensor(out[LABEL])[0].round().long()
        return d
