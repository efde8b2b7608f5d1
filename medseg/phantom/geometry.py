"""Scan geometry of one phantom case (:func:`case_geometry`): field of view, voxel size, slice range and the
voxel storage order of the written files.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.errors import ConfigError
from medseg.phantom.anatomy import Anatomy, make_anatomy
from medseg.phantom.streams import STREAM_GEOMETRY, case_rng

SIZES = ("small", "full", "varied")

#: Scan coverages of ``varied`` cases, taken in turn (case 1 the first, case 6 the first again): from a lower-chest
#: and upper-abdomen series that ends above the kidneys to a lower-abdomen-and-pelvis window without the liver dome.
COVERAGES = ("chest-upper-abdomen", "upper-abdomen", "abdomen", "abdomen-pelvis", "pelvis")

#: Slice spacings (mm) of ``varied`` cases: thin (1-1.5 mm) and thick (2.5-5 mm) reconstructions.
VARIED_SLICE_MM = (1.0, 1.25, 1.5, 2.5, 3.0, 5.0)

#: Most slices of a ``varied`` case: a long coverage at a thin spacing is reconstructed a little thicker instead
#: (up to about 3 GB of memory while painting and forming 512 x 512 x 400 voxels).
VARIED_MAX_SLICES = 400

#: Voxel storage orders (nibabel axis codes of the stored array) and how often each is used.
#: LPS is what most BTCV files use (negative x and y diagonal in the RAS affine).
STORAGE_AXCODES: tuple[tuple[tuple[str, str, str], float], ...] = (
    (("L", "P", "S"), 0.35),
    (("R", "A", "S"), 0.15),
    (("L", "A", "S"), 0.10),
    (("L", "P", "I"), 0.10),
    (("P", "L", "S"), 0.10),
    (("S", "L", "P"), 0.10),
    (("R", "S", "A"), 0.10),
)



def check_size(size: str) -> None:
    """Raise a ConfigError unless ``size`` is one of :data:`SIZES`."""
    if size not in SIZES:
        raise ConfigError(f"size: unknown phantom size {size!r} (choose from {', '.join(SIZES)})")


@dataclass(frozen=True)
class CaseGeometry:
    """Where and how a case is sampled.

    Attributes:
        shape: voxel counts along the painting grid's axes (x: patient right, y: anterior, z: superior).
        spacing: voxel size in mm along those axes.
        first_centre: patient coordinates (mm) of the centre of voxel (0, 0, 0) of the painting grid.
        world_shift: mm added to patient coordinates to get world (scanner) coordinates.
        axcodes: nibabel axis codes of the stored array (e.g. ``("L", "P", "S")``).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    first_centre: tuple[float, float, float]
    world_shift: tuple[float, float, float]
    axcodes: tuple[str, str, str]

    def coordinates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel-centre patient coordinates (mm, float32, increasing) along x, y and z."""
        return tuple((self.first_centre[a] + np.arange(self.shape[a]) * self.spacing[a]).astype(np.float32)
                     for a in range(3))

    def painting_affine(self) -> np.ndarray:
        """4x4 voxel-to-world (RAS+, mm) affine of the painting grid (positive diagonal)."""
        affine = np.diag([*self.spacing, 1.0])
        affine[:3, 3] = np.asarray(self.first_centre) + np.asarray(self.world_shift)
        return affine


def case_geometry(seed: int, case_index: int, size: str, anatomy: "Anatomy | None" = None) -> CaseGeometry:
    """Field of view, voxel size, slice count and storage order of case ``case_index`` of ``seed``.

    ``small``: 128 x 128 pixels of 2.5-3.0 mm, 44-56 slices of at most 5 mm from the lung bases to below the
    kidneys, or (one case in three) from below the dome apex to below the aortic bifurcation. ``full``: 512 x 512
    pixels of 0.6-0.9 mm, 85-198 slices of 2.5, 3 or 5 mm from the lung bases into the pelvis. The field of view
    follows the patient's width (30 mm less to 40 mm more for ``small``). ``varied``: see :func:`varied_extent`.
    """
    check_size(size)
    if anatomy is None:
        anatomy = make_anatomy(seed, case_index)
    rng = case_rng(seed, STREAM_GEOMETRY, case_index)
    codes = [codes for codes, _ in STORAGE_AXCODES]
    weights = np.array([w for _, w in STORAGE_AXCODES])
    axcodes = codes[int(rng.choice(len(codes), p=weights / weights.sum()))]
    shift = (float(rng.uniform(-20, 20)), float(rng.uniform(-20, 20)), float(rng.uniform(-40, 40)))

    body_width = 2.0 * anatomy.skin.half_width_max()
    skin = anatomy.skin
    anterior = skin.centre_y + skin.half_depth_anterior + skin.extra_anterior
    posterior = skin.centre_y - skin.half_depth_posterior - skin.extra_posterior
    centre_x = float(rng.normal(0.0, 5.0))
    centre_y = 0.5 * (anterior + posterior) - 10.0 + float(rng.normal(0.0, 6.0))
    dome = float(anatomy.dome_right[2])

    if size == "small":
        n_inplane = 128
        # A tight field of view: the skin may touch or leave it, as on many clinical reconstructions.
        fov = float(np.clip(body_width + rng.uniform(-30.0, 40.0), 320.0, 384.0))
        n_slices = int(rng.integers(44, 57))
        extent = float(rng.uniform(225.0, 280.0))
        dz = float(np.clip(extent / n_slices, 2.5, 5.0))
        # Usually from the lung bases (0-45 mm above the right dome) down at least to below the kidneys. One case
        # in three is an abdomen-pelvis window of 5 mm slices instead: from below the dome apex (the top of the
        # liver and spleen cut off) to below the aortic bifurcation, so that its last slices hold no organ of the
        # label set (only bowel, iliac vessels and bone).
        organ_low = -58.0 * anatomy.scale
        if rng.uniform() < 1.0 / 3.0:
            dz = 5.0
            z_top = dome - float(rng.uniform(25.0, 60.0))
        else:
            z_top = min(dome + float(rng.uniform(0.0, 45.0)), organ_low + (n_slices - 1) * dz)
        z_first = z_top - (n_slices - 1) * dz
    elif size == "varied":
        n_inplane = 512
        fov, dz, z_top, n_slices = varied_extent(anatomy, case_index, rng)
        z_first = z_top - (n_slices - 1) * dz
    else:
        n_inplane = 512
        fov = float(np.clip(body_width + rng.uniform(20.0, 90.0), 0.6 * 512, 0.9 * 512))
        dz = float(rng.choice([2.5, 3.0, 5.0], p=[0.3, 0.45, 0.25]))
        extent = float(rng.uniform(320.0, 470.0))
        n_slices = int(np.clip(round(extent / dz), 85, 198))
        z_top = dome + float(rng.uniform(10.0, 50.0))
        z_first = z_top - (n_slices - 1) * dz
    dx = fov / n_inplane
    first = (centre_x - 0.5 * (n_inplane - 1) * dx, centre_y - 0.5 * (n_inplane - 1) * dx, z_first)
    return CaseGeometry(shape=(n_inplane, n_inplane, n_slices), spacing=(dx, dx, dz), first_centre=first,
                        world_shift=shift, axcodes=tuple(axcodes))


def coverage_of(case_index: int) -> str:
    """The scan coverage of ``varied`` case ``case_index`` (1-based): :data:`COVERAGES` in turn."""
    return COVERAGES[(case_index - 1) % len(COVERAGES)]


def _organ_heights(anatomy: Anatomy, keys: tuple[str, ...], low: float, high: float) -> tuple[float, float]:
    """Lowest and highest z (mm) of the organs ``keys`` the patient has; ``(low, high)`` without any."""
    boxes = [anatomy.organs[key].bounds() for key in keys if key in anatomy.organs]
    if not boxes:
        return low, high
    return min(float(lo[2]) for lo, _ in boxes), max(float(hi[2]) for _, hi in boxes)


def varied_extent(anatomy: Anatomy, case_index: int, rng: np.random.Generator) -> tuple[float, float, float, int]:
    """Field of view, slice spacing, top slice and slice count of a ``varied`` case.

    What clinical abdominal CT varies, drawn per case: a 512 x 512 matrix over a field of view from tight (40 mm
    narrower than the body: skin and arms cut off) to wide (500 mm), that is 0.6-1.0 mm pixels; thin (1-1.5 mm) or
    thick (2.5-5 mm) slices, a thin spacing widened just enough that the coverage fits in
    :data:`VARIED_MAX_SLICES` slices (a long thin scan may get 1.05-1.6 mm); and the coverage of
    :func:`coverage_of`:

    - ``chest-upper-abdomen``: 40-100 mm above the right dome down to 5-30 mm above the kidneys (no kidney in it);
    - ``upper-abdomen``: from the lung bases down to about the kidneys' middle;
    - ``abdomen``: from the lung bases to 10-40 mm below the kidneys;
    - ``abdomen-pelvis``: from the lung bases to below the bladder;
    - ``pelvis``: from 25-60 mm below the dome apex (the top of the liver cut off, in most patients the spleen's
      too) to below the bladder.

    Returns:
        ``(fov_mm, slice_mm, z_top_mm, n_slices)``; z in patient mm (superior positive), at most
        :data:`VARIED_MAX_SLICES` slices.
    """
    s = anatomy.scale
    dome = float(anatomy.dome_right[2])
    body_width = 2.0 * anatomy.skin.half_width_max()
    fov = float(np.clip(rng.uniform(body_width - 40.0, 500.0), 0.6 * 512, 1.0 * 512))
    dz = float(rng.choice(VARIED_SLICE_MM))
    kidney_low, kidney_high = _organ_heights(anatomy, ("kidney_left", "kidney_right"), -55.0 * s, 65.0 * s)
    bladder_low = float(anatomy.extras["bladder"].bounds()[0][2])
    coverage = coverage_of(case_index)
    if coverage == "chest-upper-abdomen":
        top, bottom = dome + rng.uniform(40.0, 100.0), kidney_high + rng.uniform(5.0, 30.0)
    elif coverage == "upper-abdomen":
        top, bottom = dome + rng.uniform(0.0, 30.0), 0.5 * (kidney_low + kidney_high) + rng.uniform(-15.0, 15.0)
    elif coverage == "abdomen":
        top, bottom = dome + rng.uniform(0.0, 45.0), kidney_low - rng.uniform(10.0, 40.0)
    elif coverage == "abdomen-pelvis":
        top, bottom = dome + rng.uniform(10.0, 50.0), bladder_low - rng.uniform(0.0, 20.0)
    else:
        top, bottom = dome - rng.uniform(25.0, 60.0), bladder_low - rng.uniform(0.0, 20.0)
    extent = float(top - bottom)
    dz = max(dz, extent / (VARIED_MAX_SLICES - 1))
    n_slices = int(round(extent / dz)) + 1
    return fov, dz, float(top), n_slices
