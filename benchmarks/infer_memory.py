"""Peak memory (RSS) of predicting a long 512 x 512 CT volume: ``predict_volume`` keeps only a batch in flight.

Usage::

    python benchmarks/infer_memory.py                                  # the default runs below (CPU)
    python benchmarks/infer_memory.py --run TransUNet-Tiny:1000 --run R50-ViT-B_16:1000
    python benchmarks/infer_memory.py --write benchmarks/RESULTS.md    # also (re)write this script's section there

Each run is a fresh Python process that builds the model (random weights, 9 classes, 224 input), makes an int16 HU
volume of 512 x 512 x D (the array a NIfTI file of that size reads into) with a Synapse-like affine, and calls
:func:`medseg.engine.inference.predict_volume` (batch 16, torch resize, fp32) on it. It reports the peak resident
set size of the process (``ru_maxrss``: Python, torch, the model, the input volume, the output labels and the
working memory of the batches together) and the RSS before the volume was made.

The default runs separate the two sides of the question: TransUNet-Tiny at D = 32 and D = 1000 shows what the
volume adds (input, output, anything that grows with D), R50-ViT-B_16 at D = 32 what the full model's weights and
batch activations add. A full-model run over 1000 slices takes many minutes of CPU time; its figure is then
reported as the sum of the measured parts (labelled an estimate) unless it is run (``--run R50-ViT-B_16:1000``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from results_file import cpu_name, publish  # benchmarks/results_file.py
from side_by_side import load_average

SECTION_HEADING = "## Inference memory (benchmarks/infer_memory.py)"
DEFAULT_RUNS = ("TransUNet-Tiny:32", "TransUNet-Tiny:1000", "R50-ViT-B_16:32")
LIMIT_GB = 3.0


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def child(model_name: str, depth: int, batch_size: int, threads: int) -> dict:
    """One measured prediction (run in a fresh process)."""
    import numpy as np
    import torch

    from medseg.preprocessing import PreprocessingParams
    from medseg.engine.inference import make_predictor, predict_volume
    from medseg.io import Volume
    from medseg.labels import SYNAPSE8
    from medseg.models import create

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create(model_name, num_classes=9, img_size=224)
    predictor = make_predictor(model, model_name, SYNAPSE8, PreprocessingParams(img_size=224), "cpu", amp="off",
                               channels_last=True)
    before = _rss_bytes()
    array = np.empty((512, 512, depth), dtype=np.int16)
    ramp = (np.arange(512, dtype=np.int16)[:, None] % 400 - 150).astype(np.int16)
    for k in range(depth):  # a written (resident) volume, as one read from a file
        array[:, :, k] = ramp + np.int16(k % 7)
    volume = Volume(array, np.diag([-0.78, -0.78, 3.0, 1.0]))
    labels = predict_volume(volume, predictor, batch_size=batch_size)
    assert labels.shape == (512, 512, depth)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes
    return {"model": model_name, "depth": depth, "batch_size": batch_size, "rss_before_gb": before / 1e9,
            "peak_gb": peak / 1e9, "input_gb": array.nbytes / 1e9, "output_gb": labels.array.nbytes / 1e9,
            "parameters": sum(p.numel() for p in model.parameters())}


def measure(run: str, batch_size: int, threads: int) -> dict:
    name, depth = run.rsplit(":", 1)
    command = [sys.executable, __file__, "--child", name, depth, "--batch-size", str(batch_size),
               "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{run}: the measuring process failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{name} x {depth} slices: peak RSS {result['peak_gb']:.2f} GB", flush=True)
    return result


def render(results: list[dict], args, load: tuple[str, str]) -> str:
    command = "python benchmarks/infer_memory.py " + " ".join(sys.argv[1:])
    lines = [SECTION_HEADING, "",
             f"Command: `{command.strip()}`. Machine: {cpu_name()}, {os.cpu_count()} logical CPUs, "
             f"{args.threads} torch threads; load average {load[0]} before, {load[1]} after. Each run: a fresh "
             "process, random weights, int16 512 x 512 x D volume, `predict_volume` on the CPU (batch "
             f"{args.batch_size}, torch resize, fp32, channels-last). Peak RSS is the process's maximum resident set "
             "(Python, torch, model, input, output and working memory together); GB = 10^9 bytes.",
             "",
             "| model | parameters | slices D | input volume (GB) | output labels (GB) | RSS before the volume (GB) "
             "| peak RSS (GB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    by_key = {(r["model"], r["depth"]): r for r in results}
    for r in results:
        lines.append(f"| {r['model']} | {r['parameters']:,} | {r['depth']} | {r['input_gb']:.2f} | "
                     f"{r['output_gb']:.2f} | {r['rss_before_gb']:.2f} | {r['peak_gb']:.2f} |")
    lines.append("")
    small, large, full = (by_key.get(("TransUNet-Tiny", 32)), by_key.get(("TransUNet-Tiny", 1000)),
                          by_key.get(("R50-ViT-B_16", 32)))
    if ("R50-ViT-B_16", 1000) in by_key:
        peak = by_key[("R50-ViT-B_16", 1000)]["peak_gb"]
        lines.append(f"- R50-ViT-B_16 over 512 x 512 x 1000, measured: peak RSS {peak:.2f} GB (limit "
                     f"{LIMIT_GB:.0f} GB: {'met' if peak < LIMIT_GB else 'NOT met'}).")
    elif small and large and full:
        growth = large["peak_gb"] - small["peak_gb"]
        estimate = full["peak_gb"] + growth
        lines.append(f"- What 968 more slices add (TransUNet-Tiny, 1000 vs 32 slices): {growth:.2f} GB, about the "
                     f"input volume plus the output labels ({large['input_gb'] + large['output_gb']:.2f} GB); the "
                     "batch working memory does not grow with D.")
        lines.append(f"- R50-ViT-B_16 over 512 x 512 x 1000, ESTIMATED as its 32-slice peak plus that growth (not "
                     f"run: many minutes of CPU): {estimate:.2f} GB (limit {LIMIT_GB:.0f} GB: "
                     f"{'met' if estimate < LIMIT_GB else 'NOT met'}).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", help="MODEL:SLICES (repeatable; default: the runs above)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", type=Path, help="(re)write this script's section of a RESULTS.md")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "SLICES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.batch_size, args.threads)))
        return 0
    load_before = load_average()
    results = [measure(run, args.batch_size, args.threads) for run in (args.run or DEFAULT_RUNS)]
    publish(render(results, args, (load_before, load_average())), SECTION_HEADING, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
