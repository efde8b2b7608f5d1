"""``medseg prepare RAW_DIR OUT_DIR``: decode every volume once into a 2D slice cache (or the TransUNet layout)."""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from medseg.errors import ConfigError


def add_arguments(parser) -> None:
    parser.add_argument("raw_dir", type=Path, help="cohort folder (BTCV img/ + label/, nnU-Net, plain, "
                                                   "or a TransUNet train_npz/test_vol_h5 folder)")
    parser.add_argument("out_dir", type=Path, help="output folder")
    parser.add_argument("--labels", default="synapse8", choices=["synapse8", "btcv13"],
                        help="label set (default: synapse8, the TransUNet paper's 8 organs)")
    parser.add_argument("--format", default="medseg", choices=["medseg", "transunet"],
                        help="medseg slice cache, or TransUNet's train_npz/ + test_vol_h5/ layout")
    parser.add_argument("--split", default="auto", choices=["auto", "paper", "seeded", "all-train", "all-test"],
                        help="train/test split: the paper's Synapse ids (auto when all 30 are present) or seeded")
    parser.add_argument("--test-fraction", type=float, default=0.4, help="test share of a seeded split")
    parser.add_argument("--seed", type=int, default=1234, help="seed of a seeded split")
    parser.add_argument("--drop-empty", action="store_true",
                        help="with --format transunet: write only training slices that hold an organ")
    parser.add_argument("--workers", type=int, default=1, help="cases processed in parallel")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from medseg.data.slice_cache import prepare_cohort
    from medseg.data.transunet_format import export_transunet, import_transunet, is_transunet_layout

    if args.workers < 1:
        raise ConfigError(f"--workers: must be at least 1, got {args.workers}")
    started = time.perf_counter()
    if is_transunet_layout(args.raw_dir):
        if args.format != "medseg":
            raise ConfigError("--format: a TransUNet-layout input converts to the medseg format only")
        manifest = import_transunet(args.raw_dir, args.out_dir, labels=args.labels)
        print(f"imported {len(manifest['cases'])} cases from the TransUNet layout into {args.out_dir}")
        return 0

    cache_dir = args.out_dir
    scratch = None
    if args.format == "transunet":
        scratch = tempfile.TemporaryDirectory(prefix=".medseg-prepare-", dir=args.out_dir.parent)
        cache_dir = Path(scratch.name)
    try:
        summary = prepare_cohort(args.raw_dir, cache_dir, labels=args.labels, split=args.split,
                                 test_fraction=args.test_fraction, seed=args.seed, workers=args.workers,
                                 progress=not args.no_progress)
        if args.format == "transunet":
            counts = export_transunet(cache_dir, args.out_dir, drop_empty=args.drop_empty)
            print(f"wrote {counts['train_slices']} training slices and {counts['test_volumes']} test volumes "
                  f"in the TransUNet layout to {args.out_dir}")
    finally:
        if scratch is not None:
            scratch.cleanup()
    elapsed = time.perf_counter() - started
    print(f"prepared {len(summary.written)} cases, {len(summary.already_done)} already done, "
          f"{len(summary.failed)} skipped in {elapsed:.1f} s -> {args.out_dir}")
    for case_id, message in sorted(summary.failed.items()):
        print(f"skipped {case_id}: {message}", file=sys.stderr)
    if summary.failed and not (summary.written or summary.already_done):
        return 2
    return 0
