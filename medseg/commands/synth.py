"""``medseg synth OUT_DIR``: write a synthetic Synapse-like phantom cohort in the raw BTCV layout.

See :mod:`medseg.phantom` for what the phantom holds and how it is made.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``medseg synth``."""
    parser.add_argument("out_dir", type=Path, help="output folder (img/, label/, phantom.json, preview.png)")
    parser.add_argument("--cases", type=int, default=20, help="number of cases (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="random seed, an integer >= 0 (default 0)")
    parser.add_argument("--size", choices=("small", "full"), default="small",
                        help="small: 128x128x44-56 with 2.5-3 mm pixels (CPU tests, default); "
                             "full: 512x512x85-198 like Synapse (benchmarks)")
    parser.add_argument("--workers", type=int, default=1, help="processes generating cases in parallel (default 1)")
    parser.add_argument("--no-preview", action="store_true", help="do not render preview.png")


def run(args: argparse.Namespace) -> int:
    """Write the cohort and print where it went, how long it took and the preview's path."""
    from medseg.phantom import write_cohort
    from medseg.io import check_output_path, remove_stale_temps

    check_output_path(args.out_dir, "output folder", folder=True)
    remove_stale_temps(args.out_dir, recursive=True)
    summary = write_cohort(args.out_dir, cases=args.cases, seed=args.seed, size=args.size, workers=args.workers,
                           progress=True, preview=not args.no_preview)
    noun = "case" if summary["cases"] == 1 else "cases"
    print(f"wrote {summary['cases']} {summary['size']} phantom {noun} (seed {summary['seed']}) to "
          f"{summary['out_dir']} in {summary['seconds']:.1f} s")
    if summary["omitted"]:
        missing = ", ".join(f"{case} ({'+'.join(organs)})" for case, organs in summary["omitted"].items())
        print(f"cases without an organ: {missing}")
    if summary["preview"]:
        print(f"preview: {summary['preview']}")
    return 0
