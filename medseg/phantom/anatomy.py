"""Anatomy of one phantom patient: every structure as a shape in patient coordinates (mm, RAS+), its CT numbers
and the patient's parameters (:func:`make_anatomy`); which organs a case omits (:func:`omitted_organs`) and its
contrast phase (:func:`contrast_phase`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medseg.phantom.contrast import block_phase, draw_ct_numbers
from medseg.phantom.shapes import (BOWEL_HI, BOWEL_LO, BOWEL_STEP, N_BUMPS, Blob, Tube, Union, rotation_matrix,
                                   smooth_field)
from medseg.phantom.streams import STREAM_ANATOMY, STREAM_CONTRAST, STREAM_OMISSION, case_rng

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
    block_rng = case_rng(seed, STREAM_OMISSION, 1_000_000 + block)
    forced_case = block * 5 + 1 + int(block_rng.integers(5))
    forced_organ = str(block_rng.choice(["gallbladder", "gallbladder", "kidney_left", "kidney_right"]))
    if case_index == forced_case:
        return (forced_organ,)
    rng = case_rng(seed, STREAM_OMISSION, case_index)
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
    :func:`medseg.phantom.contrast.block_phase`).
    """
    block, position = divmod(case_index - 1, 5)
    return block_phase(case_rng(seed, STREAM_CONTRAST, 1_000_000 + block), position,
                       case_rng(seed, STREAM_CONTRAST, 2_000_000 + case_index))


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
        rotation = rotation_matrix(yaw + rng.normal(0, angle_jitter), pitch + rng.normal(0, angle_jitter),
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
    rng = case_rng(seed, STREAM_ANATOMY, case_index)
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

    # CT numbers (HU) for this patient in its contrast phase (medseg.phantom.contrast), from its own stream so
    # that the phase never shifts the anatomy.
    contrast_rng = case_rng(seed, STREAM_CONTRAST, case_index)
    phase = contrast_phase(seed, case_index)
    hu = draw_ct_numbers(contrast_rng, phase)
    fields = {
        "bowel": smooth_field(rng, 5.5, BOWEL_LO, BOWEL_HI, BOWEL_STEP),
        "content": smooth_field(rng, 6.0),
        "shape": smooth_field(rng, 8.0),
    }
    params = _draw_patient_params(rng, contrast_rng, phase, stomach_air_y, z_bifurcation)
    return Anatomy(scale=s, cavity=cavity, muscle=muscle, skin=skin, dome_right=dome_right, dome_left=dome_left,
                   dome_drop=90.0 * s, spine=spine, organs=organs, extras=extras,
                   hu={k: float(v) for k, v in hu.items()}, fields=fields, omitted=omitted, params=params)


