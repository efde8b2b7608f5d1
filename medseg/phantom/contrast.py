"""CT numbers of the phantom's tissues in the three clinical contrast phases.

A phantom patient is scanned in one phase, drawn per case (:func:`draw_phase`):

* ``non_contrast``: no intravenous contrast. Blood, parenchyma and muscle all lie within 30-65 HU; organs are told
  apart by shape, position and the fat planes around them (as on the unenhanced scans of stone or trauma protocols
  and on the upper-abdomen example CT in ``tests/data/realct``).
* ``arterial`` (late arterial, ~35-40 s after injection): bright aorta and arteries, corticomedullary
  differentiation of the kidneys, an enhancing pancreas, a heterogeneous (arciform) spleen, little liver and
  caval enhancement.
* ``portal_venous`` (~70 s): the phase of most abdominal CT and of the BTCV/Synapse cohort. Liver, spleen, portal
  vein and IVC enhanced, kidneys homogeneous (nephrographic), aorta moderately bright.

Each entry of :data:`PHASE_HU` is a range (low, high) in HU; a patient's value is drawn uniformly in it, so the
contrast *between* organs also varies from patient to patient (cardiac output, weight, injection rate). The ranges
are typical values of adult CT as summarised in the contrast-timing literature (e.g. K. T. Bae, "Intravenous
contrast medium administration and scan timing at CT: considerations and approaches", Radiology 2010;256:32-61,
for the aortic and hepatic enhancement curves), standard CT texts for unenhanced tissue, and for trabecular bone
the L1 values of adults of all ages (P. J. Pickhardt et al., Ann Intern Med 2013;158:588-595: about 100-300 HU, lower
with osteoporosis); they are meant to span clinical scans, not to model one protocol.
"""
from __future__ import annotations

import numpy as np

PHASES = ("non_contrast", "arterial", "portal_venous")
#: How often each phase is drawn: portal venous most (BTCV/Synapse-like), unenhanced and arterial less often.
PHASE_WEIGHTS = {"non_contrast": 0.3, "arterial": 0.2, "portal_venous": 0.5}

#: Tissues whose CT number depends on the phase: tissue -> (non_contrast, arterial, portal_venous) HU ranges.
PHASE_HU: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "liver": ((40, 66), (60, 85), (100, 130)),           # unenhanced below 40: steatosis
    "spleen": ((35, 52), (95, 140), (105, 130)),
    "kidney_cortex": ((20, 40), (150, 220), (150, 200)),
    "kidney_medulla": ((18, 37), (55, 100), (130, 185)),
    "pancreas": ((35, 50), (100, 140), (85, 110)),
    "adrenal": ((20, 35), (50, 80), (45, 70)),
    "aorta": ((35, 50), (250, 400), (150, 210)),
    "inferior_vena_cava": ((35, 50), (60, 120), (120, 170)),
    "vein": ((35, 50), (60, 110), (130, 180)),            # iliac, renal, mesenteric veins
    "portal_splenic_vein": ((35, 50), (90, 160), (150, 190)),
    "hepatic_vessels": ((30, 45), (55, 90), (125, 175)),  # hepatic veins and portal branches inside the liver
    "stomach_wall": ((35, 48), (70, 110), (60, 95)),
    "bowel_wall": ((35, 48), (60, 100), (60, 95)),
    "esophagus": ((35, 48), (50, 75), (55, 80)),
    "myocardium": ((38, 50), (70, 110), (80, 115)),
    "muscle": ((42, 58), (48, 62), (52, 68)),
}

#: Tissues that do not enhance (or not at these times), HU ranges for every phase.
FIXED_HU: dict[str, tuple[float, float]] = {
    "fat": (-115, -85), "visceral_fat": (-105, -80), "lung": (-880, -800), "bone": (100, 300),
    "cortical_bone": (600, 900), "disc": (70, 100), "csf": (0, 20), "bowel_fluid": (0, 25),
    "gallbladder": (0, 25), "stomach_fluid": (5, 30), "gas": (-980, -880), "urine": (0, 15),
    "table": (80, 200), "oral_contrast": (180, 450),
}


#: Phases of a block of five cases before shuffling; ``None`` is drawn with :data:`PHASE_WEIGHTS`.
BLOCK_PHASES = ("portal_venous", "portal_venous", "non_contrast", "arterial", None)


def draw_phase(rng: np.random.Generator) -> str:
    """One contrast phase, with the probabilities of :data:`PHASE_WEIGHTS`."""
    weights = np.array([PHASE_WEIGHTS[p] for p in PHASES])
    return PHASES[int(rng.choice(len(PHASES), p=weights / weights.sum()))]


def block_phase(block_rng: np.random.Generator, position: int, case_rng: np.random.Generator) -> str:
    """The phase of the case at ``position`` (0-4) of a block of five consecutive cases.

    Each block holds two portal venous cases, one unenhanced, one arterial and one drawn at random, in an order
    drawn by ``block_rng`` (the same for every case of the block): any cohort of five or more cases shows every
    phase, and a held-out split of a small cohort is not left with one phase by chance.
    """
    order = block_rng.permutation(len(BLOCK_PHASES))
    phase = BLOCK_PHASES[int(order[position])]
    return draw_phase(case_rng) if phase is None else phase


def draw_ct_numbers(rng: np.random.Generator, phase: str) -> dict[str, float]:
    """CT number (HU) of every tissue of one patient scanned in ``phase``.

    Derived values: ``artery`` equals the aorta, ``blood_pool`` (cardiac chambers) lies between the aorta and the
    IVC.
    """
    column = PHASES.index(phase)
    hu = {tissue: float(rng.uniform(*ranges[column])) for tissue, ranges in PHASE_HU.items()}
    hu.update({tissue: float(rng.uniform(*limits)) for tissue, limits in FIXED_HU.items()})
    hu["artery"] = hu["aorta"]
    hu["blood_pool"] = 0.5 * (hu["aorta"] + hu["inferior_vena_cava"])
    return hu
