"""The synthetic phantom cohort: Synapse-like abdominal CT volumes with BTCV labels, made from a seed.

``medseg synth OUT_DIR --cases N --seed S --size small|full`` (or :func:`write_cohort`) writes the raw BTCV layout::

    OUT_DIR/img/img0001.nii.gz      int16 CT numbers (HU), -1024 .. 3071
    OUT_DIR/label/label0001.nii.gz  uint8 raw BTCV label values 0..13 (numbering of medseg.labels.BTCV_ORGANS)
    OUT_DIR/phantom.json            generator version, seed, size and, per case, shape, spacing, axis codes,
                                    omitted organs, contrast phase, oral contrast, noise and blur
    OUT_DIR/preview.png             a montage of a few cases with the label overlay

How a case is made
------------------
1. **Anatomy** (:func:`make_anatomy`). Every structure is a smooth shape placed in *patient coordinates*: millimetres
   along nibabel's RAS+ axes, ``x`` towards the patient's right, ``y`` towards anterior, ``z`` towards superior.
   The origin is on the midline at the centre of the vertebral body, at about the level of the renal hila (L1/L2).
   A shape is an ellipsoid with a random low-order radial deformation (:class:`Blob`), a tube along a polyline
   (:class:`Tube`), or a union of those (:class:`Union`). Each has a *level function*: below 1 inside, 1 on the
   surface, growing outwards. Sizes and positions vary per case (a patient scale of 0.9-1.15, per-organ factors of
   about +-10 %); organ volumes match those of adults of different build (liver about 1.1-2.4 l, spleen 100-380 ml,
   kidneys 100-250 ml each, pancreas 30-80 ml, gallbladder 25-50 ml). Neighbours are anatomical: the liver's
   right lobe runs down lateral and anterior to the right kidney and the IVC lies in its posterior surface; the
   kidneys sit at L1-L3 behind the bowel; the pancreas runs along the splenic vein; the gallbladder lies under
   the liver; the spleen lies against the ribs; the ribs are separate arcs. Contents: small-bowel loops (fluid, gas, positive oral contrast in one
   case in four, collapsed loops), colon with stool and a varying amount of gas, stomach with fluid or food and an
   air-fluid level, mesenteric fat, the portal, splenic, mesenteric, renal and iliac vessels, fatty lobules in the
   pancreas of some patients, and a fine soft-tissue texture. Some cases miss the gallbladder or one kidney
   (:func:`omitted_organs`).
   **Contrast phase** (:func:`contrast_phase`): unenhanced, arterial or portal venous, every phase in every block of
   five cases; each tissue's CT number is drawn from the published range for that phase
   (:mod:`medseg.data.phantom_contrast`).
2. **Scan geometry** (:func:`case_geometry`): field of view (fitted to the patient, the skin sometimes cut off as
   on clinical reconstructions), voxel size, number of slices and their range (from the lung bases, or an
   abdomen-pelvis window whose last slices hold no labelled organ), and how the voxels are stored (axis order and
   flips of the affine, e.g. LPS like most BTCV files, RAS, slice axis flipped or first).
3. **Rendering** (:func:`render_anatomy`): the level functions are evaluated at the voxel centres of an axis-aligned
   grid in patient coordinates, each only inside its shape's bounding box, and painted in a fixed priority order
   (later organs win; some carve a thin fat plane around themselves). The label stays crisp. The image then gets
   the scanner's reconstruction (:func:`draw_scanner`, :func:`form_image`): a kernel and partial-volume blur of
   0.5-1.5 mm, noise of 6-26 HU with a kernel-dependent grain, and a circular reconstruction field of view.
4. **Storage**: the grid is painted in RAS voxel order; the arrays are then permuted/flipped into the case's stored
   voxel order with :func:`medseg.data.orientation.reorient`, which also gives the stored affine (plus a small
   random origin shift). The affines are exact axis permutations and flips, so this *is* the world-placed anatomy
   sampled through each case's affine, and medseg's orientation step gives every case the same anatomical view
   (liver on the patient's right, spleen on the left, aorta left-anterior of the spine).

Sizes
-----
``small``: 128 x 128 in-plane with 2.5-3.0 mm pixels (a 320-384 mm field of view: coarser than real CT so that 128
pixels cover the abdomen) and 44-56 slices of 4-5 mm; about a second per case. ``full``: Synapse-sized, 512 x 512
with 0.6-0.9 mm pixels and 85-198 slices of 2.5, 3 or 5 mm (from the lung bases down into the pelvis).

Determinism
-----------
Case ``k`` of seed ``s`` depends only on ``(s, k, size)``, never on how many cases are written. The anatomy depends
only on ``(s, k)``, so the small and the full version of a case show the same patient. Random numbers come from
separate numpy streams per purpose (anatomy, scan geometry, noise, omissions, contrast).
"""
from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.data.cohort import discover_cases
from medseg.data.orientation import reorient
from medseg.errors import ConfigError
from medseg.io import Volume, atomic_path, read_json, read_volume, write_json, write_volume
from medseg.data.phantom_contrast import block_phase, draw_ct_numbers
from medseg.labels import BTCV13, BTCV_ORGANS, ORGAN_COLOURS
from medseg.progress import progress_bar
from medseg.visualize import label_overlay

log = logging.getLogger(__name__)

#: Bumped whenever the same (seed, case, size) would give different volumes.
GENERATOR_VERSION = "2"
SIZES = ("small", "full")

#: Raw BTCV label value of each organ key.
LABEL = {key: value for value, (key, _) in BTCV_ORGANS.items()}

#: CT number of air and the lowest/highest value stored (the usual 12-bit CT range).
AIR_HU = -1000.0
HU_MIN, HU_MAX = -1024, 3071

#: Level value used outside a shape's bounding box ("far away").
FAR = 99.0

# Separate random streams, so that e.g. the noise draw never shifts the anatomy.
_STREAM_ANATOMY, _STREAM_GEOMETRY, _STREAM_NOISE, _STREAM_OMISSION, _STREAM_CONTRAST = 1, 2, 3, 4, 5

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


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """A numpy generator for one purpose (``stream``) of one case (or block of cases) of one seed."""
    return np.random.default_rng([int(seed), int(stream), int(index)])


# ----------------------------------------------------------------------------------------------------------------
# Shapes with level functions, in patient coordinates (mm, RAS+).


def _box(lo, hi, xs, ys, zs) -> "tuple[slice, slice, slice] | None":
    """Index slices of the voxels whose centres (``xs``, ``ys``, ``zs``: increasing mm) lie in ``[lo, hi]``."""
    slices = []
    for axis, coords in enumerate((xs, ys, zs)):
        start = int(np.searchsorted(coords, lo[axis], side="left"))
        stop = int(np.searchsorted(coords, hi[axis], side="right"))
        if stop <= start:
            return None
        slices.append(slice(start, stop))
    return tuple(slices)


def _rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """3x3 rotation (degrees): about z (yaw), then y (pitch), then x (roll). Columns are the local axes."""
    a, b, c = np.radians([yaw, pitch, roll])
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rx = np.array([[1, 0, 0], [0, math.cos(c), -math.sin(c)], [0, math.sin(c), math.cos(c)]])
    return rz @ ry @ rx


#: Number of low-order functions of the direction used to deform a Blob (degree 1 to 3).
N_BUMPS = 12


def _direction_functions(u, v, w) -> list:
    """Smooth functions of a unit direction ``(u, v, w)``: the terms of a Blob's radial deformation."""
    return [
        u, v, w,
        u * v, v * w, w * u, u * u - v * v, 2 * w * w - u * u - v * v,
        u * v * w, u * (u * u - 3 * v * v), v * (3 * u * u - v * v), w * (2 * w * w - 3 * u * u - 3 * v * v),
    ]


def _fibonacci_sphere(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` unit directions spread evenly over the sphere, as three coordinate arrays."""
    i = np.arange(n) + 0.5
    w = 1.0 - 2.0 * i / n
    r = np.sqrt(1.0 - w * w)
    angle = np.pi * (1.0 + 5.0 ** 0.5) * i
    return r * np.cos(angle), r * np.sin(angle), w


_SPHERE_DIRECTIONS = _fibonacci_sphere(2000)


@dataclass
class Blob:
    """An ellipsoid with a smooth random radial deformation.

    Attributes:
        centre: (3,) mm, patient coordinates.
        radii: (3,) semi-axes in mm along the local axes.
        rotation: 3x3, columns are the local axes in patient coordinates.
        bumps: (N_BUMPS,) deformation coefficients (relative radius change per direction function).
    """

    centre: np.ndarray
    radii: np.ndarray
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    bumps: np.ndarray = field(default_factory=lambda: np.zeros(N_BUMPS))

    def bounds(self, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Corners (mm) of a box holding every point whose level is below ``scale``.

        The deformed surface is sampled along 2000 directions (it varies slowly with direction) and the box is
        widened by 3 % of the largest radius to be safe.
        """
        u, v, w = _SPHERE_DIRECTIONS
        deform = 1.0 + sum(c * term for c, term in zip(self.bumps, _direction_functions(u, v, w)))
        deform = np.maximum(deform, 0.4)
        local = np.stack([u, v, w], axis=1) * self.radii[None, :] * deform[:, None]   # (n, 3) in local axes
        surface = local @ self.rotation.T                                                # (n, 3) in patient axes
        margin = 0.03 * scale * float(self.radii.max())
        return self.centre + scale * surface.min(axis=0) - margin, self.centre + scale * surface.max(axis=0) + margin

    def level(self, xs, ys, zs, scale: float = 1.0) -> np.ndarray:
        """Level at the grid points ``xs x ys x zs`` (1D mm arrays): the ellipsoidal radius over the local radius."""
        dx = (xs - np.float32(self.centre[0]))[:, None, None]
        dy = (ys - np.float32(self.centre[1]))[None, :, None]
        dz = (zs - np.float32(self.centre[2]))[None, None, :]
        r = self.rotation.astype(np.float32)
        radii = self.radii.astype(np.float32)
        u = (r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz) / radii[0]
        v = (r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz) / radii[1]
        w = (r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz) / radii[2]
        rho = np.sqrt(u * u + v * v + w * w) + np.float32(1e-6)
        if not np.any(self.bumps):
            return rho
        u, v, w = u / rho, v / rho, w / rho
        deform = np.ones_like(rho)
        for coefficient, term in zip(self.bumps, _direction_functions(u, v, w)):
            deform += np.float32(coefficient) * term
        return rho / np.maximum(deform, np.float32(0.4))


@dataclass
class Segment:
    """A cone-capped cylinder from ``a`` to ``b`` (mm) whose radius goes linearly from ``ra`` to ``rb`` (mm)."""

    a: np.ndarray
    b: np.ndarray
    ra: float
    rb: float

    def bounds(self, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Corners (mm) of a box holding every point whose level is below ``scale``."""
        r = max(self.ra, self.rb) * scale
        return np.minimum(self.a, self.b) - r, np.maximum(self.a, self.b) + r

    def level(self, xs, ys, zs, scale: float = 1.0) -> np.ndarray:
        """Distance to the axis divided by the local radius, at the grid points ``xs x ys x zs``."""
        ab = (self.b - self.a).astype(np.float32)
        length2 = max(float(ab @ ab), 1e-6)
        dx = (xs - np.float32(self.a[0]))[:, None, None]
        dy = (ys - np.float32(self.a[1]))[None, :, None]
        dz = (zs - np.float32(self.a[2]))[None, None, :]
        t = np.clip((dx * ab[0] + dy * ab[1] + dz * ab[2]) / np.float32(length2), 0, 1)
        ex, ey, ez = dx - t * ab[0], dy - t * ab[1], dz - t * ab[2]
        distance = np.sqrt(ex * ex + ey * ey + ez * ez)
        radius = np.float32(self.ra) + t * np.float32(self.rb - self.ra)
        return distance / radius


@dataclass
class Union:
    """Several shapes as one: the level is the smallest level of the parts."""

    parts: list

    def bounds(self, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Corners (mm) of a box holding every point whose level is below ``scale``."""
        boxes = [part.bounds(scale) for part in self.parts]
        return np.min([lo for lo, _ in boxes], axis=0), np.max([hi for _, hi in boxes], axis=0)

    def level(self, xs, ys, zs, scale: float = 1.0) -> np.ndarray:
        """Minimum of the parts' levels; each part is evaluated only inside its own box (``scale`` as in bounds)."""
        out = np.full((len(xs), len(ys), len(zs)), FAR, dtype=np.float32)
        for part in self.parts:
            box = _box(*part.bounds(scale), xs, ys, zs)
            if box is None:
                continue
            part_level = part.level(xs[box[0]], ys[box[1]], zs[box[2]], scale)
            np.minimum(out[box], part_level, out=out[box])
        return out


class Tube(Union):
    """A tube along a polyline: ``points`` (n, 3) mm, ``radii`` (n,) mm at those points (one Segment per piece)."""

    def __init__(self, points, radii):
        points = np.asarray(points, dtype=np.float64)
        super().__init__([Segment(points[i], points[i + 1], float(radii[i]), float(radii[i + 1]))
                          for i in range(len(points) - 1)])


@dataclass
class SmoothField:
    """A smooth random field with unit standard deviation on a coarse grid in patient coordinates.

    Attributes:
        values: (nx, ny, nz) float32 on the coarse grid.
        origin: (3,) mm, patient coordinates of ``values[0, 0, 0]``.
        step: grid spacing in mm (the same along x, y, z).
    """

    values: np.ndarray
    origin: np.ndarray
    step: float

    def sample(self, xs, ys, zs) -> np.ndarray:
        """Trilinear samples at the grid points ``xs x ys x zs`` (1D mm arrays), shape (len(xs), len(ys), len(zs))."""
        out = self.values
        for axis, coords in ((2, zs), (1, ys), (0, xs)):
            n = out.shape[axis]
            position = np.clip((np.asarray(coords, np.float64) - self.origin[axis]) / self.step, 0, n - 1.001)
            below = np.floor(position).astype(np.intp)
            weight = (position - below).astype(np.float32)
            shape = [1, 1, 1]
            shape[axis] = -1
            weight = weight.reshape(shape)
            out = np.take(out, below, axis=axis) * (1 - weight) + np.take(out, below + 1, axis=axis) * weight
        return out


#: Box (mm, patient coordinates) covered by the random fields, and their grid step (mm).
_FIELD_LO = (-240.0, -180.0, -380.0)
_FIELD_HI = (240.0, 240.0, 360.0)
_FIELD_STEP = 5.0
#: The small-bowel field is finer and covers only the lower abdomen.
_BOWEL_LO = (-150.0, -70.0, -400.0)
_BOWEL_HI = (150.0, 170.0, 45.0)
_BOWEL_STEP = 3.0


def _smooth_field(rng: np.random.Generator, sigma_mm: float, lo=_FIELD_LO, hi=_FIELD_HI,
                  step: float = _FIELD_STEP) -> SmoothField:
    """White noise on a coarse grid over the box ``lo``..``hi`` (mm, patient coordinates) with ``step`` mm,
    Gaussian-smoothed with ``sigma_mm`` and scaled to unit standard deviation."""
    from scipy.ndimage import gaussian_filter

    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    shape = tuple(int(n) for n in np.ceil((hi - lo) / step) + 1)
    values = gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_mm / step, mode="wrap")
    values /= max(float(values.std()), 1e-6)
    return SmoothField(values=values, origin=lo, step=step)


# ----------------------------------------------------------------------------------------------------------------
# Anatomy: every structure of one patient, in patient coordinates.


@dataclass
class BodyOutline:
    """An axial outline: a superellipse whose half-axes vary slowly along z, plus a fixed extra thickness.

    The cavity outline is the base; the muscle and skin outlines add the wall and the fat thickness (mm) to it.
    All lengths in mm, patient coordinates.
    """

    centre_y: float
    half_width: float
    half_depth_anterior: float
    half_depth_posterior: float
    exponent: float
    wobble: float
    wavelength: float
    phase: float
    extra_lateral: float = 0.0
    extra_anterior: float = 0.0
    extra_posterior: float = 0.0

    def grown(self, lateral: float, anterior: float, posterior: float) -> "BodyOutline":
        """The same outline with ``lateral``/``anterior``/``posterior`` mm added to its half-axes."""
        return BodyOutline(self.centre_y, self.half_width, self.half_depth_anterior, self.half_depth_posterior,
                           self.exponent, self.wobble, self.wavelength, self.phase,
                           self.extra_lateral + lateral, self.extra_anterior + anterior,
                           self.extra_posterior + posterior)

    def size_factor(self, zs: np.ndarray) -> np.ndarray:
        """Relative size of the cross-section at heights ``zs`` (mm): a slow wobble, wider at the lower ribs."""
        flare = 0.05 * np.clip((zs - 60.0) / 100.0, 0.0, 1.0)
        return (1.0 + self.wobble * np.sin(2 * np.pi * zs / self.wavelength + self.phase) + flare).astype(np.float32)

    def inside(self, xs, ys, zs) -> np.ndarray:
        """Boolean (len(xs), len(ys), len(zs)): which grid points lie inside the outline."""
        factor = self.size_factor(zs)[None, :]
        half_width = self.half_width * factor + self.extra_lateral
        dy = (ys - np.float32(self.centre_y))[:, None]
        half_depth = np.where(dy >= 0, self.half_depth_anterior * factor + self.extra_anterior,
                              self.half_depth_posterior * factor + self.extra_posterior)
        term_x = (np.abs(xs)[:, None] / half_width) ** self.exponent          # (nx, nz)
        term_y = (np.abs(dy) / half_depth) ** self.exponent                    # (ny, nz)
        return (term_x[:, None, :] + term_y[None, :, :]) < 1.0

    def half_width_max(self) -> float:
        """Largest half-width (mm) over all heights."""
        return (self.half_width * (1.0 + abs(self.wobble) + 0.05)) + self.extra_lateral


@dataclass
class Anatomy:
    """Everything about one phantom patient, in patient coordinates (mm, RAS+; see the module docstring).

    Attributes:
        scale: overall patient size factor (1 = average).
        cavity, muscle, skin: the body outlines (inside the abdominal wall muscle, outside it, the skin).
        dome_right, dome_left: diaphragm dome apexes (x, y, z) mm; ``dome_drop``: mm (see diaphragm_height).
        spine: vertebral geometry (mm): body half-axes, canal, vertebra period and phase, disc height.
        organs: labelled organ key -> shape (omitted organs are absent).
        extras: unlabelled structures (vessels, bowel, heart, renal sinus, ...) -> shape; ``<kidney>_hilum`` is
            a point (mm) where the renal vein starts.
        hu: CT number (HU) of each tissue for this patient.
        fields: smooth random fields: "bowel" (small-bowel loops), "content" (bowel content, gas), "shape"
            (surface bumpiness).
        omitted: organ keys this patient does not have.
        params: other drawn values: stomach air-fluid level ``stomach_air_y`` (mm), aortic bifurcation height
            ``z_bifurcation`` (mm), ``esophagus_air`` (bool), ``table_gap`` (mm), contrast ``phase``,
            ``stomach_food`` and ``oral_contrast`` (bool), ``pancreas_fat`` (share of fatty lobules),
            ``colon_gas`` (share of the colon lumen), ``texture_hu`` (amplitude of the soft-tissue texture).
    """

    scale: float
    cavity: BodyOutline
    muscle: BodyOutline
    skin: BodyOutline
    dome_right: np.ndarray
    dome_left: np.ndarray
    dome_drop: float
    spine: dict
    organs: dict
    extras: dict
    hu: dict
    fields: dict
    omitted: tuple
    params: dict

    def diaphragm_height(self, xs, ys) -> np.ndarray:
        """Height z (mm) of the diaphragm's upper surface over the grid ``xs x ys``, shape (len(xs), len(ys)).

        Two broad domes (right higher): flat near the apex, falling off with the 4th power of the distance
        (``dome_drop`` mm at 115 mm from the apex), faster towards the posterior costophrenic recesses.
        """
        heights = []
        radius2 = np.float32((115.0 * self.scale) ** 2)
        for apex in (self.dome_right, self.dome_left):
            dx = 1.3 * (xs - np.float32(apex[0]))[:, None]
            dy = (ys - np.float32(apex[1]))[None, :]
            dy = np.where(dy < 0, 1.3 * dy, dy)
            spread = (dx * dx + dy * dy) / radius2
            heights.append(np.float32(apex[2]) - np.float32(self.dome_drop) * spread * spread)
        lowest = np.float32(self.dome_right[2] - 130.0 * self.scale)
        return np.maximum(np.maximum(heights[0], heights[1]), lowest)


def omitted_organs(seed: int, case_index: int) -> tuple[str, ...]:
    """Organs case ``case_index`` of ``seed`` lacks (cholecystectomy, nephrectomy).

    Cases are taken in blocks of five (1-5, 6-10, ...); in each block one case, chosen by the seed, always misses
    the gallbladder or one kidney, so any cohort of five or more cases exercises an empty organ. Every other case
    misses the gallbladder with probability 0.10 and one kidney with probability 0.04: overall about 18 % of the
    cases lack the gallbladder and 13 % a kidney.
    """
    block = (case_index - 1) // 5
    block_rng = _rng(seed, _STREAM_OMISSION, 1_000_000 + block)
    forced_case = block * 5 + 1 + int(block_rng.integers(5))
    forced_organ = str(block_rng.choice(["gallbladder", "gallbladder", "kidney_left", "kidney_right"]))
    if case_index == forced_case:
        return (forced_organ,)
    rng = _rng(seed, _STREAM_OMISSION, case_index)
    draws = rng.uniform(size=3)
    omitted = []
    if draws[0] < 0.10:
        omitted.append("gallbladder")
    if draws[1] < 0.04:
        omitted.append("kidney_left" if draws[2] < 0.5 else "kidney_right")
    return tuple(omitted)


def contrast_phase(seed: int, case_index: int) -> str:
    """Contrast phase of case ``case_index`` of ``seed`` (``non_contrast``, ``arterial`` or ``portal_venous``).

    Cases come in blocks of five (1-5, 6-10, ...) holding every phase (see
    :func:`medseg.data.phantom_contrast.block_phase`).
    """
    block, position = divmod(case_index - 1, 5)
    return block_phase(_rng(seed, _STREAM_CONTRAST, 1_000_000 + block), position,
                       _rng(seed, _STREAM_CONTRAST, 2_000_000 + case_index))


class _Draw:
    """Random draws for one patient: the anatomy stream ``rng`` and the patient's size factor ``s``.

    Every helper consumes ``rng`` in a fixed order, so the steps of :func:`make_anatomy` must run in the order they
    are written there (changing it changes every phantom).
    """

    def __init__(self, rng: np.random.Generator, s: float):
        self.rng = rng
        self.s = s

    def point(self, x, y, z, jitter=4.0):
        """A landmark (mm) for an average patient, scaled to this one and jittered by ``jitter`` mm (sd)."""
        return np.array([x, y, z], dtype=np.float64) * self.s + self.rng.normal(0.0, jitter, 3)

    def size(self):
        """A per-organ size factor."""
        return float(np.clip(self.rng.normal(1.0, 0.06), 0.88, 1.12))

    def blob(self, centre, radii, yaw=0.0, pitch=0.0, roll=0.0, bumpiness=0.04, angle_jitter=6.0):
        """A randomly deformed ellipsoid; ``radii`` already in mm for this patient."""
        rng = self.rng
        rotation = _rotation(yaw + rng.normal(0, angle_jitter), pitch + rng.normal(0, angle_jitter),
                             roll + rng.normal(0, angle_jitter))
        return Blob(np.asarray(centre, dtype=np.float64), np.asarray(radii, dtype=np.float64), rotation,
                    rng.normal(0.0, bumpiness, N_BUMPS))

    def tube(self, points, radii, jitter=3.0):
        """A tube through landmarks of an average patient (mm) with radii for an average patient (mm)."""
        return Tube([self.point(*p, jitter=jitter) for p in points], [r * self.s for r in radii])


def _draw_body(d: _Draw) -> tuple[BodyOutline, BodyOutline, BodyOutline]:
    """The body outlines ``(cavity, muscle, skin)``: the cavity inside the abdominal wall muscle, then the wall,
    then subcutaneous fat."""
    s, rng = d.s, d.rng
    cavity = BodyOutline(
        centre_y=30.0 * s,
        half_width=118.0 * s * rng.normal(1.0, 0.04),
        half_depth_anterior=95.0 * s * rng.normal(1.0, 0.04),
        half_depth_posterior=80.0 * s,
        exponent=float(rng.uniform(2.2, 2.8)),
        wobble=float(rng.uniform(0.02, 0.05)),
        wavelength=float(rng.uniform(250.0, 450.0)),
        phase=float(rng.uniform(0.0, 2 * np.pi)),
    )
    wall = float(rng.uniform(9.0, 15.0))
    fatness = float(rng.uniform(0.0, 1.0))
    muscle = cavity.grown(wall, wall, wall)
    skin = muscle.grown(8.0 + 27.0 * fatness, 8.0 + 37.0 * fatness, 22.0 + 20.0 * fatness)
    return cavity, muscle, skin


def _draw_diaphragm_and_spine(d: _Draw) -> tuple[np.ndarray, np.ndarray, dict, float]:
    """``(dome_right, dome_left, spine, z_bifurcation)``: diaphragm dome apexes (mm), vertebral geometry (mm) and
    the height (mm) of the aortic bifurcation."""
    s, rng = d.s, d.rng
    dome_right = d.point(55.0, 40.0, 150.0, jitter=6.0)
    dome_left = d.point(-55.0, 35.0, 150.0, jitter=4.0)
    dome_left[2] = dome_right[2] - rng.uniform(5.0, 25.0)
    period = 32.0 * s * rng.uniform(0.95, 1.05)
    spine = {
        "body_rx": 22.0 * s, "body_ry": 17.0 * s, "canal_y": -30.0 * s, "canal_r": 9.0 * s,
        "period": period, "phase": float(rng.uniform(0.0, period)), "disc": 6.0 * s,
    }
    z_bifurcation = (-110.0 + rng.normal(0.0, 8.0)) * s
    return dome_right, dome_left, spine, z_bifurcation


def _draw_upper_abdomen(d: _Draw, organs: dict, extras: dict) -> float:
    """Liver (with hepatic veins), gallbladder, stomach, duodenum and spleen into ``organs`` / ``extras``.

    Returns the stomach's air-fluid level ``y`` (mm).
    """
    s, rng, point, size, blob, tube = d.s, d.rng, d.point, d.size, d.blob, d.tube
    # Liver: a big right lobe and an anterior left lobe crossing the midline.
    liver_size = size()
    left_lobe_size = liver_size * rng.uniform(0.8, 1.2)
    organs["liver"] = Union([
        blob(point(58, 40, 85), np.array([66, 78, 82]) * s * liver_size, yaw=0, bumpiness=0.04),
        blob(point(-5, 92, 110), np.array([48, 28, 35]) * s * left_lobe_size, yaw=-10, bumpiness=0.05),
        # Inferior right lobe: runs down lateral and anterior to the right kidney (the kidney, painted later,
        # sits in its renal impression), to about the kidney's lower half; longer in some patients.
        blob(point(78, 22, 8), np.array([34, 44, 48 * rng.uniform(0.8, 1.25)]) * s * liver_size, roll=-10,
             bumpiness=0.05),
    ])
    hepatic_confluence = (20, 28, 128)
    extras["hepatic_veins"] = Union([
        tube([hepatic_confluence, (95, 45, 85)], [6, 3]),
        tube([hepatic_confluence, (45, 85, 100)], [6, 3]),
        tube([hepatic_confluence, (-15, 85, 110)], [5, 2.5]),
        tube([(42, 48, 68), (88, 40, 60)], [6, 3]),
        tube([(42, 48, 68), (5, 72, 88)], [5, 2.5]),
    ])
    organs["gallbladder"] = blob(point(44, 72, 28), np.array([15, 16, 33]) * s * size(), roll=35, bumpiness=0.05)

    # Stomach: fundus under the left dome, body, and an antrum running to the pylorus right of the midline.
    stomach_size = size()
    organs["stomach"] = Union([
        blob(point(-45, 35, 100), np.array([33, 32, 35]) * s * stomach_size, bumpiness=0.05),
        blob(point(-48, 62, 60), np.array([30, 28, 40]) * s * stomach_size, yaw=20, roll=-15, bumpiness=0.05),
        tube([(-35, 78, 35), (-8, 88, 30), (18, 82, 36)], np.array([20, 17, 13]) * stomach_size),
    ])
    stomach_air_y = (62.0 + rng.uniform(0.2, 1.4) * 28.0) * s
    extras["duodenum"] = tube([(18, 82, 36), (48, 62, 30), (56, 42, 5), (50, 40, -22), (10, 48, -30),
                               (-25, 48, -18), (-40, 55, 0)], [12] * 7)

    organs["spleen"] = blob(point(-88, -10, 82), np.array([27, 62, 52]) * s * size(), yaw=33, pitch=-10,
                            bumpiness=0.05)
    return stomach_air_y


def _draw_retroperitoneum(d: _Draw, organs: dict, extras: dict) -> None:
    """Kidneys (with renal sinus and hilum), adrenal glands and pancreas into ``organs`` / ``extras``."""
    s, point, size, blob, tube = d.s, d.point, d.size, d.blob, d.tube
    # Kidneys: hila face antero-medially, upper poles lean medially; a renal sinus (fat + pelvis) at the hilum.
    for key, side, centre in (("kidney_right", 1.0, (64, -8, 5)), ("kidney_left", -1.0, (-64, -6, 20))):
        k_size = size()
        radii = np.array([28, 24, 55]) * s * k_size
        kidney = blob(point(*centre), radii, yaw=-31.0 * side, pitch=-12.0 * side, bumpiness=0.035)
        hilum_direction = np.array([-side, 0.6, 0.0]) / math.hypot(1.0, 0.6)
        organs[key] = kidney
        extras[f"{key}_sinus"] = Blob(kidney.centre + 0.95 * radii[0] * hilum_direction,
                                      np.array([15, 11, 24]) * s * k_size, kidney.rotation)
        extras[f"{key}_hilum"] = kidney.centre + 0.9 * radii[0] * hilum_direction

    organs["adrenal_right"] = blob(point(42, 6, 68), np.array([5, 13, 17]) * s * size(), yaw=45, bumpiness=0.08)
    organs["adrenal_left"] = blob(point(-42, 6, 72), np.array([5, 13, 17]) * s * size(), yaw=-45, bumpiness=0.08)

    organs["pancreas"] = tube([(24, 58, 5), (4, 68, 22), (-30, 62, 32), (-62, 42, 42), (-80, 26, 48)],
                              np.array([15, 10, 11, 10, 7]) * size())


def _draw_vessels(d: _Draw, organs: dict, extras: dict, z_bifurcation: float, heart_z: float) -> None:
    """Great vessels into ``organs`` / ``extras``: aorta and IVC with the iliac vessels (the aorta bifurcates near
    L4 at ``z_bifurcation`` mm), portal/splenic, mesenteric vessels; ``heart_z`` (mm, average patient) is where the
    IVC ends."""
    s, size, tube = d.s, d.size, d.tube
    organs["aorta"] = tube([(-30, 14, 330), (-26, 16, 200), (-16, 24, 140), (-12, 32, 60), (-10, 34, -40),
                            (-6, 34, z_bifurcation / s)], np.array([12.5, 12.5, 12, 11.5, 10.5, 9.5]) * size(),
                           jitter=1.5)
    bottom = z_bifurcation / s
    extras["iliac_arteries"] = Union([
        tube([(-6, 34, bottom), (40 * side, 32, bottom - 70), (65 * side, 45, bottom - 160)], [7, 6.5, 6])
        for side in (1, -1)])
    organs["inferior_vena_cava"] = tube([(18, 28, bottom - 15), (22, 30, -40), (22, 32, 20), (24, 30, 70),
                                         (20, 26, 120), (10, 40, heart_z - 20)],
                                        np.array([10, 11, 12, 12, 13, 14]) * size(), jitter=1.5)
    extras["iliac_veins"] = Union([
        tube([(18, 28, bottom - 15), (42 * side, 22, bottom - 85), (68 * side, 35, bottom - 170)], [8, 7.5, 7])
        for side in (1, -1)])
    organs["portal_splenic_vein"] = Union([
        tube([(-78, 16, 55), (-55, 34, 44), (-25, 48, 34), (5, 50, 26)], [5.5, 5.5, 6, 6.5]),
        tube([(5, 50, 26), (22, 54, 44), (40, 50, 64), (48, 46, 72)], [7, 7, 6.5, 6]),
    ])
    extras["mesenteric_vessels"] = Union([
        tube([(8, 54, 26), (10, 62, -30), (6, 70, -100)], [5, 4.5, 4]),       # superior mesenteric vein
    ])
    extras["mesenteric_arteries"] = Union([
        tube([(-10, 40, 40), (-4, 56, 20), (-2, 64, -40), (0, 72, -100)], [4.5, 4, 3.5, 3]),  # SMA
    ])


def _draw_chest_and_pelvis(d: _Draw, organs: dict, extras: dict, heart_z: float) -> None:
    """Esophagus, mediastinum and heart (at ``heart_z`` mm, average patient), then colon (ascending, transverse,
    descending, sigmoid) and bladder, into ``organs`` / ``extras``."""
    s, point, size, blob, tube = d.s, d.point, d.size, d.blob, d.tube
    organs["esophagus"] = tube([(-2, 28, 330), (-4, 32, 200), (-12, 40, 150), (-28, 52, 122), (-38, 55, 108)],
                               np.array([8.5, 8.5, 8.5, 8.5, 8]) * size(), jitter=1.5)
    extras["mediastinum"] = Union([
        tube([(-2, 28, 330), (-4, 32, 200), (-12, 40, 150)], [20, 20, 20]),
        tube([(-30, 14, 330), (-26, 16, 200), (-16, 24, 140)], [22, 22, 22]),
    ])
    extras["heart"] = blob(point(-15, 72, heart_z), np.array([62, 52, 55]) * s * size(), yaw=-20, bumpiness=0.03)

    extras["colon"] = tube([(95, 25, -120), (98, 30, -30), (92, 40, 15), (75, 70, 28), (35, 105, 8),
                            (-30, 105, 12), (-80, 60, 50), (-100, 20, 20), (-102, 15, -60), (-95, 25, -150),
                            (-50, 60, -220), (0, 50, -260)],
                           [25, 25, 24, 22, 20, 20, 20, 18, 18, 18, 15, 15], jitter=5.0)
    extras["bladder"] = blob(point(0, 70, -290), np.array([45, 38, 35]) * s * size(), bumpiness=0.05)


def _draw_patient_params(rng: np.random.Generator, contrast_rng: np.random.Generator, phase: str,
                         stomach_air_y: float, z_bifurcation: float) -> dict:
    """:attr:`Anatomy.params`: the remaining draws from the anatomy stream ``rng`` (after the smooth fields) and
    the contrast stream ``contrast_rng`` (after the CT numbers)."""
    return {
        "stomach_air_y": stomach_air_y,
        "z_bifurcation": z_bifurcation,
        "esophagus_air": bool(rng.uniform() < 0.4),
        "table_gap": float(rng.uniform(0.0, 15.0)),
        "phase": phase,
        # Arms down beside the body (trauma, elderly patients) in one case in four; otherwise raised out of view.
        "arms_down": bool(contrast_rng.uniform() < 0.25),
        "stomach_food": bool(contrast_rng.uniform() < 0.4),
        "oral_contrast": bool(contrast_rng.uniform() < 0.25),
        # Fatty replacement of the pancreas (in about half of adults, more with age): fraction of lobules that are
        # fat, mostly mild.
        "pancreas_fat": float(contrast_rng.uniform(0.0, 0.7) ** 1.5) if contrast_rng.uniform() < 0.5 else 0.0,
        # Share of the colon lumen that is gas (the rest stool and fluid).
        "colon_gas": float(contrast_rng.uniform(0.05, 0.45)),
        # Amplitude (HU) of the parenchymal texture.
        "texture_hu": float(contrast_rng.uniform(3.0, 10.0)),
    }


def make_anatomy(seed: int, case_index: int) -> Anatomy:
    """Draw the anatomy of case ``case_index`` of ``seed`` (depends on nothing else).

    Positions are written for an average patient (scale 1) in mm, patient coordinates (x right, y anterior,
    z superior; origin at the vertebral body centre at renal-hilum level), then scaled and jittered. The steps
    share one random stream, so their order is part of every phantom's identity.
    """
    rng = _rng(seed, _STREAM_ANATOMY, case_index)
    s = float(rng.uniform(0.9, 1.15))
    d = _Draw(rng, s)
    cavity, muscle, skin = _draw_body(d)
    dome_right, dome_left, spine, z_bifurcation = _draw_diaphragm_and_spine(d)
    organs, extras = {}, {}
    stomach_air_y = _draw_upper_abdomen(d, organs, extras)
    _draw_retroperitoneum(d, organs, extras)
    heart_z = dome_right[2] / s + 45
    _draw_vessels(d, organs, extras, z_bifurcation, heart_z)
    _draw_chest_and_pelvis(d, organs, extras, heart_z)

    omitted = omitted_organs(seed, case_index)
    for key in omitted:
        organs.pop(key, None)

    # CT numbers (HU) for this patient in its contrast phase (medseg.data.phantom_contrast), from its own stream so
    # that the phase never shifts the anatomy.
    contrast_rng = _rng(seed, _STREAM_CONTRAST, case_index)
    phase = contrast_phase(seed, case_index)
    hu = draw_ct_numbers(contrast_rng, phase)
    fields = {
        "bowel": _smooth_field(rng, 5.5, _BOWEL_LO, _BOWEL_HI, _BOWEL_STEP),
        "content": _smooth_field(rng, 6.0),
        "shape": _smooth_field(rng, 8.0),
    }
    params = _draw_patient_params(rng, contrast_rng, phase, stomach_air_y, z_bifurcation)
    return Anatomy(scale=s, cavity=cavity, muscle=muscle, skin=skin, dome_right=dome_right, dome_left=dome_left,
                   dome_drop=90.0 * s, spine=spine, organs=organs, extras=extras,
                   hu={k: float(v) for k, v in hu.items()}, fields=fields, omitted=omitted, params=params)


# ----------------------------------------------------------------------------------------------------------------
# Scan geometry.


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
    follows the patient's width (30 mm less to 40 mm more for ``small``).
    """
    _check_size(size)
    if anatomy is None:
        anatomy = make_anatomy(seed, case_index)
    rng = _rng(seed, _STREAM_GEOMETRY, case_index)
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


# ----------------------------------------------------------------------------------------------------------------
# Rendering: paint HU and labels on the grid, structure by structure.


@dataclass
class Canvas:
    """The arrays being painted, on the painting grid (axes x right, y anterior, z superior).

    Attributes:
        xs, ys, zs: voxel-centre patient coordinates (mm, float32).
        hu: float32 CT numbers.
        label: uint8 raw BTCV labels.
        cavity: inside the abdominal/thoracic wall muscle.
        wall: the wall muscle ring (between the cavity and the subcutaneous fat).
        body: inside the skin.
        bone: bone, discs and spinal canal painted so far (labels never go there).
        reserved: the diaphragmatic crura around the spine (abdominal organs never go there).
        diaphragm: (nx, ny) height of the diaphragm (mm).
    """

    xs: np.ndarray
    ys: np.ndarray
    zs: np.ndarray
    hu: np.ndarray
    label: np.ndarray
    cavity: np.ndarray
    wall: np.ndarray
    body: np.ndarray
    bone: np.ndarray
    reserved: np.ndarray
    diaphragm: np.ndarray

    def coords(self, box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The coordinate vectors of a box of index slices."""
        return self.xs[box[0]], self.ys[box[1]], self.zs[box[2]]

    def below_diaphragm(self, box) -> np.ndarray:
        """Boolean over ``box``: below the diaphragm muscle (abdomen side)."""
        return self.zs[box[2]][None, None, :] < (self.diaphragm[box[0], box[1]] - np.float32(4.0))[:, :, None]

    def evaluate(self, shape, scale: float = 1.0, field: "SmoothField | None" = None, roughness: float = 0.0):
        """``(box, level)`` of ``shape`` over the grid part where its level can be below ``scale``, or None.

        With ``field`` and ``roughness``, ``roughness * field`` is added to the level (a bumpy surface).
        """
        margin = scale + 3.0 * roughness
        box = _box(*shape.bounds(margin), self.xs, self.ys, self.zs)
        if box is None:
            return None
        xs, ys, zs = self.coords(box)
        level = shape.level(xs, ys, zs, margin)
        if field is not None and roughness:
            level += np.float32(roughness) * field.sample(xs, ys, zs)
        return box, level


def _new_canvas(anatomy: Anatomy, geometry: CaseGeometry) -> Canvas:
    """Empty canvas (air) with the body masks computed."""
    xs, ys, zs = geometry.coordinates()
    shape = geometry.shape
    body = anatomy.skin.inside(xs, ys, zs)
    muscle = anatomy.muscle.inside(xs, ys, zs)
    cavity = anatomy.cavity.inside(xs, ys, zs)
    return Canvas(xs=xs, ys=ys, zs=zs, hu=np.full(shape, AIR_HU, dtype=np.float32),
                  label=np.zeros(shape, dtype=np.uint8), cavity=cavity, wall=muscle & ~cavity, body=body,
                  bone=np.zeros(shape, dtype=bool), reserved=np.zeros(shape, dtype=bool),
                  diaphragm=anatomy.diaphragm_height(xs, ys))


def _paint_table(canvas: Canvas, anatomy: Anatomy) -> None:
    """The patient table: a gently curved plate a few mm below the patient's back (unlabelled)."""
    skin = anatomy.skin
    back = skin.centre_y - skin.half_depth_posterior * 1.05 - skin.extra_posterior
    top = back - anatomy.params["table_gap"] + 0.0006 * canvas.xs[:, None] ** 2     # (nx, 1)
    y = canvas.ys[None, :]
    plate = (y < top) & (y > top - 14.0) & (np.abs(canvas.xs)[:, None] < 230.0)
    shell = plate & ((y > top - 2.5) | (y < top - 11.5))
    table = np.where(shell, anatomy.hu["table"], -400.0).astype(np.float32)
    canvas.hu[plate] = table[plate][:, None]


def _paint_arms(canvas: Canvas, anatomy: Anatomy) -> None:
    """Arms down beside the trunk (when ``params["arms_down"]``): an oval of fat around muscle around the humerus
    (above the elbow, about 80 mm below the renal hila) or the two forearm bones (below it), a few mm from the
    skin. Unlabelled; they lie at the edge of (or outside) a small field of view."""
    if not anatomy.params["arms_down"]:
        return
    s = anatomy.scale
    hu = anatomy.hu
    skin = anatomy.skin
    x_arm = skin.half_width_max() + 8.0 + 42.0 * s
    y_arm = skin.centre_y - 10.0 * s
    xs, ys = canvas.xs[:, None], canvas.ys[None, :]
    for side in (1.0, -1.0):
        dx, dy = xs - side * x_arm, ys - y_arm
        outer = (dx / (42.0 * s)) ** 2 + (dy / (50.0 * s)) ** 2 < 1
        muscle = (dx / (32.0 * s)) ** 2 + (dy / (40.0 * s)) ** 2 < 1
        humerus = dx ** 2 + dy ** 2 < (11.0 * s) ** 2
        forearm = ((dx - 9.0 * s) ** 2 + (dy + 6.0 * s) ** 2 < (6.0 * s) ** 2) | (
            (dx + 9.0 * s) ** 2 + (dy - 6.0 * s) ** 2 < (6.0 * s) ** 2)
        for k, z in enumerate(canvas.zs):
            slice_hu = canvas.hu[:, :, k]
            slice_hu[outer] = hu["fat"]
            slice_hu[muscle] = hu["muscle"]
            slice_hu[humerus if z > -80.0 * s else forearm] = hu["cortical_bone"] * 0.8
            canvas.bone[:, :, k] |= humerus if z > -80.0 * s else forearm


def _paint_body(canvas: Canvas, anatomy: Anatomy) -> None:
    """Subcutaneous fat inside the skin, the wall muscle, and visceral fat filling the cavity."""
    canvas.hu[canvas.body] = anatomy.hu["fat"]
    canvas.hu[canvas.wall] = anatomy.hu["muscle"]
    canvas.hu[canvas.cavity] = anatomy.hu["visceral_fat"]


def _paint_bowel(canvas: Canvas, anatomy: Anatomy) -> None:
    """Small bowel loops (a thresholded smooth field), duodenum, colon with stool and gas, and the bladder.

    Small bowel fills the lower abdomen anterior to the retroperitoneum (the kidneys and great vessels).
    """
    s = anatomy.scale
    hu = anatomy.hu
    lo = np.array([-150.0, -60.0, -400.0]) * s
    hi = np.array([150.0, 160.0, 35.0]) * s
    box = _box(lo, hi, canvas.xs, canvas.ys, canvas.zs)
    if box is not None:
        xs, ys, zs = canvas.coords(box)
        # Posterior limit: in front of the great vessels and kidneys, reaching further back in the pelvis.
        limit_upper = (50.0 * s - 0.25 * np.abs(xs))[:, None, None]
        pelvis = np.clip((-120.0 * s - zs) / (80.0 * s), 0.0, 1.0)[None, None, :]
        limit = limit_upper * (1 - pelvis) + np.float32(-10.0 * s) * pelvis
        allowed = canvas.cavity[box] & (ys[None, :, None] > limit) & canvas.below_diaphragm(box)
        bowel = anatomy.fields["bowel"].sample(xs, ys, zs)
        content = anatomy.fields["content"].sample(xs, ys, zs)
        loop = allowed & (bowel > 0.0)
        lumen = allowed & (bowel > 0.45)
        region = canvas.hu[box]
        region[loop] = hu["bowel_wall"]
        if anatomy.params["oral_contrast"]:  # positive oral contrast, unevenly mixed with the bowel fluid
            mixing = np.clip(0.6 + 0.4 * content, 0.0, 1.0)
            fluid = hu["bowel_fluid"] + mixing * (hu["oral_contrast"] - hu["bowel_fluid"])
        else:
            fluid = hu["bowel_fluid"] + 10.0 * content
        fluid[content < -1.0] = hu["bowel_wall"]  # collapsed loops
        fluid[content > 2.0] = hu["gas"]
        region[lumen] = fluid[lumen]
    _paint_hollow_tube(canvas, anatomy, anatomy.extras["duodenum"], wall_level=0.7, gas_threshold=1.5)
    _paint_hollow_tube(canvas, anatomy, anatomy.extras["colon"], wall_level=0.82, gas_threshold=None)
    found = canvas.evaluate(anatomy.extras["bladder"])
    if found is not None:
        box, level = found
        inside = (level < 1) & canvas.cavity[box]
        canvas.hu[box][inside] = hu["urine"]


def _paint_hollow_tube(canvas: Canvas, anatomy: Anatomy, shape, wall_level: float, gas_threshold) -> None:
    """A bowel segment: a wall, and content that is fluid with gas bubbles, or (no threshold) mottled stool."""
    found = canvas.evaluate(shape, field=anatomy.fields["shape"], roughness=0.05)
    if found is None:
        return
    box, level = found
    hu = anatomy.hu
    inside = (level < 1) & canvas.cavity[box] & canvas.below_diaphragm(box)
    lumen = inside & (level < wall_level)
    content = anatomy.fields["content"].sample(*canvas.coords(box))
    region = canvas.hu[box]
    region[inside] = hu["bowel_wall"]
    if gas_threshold is None:
        mottle = np.sin(4.0 * content)  # finer than the field itself: stool mixed with gas
        gas_above = np.float32(math.cos(math.pi * anatomy.params["colon_gas"]))  # that share of the lumen is gas
        stool = np.where(mottle > gas_above, hu["gas"], 25.0 + 25.0 * mottle)
        region[lumen] = stool[lumen]
    else:
        region[lumen] = hu["stomach_fluid"]
        region[lumen & (content > gas_threshold)] = hu["gas"]


def _paint_thorax(canvas: Canvas, anatomy: Anatomy) -> None:
    """Above the diaphragm: the diaphragm muscle, lung bases (air), mediastinal fat and the heart."""
    hu = anatomy.hu
    z = canvas.zs
    k0 = int(np.searchsorted(z, float(canvas.diaphragm.min()) - 1.0))
    if k0 >= len(z):
        return
    box = (slice(None), slice(None), slice(k0, len(z)))
    height = canvas.diaphragm[:, :, None]
    above = z[None, None, k0:] >= height
    cavity = canvas.cavity[box]
    region = canvas.hu[box]
    region[cavity & above] = hu["lung"]
    region[cavity & above & (z[None, None, k0:] < height + 4.0)] = hu["muscle"]
    for key in ("mediastinum", "heart"):
        found = canvas.evaluate(anatomy.extras[key], scale=1.12)
        if found is None:
            continue
        fbox, level = found
        thorax = canvas.cavity[fbox] & ~canvas.below_diaphragm(fbox)
        if key == "mediastinum":
            canvas.hu[fbox][thorax & (level < 1)] = hu["visceral_fat"]
        else:
            canvas.hu[fbox][thorax & (level < 1.12)] = hu["visceral_fat"]  # pericardial fat
            canvas.hu[fbox][thorax & (level < 1)] = hu["myocardium"]
            canvas.hu[fbox][thorax & (level < 0.75)] = hu["blood_pool"]


def _paint_ribs(canvas: Canvas, anatomy: Anatomy) -> None:
    """Ribs: short oblique bone arcs in the wall of the lower chest, descending from back to front."""
    s = anatomy.scale
    dome = float(anatomy.dome_right[2])
    xs, ys = canvas.xs[:, None], canvas.ys[None, :]
    # Angle around the body from the posterior midline (0) to the anterior midline (pi).
    angle = np.abs(np.arctan2(xs, -(ys - np.float32(anatomy.cavity.centre_y))))
    costal_margin = np.interp(angle, [0.0, np.pi / 2, np.pi], [dome - 175 * s, dome - 150 * s, dome - 85 * s])
    away_from_midline = np.where(angle < np.pi / 2, np.abs(xs) > 28 * s, np.abs(xs) > 40 * s)
    k0 = int(np.searchsorted(canvas.zs, float(costal_margin.min())))
    if k0 >= len(canvas.zs):
        return
    z = canvas.zs[None, None, k0:]
    period, thickness, drop = 28.0 * s, 7.0 * s, 150.0 * s
    phase = np.mod(z + drop * (angle / np.pi)[:, :, None] - dome, period)
    rib = (phase < thickness) & (z > costal_margin[:, :, None]) & away_from_midline[:, :, None]
    rib &= canvas.wall[:, :, k0:]
    # Separate ribs: each is interrupted between its costal cartilage and the next rib's angle, so that an axial
    # slice cuts a few short arcs, not a ring. Marrow inside, cortex at the upper and lower edges.
    rib_number = np.floor((z + drop * (angle / np.pi)[:, :, None] - dome) / period)
    gap_centre = np.mod(0.9 + 0.37 * rib_number, 1.0) * np.pi
    rib &= np.abs(angle[:, :, None] - gap_centre) > 0.35
    cortex = rib & ((phase < 1.5 * s) | (phase > thickness - 1.5 * s))
    canvas.hu[:, :, k0:][rib] = anatomy.hu["bone"]
    canvas.hu[:, :, k0:][cortex] = anatomy.hu["cortical_bone"] * 0.75
    canvas.bone[:, :, k0:] |= rib


def _paint_spine_and_back(canvas: Canvas, anatomy: Anatomy) -> None:
    """Back muscles (erector spinae, psoas, quadratus lumborum), the diaphragmatic crura, vertebrae with discs,
    canal and processes, and the iliac wings below the crest. Painted slice by slice inside a box around the
    spine."""
    s = anatomy.scale
    sp = anatomy.spine
    hu = anatomy.hu
    box = _box(np.array([-130 * s, -110 * s, -1e9]), np.array([130 * s, 60 * s, 1e9]), canvas.xs, canvas.ys,
               canvas.zs)
    if box is None:
        return
    xs, ys, _ = canvas.coords(box)
    x, y = xs[:, None], ys[None, :]
    erector = ((np.abs(x) - 36 * s) / (24 * s)) ** 2 + ((y + 52 * s) / (19 * s)) ** 2 < 1
    quadratus = ((np.abs(x) - 62 * s) / (11 * s)) ** 2 + ((y + 40 * s) / (11 * s)) ** 2 < 1
    canal_distance = np.sqrt(x ** 2 + (y - sp["canal_y"]) ** 2)
    canal = canal_distance < sp["canal_r"]
    arch = (canal_distance >= sp["canal_r"]) & (canal_distance < sp["canal_r"] + 7 * s) & (y < -20 * s)
    spinous = (np.abs(x) < 4 * s) & (y < -36 * s) & (y > -72 * s)
    transverse = (np.abs(y + 28 * s) < 3 * s) & (np.abs(x) > 14 * s) & (np.abs(x) < 40 * s)
    # Crura: a muscle band in front of and beside the vertebral body, from L2/L3 up to the hiatus.
    crus_level = np.sqrt((x / (sp["body_rx"] + 12 * s)) ** 2 + (y / (sp["body_ry"] + 14 * s)) ** 2)
    crus = (crus_level < 1) & (y > -8 * s)
    # Iliac wings: thin plates on an arc from near the sacroiliac joint (posterior) to the front of the crest
    # (antero-lateral), concave towards the front and the midline.
    wing_dx, wing_dy = np.abs(x) - 30 * s, y - 40 * s
    wing_angle = np.degrees(np.arctan2(wing_dy, wing_dx))
    wing = (np.abs(np.sqrt(wing_dx ** 2 + wing_dy ** 2) - 85 * s) < 3 * s) & (wing_angle > -75) & (wing_angle < 5)
    z_crest = anatomy.params["z_bifurcation"] - 15 * s
    period, disc = sp["period"], sp["disc"]

    for k, z in enumerate(canvas.zs):
        inside_body = canvas.body[box[0], box[1], k]
        cavity = canvas.cavity[box[0], box[1], k]
        hu_slice = canvas.hu[box[0], box[1], k]
        bone = canvas.bone[box[0], box[1], k]
        hu_slice[erector & inside_body] = hu["muscle"]
        if -30 * s < z < canvas.diaphragm.max():
            hu_slice[crus & cavity] = hu["muscle"]
            canvas.reserved[box[0], box[1], k] |= crus
        if z < 30 * s:
            hu_slice[quadratus & inside_body] = hu["muscle"]
        if z < 40 * s:
            psoas_r = min(22 * s, 0.18 * (40 * s - z))
            psoas_x = min(30 * s + 0.12 * (40 * s - z), 55 * s)
            psoas = ((np.abs(x) - psoas_x) ** 2 + (y - 2 * s) ** 2) < psoas_r ** 2
            hu_slice[psoas & cavity] = hu["muscle"]
        # Vertebral body (cancellous core, cortical rim and end plates) or disc, by height within the period.
        grow = 1.0 + 0.0008 * max(0.0, -z)
        body_level = np.sqrt((x / (sp["body_rx"] * grow)) ** 2 + (y / (sp["body_ry"] * grow)) ** 2)
        phase = (z - sp["phase"]) % period
        in_vertebra = phase < period - disc
        if in_vertebra:
            end_plate = phase < 1.5 or phase > period - disc - 1.5
            vertebra = body_level < 1
            hu_slice[vertebra] = hu["cortical_bone"] if end_plate else hu["bone"]
            hu_slice[vertebra & (body_level > 0.85)] = hu["cortical_bone"]
            bone |= vertebra
        else:
            hu_slice[body_level < 1] = hu["disc"]
            bone |= body_level < 1
        hu_slice[canal] = hu["csf"]
        bone |= canal
        posterior = arch | (spinous if 0.3 * period < phase < 0.85 * period else False)
        if 0.35 * period < phase < 0.6 * period:
            posterior = posterior | transverse
        hu_slice[posterior] = hu["cortical_bone"] * 0.8
        bone |= posterior
        if z_crest - 110 * s < z < z_crest:
            hu_slice[wing] = hu["cortical_bone"] * 0.8
            bone |= wing


def _paint_unlabelled_vessels(canvas: Canvas, anatomy: Anatomy) -> None:
    """Iliac and mesenteric vessels and the renal veins and arteries (not BTCV organs), inside the cavity."""
    hu = anatomy.hu
    s = anatomy.scale
    renal_veins, renal_arteries = [], []
    ivc_targets = {"kidney_right": np.array([22, 32, 8]) * s, "kidney_left": np.array([22, 34, 14]) * s}
    for key in ("kidney_right", "kidney_left"):
        if key in anatomy.organs:
            hilum = anatomy.extras[f"{key}_hilum"]
            via = [np.array([-20, 45, 16]) * s] if key == "kidney_left" else []
            renal_veins.append(Tube([hilum, *via, ivc_targets[key]], [5 * s] * (2 + len(via))))
            # Renal artery: from the side of the aorta, behind the renal vein (the right one behind the IVC).
            origin = np.array([-11.0, 28.0, hilum[2] / s + 12.0]) * s
            behind = np.array([0.0, -6.0, 4.0]) * s
            renal_arteries.append(Tube([origin, 0.5 * (origin + hilum) + behind, hilum + behind * 0.5],
                                       [3.2 * s, 3.0 * s, 2.6 * s]))
    shapes = [("iliac_arteries", anatomy.extras["iliac_arteries"], hu["artery"]),
              ("mesenteric_arteries", anatomy.extras["mesenteric_arteries"], hu["artery"]),
              ("iliac_veins", anatomy.extras["iliac_veins"], hu["vein"]),
              ("mesenteric_vessels", anatomy.extras["mesenteric_vessels"], hu["vein"])]
    shapes += [("renal_vein", vein, hu["vein"]) for vein in renal_veins]
    shapes += [("renal_artery", artery, hu["artery"]) for artery in renal_arteries]
    for _, shape, value in shapes:
        found = canvas.evaluate(shape)
        if found is None:
            continue
        box, level = found
        canvas.hu[box][(level < 1) & canvas.cavity[box] & ~canvas.bone[box]] = value


def _paint_organ(canvas: Canvas, anatomy: Anatomy, key: str, value: float, *, halo: float = 0.0,
                 abdominal: bool = True, roughness: float = 0.03):
    """Paint labelled organ ``key`` with CT number ``value``; returns ``(box, level, inside)`` or None.

    The organ stays inside the cavity and off bone; an ``abdominal`` one also stays below the diaphragm and off the
    crura. With ``halo`` > 0 the organ carves a fat plane (``halo`` in level units) out of organs painted before it.
    """
    shape = anatomy.organs.get(key)
    if shape is None:
        return None
    found = canvas.evaluate(shape, scale=1.0 + halo, field=anatomy.fields["shape"], roughness=roughness)
    if found is None:
        return None
    box, level = found
    allowed = canvas.cavity[box] & ~canvas.bone[box]
    if abdominal:
        allowed &= canvas.below_diaphragm(box) & ~canvas.reserved[box]
    inside = allowed & (level < 1)
    labels = canvas.label[box]
    region = canvas.hu[box]
    if halo:
        plane = allowed & (level >= 1) & (level < 1 + halo) & (labels != 0)
        labels[plane] = 0
        region[plane] = anatomy.hu["visceral_fat"]
    labels[inside] = LABEL[key]
    region[inside] = value
    return box, level, inside


def _paint_organs(canvas: Canvas, anatomy: Anatomy) -> None:
    """The 13 BTCV organs in priority order (a later organ overwrites an earlier one where they meet)."""
    hu = anatomy.hu

    painted = _paint_organ(canvas, anatomy, "liver", hu["liver"], roughness=0.03)
    if painted is not None:
        # Hepatic veins and portal branches inside the liver: brighter, but part of the liver label.
        found = canvas.evaluate(anatomy.extras["hepatic_veins"])
        if found is not None:
            vbox, vlevel = found
            vessel = (vlevel < 1) & (canvas.label[vbox] == LABEL["liver"])
            canvas.hu[vbox][vessel] = hu["hepatic_vessels"]

    painted = _paint_organ(canvas, anatomy, "spleen", hu["spleen"], halo=0.06)
    if painted is not None and anatomy.params["phase"] == "arterial":
        # Arciform (zebra) enhancement of the spleen in the arterial phase: bands of +-35 HU.
        box, _, inside = painted
        bands = np.sin(5.0 * anatomy.fields["shape"].sample(*canvas.coords(box)))
        canvas.hu[box][inside] += (35.0 * bands)[inside]

    painted = _paint_organ(canvas, anatomy, "stomach", hu["stomach_wall"], halo=0.05, roughness=0.04)
    if painted is not None:
        box, level, inside = painted
        lumen = inside & (level < 0.84)
        air = lumen & (canvas.ys[box[1]][None, :, None] > np.float32(anatomy.params["stomach_air_y"]))
        canvas.hu[box][lumen] = hu["stomach_fluid"]
        if anatomy.params["stomach_food"]:  # a recent meal: mottled food with small gas pockets
            mottle = np.sin(5.0 * anatomy.fields["content"].sample(*canvas.coords(box)))
            food = np.where(mottle > 0.8, hu["gas"], 20.0 + 30.0 * mottle)
            canvas.hu[box][lumen] = food[lumen]
        canvas.hu[box][air] = hu["gas"]

    for key in ("kidney_right", "kidney_left"):
        painted = _paint_organ(canvas, anatomy, key, hu["kidney_cortex"], halo=0.08, roughness=0.02)
        if painted is None:
            continue
        box, level, inside = painted
        canvas.hu[box][inside & (level < 0.72)] = hu["kidney_medulla"]
        sinus_level = anatomy.extras[f"{key}_sinus"].level(*canvas.coords(box))
        sinus = inside & (sinus_level < 1)
        canvas.label[box][sinus] = 0
        canvas.hu[box][sinus] = hu["visceral_fat"]
        canvas.hu[box][sinus & (sinus_level < 0.5)] = hu["urine"]

    painted = _paint_organ(canvas, anatomy, "pancreas", hu["pancreas"], halo=0.06, roughness=0.1)
    if painted is not None and anatomy.params["pancreas_fat"] > 0.01:
        # Fatty lobules between the acini (label unchanged): half fat at the voxel scale, by partial volume.
        box, _, inside = painted
        lobules = np.sin(7.0 * anatomy.fields["content"].sample(*canvas.coords(box)))
        fat = inside & (lobules > np.float32(math.cos(math.pi * anatomy.params["pancreas_fat"])))
        canvas.hu[box][fat] = 0.5 * (hu["pancreas"] + hu["visceral_fat"])
    _paint_organ(canvas, anatomy, "gallbladder", hu["gallbladder"], roughness=0.03)
    _paint_organ(canvas, anatomy, "adrenal_right", hu["adrenal"], halo=0.3, roughness=0.05)
    _paint_organ(canvas, anatomy, "adrenal_left", hu["adrenal"], halo=0.3, roughness=0.05)
    _paint_organ(canvas, anatomy, "portal_splenic_vein", hu["portal_splenic_vein"], roughness=0.04)
    _paint_organ(canvas, anatomy, "inferior_vena_cava", hu["inferior_vena_cava"], abdominal=False, roughness=0.04)
    _paint_organ(canvas, anatomy, "aorta", hu["aorta"], abdominal=False, roughness=0.02)
    painted = _paint_organ(canvas, anatomy, "esophagus", hu["esophagus"], abdominal=False, roughness=0.03)
    if painted is not None and anatomy.params["esophagus_air"]:
        box, level, inside = painted
        canvas.hu[box][inside & (level < 0.3)] = hu["gas"]


def render_anatomy(anatomy: Anatomy, geometry: CaseGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Paint ``anatomy`` on the painting grid of ``geometry``.

    Returns:
        ``(hu, label)``: float32 noise-free CT numbers and uint8 raw BTCV labels, both indexed ``[x, y, z]`` on the
        painting grid (x towards the patient's right, y anterior, z superior).
    """
    canvas = _new_canvas(anatomy, geometry)
    _paint_table(canvas, anatomy)
    _paint_arms(canvas, anatomy)
    _paint_body(canvas, anatomy)
    _paint_bowel(canvas, anatomy)
    _paint_thorax(canvas, anatomy)
    _paint_ribs(canvas, anatomy)
    _paint_spine_and_back(canvas, anatomy)
    _paint_unlabelled_vessels(canvas, anatomy)
    _paint_organs(canvas, anatomy)
    _add_texture(canvas, anatomy)
    return canvas.hu, canvas.label


def _add_texture(canvas: Canvas, anatomy: Anatomy) -> None:
    """Soft-tissue texture: a fine smooth pattern of +-``texture_hu`` HU on every non-fat, non-bone voxel.

    The pattern lives in patient coordinates (from the anatomy's smooth fields), so it is the same tissue pattern
    whatever the scan's voxel size.
    """
    box = _box(np.array([-1e9, -1e9, -1e9]), np.array([1e9, 1e9, 1e9]), canvas.xs, canvas.ys, canvas.zs)
    content = anatomy.fields["content"].sample(*canvas.coords(box))
    shape = anatomy.fields["shape"].sample(*canvas.coords(box))
    pattern = np.sin(6.0 * content + 4.0 * shape)
    soft = (canvas.hu > -30.0) & (canvas.hu < 300.0) & ~canvas.bone
    canvas.hu[soft] += (np.float32(anatomy.params["texture_hu"]) * pattern)[soft]


# ----------------------------------------------------------------------------------------------------------------
# Image formation and the public entry points.


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


def _check_size(size: str) -> None:
    if size not in SIZES:
        raise ConfigError(f"size: unknown phantom size {size!r} (choose from {', '.join(SIZES)})")


def _check_case(case_index, seed) -> None:
    if isinstance(case_index, bool) or not isinstance(case_index, (int, np.integer)) or case_index < 1:
        raise ConfigError(f"case index: must be an integer >= 1, got {case_index!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed: must be an integer >= 0, got {seed!r}")


def _generate(case_index: int, seed: int, size: str) -> tuple[Volume, Volume, dict]:
    """Image, label and a description (shape, spacing, axis codes, omitted organs) of one case."""
    _check_case(case_index, seed)
    _check_size(size)
    anatomy = make_anatomy(seed, case_index)
    geometry = case_geometry(seed, case_index, size, anatomy)
    hu, label = render_anatomy(anatomy, geometry)
    noise_rng = _rng(seed, _STREAM_NOISE, case_index)
    scanner = draw_scanner(noise_rng)
    image = form_image(hu, geometry, noise_rng, scanner.noise_sd, scanner)
    del hu
    painting_affine = geometry.painting_affine()
    image, affine = reorient(image, painting_affine, geometry.axcodes)
    label, _ = reorient(label, painting_affine, geometry.axcodes)
    info = {
        "case_id": f"case{case_index:04d}",
        "shape": list(image.shape),
        "spacing": [round(float(v), 4) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0))],
        "axcodes": "".join(geometry.axcodes),
        "omitted_organs": list(anatomy.omitted),
        "contrast_phase": anatomy.params["phase"],
        "oral_contrast": anatomy.params["oral_contrast"],
        "noise_sd_hu": round(scanner.noise_sd, 2),
        "blur_mm": round(scanner.blur_mm, 2),
        "patient_scale": round(anatomy.scale, 4),
    }
    return Volume(image, affine), Volume(label, affine), info


def generate_case(case_index: int, seed: int, size: str = "small") -> tuple[Volume, Volume]:
    """One phantom case: ``(image, label)``.

    Pure and deterministic: case ``case_index`` (1-based, like ``img0001``) of ``seed`` is the same whatever else is
    generated.

    Args:
        case_index: 1, 2, ...
        seed: integer >= 0.
        size: ``small`` (128 x 128 x 44-56, CPU tests) or ``full`` (512 x 512 x 85-198, Synapse-sized).

    Returns:
        ``image``: int16 HU and ``label``: uint8 raw BTCV values 0..13, both in the case's stored voxel order with
        the same affine (see :class:`medseg.io.Volume`).
    """
    image, label, _ = _generate(case_index, seed, size)
    return image, label


# ----------------------------------------------------------------------------------------------------------------
# Writing a cohort.


def image_path(out_dir: "str | Path", case_index: int) -> Path:
    """``OUT_DIR/img/imgXXXX.nii.gz``."""
    return Path(out_dir) / "img" / f"img{case_index:04d}.nii.gz"


def label_path(out_dir: "str | Path", case_index: int) -> Path:
    """``OUT_DIR/label/labelXXXX.nii.gz``."""
    return Path(out_dir) / "label" / f"label{case_index:04d}.nii.gz"


def _write_case(out_dir: str, case_index: int, seed: int, size: str) -> dict:
    """Generate one case and write its image and label atomically; returns its description."""
    started = time.perf_counter()
    image, label, info = _generate(case_index, seed, size)
    write_volume(image_path(out_dir, case_index), image, dtype=np.int16)
    write_volume(label_path(out_dir, case_index), label, dtype=np.uint8)
    info["image"] = f"img/{image_path(out_dir, case_index).name}"
    info["label"] = f"label/{label_path(out_dir, case_index).name}"
    info["seconds"] = round(time.perf_counter() - started, 2)
    return info


def _check_out_dir(out_dir: Path) -> "dict | None":
    """Refuse an output that is a file or an existing non-phantom cohort; return the old phantom.json if any."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: exists and is not a folder")
    manifest = out_dir / "phantom.json"
    if manifest.exists():
        old = read_json(manifest)
        if not isinstance(old, dict) or old.get("format") != "medseg-phantom":
            raise ConfigError(f"{manifest}: not a medseg phantom description; choose another output folder")
        return old
    for sub in ("img", "label"):
        folder = out_dir / sub
        if folder.is_dir() and any(p.name.endswith((".nii", ".nii.gz")) for p in folder.iterdir()):
            raise ConfigError(f"{out_dir}: already holds a cohort that medseg synth did not write "
                              f"(no phantom.json); choose an empty folder")
    return None


def write_cohort(out_dir: "str | Path", cases: int, seed: int, size: str = "small", workers: int = 1,
                 progress: bool = True, preview: bool = True) -> dict:
    """Write a phantom cohort in the raw BTCV layout (see the module docstring).

    Each file is written atomically. Writing into a folder that holds an earlier phantom cohort overwrites it and
    removes the cases beyond ``cases``; a folder holding another cohort is refused.

    Args:
        out_dir: output folder (created).
        cases: number of cases, written as img0001 .. imgNNNN.
        seed: integer >= 0.
        size: ``small`` or ``full``.
        workers: processes generating cases in parallel (1: in this process).
        progress: show progress (a bar on a terminal, log lines elsewhere; medseg.progress).
        preview: also render ``preview.png``.

    Returns:
        Summary: ``out_dir``, ``cases``, ``seed``, ``size``, ``seconds``, ``preview`` (path or None),
        ``omitted`` (case id -> omitted organs), ``manifest`` (path of phantom.json).
    """
    out_dir = Path(out_dir)
    if isinstance(cases, bool) or not isinstance(cases, (int, np.integer)) or cases < 1:
        raise ConfigError(f"cases: must be an integer >= 1, got {cases!r}")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ConfigError(f"workers: must be an integer >= 1, got {workers!r}")
    _check_case(1, seed)
    _check_size(size)
    old = _check_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    header = {"format": "medseg-phantom", "generator_version": GENERATOR_VERSION, "seed": int(seed), "size": size,
              "num_cases": int(cases), "complete": False}
    write_json(out_dir / "phantom.json", {**header, "cases": []})
    if old is not None:
        _remove_stale_cases(out_dir, old, cases)

    infos: dict[int, dict] = {}
    bar = progress_bar(total=cases, desc=f"synth {size}", unit="case", disable=not progress)
    try:
        if workers == 1:
            for index in range(1, cases + 1):
                infos[index] = _write_case(str(out_dir), index, seed, size)
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=min(workers, cases)) as pool:
                futures = {pool.submit(_write_case, str(out_dir), index, seed, size): index
                           for index in range(1, cases + 1)}
                for future in as_completed(futures):
                    infos[futures[future]] = future.result()
                    bar.update(1)
    finally:
        bar.close()

    case_list = [infos[index] for index in sorted(infos)]
    seconds = time.perf_counter() - started
    write_json(out_dir / "phantom.json", {**header, "complete": True, "seconds": round(seconds, 2),
                                          "cases": case_list})
    preview_path = None
    if preview:
        preview_path = render_preview(out_dir, out_dir / "preview.png")
    seconds = time.perf_counter() - started
    log.debug("phantom cohort: %d %s cases in %.1f s -> %s", cases, size, seconds, out_dir)
    return {
        "out_dir": str(out_dir),
        "cases": int(cases),
        "seed": int(seed),
        "size": size,
        "seconds": round(seconds, 2),
        "preview": None if preview_path is None else str(preview_path),
        "omitted": {info["case_id"]: info["omitted_organs"] for info in case_list if info["omitted_organs"]},
        "manifest": str(out_dir / "phantom.json"),
    }


def _remove_stale_cases(out_dir: Path, old: dict, cases: int) -> None:
    """Delete files of an earlier phantom cohort in ``out_dir`` that the new one (``cases`` cases) does not have."""
    old_count = int(old.get("num_cases", len(old.get("cases", []))))
    for index in range(cases + 1, old_count + 1):
        image_path(out_dir, index).unlink(missing_ok=True)
        label_path(out_dir, index).unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------------------
# Preview montage.

def _best_slice(label: np.ndarray, keys: tuple[str, ...]) -> int:
    """Axial slice index (last axis) with the most voxels of the given organs; the middle slice if none."""
    mask = np.isin(label, [LABEL[k] for k in keys])
    counts = mask.sum(axis=(0, 1))
    return int(np.argmax(counts)) if counts.max() > 0 else label.shape[2] // 2


def _preview_views(image: Volume, label: Volume) -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    """The montage views of one case: (title, image 2D, label 2D, aspect) in medseg's slice orientation."""
    img, affine = reorient(image.array, image.affine)
    lab, _ = reorient(label.array, label.affine)
    d_row, d_col, d_slice = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    views = []
    upper = _best_slice(lab, ("liver", "spleen", "stomach"))
    kidneys = _best_slice(lab, ("kidney_right", "kidney_left"))
    lower = kidneys // 2
    for title, k in (("upper abdomen", upper), ("kidneys", kidneys), ("lower", lower)):
        views.append((f"{title} (slice {k})", img[:, :, k], lab[:, :, k], d_row / d_col))
    kidney = np.isin(lab, [LABEL["kidney_right"], LABEL["kidney_left"], LABEL["aorta"]])
    row = int(np.round(np.nonzero(kidney)[0].mean())) if kidney.any() else img.shape[0] // 2
    # Coronal: rows superior -> inferior, columns patient right -> left.
    views.append((f"coronal (row {row})", img[row, :, ::-1].T, lab[row, :, ::-1].T, d_slice / d_col))
    return views


def render_preview(source, path: "str | Path", max_cases: int = 4, title: "str | None" = None) -> Path:
    """Save a PNG montage: per case three axial slices (most liver/spleen/stomach, most kidney, half-way from
    there to the lowest slice) and a coronal view, with the label overlay in medseg's organ colours.

    Args:
        source: a cohort folder (img/ + label/, e.g. written by :func:`write_cohort`), or a list of
            ``(case_id, image Volume, label Volume)``.
        path: the PNG to write (atomically).
        max_cases: at most this many cases are shown (the first ones).
        title: the figure's title (default: the phantom cohort's).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if isinstance(source, (str, Path)):
        chosen = [c for c in discover_cases(source) if c.label is not None][:max_cases]
        cases = [(c.case_id, read_volume(c.image), read_volume(c.label)) for c in chosen]
    else:
        cases = list(source)[:max_cases]
    if not cases:
        raise ConfigError(f"{source}: no labelled case to preview")

    figure = Figure(figsize=(12, 3.1 * len(cases) + 0.8), dpi=90, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(cases), 4, squeeze=False)
    for row, (case_id, image, label) in enumerate(cases):
        for col, (view, img2d, lab2d, aspect) in enumerate(_preview_views(image, label)):
            ax = axes[row, col]
            ax.imshow(label_overlay(img2d, lab2d, BTCV13), aspect=aspect, interpolation="nearest")
            ax.set_title(f"{case_id}: {view}", fontsize=8)
            ax.set_axis_off()
    handles = [Patch(color=np.array(ORGAN_COLOURS[key]) / 255.0, label=name) for key, name in BTCV_ORGANS.values()]
    figure.legend(handles=handles, loc="outside lower center", ncol=7, fontsize=8, frameon=False)
    figure.suptitle(title or "medseg phantom cohort (window L40 W400; patient's right on the image left)",
                    fontsize=10)
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png")
    return path
