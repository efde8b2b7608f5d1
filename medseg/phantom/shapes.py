"""Shape primitives of the phantom, in patient coordinates (mm, RAS+: x to the patient's right, y anterior,
z superior).

Every shape has a *level function*: below 1 inside, 1 on the surface, growing outwards, evaluated only inside the
shape's bounding box (:data:`FAR` outside). :class:`Blob` is an ellipsoid with a low-order radial deformation,
:class:`Segment`/:class:`Tube` a tube along a polyline, :class:`Union` several shapes, :class:`SmoothField` a smooth
random field (texture, bowel loops).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: Level value used outside a shape's bounding box ("far away").
FAR = 99.0



def bounding_slices(lo, hi, xs, ys, zs) -> "tuple[slice, slice, slice] | None":
    """Index slices of the voxels whose centres (``xs``, ``ys``, ``zs``: increasing mm) lie in ``[lo, hi]``."""
    slices = []
    for axis, coords in enumerate((xs, ys, zs)):
        start = int(np.searchsorted(coords, lo[axis], side="left"))
        stop = int(np.searchsorted(coords, hi[axis], side="right"))
        if stop <= start:
            return None
        slices.append(slice(start, stop))
    return tuple(slices)


def rotation_matrix(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
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
            box = bounding_slices(*part.bounds(scale), xs, ys, zs)
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
FIELD_LO = (-240.0, -180.0, -380.0)
FIELD_HI = (240.0, 240.0, 360.0)
FIELD_STEP = 5.0
#: The small-bowel field is finer and covers only the lower abdomen.
BOWEL_LO = (-150.0, -70.0, -400.0)
BOWEL_HI = (150.0, 170.0, 45.0)
BOWEL_STEP = 3.0


def smooth_field(rng: np.random.Generator, sigma_mm: float, lo=FIELD_LO, hi=FIELD_HI,
                  step: float = FIELD_STEP) -> SmoothField:
    """White noise on a coarse grid over the box ``lo``..``hi`` (mm, patient coordinates) with ``step`` mm,
    Gaussian-smoothed with ``sigma_mm`` and scaled to unit standard deviation."""
    from scipy.ndimage import gaussian_filter

    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    shape = tuple(int(n) for n in np.ceil((hi - lo) / step) + 1)
    values = gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_mm / step, mode="wrap")
    values /= max(float(values.std()), 1e-6)
    return SmoothField(values=values, origin=lo, step=step)


