"""Data stage speed: `medseg synth` of a small cohort plus `medseg prepare`, and one Synapse-sized case.

Target (issue: foundation): synth of 20 small cases plus prepare in under 2 minutes on 2 CPU cores.

Usage:
    python benchmarks/data_speed.py [--cases 20] [--workers 2] [--full-cases 1] [--write benchmarks/RESULTS.md]

Wall time and CPU time (this process and its children) are both reported: on a shared machine the CPU time is the
steadier figure.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_file import publish  # benchmarks/results_file.py

SECTION = "## Data stage speed (benchmarks/data_speed.py)"


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(command: list[str]) -> tuple[float, float]:
    """Run a ``medseg`` command line in a subprocess; returns (wall seconds, CPU seconds)."""
    cpu_before, started = _cpu_seconds(), time.perf_counter()
    subprocess.run([sys.executable, "-m", "medseg", *command], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started, _cpu_seconds() - cpu_before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--full-cases", type=int, default=1, help="Synapse-sized cases to synthesise and prepare")
    parser.add_argument("--write", type=Path, help="replace this benchmark's section of a RESULTS.md")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="medseg-bench-") as tmp:
        tmp = Path(tmp)
        synth = timed(["synth", str(tmp / "small"), "--cases", str(args.cases), "--seed", "0",
                       "--workers", str(args.workers), "--no-preview"])
        prepare = timed(["prepare", str(tmp / "small"), str(tmp / "small_prep"), "--split", "seeded",
                         "--workers", str(args.workers), "--no-progress"])
        rows.append((f"synth, {args.cases} small cases (128x128x44-56)", *synth))
        rows.append((f"prepare, {args.cases} small cases", *prepare))
        rows.append(("synth + prepare, small cohort", synth[0] + prepare[0], synth[1] + prepare[1]))
        if args.full_cases:
            full_synth = timed(["synth", str(tmp / "full"), "--cases", str(args.full_cases), "--seed", "0",
                                "--size", "full", "--no-preview"])
            full_prepare = timed(["prepare", str(tmp / "full"), str(tmp / "full_prep"), "--split", "all-train",
                                  "--no-progress"])
            import json

            manifest = json.loads((tmp / "full_prep" / "manifest.json").read_text())
            shapes = ", ".join("x".join(str(s) for s in e["source_shape"]) for e in manifest["cases"])
            rows.append((f"synth, {args.full_cases} Synapse-sized case(s) ({shapes})", *full_synth))
            rows.append((f"prepare, {args.full_cases} Synapse-sized case(s)", *full_prepare))

    load = os.getloadavg()[0]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, load {load:.1f}"
    lines = [SECTION, "", f"Command: `python benchmarks/data_speed.py --cases {args.cases} --workers {args.workers} "
             f"--full-cases {args.full_cases}`. Machine: {machine}.", "",
             "| step | wall (s) | CPU (s) |", "|---|---:|---:|"]
    lines += [f"| {name} | {wall:.1f} | {cpu:.1f} |" for name, wall, cpu in rows]
    lines.append("")
    lines.append(f"Target: synth + prepare of 20 small cases under 120 s on 2 cores "
                 f"({'met' if rows[2][1] < 120 else 'NOT met'}: {rows[2][1]:.1f} s).")
    text = "\n".join(lines) + "\n"
    publish(text, SECTION, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
