"""``medseg predict`` on one small phantom file: wall time, time to the first output line and time after the last one.

Three sides in fresh interpreters, alternating over rounds (``side_by_side.alternate``): ``python -c "import torch"``
(the floor any torch command pays), ``medseg predict`` of an older source tree (``--before``) and of this tree. Each
predict writes into a new output folder (nothing is reused) and its stdout and stderr are read line by line with a
timestamp, so the table separates start-up (to the first line), work and the seconds the process stays alive after
its last line (interpreter shutdown). The input is one small phantom case (128 x 128 x 54 voxels) and a TransUNet-Tiny
checkpoint at 64 px with seeded random weights (made by this tree; the checkpoint format is the same in both).

    python benchmarks/predict_startup.py --before /path/to/an/older/checkout --rounds 7 [--write benchmarks/RESULTS.md]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import cpu_name, publish  # noqa: E402  benchmarks/results_file.py
from side_by_side import alternate, command_text  # noqa: E402  benchmarks/side_by_side.py

from medseg.models import create  # noqa: E402
from medseg.models.checkpoint import save_checkpoint  # noqa: E402
from medseg.phantom import write_cohort  # noqa: E402
from medseg.preprocessing import PreprocessingParams  # noqa: E402

SECTION_HEADING = "## medseg predict on one small file: start-up and exit (benchmarks/predict_startup.py)"
THIS_TREE = Path(__file__).resolve().parent.parent
IMG_SIZE = 64


def make_inputs(folder: Path) -> tuple[Path, Path]:
    """One small phantom case and a seeded TransUNet-Tiny checkpoint in ``folder``: ``(image path, checkpoint)``."""
    write_cohort(folder / "cohort", cases=1, seed=0, size="small", progress=False, preview=False)
    torch.manual_seed(0)
    checkpoint = folder / "tiny.pt"
    save_checkpoint(checkpoint, create("TransUNet-Tiny", num_classes=9, img_size=IMG_SIZE),
                    model_name="TransUNet-Tiny", model_config={"num_classes": 9, "img_size": IMG_SIZE},
                    label_set="synapse8", preprocessing=PreprocessingParams(img_size=IMG_SIZE).to_dict())
    return folder / "cohort" / "img" / "img0001.nii.gz", checkpoint


def timed_run(argv: list[str], env: dict, cwd: "Path | None" = None) -> dict:
    """Run ``argv``; seconds from the start to the first and to the last output line and to the exit.

    stdout and stderr go through one pipe, so a line counts whichever stream it is on. Raises when the command
    fails (a benchmark of a failing command would be meaningless).
    """
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd, text=True)
    stamps, lines = [], []
    for line in process.stdout:
        stamps.append(time.perf_counter() - started)
        lines.append(line.rstrip())
    code = process.wait()
    wall = time.perf_counter() - started
    if code != 0 or not stamps:
        raise RuntimeError(f"{' '.join(argv)} exited {code}: {lines[-3:]}")
    return {"wall": wall, "first": stamps[0], "last": stamps[-1], "after_last": wall - stamps[-1]}


def predict_side(tree: Path, image: Path, checkpoint: Path, out_root: Path, name: str, records: list) -> callable:
    """A zero-argument callable running ``python -m medseg predict`` of ``tree`` into a new folder each time.

    It runs in ``tree`` (``python -m`` puts the working directory first on the path, before PYTHONPATH)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}

    def run() -> dict:
        out = out_root / f"{name}-{len(records)}"
        record = timed_run([sys.executable, "-m", "medseg", "predict", "-i", str(image), "-o", str(out),
                            "-m", str(checkpoint), "--device", "cpu"], env, cwd=tree)
        records.append(record)
        return record

    return run


def torch_side(records: list) -> callable:
    """``python -c "import torch; print(...)"``: the same timings for the bare torch import."""
    def run() -> dict:
        record = timed_run([sys.executable, "-c", "import torch; print(torch.__version__)"], dict(os.environ))
        records.append(record)
        return record

    return run


def measure(before: Path, rounds: int) -> dict:
    """Alternate the three sides over ``rounds`` rounds (after one warm-up of each); returns the table's data."""
    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        image, checkpoint = make_inputs(temp)
        records = {"import torch": [], "before": [], "this tree": []}
        sides = {"import torch": torch_side(records["import torch"]),
                 "before": predict_side(before, image, checkpoint, temp, "before", records["before"]),
                 "this tree": predict_side(THIS_TREE, image, checkpoint, temp, "after", records["this tree"])}
        for side in sides.values():  # warm-up: file cache, compiled bytecode of both trees
            side()
        for side_records in records.values():
            side_records.clear()
        comparison = alternate(sides, rounds=rounds, reference="before")
    return {"records": records, "comparison": comparison}


def _median_range(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def render(result: dict, before_label: str) -> str:
    """The RESULTS.md section."""
    records, comparison = result["records"], result["comparison"]
    after_minus_torch = [a["wall"] - t["wall"] for a, t in zip(records["this tree"], records["import torch"])]
    lines = [
        SECTION_HEADING, "",
        f"Command: {command_text('predict_startup.py')}, `--before` {before_label}. "
        f"{comparison.rounds} rounds after one warm-up of each side; each side in a fresh interpreter, the order "
        "reversed every other round. Input: one phantom case (128 x 128 x 54, `size: small`) and a TransUNet-Tiny "
        f"checkpoint at {IMG_SIZE} px; `medseg predict -i IMG -o NEW_FOLDER -m CKPT --device cpu`, stdout and stderr "
        "read line by line. Median seconds (min-max over rounds).",
        f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs shared with other jobs while measured; load average "
        f"(1/5/15 min) {comparison.load_before} before, {comparison.load_after} after. Python "
        f"{platform.python_version()}, torch {torch.__version__}.", "",
        "| side | wall | first output line | alive after the last line |",
        "|---|---|---|---|",
    ]
    for name, side_records in records.items():
        label = {"import torch": '`python -c "import torch"`', "before": "`medseg predict`, before",
                 "this tree": "`medseg predict`, this tree"}[name]
        lines.append(f"| {label} | {_median_range([r['wall'] for r in side_records])} | "
                     f"{_median_range([r['first'] for r in side_records])} | "
                     f"{_median_range([r['after_last'] for r in side_records])} |")
    lines += ["", f"Wall time, before / this tree: {comparison.ratio_text('this tree')} (median of per-round ratios, "
              f"range). This tree's predict minus the bare torch import of the same round: "
              f"{_median_range(after_minus_torch)} (the torch import's own exit is not shortened, see below)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="an older source tree to compare with")
    parser.add_argument("--before-label", default="an older checkout", help="how RESULTS.md names --before")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--write", type=Path, help="(re)write this benchmark's section of RESULTS.md")
    args = parser.parse_args()
    section = render(measure(args.before.resolve(), args.rounds), args.before_label)
    publish(section.replace(str(args.before), "OLD_CHECKOUT"), SECTION_HEADING, args.write)  # no local paths


if __name__ == "__main__":
    main()
