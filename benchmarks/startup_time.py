"""Start-up time of the commands that need no model: ``medseg --help``, ``medseg models``, ``medseg evaluate --help``.

Each command runs in a fresh interpreter (``python -m medseg ...``), once per round; with two source trees
(``--before OLD_TREE``) the rounds alternate old, new, old, new... so both sides see the same machine load. The
table gives the median wall-clock seconds per command and tree, the min-max spread and the 1-minute load average at
the start and end. ``medseg models`` is warmed once first (it builds its parameter cache on a first run).

    python benchmarks/startup_time.py --rounds 5 [--before /path/to/an/older/checkout]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = (["--help"], ["models"], ["evaluate", "--help"], ["predict", "--help"])


def run_once(tree: Path, argv: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medseg", *argv], cwd=tree, env={**env, "PYTHONPATH": str(tree)},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", type=Path, help="an older source tree to compare with (alternating rounds)")
    args = parser.parse_args()
    trees = {"this tree": Path(__file__).resolve().parent.parent}
    if args.before:
        trees = {"before": args.before.resolve(), **trees}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "MEDSEG_CACHE_DIR": cache}
        for tree in trees.values():
            run_once(tree, ["models"], env)  # warm-up: file cache, and the models table cache
        load_start = os.getloadavg()[0]
        times = {(name, " ".join(argv)): [] for name in trees for argv in COMMANDS}
        for _ in range(args.rounds):
            for argv in COMMANDS:
                for name, tree in trees.items():
                    times[(name, " ".join(argv))].append(run_once(tree, argv, env))
        load_end = os.getloadavg()[0]
    print(f"| command | {' | '.join(trees)} |")
    print(f"|---|{'---|' * len(trees)}")
    for argv in COMMANDS:
        cells = []
        for name in trees:
            values = times[(name, " ".join(argv))]
            cells.append(f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})")
        print(f"| medseg {' '.join(argv)} | {' | '.join(cells)} |")
    print(f"\n{args.rounds} rounds, load average {load_start:.2f} -> {load_end:.2f}, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
