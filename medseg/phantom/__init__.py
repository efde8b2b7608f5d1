"""The synthetic phantom cohort: Synapse-like abdominal CT volumes with BTCV labels, made from a seed.

One module per job: :mod:`~medseg.phantom.shapes` (shape primitives with level functions),
:mod:`~medseg.phantom.anatomy` (one patient's structures), :mod:`~medseg.phantom.contrast` (CT numbers per contrast
phase), :mod:`~medseg.phantom.geometry` (scan geometry), :mod:`~medseg.phantom.painting` (HU and label volumes on
the grid), :mod:`~medseg.phantom.scanner` (blur, noise, reconstruction field of view),
:mod:`~medseg.phantom.cohort` (one case; a cohort on disk), :mod:`~medseg.phantom.preview` (the preview montage);
:mod:`~medseg.phantom.streams` holds the per-purpose random streams.

``medseg synth OUT_DIR --cases N --seed S --size small|full|varied`` (or :func:`write_cohort`) writes the raw BTCV
layout::

    OUT_DIR/img/img0001.nii.gz      int16 CT numbers (HU), -1024 .. 3071
    OUT_DIR/label/label0001.nii.gz  uint8 raw BTCV label values 0..13 (numbering of medseg.labels.BTCV_ORGANS)
    OUT_DIR/phantom.json            generator version, seed, size and, per case, shape, spacing, axis codes,
                                    omitted organs, contrast phase, oral contrast, noise, blur, field of view
                                    (mm) and, for ``varied``, the coverage
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
   (:mod:`medseg.phantom.contrast`).
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
with 0.6-0.9 mm pixels and 85-198 slices of 2.5, 3 or 5 mm (from the lung bases down into the pelvis). ``varied``:
what clinical scans vary, for held-out tests (:func:`medseg.phantom.geometry.varied_extent`): 512 x 512 over a tight
to wide field of view (0.6-1.0 mm pixels), thin (1-1.5 mm) or thick (2.5-5 mm) slices, and the coverages of
:data:`medseg.phantom.geometry.COVERAGES` in turn, from a lower-chest series that ends above the kidneys to a pelvis
window; 4-20 s and up to about 3 GB of memory per case.

Determinism
-----------
Case ``k`` of seed ``s`` depends only on ``(s, k, size)``, never on how many cases are written. The anatomy depends
only on ``(s, k)``, so the small and the full version of a case show the same patient. Random numbers come from
separate numpy streams per purpose (anatomy, scan geometry, noise, omissions, contrast).
"""
from __future__ import annotations

from medseg.phantom.anatomy import Anatomy, contrast_phase, make_anatomy, omitted_organs
from medseg.phantom.cohort import GENERATOR_VERSION, generate_case, image_path, label_path, write_cohort
from medseg.phantom.geometry import SIZES, STORAGE_AXCODES, CaseGeometry, case_geometry
from medseg.phantom.painting import LABEL, render_anatomy
from medseg.phantom.preview import render_preview
from medseg.phantom.scanner import HU_MAX, HU_MIN, Scanner, draw_scanner, form_image

__all__ = [
    "Anatomy", "CaseGeometry", "GENERATOR_VERSION", "HU_MAX", "HU_MIN", "LABEL", "SIZES", "STORAGE_AXCODES", "Scanner",
    "case_geometry", "contrast_phase", "draw_scanner", "form_image", "generate_case", "image_path", "label_path",
    "make_anatomy", "omitted_organs", "render_anatomy", "render_preview", "write_cohort",
]
