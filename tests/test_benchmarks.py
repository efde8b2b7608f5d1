"""The benchmark scripts' own logic: side-by-side ratios, and gpu_check.sh's CPU-only mode."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from side_by_side import SideBySide, alternate  # noqa: E402


def test_alternate_reverses_the_order_every_other_round_and_keeps_results():
    calls = []
    sides = {name: (lambda n=name: calls.append(n) or n.upper()) for name in ("ref", "a", "b")}
    result = alternate(sides, rounds=3, reference="ref")
    assert calls == ["ref", "a", "b", "b", "a", "ref", "ref", "a", "b"]
    assert result.rounds == 3 and result.results == {"ref": "REF", "a": "A", "b": "B"}
    assert result.load_before and result.load_after
    with pytest.raises(ValueError, match="reference side"):
        alternate(sides, rounds=1, reference="missing")


def test_ratio_is_the_median_of_per_round_ratios_with_its_range():
    result = SideBySide(reference="ref", times={"ref": [4.0, 9.0, 6.0], "fast": [2.0, 3.0, 1.0]})
    assert result.ratios("fast") == [2.0, 3.0, 6.0]
    assert result.ratio("fast") == 3.0  # not sum(ref) / sum(fast) = 19 / 6
    assert result.spread("fast") == (2.0, 6.0)
    assert result.ratio_text("fast") == "3.00x (2.00-6.00)"
    assert result.median_time("ref") == 6.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only mode")
def test_gpu_check_without_a_gpu_says_so_runs_a_smoke_run_and_exits_0(tmp_path):
    results = tmp_path / "RESULTS.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(results)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no GPU present" in done.stdout
    assert "ddp TransUNet-Tiny: world size 1 (gloo)" in done.stdout  # the torchrun DDP run ran
    assert "CPU smoke run passed" in done.stdout
    assert not results.exists()  # no figures are written from a CPU smoke run
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("gpu-check-")]  # its temporary folder is gone


def test_sim2real_comparison_table_has_a_row_per_seed_mode_and_post_processing():
    from sim2real import render_comparison

    def figures(dice, hd):
        return {"dice": {"liver": dice, "spleen": dice / 2}, "hd95_mm": {"liver": hd, "spleen": hd},
                "mean_dice": dice * 0.75, "mean_hd95_mm": hd}

    rows = [{"seed": seed, "input_mode": mode, "rules": {"spleen": "largest component"} if mode == "spacing" else {},
             "real_ct": {"without": figures(0.4 + seed / 10, 30.0), "with": figures(0.5 + seed / 10, 20.0)},
             "phantoms": {"without": figures(0.8, 30.0), "with": figures(0.82, 15.0)},
             "train_seconds": 300.0, "load": "1.0 / 2.0"}
            for seed in (1, 2) for mode in ("resize", "spacing")]
    text = render_comparison({"rows": rows, "command": "python benchmarks/sim2real.py --compare", "machine": "m"})
    assert "| 1 | resize | without | 0.500 | 0.250 | **0.375** | 30.0 | 0.600 | 30.0 | 300 | 1.0 / 2.0 |" in text
    assert "| spacing | with | 0.487 (0.450-0.525) | 20.0 (20.0-20.0) | 0.615 (0.615-0.615) | 15.0 (15.0-15.0) | 2 |" in text
    assert "seed 1 spacing: spleen largest component" in text and "seed 1 resize: none" in text


def test_sim2real_varied_phantoms_are_summarised_per_coverage_and_tabled():
    from sim2real import coverage_figures, render_comparison, slice_axis_info

    summary = {"standard": {"cases": {
        "case0001": {"liver": {"status": "scored", "dice": 0.9, "hd95_mm": 4.0},
                     "kidney_left": {"status": "both_empty", "dice": None, "hd95_mm": None}},
        "case0002": {"liver": {"status": "scored", "dice": 0.5, "hd95_mm": 20.0},
                     "spleen": {"status": "pred_empty", "dice": 0.0, "hd95_mm": 100.0}},
        "case0003": {"liver": {"status": "scored", "dice": 0.7, "hd95_mm": 10.0}}}}}
    manifest = {"cases": [{"case_id": "case0001", "coverage": "chest-upper-abdomen"},
                          {"case_id": "case0002", "coverage": "pelvis"},
                          {"case_id": "case0003", "coverage": "pelvis"}]}
    by_coverage = coverage_figures(summary, manifest)
    assert by_coverage["chest-upper-abdomen"] == {"dice": 0.9, "hd95_mm": 4.0, "cases": 1}
    assert by_coverage["pelvis"]["dice"] == pytest.approx((0.25 + 0.7) / 2)
    assert by_coverage["pelvis"]["hd95_mm"] == pytest.approx((60.0 + 10.0) / 2) and by_coverage["pelvis"]["cases"] == 2

    def figures(dice, hd, coverage=None):
        block = {"dice": {"liver": dice}, "hd95_mm": {"liver": hd}, "mean_dice": dice, "mean_hd95_mm": hd}
        if coverage is not None:
            block["by_coverage"] = coverage
        return block

    rows = [{"seed": seed, "input_mode": "spacing", "rules": {},
             "real_ct": {"without": figures(0.4, 30.0), "with": figures(0.5, 20.0)},
             "phantoms": {"without": figures(0.8, 30.0), "with": figures(0.82, 15.0)},
             "varied": {pp: figures(0.6 + seed / 10, 40.0, {"pelvis": {"dice": 0.5 + seed / 10, "hd95_mm": 9.0,
                                                                      "cases": 1}})
                        for pp in ("without", "with")},
             "train_seconds": 300.0, "load": "1.0 / 2.0"} for seed in (1, 2)]
    stored_slices_first = {"case_id": "case0001", "coverage": "pelvis", "shape": [80, 512, 512],
                           "spacing": [5.0, 0.7, 0.7], "axcodes": "SLP", "field_of_view_mm": 358.4,
                           "omitted_organs": []}
    record = {"rows": rows, "command": "c", "machine": "m",
              "varied_phantoms": {"seed": 2000, "cases": [slice_axis_info(stored_slices_first)]}}
    text = render_comparison(record)
    assert "| 1 | spacing | with | 0.500 | **0.500** | 20.0 | 0.820 | 15.0 | 0.700 | 40.0 | 300 | 1.0 / 2.0 |" in text
    assert "| spacing | with | 0.500 (0.500-0.500) | 20.0 (20.0-20.0) | 0.820 (0.820-0.820) | 15.0 (15.0-15.0) | " \
           "0.750 (0.700-0.800) | 40.0 (40.0-40.0) | 2 |" in text
    assert "| spacing | with | 0.650 (0.600-0.700), 9 mm |" in text
    assert "pelvis 80 x 5 mm, FOV 358 mm" in text
