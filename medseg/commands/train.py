"""``medseg train --model NAME --data PREPARED_DIR --out RUN_DIR [--config FILE] [overrides]``.

Defaults are the TransUNet recipe (:mod:`medseg.engine.config`); a YAML file and ``--set key=value`` pairs change
any key, explicit flags win over both. Multi-GPU / multi-node: start one process per GPU with torchrun, e.g.
``torchrun --nproc_per_node 4 -m medseg train ...`` (``--batch-size`` is the global batch, split over processes).
"""
from __future__ import annotations

import sys
from pathlib import Path


def add_arguments(parser) -> None:
    from medseg.engine.config import TrainConfig
    from medseg.schema import add_arguments as add_schema_arguments

    parser.add_argument("--config", type=Path, help="YAML file of TrainConfig keys")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="set any config key (value parsed as YAML); repeatable, e.g. --set model_options."
                             "hidden_size=64")
    add_schema_arguments(parser, TrainConfig)  # --model, --data, --epochs, ...: from the config's own fields
    parser.add_argument("--no-progress", dest="progress", action="store_const", const=False, default=None,
                        help="no progress bar")


def run(args) -> int:
    from medseg.engine.config import TrainConfig, load_config
    from medseg.engine.train import train
    from medseg.io import check_output_path, remove_stale_temps
    from medseg.schema import flag_values

    overrides = {**flag_values(args, TrainConfig), "progress": args.progress}
    config = load_config(args.config, args.set, overrides)
    config.check_ready()
    check_output_path(config.out, "run folder", folder=True)
    remove_stale_temps(config.out)
    result = train(config)
    if result.rank == 0:
        if result.finished:
            best = "n/a" if result.best_val_dice is None else f"{result.best_val_dice:.4f}"
            print(f"trained {config.model} for {result.epochs_completed} epochs ({result.iterations} iterations) in "
                  f"{result.wall_time_s:.1f} s; best validation Dice {best}; checkpoints in {result.run_dir}")
        else:
            print(f"stopped ({result.stop_reason}) after iteration {result.iterations} of {result.max_iterations}; "
                  f"saved {result.last_checkpoint}; continue with --resume", file=sys.stderr)
    return result.exit_code
