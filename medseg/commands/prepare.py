"""``medseg prepare RAW_DIR OUT_DIR``: decode every volume once into a 2D slice cache (or the TransUNet layout).

Cases already in OUT_DIR are reused only when their source files (content hash) and settings are unchanged;
others are prepared again and listed. Images without a label in a labelled cohort, and files that do not follow
the layout's naming, are listed and skipped (``--allow-unlabelled`` keeps unlabelled images). Exit code 0 when
every case was prepared or reused, 1 when some cases or files were skipped (listed on stderr and in the
manifest), 2 when nothing could be prepared.
"""
from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from pathlib import Path

from medseg import schema
from medseg.errors import ConfigError
from medseg.schema import PrepareStage


def add_arguments(parser) -> None:
    """Options of ``medseg prepare``: the folders, the prepare stage's settings (:class:`PrepareStage`) and the
    command's own output format and listing options."""
    parser.add_argument("raw_dir", type=Path, help="cohort folder (BTCV img/ + label/, nnU-Net, plain, "
                                                   "or a TransUNet train_npz/test_vol_h5 folder)")
    parser.add_argument("out_dir", type=Path, help="output folder")
    parser.add_argument("--format", default="medseg", choices=["medseg", "transunet"],
                        help="medseg slice cache, or TransUNet's train_npz/ + test_vol_h5/ layout")
    schema.add_arguments(parser, PrepareStage, defaults=True)
    parser.add_argument("--drop-empty", action="store_true",
                        help="with --format transunet: write only training slices that hold an organ")
    parser.add_argument("--allow-unlabelled", action="store_true",
                        help="keep images without a label in a labelled cohort (default: list and skip them)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from medseg.data.slice_cache import prepare_cohort
    from medseg.data.transforms import PreprocessingParams
    from medseg.data.transunet_format import export_transunet, import_transunet, is_transunet_layout

    from medseg.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_SOME_FAILED
    from medseg.io import check_output_path, ensure_folder, make_temp_dir, remove_stale_temps

    settings = schema.build(PrepareStage, schema.check_flags(args, PrepareStage), "command line")
    check_output_path(args.out_dir, "output folder", folder=True)
    started = time.perf_counter()
    if is_transunet_layout(args.raw_dir):
        if args.format != "medseg":
            raise ConfigError("--format: a TransUNet-layout input converts to the medseg format only")
        if settings.label_map is not None:
            raise ConfigError(f"--label-map: {args.raw_dir} is in the TransUNet layout, whose labels are already "
                              f"{settings.labels} classes")
        manifest = import_transunet(args.raw_dir, args.out_dir, labels=settings.labels)
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
        summary = prepare_cohort(args.raw_dir, cache_dir, **dataclasses.asdict(settings),
                                 progress=not args.no_progress, allow_unlabelled=args.allow_unlabelled)
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
