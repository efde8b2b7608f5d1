"""Parity of the zoo with the official implementations, and parameter counts at the published sizes.

Usage::

    python benchmarks/zoo_parity.py                                # print the section
    python benchmarks/zoo_parity.py --write benchmarks/RESULTS.md  # also (re)write this script's section there

For every fixture of ``tests/data/zoo`` (official state_dict layout + the official model's eval-mode outputs for a
fixed input; see the README there): the official weights are regenerated from the key list, mapped by the family's
official key map, loaded strictly, and medseg's outputs (main and auxiliary) are compared with the official ones:
maximum absolute error and relative L2 error ``||medseg - official|| / ||official||``. The same comparisons are
asserted in ``tests/test_zoo_parity.py`` (``max abs <= 1e-4 * max(1, max|official|)`` and relative L2 at most
``MAX_RELATIVE_L2`` of ``tests/zoo_reference.py``). Then the parameter counts of
``medseg models`` beside the official code's (:class:`medseg.models.registry.OfficialCount`).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the fixture helpers (weight rule, fixture files)

HEADING = "## Zoo parity with the official implementations (benchmarks/zoo_parity.py)"
REDUCED_SETR = dict(hidden_size=64, num_layers=4, num_heads=4, mlp_dim=256, decoder_channels=256, mla_head_channels=128)
REDUCED_MIT = dict(hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1], num_attention_heads=[1, 2, 2, 4],
                   decoder_hidden_size=64)

# (label, registry name, overrides, fixture, family, key of the main output in the fixture)
CASES = [
    ("TopFormer-Tiny", "TopFormer-Tiny", {}, "topformer_tiny_9cls_64", "topformer", "logits_upsampled"),
    ("SegFormer-B0", "SegFormer-B0", {}, "segformer_b0_9cls", "segformer", "logits_upsampled"),
    ("SegFormer reduced MiT", "SegFormer-B0", REDUCED_MIT, "segformer_reduced_9cls", "segformer", "logits_upsampled"),
    ("BiSeNet v1 R18", "BiSeNet-R18", {}, "bisenetv1_9cls", "bisenet", "logits"),
    ("SETR-Naive (reduced ViT)", "SETR-Naive-S", REDUCED_SETR, "setr_naive_reduced_9cls", "setr", "logits"),
    ("SETR-PUP (reduced ViT)", "SETR-PUP-S", REDUCED_SETR, "setr_pup_reduced_9cls", "setr", "logits"),
    ("SETR-MLA (reduced ViT)", "SETR-MLA-S", REDUCED_SETR, "setr_mla_reduced_9cls", "setr", "logits"),
    ("DS-TransUNet-B, 64 px", "DS-TransUNet-B", {}, "ds_transunet_9cls_64", "ds_transunet", "logits"),
]


def measure() -> list[dict]:
    """One row per fixture output: label, output name, max abs error, relative L2, max |official|."""
    import torch

    from medseg.models import create
    from medseg.models.pretrained import convert_official
    from zoo_reference import ZOO, errors, official_weights, parity_io, parity_tolerance

    rows = []
    for label, name, overrides, fixture, family, main_key in CASES:
        io = parity_io(fixture)
        layout = fixture.rsplit("_64", 1)[0] if family == "ds_transunet" else fixture
        model = create(name, num_classes=9, img_size=io["input"].shape[-1], in_channels=3, **overrides)
        model.load_state_dict(convert_official(family, official_weights(ZOO / f"{layout}_state_dict.tsv"), model),
                              strict=True)
        model.eval()
        with torch.no_grad():
            outputs = [("main", model(io["input"]), io[main_key])]
            aux_keys = sorted(key for key in io if key.startswith("aux_"))
            if aux_keys:
                model.training = True  # training-mode outputs, every layer in eval mode
                extra = model(io["input"])[1:]
                model.eval()
                outputs += [(key, value, io[key]) for key, value in zip(aux_keys, extra)]
        for output, actual, expected in outputs:
            max_abs, relative = errors(actual, expected)
            rows.append({"model": label, "output": output, "max_abs": max_abs, "relative": relative,
                         "scale": expected.abs().max().item(), "tolerance": parity_tolerance(expected)})
    return rows


def render(rows: list[dict], counts: list[dict], load_before, load_after) -> str:
    import numpy
    import torch
    from zoo_reference import MAX_RELATIVE_L2

    lines = [HEADING, "",
             "Command: `python benchmarks/zoo_parity.py --write benchmarks/RESULTS.md`. Machine: "
             f"{platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
             f"({torch.get_num_threads()} threads), numpy {numpy.__version__}, Python {platform.python_version()}; "
             f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (shared machine; no timings "
             "here).", "",
             "Official weights regenerated from the fixtures' key lists (`tests/data/zoo`), mapped by each family's "
             "official key map, loaded strictly; outputs in eval mode (auxiliary heads: the training-mode forward "
             "with every layer in eval mode). Error = medseg - official; what the tests assert: max abs error "
             f"<= `1e-4 * max(1, max|official|)` and relative L2 <= {MAX_RELATIVE_L2:.0e}. Largest relative L2 "
             f"here: {max(row['relative'] for row in rows):.1e} "
             f"({max(rows, key=lambda row: row['relative'])['model']}, "
             f"{max(rows, key=lambda row: row['relative'])['output']}).", "",
             "| model (fixture) | output | max abs error | relative L2 | max abs official |",
             "|---|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['output']} | {row['max_abs']:.2e} | {row['relative']:.2e} | "
                     f"{row['scale']:.3g} |")
    lines += ["", "Parameter counts at the published sizes: the official code's count (instantiated official class, "
              "at its configuration) beside medseg's at the same configuration (`medseg models`). *Not built*: "
              "official parameters with no medseg counterpart by construction (mmseg's unused `conv_seg` heads; conv "
              "biases before BatchNorm, folded into it; SETR-MLA's unused class token and its position row).", "",
              "| variant | configuration | official code | medseg | not built | equal |",
              "|---|---|---:|---:|---:|---|"]
    for row in counts:
        official = row["official"]
        config = (f"{official['num_classes']} classes, {official['in_channels']} ch, {official['img_size']} px"
                  + (", backbone only" if official["scope"] == "backbone" else ""))
        lines.append(f"| {row['name']} | {config} | {official['parameters']:,} | {official['medseg']:,} | "
                     f"{official['not_built']:,} | {'yes' if official['equal'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="(re)write this script's section in this RESULTS.md")
    args = parser.parse_args(argv)
    import torch

    from medseg.commands.models import model_rows

    torch.set_num_threads(1)  # as the tests (single_thread fixture): the same kernels, the same figures
    before = os.getloadavg()
    rows = measure()
    counts = [row for row in model_rows() if row["official"]]
    text = render(rows, counts, before, os.getloadavg())
    print(text)
    if args.write:
        from results_file import write_section

        write_section(args.write, HEADING, text)
    from zoo_reference import MAX_RELATIVE_L2

    return 0 if all(r["max_abs"] <= r["tolerance"] and r["relative"] <= MAX_RELATIVE_L2 for r in rows) and all(
        r["official"]["equal"] for r in counts) else 1


if __name__ == "__main__":
    sys.exit(main())
