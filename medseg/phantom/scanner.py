"""The phantom's scanner: a reconstruction kernel, partial-volume blur, noise with a kernel-dependent grain and a
circular reconstruction field of view (:func:`draw_scanner`, :func:`form_image`), applied to a painted HU volume.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medseg.phantom.geometry import CaseGeometry

#: Lowest/highest CT number stored (the usual 12-bit CT range).
HU_MIN, HU_MAX = -1024, 3071

def _gaussian_weights(sigma: float) -> np.ndarray:
    """The normalised 1D Gaussian kernel scipy.ndimage uses (truncated at 4 sigma)."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (x / sigma) ** 2)
    return weights / weights.sum()


@dataclass(frozen=True)
class Scanner:
    """How one case was reconstructed (drawn per case by :func:`draw_scanner`).

    Attributes:
        noise_sd: image noise standard deviation in HU (about 6 for a smooth standard-dose 5 mm image, 25 and more
            for a low-dose or thin-slice one).
        blur_mm: in-plane Gaussian sigma (mm) of the reconstruction kernel and partial volume (soft kernels blur
            more).
        blur_z: Gaussian sigma along z in voxels (slice profile).
        grain: in-plane correlation of the noise (Gaussian sigma in voxels; coarser grain with soft kernels).
    """

    noise_sd: float = 15.0
    blur_mm: float = 0.75
    blur_z: float = 0.6
    grain: float = 0.6


def draw_scanner(rng: np.random.Generator) -> Scanner:
    """Reconstruction settings of one case, varying as they do between clinical scans."""
    softness = float(rng.uniform(0.0, 1.0))  # 0: sharp kernel, 1: soft kernel
    return Scanner(noise_sd=float(rng.uniform(6.0, 26.0)), blur_mm=0.5 + 1.0 * softness,
                   blur_z=float(rng.uniform(0.45, 0.8)), grain=0.5 + 0.5 * softness)


def form_image(hu: np.ndarray, geometry: CaseGeometry, rng: np.random.Generator, noise_sd: float,
               scanner: "Scanner | None" = None) -> np.ndarray:
    """Turn painted CT numbers into a CT-like image.

    Partial-volume and kernel blur: Gaussian, sigma max(0.5 voxel, ``scanner.blur_mm``) in-plane and
    ``scanner.blur_z`` voxel along z (the slices are thick). Then noise: Gaussian, correlated in-plane (sigma
    ``scanner.grain`` voxel), with standard deviation ``noise_sd`` HU. Outside the circular reconstruction field of
    view the value is -1024.

    Args:
        hu: float32 noise-free CT numbers on the painting grid (x, y, z); not modified.
        geometry: the grid's spacing.
        rng: noise generator.
        noise_sd: noise standard deviation in HU.
        scanner: blur and grain (default: :class:`Scanner`'s defaults; its ``noise_sd`` is not used).

    Returns:
        int16 CT numbers clipped to -1024 .. 3071.
    """
    from scipy.ndimage import gaussian_filter

    scanner = scanner or Scanner()
    dx, _, _ = geometry.spacing
    sigma_inplane = max(0.5, scanner.blur_mm / dx)
    image = gaussian_filter(hu, (sigma_inplane, sigma_inplane, scanner.blur_z), mode="nearest")
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    gaussian_filter(noise, (scanner.grain, scanner.grain, 0.0), output=noise, mode="nearest")
    gain = float(np.sum(_gaussian_weights(scanner.grain) ** 2))  # variance kept per axis
    noise *= np.float32(noise_sd / math.sqrt(gain * gain))
    image += noise
    del noise
    n = geometry.shape[0]
    radius = 0.5 * n
    centre = 0.5 * (n - 1)
    i = np.arange(n, dtype=np.float32) - centre
    outside = (i[:, None] ** 2 + i[None, :] ** 2) > radius ** 2
    image[outside] = HU_MIN
    np.clip(image, HU_MIN, HU_MAX, out=image)
    return np.rint(image).astype(np.int16)


