"""``medseg prepare RAW_DIR OUT_DIR``: decode every volume once into a 2D slice cache (or the TransUNet layout).

Cases already in OUT_DIR are reused only when their source files (content hash) and settings are unchanged;
others are prepared again and listed. Images without a label in a labelled cohort, and files that do not follow
the layout's naming, are listed and skipped (``--allow-unlabelled`` keeps unlabelled images). Exit code 0 when
every case was prepared or reused, 1 when some cases or files were skipped (listed on stderr and in the
manifest), 2 when nothing could be prepared.
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from medseg.errors import ConfigError


def add_arguments(parser) -> None:
    parser.add_argument("raw_dir", type=Path, help="cohort folder (BTCV img/ + label/, nnU-Net, plain, "
                                                   "or a TransUNet train_npz/test_vol_h5 folder)")
    parser.add_argument("out_dir", type=Path, help="output folder")
    parser.add_argument("--labels", default="synapse8", choices=["synapse8", "btcv13"],
                        help="label set (default: synapse8, the TransUNet paper's 8 organs)")
    parser.add_argument("--label-map", type=Path, metavar="FILE",
                        help="numbering of the label files: an nnU-Net dataset.json or a JSON of organ name -> "
                             "value (default: RAW_DIR/dataset.json when present, else BTCV's 1..13)")
    parser.add_argument("--format", default="medseg", choices=["medseg", "transunet"],
                        help="medseg slice cache, or TransUNet's train_npz/ + test_vol_h5/ layout")
    parser.add_argument("--split", default="auto", choices=["auto", "paper", "seeded", "all-train", "all-test"],
                        help="train/test split: the paper's Synapse ids (auto when all 30 are present) or seeded")
    parser.add_argument("--test-fraction", type=float, default=0.4, help="test share of a seeded split")
    parser.add_argument("--seed", type=int, default=1234, help="seed of a seeded split")
    parser.add_argument("--drop-empty", action="store_true",
                        help="with --format transunet: write only training slices that hold an organ")
    parser.add_argument("--allow-unlabelled", action="store_true",
                        help="keep images without a label in a labelled cohort (default: list and skip them)")
    parser.add_argument("--input-mode", default="resize", choices=["resize", "spacing"],
                        help="model input: resize each slice to the model size (the paper) or resample it to a fixed "
                             "in-plane spacing first (spacing-aware; recorded in the cache and checkpoints)")
    parser.add_argument("--target-spacing", type=float, default=None, metavar="MM",
                        help="in-plane spacing of --input-mode spacing (default: the training split's median)")
    parser.add_argument("--workers", type=int, default=1, help="cases processed in parallel")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from medseg.data.slice_cache import prepare_cohort
    from medseg.data.transforms import PreprocessingParams
    from medseg.data.transunet_format import export_transunet, import_transunet, is_transunet_layout

    from medseg.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_SOME_FAILED
    from medseg.io import check_output_path, ensure_folder, make_temp_dir, remove_stale_temps

    if args.workers < 1:
        raise ConfigError(f"--workers: must be at least 1, got {args.workers}")
    check_output_path(args.out_dir, "output folder", folder=True)
    started = time.perf_counter()
    if is_transunet_layout(args.raw_dir):
        if args.format != "medseg":
            raise ConfigError("--format: a TransUNet-layout input converts to the medseg format only")
        if args.label_map is not None:
            raise ConfigError(f"--label-map: {args.raw_dir} is in the TransUNet layout, whose labels are already "
                              f"{args.labels} classes")
        manifest = import_transunet(args.raw_dir, args.out_dir, labels=args.labels)
        print(f"imported {len(manifest['cases'])} cases from the TransUNet layout into {args.out_dir}")
        return 0

    cache_dir = args.out_dir
    scratch = None
    if args.format == "transunet":
        ensure_folder(args.out_dir)
        remove_stale_temps(args.out_dir)
        scratch = make_temp_dir(args.out_dir, "slice-cache")
        cache_dir = Path(scratch)
    try:
        params = PreprocessingParams.from_dict({"input_mode": args.input_mode,
                                                "target_spacing_mm": args.target_spacing}, source="medseg prepare")
        summary = prepare_cohort(args.raw_dir, cache_dir, labels=args.labels, params=params, split=args.split,
                                 test_fraction=args.test_fraction, seed=args.seed, workers=args.workers,
                                 progress=not args.no_progress, allow_unlabelled=args.allow_unlabelled,
                                 label_map=args.label_map)
        if args.format == "transunet":
            counts = export_transunet(cache_dir, args.out_dir, drop_empty=args.drop_empty)
            print(f"wrote {counts['train_slices']} training slices and {counts['test_volumes']} test volumes "
                  f"in the TransUNet layout to {args.out_dir}")
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.perf_counter() - started
    from medseg.labels import describe_label_map

    if summary.label_set is not None and summary.label_set.label_map is not None:
        print(describe_label_map(summary.label_set))
    reprepared = f" ({len(summary.reprepared)} prepared again: sources or settings changed)" \
        if summary.reprepared else ""
    skipped = len(summary.failed) + len(summary.skipped_files)
    print(f"prepared {len(summary.written)} cases{reprepared}, {len(summary.already_done)} already done, "
          f"{skipped} skipped in {elapsed:.1f} s -> {args.out_dir}")
    for case_id, why in sorted(summary.reprepared.items()):
        print(f"prepared {case_id} again: {why}")
    for case_id, message in sorted(summary.failed.items()):
        print(f"skipped {case_id}: {message}", file=sys.stderr)
    for path, reason in sorted(summary.skipped_files.items()):
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if not (summary.written or summary.already_done):
        return EXIT_BAD_INPUT
    return EXIT_SOME_FAILED if skipped else EXIT_OK
