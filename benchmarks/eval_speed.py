"""Evaluation speed: medseg against the TransUNet path (medpy) and against MONAI on Synapse-sized cases.

Each case is a pair of 512 x 512 x ~150 label maps with the 8 organs of the ``synapse8`` label set (deformed
ellipsoids and a tube for the aorta, sized like real organs in mm; the prediction is a perturbed copy with a few
detached false-positive islands), at an anisotropic spacing such as 0.78 x 0.78 x 3 mm. All three paths get the
same arrays; their values are compared and their times measured side by side, per case, in one process:

* medseg: :func:`medseg.evaluation.evaluate_case` (one pass over the volume, crop per organ, KD-tree distances),
  protocol ``transunet`` (the medpy numbers), ``standard`` (the MONAI numbers) and ``both``.
* medpy, the path of TransUNet's ``test_single_volume``: per organ ``dc`` and ``hd95`` on the full volume
  (``calculate_metric_percase``; no spacing: voxel units).
* MONAI on CPU, per organ (one channel at a time, so two full one-hot volumes never sit in memory):
  ``compute_dice`` + ``compute_hausdorff_distance(percentile=95, spacing)`` (Dice + HD95), and those plus
  ``compute_average_surface_distance(symmetric=True, spacing)`` and ``compute_surface_dice([tol], spacing)``
  (all four metrics medseg's standard protocol gives).

Usage::

    python benchmarks/eval_speed.py                     # 3 cases, medpy and MONAI on the first (3 rounds)
    python benchmarks/eval_speed.py --write-results     # also write the section of benchmarks/RESULTS.md

The medpy path takes one to a few minutes per case, hence ``--medpy-cases`` and ``--monai-cases``. On the cases
that run medpy or MONAI every path runs once per round for ``--rounds`` rounds, alternating
(``benchmarks/side_by_side.py``); a ratio is the median of the per-round ratios, given with its range.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from results_file import cpu_name, write_section  # benchmarks/results_file.py
from side_by_side import alternate  # benchmarks/side_by_side.py

ORGAN_NAMES = ("aorta", "gallbladder", "kidney_left", "kidney_right", "liver", "pancreas", "spleen", "stomach")

# Organ shapes in mm relative to the volume centre, array axes (i, j, k): centre offset and semi-axes.
# Class values are synapse8's (1 aorta ... 8 stomach); later organs are painted over earlier ones.
ORGAN_SPECS = {
    3: ((70.0, 70.0, -20.0), (25.0, 30.0, 55.0)),  # kidney L, ~170 ml
    4: ((70.0, -70.0, -30.0), (25.0, 30.0, 55.0)),  # kidney R
    5: ((-10.0, -75.0, 40.0), (80.0, 65.0, 90.0)),  # liver, ~2 l
    6: ((20.0, 20.0, 0.0), (15.0, 70.0, 15.0)),  # pancreas, ~65 ml
    7: ((40.0, 100.0, 40.0), (35.0, 30.0, 55.0)),  # spleen, ~240 ml
    8: ((-30.0, 60.0, 50.0), (40.0, 45.0, 60.0)),  # stomach, ~450 ml
    2: ((10.0, -45.0, 10.0), (15.0, 16.0, 35.0)),  # gallbladder, ~35 ml, painted over the liver's edge
}
AORTA_OFFSET_MM, AORTA_RADIUS_MM = (40.0, 0.0), 11.0

SECTION_TITLE = "## Evaluation speed (benchmarks/eval_speed.py)"
CASE_DESCRIPTIONS = {
    "synthetic": "synthetic organs (deformed ellipsoids, a tube for the aorta), 8 organs (synapse8); the prediction "
                 "is a perturbed copy with detached false-positive islands",
    "phantom": "medseg phantom cohort, size full, 8 organs (synapse8); the prediction is the reference shifted by 2 "
               "voxels with its organs eroded by one voxel",
}


# ----------------------------------------------------------------------------------------------------------------
# synthetic Synapse-sized cases


def _paint_blob(volume, class_value, centre_mm, axes_mm, spacing, rng, phase):
    """Paint a deformed ellipsoid (mm units) into ``volume``, evaluating it only inside its bounding box."""
    shape = volume.shape
    centre_vox = [shape[a] / 2 + centre_mm[a] / spacing[a] for a in range(3)]
    reach = [1.15 * axes_mm[a] / spacing[a] + 1 for a in range(3)]
    lo = [max(int(centre_vox[a] - reach[a]), 0) for a in range(3)]
    hi = [min(int(centre_vox[a] + reach[a]) + 1, shape[a]) for a in range(3)]
    if any(h <= l for l, h in zip(lo, hi)):
        return
    i, j, k = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    x = (i - centre_vox[0]) * spacing[0] / axes_mm[0]
    y = (j - centre_vox[1]) * spacing[1] / axes_mm[1]
    z = (k - centre_vox[2]) * spacing[2] / axes_mm[2]
    level = x**2 + y**2 + z**2
    bump = 1.0 + 0.12 * np.sin(3.0 * y + phase[0]) * np.cos(2.0 * z + phase[1]) + 0.06 * np.sin(4.0 * x + phase[2])
    region = volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    region[level < bump] = class_value


def _paint_aorta(volume, spacing, offset_mm, radius_mm):
    shape = volume.shape
    ci, cj = shape[0] / 2 + offset_mm[0] / spacing[0], shape[1] / 2 + offset_mm[1] / spacing[1]
    i, j = np.ogrid[:shape[0], :shape[1]]
    disc = ((i - ci) * spacing[0]) ** 2 + ((j - cj) * spacing[1]) ** 2 < radius_mm**2
    k0, k1 = int(0.08 * shape[2]), int(0.92 * shape[2])
    volume[:, :, k0:k1][disc] = 1


def make_case(seed: int, slices: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A (prediction, reference, spacing) triple of Synapse size: 512 x 512 x ``slices`` uint8 synapse8 maps."""
    rng = np.random.default_rng(seed)
    pixel = float(rng.uniform(0.66, 0.9))
    spacing = (pixel, pixel, float(rng.choice([2.5, 3.0])))
    shape = (512, 512, slices)
    reference = np.zeros(shape, np.uint8)
    prediction = np.zeros(shape, np.uint8)
    _paint_aorta(reference, spacing, AORTA_OFFSET_MM, AORTA_RADIUS_MM)
    shifted = tuple(v + rng.normal(0, 1.0) for v in AORTA_OFFSET_MM)
    _paint_aorta(prediction, spacing, shifted, AORTA_RADIUS_MM * rng.uniform(0.9, 1.1))
    for class_value, (centre, axes) in ORGAN_SPECS.items():
        size = rng.uniform(0.9, 1.1)
        centre = tuple(c + rng.normal(0, 5.0) for c in centre)
        axes = tuple(a * size for a in axes)
        phase = rng.uniform(0, 2 * np.pi, 3)
        _paint_blob(reference, class_value, centre, axes, spacing, rng, phase)
        # the prediction: a few mm off, a few % larger or smaller, a slightly different shape
        pred_centre = tuple(c + rng.normal(0, 1.5) for c in centre)
        pred_axes = tuple(a * rng.uniform(0.93, 1.07) for a in axes)
        _paint_blob(prediction, class_value, pred_centre, pred_axes, spacing, rng, phase + rng.normal(0, 0.3, 3))
        if rng.random() < 0.5:  # a detached false-positive island 4-8 cm away
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            island = tuple(c + d * rng.uniform(40, 80) for c, d in zip(centre, direction))
            _paint_blob(prediction, class_value, island, (5.0, 5.0, 6.0), spacing, rng, np.zeros(3))
    return prediction, reference, spacing


def make_phantom_case(case_index: int, seed: int):
    """A full-size case of medseg's phantom cohort (if available) and a perturbed prediction of it."""
    from scipy import ndimage

    from medseg.phantom import generate_case
    from medseg.labels import SYNAPSE8, remap_labels

    _, label = generate_case(case_index, seed, size="full")
    reference = remap_labels(label.array, SYNAPSE8)
    prediction = np.roll(reference, 2, axis=0)
    prediction = np.where(ndimage.binary_erosion(prediction > 0, iterations=1), prediction, 0).astype(np.uint8)
    return prediction, reference, label.spacing


# ----------------------------------------------------------------------------------------------------------------
# the three paths; every time is (wall seconds, CPU seconds of this process)


class Clock:
    """Wall-clock and process CPU time of a stretch of code (CPU time is robust to other load on a shared box)."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu

    @property
    def times(self) -> tuple[float, float]:
        return self.wall, self.cpu


def run_medseg(prediction, reference, spacing, protocol, tolerance, repeats):
    """medseg's result and its (wall, CPU) times, each the median over ``repeats`` runs."""
    from medseg.evaluation import evaluate_case

    walls, cpus = [], []
    for _ in range(repeats):
        with Clock() as clock:
            result = evaluate_case(prediction, reference, spacing, "synapse8", protocol=protocol,
                                   tolerance_mm=tolerance)
        walls.append(clock.wall)
        cpus.append(clock.cpu)
    return result, (statistics.median(walls), statistics.median(cpus))


def run_medpy(prediction, reference):
    """TransUNet's per-case metric loop (calculate_metric_percase per organ, medpy dc + hd95, full volume)."""
    from medpy import metric

    values = {}
    with Clock() as clock:
        for class_value, organ in enumerate(ORGAN_NAMES, start=1):
            pred, gt = prediction == class_value, reference == class_value
            if pred.sum() > 0 and gt.sum() > 0:
                values[organ] = (metric.binary.dc(pred, gt), metric.binary.hd95(pred, gt))
            elif pred.sum() > 0 and gt.sum() == 0:
                values[organ] = (1.0, 0.0)
            else:
                values[organ] = (0.0, 0.0)
    return values, clock.times


def run_monai(prediction, reference, spacing, tolerance):
    """MONAI's CPU metric functions per organ; returns values, times of Dice + HD95, times of all four."""
    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    values = {}
    dice_hd95, others = Clock(), Clock()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for class_value, organ in enumerate(ORGAN_NAMES, start=1):
            with dice_hd95:
                pred = torch.from_numpy(prediction == class_value)[None, None].float()
                ref = torch.from_numpy(reference == class_value)[None, None].float()
                dice = compute_dice(pred, ref, include_background=True).item()
                hd95 = compute_hausdorff_distance(pred, ref, include_background=True, percentile=95,
                                                  spacing=spacing).item()
            with others:
                assd = compute_average_surface_distance(pred, ref, include_background=True, symmetric=True,
                                                        spacing=spacing).item()
                nsd = compute_surface_dice(pred, ref, [tolerance], include_background=True, spacing=spacing).item()
            values[organ] = {"dice": dice, "hd95_mm": hd95, "assd_mm": assd, "nsd": nsd}
    total = (dice_hd95.wall + others.wall, dice_hd95.cpu + others.cpu)
    return values, dice_hd95.times, total


def _max_abs(pairs) -> float:
    return max((abs(a - b) for a, b in pairs), default=0.0)


def _max_rel(pairs) -> float:
    return max((abs(a - b) / max(abs(b), 1e-12) for a, b in pairs), default=0.0)


# ----------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=3, help="cases timed with medseg (default 3)")
    parser.add_argument("--medpy-cases", type=int, default=1, help="of those, cases run through medpy (default 1)")
    parser.add_argument("--monai-cases", type=int, default=1, help="of those, cases run through MONAI (default 1)")
    parser.add_argument("--slices", type=int, default=150, help="axial slices of the middle case (default 150)")
    parser.add_argument("--tolerance", type=float, default=2.0, help="NSD tolerance in mm (default 2)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="medseg runs per case without medpy/MONAI, median taken (default 3)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds on the cases that run medpy or MONAI (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", choices=("synthetic", "phantom"), default="synthetic",
                        help="synthetic ellipsoid organs (default) or medseg's phantom cohort (size full)")
    parser.add_argument("--write-results", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = parser.parse_args(argv)

    load_before = _load()
    rows = []
    for index in range(args.cases):
        if args.source == "phantom":
            prediction, reference, spacing = make_phantom_case(index + 1, args.seed)
        else:
            slices = args.slices + 10 * (index % 3) - 10  # 140, 150, 160, ...
            prediction, reference, spacing = make_case(args.seed * 1000 + index, slices)
        row = {"case": index + 1, "shape": reference.shape, "spacing": spacing, "times": {}}
        times = row["times"]
        with_medpy, with_monai = index < args.medpy_cases, index < args.monai_cases
        if with_medpy or with_monai:
            result, medpy_values, monai_values = _alternate_paths(row, prediction, reference, spacing, args,
                                                                  with_medpy, with_monai)
        else:
            result, times["medseg_both"] = run_medseg(prediction, reference, spacing, "both", args.tolerance,
                                                      args.repeats)
            _, times["medseg_transunet"] = run_medseg(prediction, reference, spacing, "transunet", args.tolerance,
                                                      args.repeats)
            _, times["medseg_standard"] = run_medseg(prediction, reference, spacing, "standard", args.tolerance,
                                                     args.repeats)
        standard, paper = result["standard"], result["transunet"]
        dices = [standard[o]["dice"] for o in ORGAN_NAMES if standard[o]["dice"] is not None]
        row["dice_range"] = (min(dices), max(dices))
        if with_medpy:
            row["medpy_dice_diff"] = _max_abs((paper[o]["dice"], medpy_values[o][0]) for o in ORGAN_NAMES)
            row["medpy_hd95_diff"] = _max_abs((paper[o]["hd95_voxels"], medpy_values[o][1]) for o in ORGAN_NAMES)
        if with_monai:
            for key in ("dice", "hd95_mm", "assd_mm", "nsd"):
                pairs = [(standard[o][key], monai_values[o][key]) for o in ORGAN_NAMES
                         if standard[o][key] is not None]
                row[f"monai_{key}_rel"] = _max_rel(pairs)
        rows.append(row)
        print(_row_line(row), flush=True)

    text = render_results(rows, args, load_before, _load())
    print()
    print(text)
    if args.write_results:
        path = write_section(Path(__file__).with_name("RESULTS.md"), SECTION_TITLE, text)
        print(f"written to {path}")
    return 0


def _alternate_paths(row, prediction, reference, spacing, args, with_medpy: bool, with_monai: bool):
    """Run medseg's three protocols, medpy and MONAI once per round, alternating; fill ``row`` with the median
    (wall, CPU) times and the per-round (wall, CPU) times of each path. Returns (medseg both result, medpy values,
    MONAI values)."""
    kept, cpu_rounds = {}, {}

    def path(name, function):
        def call():
            with Clock() as clock:
                kept[name] = function()
            cpu_rounds.setdefault(name, []).append(clock.cpu)
        return call

    sides = {
        "medseg_transunet": path("medseg_transunet", lambda: run_medseg(prediction, reference, spacing, "transunet",
                                                                        args.tolerance, 1)[0]),
        "medseg_standard": path("medseg_standard", lambda: run_medseg(prediction, reference, spacing, "standard",
                                                                      args.tolerance, 1)[0]),
        "medseg_both": path("medseg_both", lambda: run_medseg(prediction, reference, spacing, "both",
                                                              args.tolerance, 1)[0]),
    }
    if with_medpy:
        sides["medpy"] = path("medpy", lambda: run_medpy(prediction, reference)[0])
    if with_monai:
        sides["monai_all"] = path("monai_all", lambda: run_monai(prediction, reference, spacing, args.tolerance))
    comparison = alternate(sides, args.rounds, "medseg_transunet",
                           on_round=lambda i, t: print(f"  case {row['case']} round {i + 1}: " + ", ".join(
                               f"{n} {v:.2f} s" for n, v in t.items()), flush=True))
    row["rounds"] = {name: list(zip(comparison.times[name], cpu_rounds[name])) for name in sides}
    row["times"] = {name: (statistics.median(comparison.times[name]), statistics.median(cpu_rounds[name]))
                    for name in sides}
    monai_values = None
    if with_monai:
        monai_values, dice_hd95_times, _ = kept["monai_all"]
        row["times"]["monai_dice_hd95"] = dice_hd95_times  # the last round's share of the four-metric run
    return kept["medseg_both"], kept.get("medpy"), monai_values


COLUMNS = (("medseg_both", "medseg both"), ("medseg_transunet", "medseg TransUNet"),
           ("medseg_standard", "medseg standard"), ("medpy", "medpy path"), ("monai_dice_hd95", "MONAI Dice+HD95"),
           ("monai_all", "MONAI 4 metrics"))


def _cell(times, key) -> str:
    if key not in times:
        return "-"
    wall, cpu = times[key]
    digits = 2 if wall < 10 else 1
    return f"{wall:.{digits}f} ({cpu:.{digits}f})"


def _row_line(row) -> str:
    spacing = tuple(round(s, 3) for s in row["spacing"])
    cells = "; ".join(f"{label} {_cell(row['times'], key)} s" for key, label in COLUMNS if key in row["times"])
    return f"case {row['case']}: shape {row['shape']}, spacing {spacing}; {cells}"


def _ratio(rows, slow: str, fast: str) -> tuple[str, str, int]:
    """Per-round ratios slow / fast over the alternated rounds of every case that ran both: the median with the
    range, for wall and CPU time (``"331x (320-340)"``), and the number of cases."""
    walls, cpus, cases = [], [], 0
    for r in rows:
        rounds = r.get("rounds", {})
        if slow in rounds and fast in rounds:
            cases += 1
            for (slow_wall, slow_cpu), (fast_wall, fast_cpu) in zip(rounds[slow], rounds[fast]):
                walls.append(slow_wall / fast_wall)
                cpus.append(slow_cpu / fast_cpu)
    if not cases:
        return "", "", 0

    def text(values):
        return f"{statistics.median(values):.0f}x ({min(values):.0f}-{max(values):.0f})"
    return text(walls), text(cpus), cases


def _load() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "?"


def _machine() -> str:
    model = cpu_name()
    return f"{model}, {os.cpu_count()} logical CPUs"


def _versions() -> str:
    import monai
    import scipy
    import torch

    try:
        from importlib.metadata import version

        medpy_version = version("medpy")
    except Exception:  # noqa: BLE001 - only for the record
        medpy_version = "?"
    from medseg import __version__

    return (f"medseg {__version__}, numpy {np.__version__}, scipy {scipy.__version__}, medpy {medpy_version}, "
            f"MONAI {monai.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}")


def render_results(rows, args, load_before: str, load_after: str) -> str:
    """The RESULTS.md section: setup, per-case table, ratios and value agreement."""
    command = " ".join(["python benchmarks/eval_speed.py"] + sys.argv[1:])
    lines = [
        SECTION_TITLE,
        "",
        f"Command: `{command}`. One process, one case at a time, all paths on the same arrays in memory (file "
        f"reading excluded). On the cases that run medpy or MONAI every path runs once per round over "
        f"{args.rounds} alternating rounds (order reversed every other round) and the times are medians over "
        f"rounds; a ratio is the median of the per-round ratios, its range in brackets. Other cases: medseg only, "
        f"median of {args.repeats} runs. MONAI's Dice+HD95 column is that part of the last round's four-metric "
        "run.",
        f"Machine: {_machine()}, shared with other developers while measured (load average 1/5/15 min: "
        f"{load_before} before, {load_after} after), which can inflate wall times; CPU times (in parentheses, this "
        f"process only) are steadier. {_versions()}.",
        f"Cases: {CASE_DESCRIPTIONS[args.source]} (organ Dice {min(r['dice_range'][0] for r in rows):.2f}-"
        f"{max(r['dice_range'][1] for r in rows):.2f}). NSD tolerance {args.tolerance:g} mm.",
        "",
        "| case | shape | spacing (mm) | " + " | ".join(f"{label} (s)" for _, label in COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        shape = "x".join(str(n) for n in r["shape"])
        spacing = " x ".join(f"{v:.3g}" for v in r["spacing"])
        lines.append(f"| {r['case']} | {shape} | {spacing} | "
                     + " | ".join(_cell(r["times"], key) for key, _ in COLUMNS) + " |")
    lines.append("")
    wall, cpu, n = _ratio(rows, "medpy", "medseg_transunet")
    if n:
        wall_both, cpu_both, _ = _ratio(rows, "medpy", "medseg_both")
        diffs = [r for r in rows if "medpy_dice_diff" in r]
        lines.append(
            f"- **vs the medpy path** (TransUNet's `dc` + `hd95` per organ on the full volume; {n} case(s)): "
            f"medseg's TransUNet protocol, the same numbers, is **{wall}** faster (CPU time: {cpu}). "
            f"medseg computing both protocols (Dice, HD95, ASSD, NSD, volumes and the paper's numbers) is "
            f"{wall_both} faster (CPU {cpu_both}). Largest difference from medpy over all organs: Dice "
            f"{max(r['medpy_dice_diff'] for r in diffs):.1e}, HD95 {max(r['medpy_hd95_diff'] for r in diffs):.1e} "
            "voxels."
        )
    wall, cpu, n = _ratio(rows, "monai_all", "medseg_standard")
    if n:
        monai_rows = [r for r in rows if "monai_dice_rel" in r]
        rel = {k: max(r[f"monai_{k}_rel"] for r in monai_rows) for k in ("dice", "hd95_mm", "assd_mm", "nsd")}
        lines.append(
            f"- **vs MONAI on CPU** ({n} case(s), one organ channel per call): medseg's standard protocol (Dice, "
            f"HD95, ASSD, NSD and volumes in one pass) is **{wall}** faster than MONAI's four functions (CPU "
            f"{cpu}). Largest "
            f"relative difference from MONAI: Dice {rel['dice']:.1e}, HD95 {rel['hd95_mm']:.1e}, ASSD "
            f"{rel['assd_mm']:.1e}, NSD {rel['nsd']:.1e}. (MONAI keeps distances in float32 and computes its "
            "percentile rank in float32, which can move its HD95 by a little; the tests compare with that step in "
            "float64 and find agreement within 1e-6.)"
        )
    lines.append(
        "- Across cases, `medseg evaluate --workers N` evaluates cases in N processes (not timed here: on this "
        "shared 2-core machine it measures the neighbours' load; reading the NIfTI files is then part of each "
        "worker's time)."
    )
    return "\n".join(lines) + "\n"




if __name__ == "__main__":
    sys.exit(main())
