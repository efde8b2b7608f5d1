"""``medseg run PIPELINE.yaml [--set key=value ...] [--dry-run] [--force STAGE]``: run a YAML pipeline.

Exit code 0 when every stage ran or was cached and every held-out case was scored (also when training stopped
at ``train.stop_after`` as asked: run again to continue); 1 when the evaluation counted failed cases or cohort
files could not be prepared (listed in the report); 2 for a bad pipeline, a run folder another process is using,
or a stage that could not run; 130/143 interrupted.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("pipeline", type=Path, help="pipeline file (see pipelines/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value, e.g. --set data=/data/Synapse --set train.epochs=5")
    parser.add_argument("--dry-run", action="store_true", help="validate and show which stages would run")
    parser.add_argument("--force", action="append", default=[], metavar="STAGE",
                        help="re-run STAGE (and what follows) even if its inputs are unchanged")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from medseg.errors import EXIT_OK, EXIT_SOME_FAILED, ConfigError, TrainingStopped
    from medseg.io import check_output_path, remove_stale_temps
    from medseg.pipeline import STAGE_ORDER, load_pipeline, run_pipeline

    pipeline = load_pipeline(args.pipeline, args.overrides)
    check_output_path(pipeline.run_dir, "run folder", folder=True)
    if not args.dry_run:
        remove_stale_temps(pipeline.run_dir, recursive=True)
    for stage in args.force:
        if stage not in pipeline.stages:
            raise ConfigError(f"--force: {stage} is not a stage of {args.pipeline} "
                              f"({', '.join(s for s in STAGE_ORDER if s in pipeline.stages)})")
    print(f"pipeline {pipeline.name}: {' -> '.join(pipeline.stages)}  (run folder {pipeline.run_dir})")
    started = time.perf_counter()
    try:
        results = run_pipeline(pipeline, dry_run=args.dry_run, force=args.force, progress=not args.no_progress)
    except TrainingStopped as exc:  # stopped as asked (stop_after) or by a signal: not an error
        print(f"medseg run: {exc}", file=sys.stderr)
        return exc.exit_code
    total = time.perf_counter() - started
    print()
    print(f"{'stage':<10} {'status':<8} {'time':>8}")
    for result in results:
        shown = f"{result.seconds:7.1f}s" if result.status == "ran" else "       -"
        print(f"{result.name:<10} {result.status:<8} {shown}")
    if args.dry_run:
        print("dry run: configuration is valid")
        return 0
    print(f"total {total:.1f} s")
    outputs = {r.name: r.outputs for r in results}
    summary = outputs.get("report") or outputs.get("evaluate") or {}
    for line in summary.get("headline", []):
        print(line)
    if "report" in summary:
        print(f"report: {summary['report']}")
    evaluated = outputs.get("evaluate") or {}
    return EXIT_SOME_FAILED if evaluated.get("failed", 0) or evaluated.get("unprepared", 0) else EXIT_OK
