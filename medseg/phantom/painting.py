"""Painting a phantom case (:func:`render_anatomy`): the level functions of the anatomy are evaluated at the voxel
centres of an axis-aligned RAS grid (mm) and painted, structure by structure in a fixed priority order, into a HU
volume and a crisp label volume.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medseg.labels import BTCV_ORGANS
from medseg.phantom.anatomy import Anatomy
from medseg.phantom.geometry import CaseGeometry
from medseg.phantom.shapes import SmoothField, Tube, bounding_slices

#: Raw BTCV label value of each organ key.
LABEL = {key: value for value, (key, _) in BTCV_ORGANS.items()}

#: CT number of air.
AIR_HU = -1000.0



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
        box = bounding_slices(*shape.bounds(margin), self.xs, self.ys, self.zs)
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
    box = bounding_slices(lo, hi, canvas.xs, canvas.ys, canvas.zs)
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
    box = bounding_slices(np.array([-130 * s, -110 * s, -1e9]), np.array([130 * s, 60 * s, 1e9]), canvas.xs, canvas.ys,
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
    box = bounding_slices(np.array([-1e9, -1e9, -1e9]), np.array([1e9, 1e9, 1e9]), canvas.xs, canvas.ys, canvas.zs)
    content = anatomy.fields["content"].sample(*canvas.coords(box))
    shape = anatomy.fields["shape"].sample(*canvas.coords(box))
    pattern = np.sin(6.0 * content + 4.0 * shape)
    soft = (canvas.hu > -30.0) & (canvas.hu < 300.0) & ~canvas.bone
    canvas.hu[soft] += (np.float32(anatomy.params["texture_hu"]) * pattern)[soft]


