"""Does bf16 autocast training learn as well as fp32 on the CPU? Held-out Dice and loss curves over seeds.

One small phantom cohort (``medseg synth``, seed 0) is prepared once; for every seed, TransUNet-Tiny is trained
twice with the same settings, ``amp: fp32`` and ``amp: bf16`` (the order alternating over seeds), on one torch
thread (``--work`` with one ``--seeds``/``--amps`` pair per process runs them in parallel, then ``--summarise``).
Each run's ``last.pt`` is then scored on the held-out cases with the same fp32 predictor
(``medseg.engine.train.validate``: 3D Dice per organ, mean over organs), so the comparison is of what the two
precisions learned. The loss curves (mean loss per epoch, from each run's ``metrics.csv``) and the wall time of
each run are printed too.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bf16_learning.py --cases 10 --img-size 64 --epochs 4 --seeds 1 2 3

``--model R50-ViT-B_16 --img-size 224 --batch-size 2 --stop-after 24`` compares a larger model over its first
iterations only (each run stops after that many; no held-out Dice): the per-iteration losses of fp32 and bf16 from
the same weights on the same batches, side by side.
"""
from __future__ import annotations

import argparse
import json
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


def iteration_losses(run_dir: Path) -> list[float]:
    """Training loss of every iteration, from the run's ``metrics.csv``."""
    return [float(row["loss"]) for row in read_metrics(run_dir / "metrics.csv") if row.get("loss")]


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


def prepare_work(work: Path, cases: int) -> Path:
    """Synthesise (``medseg synth``, seed 0) and prepare the cohort under ``work`` unless already there."""
    prepared = work / "prepared"
    if not (prepared / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "medseg", "synth", str(work / "raw"), "--cases", str(cases),
                        "--seed", "0", "--no-preview"], check=True, capture_output=True)
        prepare_cohort(work / "raw", prepared, split="seeded", test_fraction=0.3, progress=False)
    return prepared


def run_one(work: Path, prepared: Path, seed: int, amp: str, args) -> dict:
    """Train one run and score it; the row is also written to ``work/result_<amp>_<seed>.json``."""
    name = f"{args.model}_{amp}_{seed}" + (f"_{args.stop_after}it" if args.stop_after else "")
    run_dir = work / f"run_{name}"
    config = TrainConfig.from_dict({
        "model": args.model, "data": str(prepared), "out": str(run_dir), "img_size": args.img_size,
        "batch_size": args.batch_size, "epochs": args.epochs, "lr": args.lr, "drop_empty": True, "seed": seed,
        "workers": 0, "threads": 1, "amp": amp, "progress": False, "tensorboard": False,
        "stop_after": args.stop_after})
    started = time.perf_counter()
    train(config)
    wall = time.perf_counter() - started
    torch.set_num_threads(1)
    if args.stop_after:
        row = {"seed": seed, "amp": amp, "model": args.model, "dice": None, "wall_s": wall,
               "iteration_losses": iteration_losses(run_dir), "losses": [], "load": load_average()}
        print(f"seed {seed} {amp}: {args.model}, {args.stop_after} iterations in {wall:.0f} s, loss per iteration "
              + " ".join(f"{v:.4f}" for v in row["iteration_losses"]), flush=True)
    else:
        row = {"seed": seed, "amp": amp, "model": args.model, "dice": held_out_dice(run_dir, prepared),
               "wall_s": wall, "losses": epoch_losses(run_dir), "load": load_average()}
        print(f"seed {seed} {amp}: held-out Dice {row['dice']:.4f}, train {wall:.0f} s, loss per epoch "
              + " ".join(f"{v:.4f}" for v in row["losses"]), flush=True)
    (work / f"result_{name}.json").write_text(json.dumps(row))
    return row


def summarise(work: Path) -> None:
    """Print every run's row found under ``work`` and the mean Dice of each precision."""
    rows = [json.loads(p.read_text()) for p in sorted(work.glob("result_*.json"))]
    groups = sorted({(r.get("model", "TransUNet-Tiny"), r["amp"]) for r in rows}, key=lambda g: (g[0], g[1] != "fp32"))
    for model, amp in groups:
        mine = sorted((r for r in rows if r.get("model", "TransUNet-Tiny") == model and r["amp"] == amp),
                      key=lambda r: r["seed"])
        if not mine:
            continue
        for r in mine:
            if r.get("dice") is None:
                print(f"seed {r['seed']} {amp}: {r.get('model')}, train {r['wall_s']:.0f} s (load {r['load']} at the "
                      "end), loss per iteration " + " ".join(f"{v:.4f}" for v in r["iteration_losses"]))
                continue
            print(f"seed {r['seed']} {amp}: held-out Dice {r['dice']:.4f}, train {r['wall_s']:.0f} s (load "
                  f"{r['load']} at the end), loss per epoch " + " ".join(f"{v:.4f}" for v in r["losses"]))
        scored = [r["dice"] for r in mine if r.get("dice") is not None]
        if scored:
            print(f"{model} {amp}: held-out Dice mean {statistics.mean(scored):.4f} over seeds "
                  + ", ".join(str(r["seed"]) for r in mine))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="TransUNet-Tiny")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="stop each run after N iterations and compare per-iteration losses (no held-out Dice)")
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3])
    parser.add_argument("--amps", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                        help="precisions, in this order for the first seed (reversed for every other seed)")
    parser.add_argument("--work", type=Path, help="keep the cohort, runs and results here (default: a temporary "
                        "folder); runs started in parallel on one --work share its prepared cohort")
    parser.add_argument("--summarise", action="store_true", help="only print the results found under --work")
    args = parser.parse_args()
    if args.summarise:
        summarise(args.work)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        prepared = prepare_work(work, args.cases)
        print(f"Command: {command_text('bf16_learning.py')}; load average {load_average()} at the start.")
        for index, seed in enumerate(args.seeds):
            for amp in (args.amps if index % 2 == 0 else args.amps[::-1]):
                run_one(work, prepared, seed, amp, args)
        summarise(work)


if __name__ == "__main__":
    main()
