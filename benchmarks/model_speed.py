"""CPU forward time of zoo models at batch 1: median of a few timed runs after warm-up, in eval mode, no grad.

Usage::

    python benchmarks/model_speed.py                                  # the published TransUNet sizes (+ DS-TransUNet-B)
    python benchmarks/model_speed.py R50-ViT-B_16 TransUNet-Tiny --img-size 224 --repeats 5
    python benchmarks/model_speed.py --write benchmarks/RESULTS.md    # also (re)write this script's section there

Names that are not registered are skipped with a note. Threads default to 2 (the CI machine).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads sleep, not spin

import torch  # noqa: E402

from results_file import cpu_name, publish  # noqa: E402  benchmarks/results_file.py

DEFAULT_MODELS = ["R50-ViT-B_16", "ViT-B_16", "R50-ViT-L_16", "DS-TransUNet-B"]
SECTION_HEADING = "## Model forward time on CPU (benchmarks/model_speed.py)"


def time_forward(name: str, img_size: int, batch: int, warmup: int, repeats: int) -> dict:
    """Build ``name`` (9 classes) and time ``repeats`` forward passes of a ``(batch, 1, img_size, img_size)`` input."""
    from medseg.models import create

    torch.manual_seed(0)
    model = create(name, num_classes=9, img_size=img_size).eval()
    parameters = sum(p.numel() for p in model.parameters())
    x = torch.rand(batch, 1, img_size, img_size)
    times, cpu_times = [], []
    with torch.inference_mode():
        for run in range(warmup + repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            out = model(x)
            elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu_start
            if run >= warmup:
                times.append(elapsed)
                cpu_times.append(cpu_elapsed)
    main = out[0] if isinstance(out, (tuple, list)) else out
    assert main.shape == (batch, 9, img_size, img_size), main.shape
    del model
    return {"name": name, "parameters": parameters, "median_s": statistics.median(times), "min_s": min(times),
            "max_s": max(times), "cpu_s": statistics.median(cpu_times), "runs": repeats}


def machine_description(threads: int) -> str:
    cpu = cpu_name()
    load = ""
    if hasattr(os, "getloadavg"):
        load = ", load average %.1f at the start" % os.getloadavg()[0]
    return (f"{cpu}, {os.cpu_count()} logical CPUs visible, torch {torch.__version__} with {threads} threads, "
            f"Python {platform.python_version()}{load}")


def markdown_section(results: list[dict], skipped: list[str], command: str, machine: str, img_size: int,
                     batch: int, warmup: int) -> str:
    lines = [
        SECTION_HEADING,
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}.",
        "",
        f"Eval mode, `torch.inference_mode()`, input ({batch}, 1, {img_size}, {img_size}), 9 classes, "
        f"{warmup} warm-up run(s), then the median (min / max) of {results[0]['runs'] if results else 0} runs. "
        "CPU time is the process time summed over threads. On a machine shared with other jobs (see the load "
        "average) both columns are inflated, the wall time most; on an idle machine the wall time is close to "
        "CPU time / threads.",
        "",
        "| model | parameters | median forward (s) | min (s) | max (s) | median CPU time (s, all threads) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in results:
        lines.append(f"| {row['name']} | {row['parameters']:,} | {row['median_s']:.3f} | {row['min_s']:.3f} | "
                     f"{row['max_s']:.3f} | {row['cpu_s']:.3f} |")
    if skipped:
        lines += ["", f"Not registered when run (skipped): {', '.join(skipped)}."]
    return "\n".join(lines) + "\n"


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=DEFAULT_MODELS, help="registry names (default: %(default)s)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", type=Path, help="(re)write this script's section of a RESULTS.md file")
    args = parser.parse_args(argv)

    from medseg.models import list_models

    torch.set_num_threads(args.threads)
    machine = machine_description(args.threads)
    known = {spec.name for spec in list_models()}
    results, skipped = [], []
    for name in args.models:
        if name not in known:
            print(f"{name}: not registered, skipped", file=sys.stderr)
            skipped.append(name)
            continue
        row = time_forward(name, args.img_size, args.batch, args.warmup, args.repeats)
        print(f"{name}: {row['parameters']:,} parameters, median {row['median_s']:.3f} s "
              f"(min {row['min_s']:.3f}, max {row['max_s']:.3f})", flush=True)
        results.append(row)

    command = "python benchmarks/model_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    section = markdown_section(results, skipped, command.strip(), machine, args.img_size, args.batch, args.warmup)
    print()
    publish(section, SECTION_HEADING, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
