"""``medseg train --model NAME --data PREPARED_DIR --out RUN_DIR [--config FILE] [overrides]``.

Defaults are the TransUNet recipe (:mod:`medseg.engine.config`); a YAML file and ``--set key=value`` pairs change
any key, explicit flags win over both. Multi-GPU / multi-node: start one process per GPU with torchrun, e.g.
``torchrun --nproc_per_node 4 -m medseg train ...`` (``--batch-size`` is the global batch, split over processes).
"""
from __future__ import annotations

import sys
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--model", help="registry name (see `medseg models`), e.g. R50-ViT-B_16, TransUNet-Tiny")
    parser.add_argument("--data", type=Path, help="slice cache written by `medseg prepare`")
    parser.add_argument("--out", type=Path, help="run folder: checkpoints, metrics.csv, train.log")
    parser.add_argument("--config", type=Path, help="YAML file of TrainConfig keys")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="set any config key (value parsed as YAML); repeatable, e.g. --set model_options."
                             "hidden_size=64")
    parser.add_argument("--epochs", type=int, help="passes over all training slices (recipe: 150)")
    parser.add_argument("--batch-size", type=int, help="global batch size (recipe: 24)")
    parser.add_argument("--lr", type=float, help="base learning rate of the poly schedule (recipe: 0.01)")
    parser.add_argument("--img-size", type=int, help="model input size in pixels (recipe: 224)")
    parser.add_argument("--seed", type=int, help="random seed (recipe: 1234)")
    parser.add_argument("--workers", type=int, help="data-loader worker processes (default 2)")
    parser.add_argument("--val-every", type=int,
                        help="validate on the held-out (test-split) cases every N epochs, keep best.pt (0 = off)")
    parser.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--amp", choices=["auto", "bf16", "off"], help="bf16 autocast (auto: on CUDA only)")
    parser.add_argument("--pretrained", metavar="FILE",
                        help="the family's official ImageNet weights: TransUNet R50+ViT-B_16.npz; DS-TransUNet "
                             "Swin-B and Swin-T .pth (two files, fine first: 'swin_b.pth,swin_t.pth'); SegFormer "
                             "mit_b*.pth or a Hugging Face folder; SETR timm ViT .pth/.npz; BiSeNet torchvision "
                             "resnet18 .pth; TopFormer topformer-{T,S,B}-224 .pth (see 'medseg models')")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--drop-empty", action="store_true", default=None,
                        help="train only on slices that hold an organ (the recipe uses all slices)")
    parser.add_argument("--deterministic", action="store_true", default=None,
                        help="deterministic algorithms (a resumed CPU run reproduces the loss curve exactly)")
    parser.add_argument("--resume", action="store_true", default=None,
                        help="continue the run in --out from last.pt (starts a new run if there is none)")
    parser.add_argument("--no-progress", dest="progress", action="store_const", const=False, default=None,
                        help="no progress bar")


def run(args) -> int:
    from medseg.engine.config import load_config
    from medseg.engine.train import train

    overrides = {
        "model": args.model,
        "data": str(args.data) if args.data is not None else None,
        "out": str(args.out) if args.out is not None else None,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "img_size": args.img_size,
        "seed": args.seed,
        "workers": args.workers,
        "val_every": args.val_every,
        "device": args.device,
        "amp": args.amp,
        "pretrained": args.pretrained,
        "threads": args.threads,
        "drop_empty": args.drop_empty,
        "deterministic": args.deterministic,
        "resume": args.resume,
        "progress": args.progress,
    }
    config = load_config(args.config, args.set, overrides)
    config.check_ready()
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
