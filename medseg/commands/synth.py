"""``medseg synth OUT_DIR``: write a synthetic Synapse-like phantom cohort in the raw BTCV layout.

See :mod:`medseg.phantom` for what the phantom holds and how it is made.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from medseg import schema
from medseg.schema import SynthStage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``medseg synth``: the output folder, the synth stage's settings (:class:`SynthStage`), preview."""
    parser.add_argument("out_dir", type=Path, help="output folder (img/, label/, phantom.json, preview.png)")
    schema.add_arguments(parser, SynthStage, defaults=True)
    parser.add_argument("--no-preview", action="store_true", help="do not render preview.png")


def run(args: argparse.Namespace) -> int:
    """Write the cohort and print where it went, how long it took and the preview's path."""
    from medseg.phantom import write_cohort
    from medseg.io import check_output_path, remove_stale_temps

    settings = schema.build(SynthStage, schema.check_flags(args, SynthStage), "command line")
    check_output_path(args.out_dir, "output folder", folder=True)
    remove_stale_temps(args.out_dir, recursive=True)
    summary = write_cohort(args.out_dir, **dataclasses.asdict(settings), progress=True, preview=not args.no_preview)
    noun = "case" if summary["cases"] == 1 else "cases"
    print(f"wrote {summary['cases']} {summary['size']} phantom {noun} (seed {summary['seed']}) to "
          f"{summary['out_dir']} in {summary['seconds']:.1f} s")
    if summary["omitted"]:
        missing = ", ".join(f"{case} ({'+'.join(organs)})" for case, organs in summary["omitted"].items())
        print(f"cases without an organ: {missing}")
    if summary["preview"]:
        print(f"preview: {summary['preview']}")
    return 0
