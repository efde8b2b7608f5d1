"""Does bf16 autocast training learn as well as fp32 on the CPU? Held-out Dice and loss curves over seeds.

One small phantom cohort (``medseg synth``, seed 0) is prepared once; for every seed, TransUNet-Tiny is trained
twice with the same settings, ``amp: fp32`` and ``amp: bf16`` (the order alternating over seeds), on one torch
thread. Each run's ``last.pt`` is then scored on the held-out cases with the same fp32 predictor
(``medseg.engine.train.validate``: 3D Dice per organ, mean over organs), so the comparison is of what the two
precisions learned. The loss curves (mean loss per epoch, from each run's ``metrics.csv``) and the wall time of
each run are printed too.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bf16_learning.py --cases 10 --img-size 64 --epochs 4 --seeds 1 2 3
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from medseg.data.slice_cache import load_manifest, prepare_cohort
from medseg.data.transforms import PreprocessingParams
from medseg.engine.config import TrainConfig
from medseg.engine.train import read_metrics, train, validate, validation_entries
from medseg.labels import LabelSet
from medseg.models.checkpoint import load_checkpoint
from side_by_side import command_text, load_average


def epoch_losses(run_dir: Path) -> list[float]:
    """Mean training loss of each epoch, from the run's ``metrics.csv``."""
    by_epoch: dict[int, list[float]] = {}
    for row in read_metrics(run_dir / "metrics.csv"):
        if row.get("loss"):
            by_epoch.setdefault(int(row["epoch"]), []).append(float(row["loss"]))
    return [statistics.mean(by_epoch[e]) for e in sorted(by_epoch)]


def held_out_dice(run_dir: Path, prepared: Path) -> float:
    """Mean Dice over organs of ``last.pt`` on the held-out cases, predicted in fp32."""
    model, info = load_checkpoint(run_dir / "last.pt")
    manifest = load_manifest(prepared)
    label_set = LabelSet.from_dict(manifest["label_set"])
    params = PreprocessingParams.from_dict(manifest["preprocessing"])
    params = PreprocessingParams(hu_min=params.hu_min, hu_max=params.hu_max, axcodes=params.axcodes,
                                 img_size=int(info.model_config["img_size"]))
    scores = validate(model, prepared, validation_entries(manifest, None), label_set, params, torch.device("cpu"),
                      amp="off")
    return float(scores["mean_dice"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    load_before = load_average()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-m", "medseg", "synth", str(tmp / "raw"), "--cases", str(args.cases),
                        "--seed", "0", "--no-preview"], check=True, capture_output=True)
        prepare_cohort(tmp / "raw", tmp / "prepared", split="seeded", test_fraction=0.3, progress=False)
        for index, seed in enumerate(args.seeds):
            order = ("fp32", "bf16") if index % 2 == 0 else ("bf16", "fp32")
            for amp in order:
                run_dir = tmp / f"run_{amp}_{seed}"
                config = TrainConfig.from_dict({
                    "model": "TransUNet-Tiny", "data": str(tmp / "prepared"), "out": str(run_dir),
                    "img_size": args.img_size, "batch_size": args.batch_size, "epochs": args.epochs, "lr": args.lr,
                    "drop_empty": True, "seed": seed, "workers": 0, "threads": 1, "amp": amp, "progress": False,
                    "tensorboard": False})
                started = time.perf_counter()
                train(config)
                wall = time.perf_counter() - started
                torch.set_num_threads(1)
                dice = held_out_dice(run_dir, tmp / "prepared")
                losses = epoch_losses(run_dir)
                rows.append((seed, amp, dice, wall, losses))
                print(f"seed {seed} {amp}: held-out Dice {dice:.4f}, train {wall:.0f} s, loss per epoch "
                      + " ".join(f"{v:.4f}" for v in losses), flush=True)
    print(f"\nCommand: {command_text('bf16_learning.py')}; load average {load_before} before, "
          f"{load_average()} after.")
    for amp in ("fp32", "bf16"):
        dice = [r[2] for r in rows if r[1] == amp]
        walls = [r[3] for r in rows if r[1] == amp]
        print(f"{amp}: held-out Dice mean {statistics.mean(dice):.4f} (seeds: "
              + ", ".join(f"{d:.4f}" for d in dice) + f"), median train wall {statistics.median(walls):.0f} s")


if __name__ == "__main__":
    main()
