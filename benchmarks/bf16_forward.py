"""What keeps R50-ViT-B_16's bf16 forward on the CPU from the bf16 matmul rate: variants side by side.

Batched forward passes (eval mode, ``torch.inference_mode``, input ``(B, 1, S, S)`` channels-last, random weights,
seed 0) of the model as ``medseg predict`` runs it (channels-last weights, bf16 autocast) against variants:

* ``bf16 weights``: the weights converted to bf16 once (no autocast, so no per-call weight casts; GroupNorm,
  LayerNorm and softmax then also run on bf16 tensors, with float accumulation inside torch's kernels);
* ``compiled``: ``torch.compile`` (inductor, CPU) of the autocast model; its compile time is reported separately
  and counted against it (the break-even number of batches).

Every variant runs once per round, alternating the order over rounds (benchmarks/side_by_side.py); reported: median
time, the median per-round speed-up against the autocast path, the achieved GFLOP/s (torch's FLOP counter) as a
share of the bf16 and fp32 matmul rates measured in the same run, the share of argmax labels equal to the fp32
forward's, and a profile (self CPU time) of each variant.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bf16_forward.py --batch-size 8 --rounds 3 --threads 2 --compile
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch

from infer_speed import forward_gflop, matmul_gflops, profile  # benchmarks/infer_speed.py
from medseg.engine.inference import cpu_native_bf16
from medseg.models import create
from results_file import cpu_name
from side_by_side import alternate, command_text


def autocast_forward(model, x):
    """The forward ``medseg predict`` runs with ``--amp bf16``: bf16 autocast around an fp32 model."""
    def forward():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x).float()
    return forward


def bf16_forward(model, x):
    """The forward of a model whose weights were converted to bf16 (no autocast)."""
    xb = x.to(torch.bfloat16)

    def forward():
        with torch.inference_mode():
            return model(xb).float()
    return forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="R50-ViT-B_16")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (inductor) of the model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create(args.model, num_classes=9, img_size=args.img_size).eval()
    gflop = forward_gflop(model, args.img_size, torch.device("cpu")) * args.batch_size
    x = torch.rand(args.batch_size, 1, args.img_size, args.img_size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        reference = model(x).argmax(1)
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    sides = {"autocast (medseg predict)": autocast_forward(channels_last, x),
             "bf16 weights": bf16_forward(copy.deepcopy(channels_last).to(torch.bfloat16), x)}
    compile_s = None
    if args.compile:
        compiled = torch.compile(copy.deepcopy(channels_last))
        forward = autocast_forward(compiled, x)
        started = time.perf_counter()
        forward()
        compile_s = time.perf_counter() - started
        sides["compiled autocast"] = forward
    for forward in sides.values():
        forward()
    rate = {"bf16": matmul_gflops(torch.bfloat16, torch.device("cpu")),
            "fp32": matmul_gflops(torch.float32, torch.device("cpu"))}
    result = alternate(sides, args.rounds, "autocast (medseg predict)",
                       on_round=lambda i, t: print(f"round {i + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in
                                                                              t.items()), file=sys.stderr))
    rate["bf16 after"] = matmul_gflops(torch.bfloat16, torch.device("cpu"))
    print(f"Command: {command_text('bf16_forward.py')}. Machine: {cpu_name()}, native bf16 {cpu_native_bf16()}, "
          f"torch {torch.__version__}, {args.threads} threads; load average {result.load_before} before, "
          f"{result.load_after} after.")
    print(f"{args.model} at {args.img_size}, batch {args.batch_size}: {gflop:.0f} GFLOP per batch. Matmul rate "
          f"(2048 x 2048, best of 5): bf16 {rate['bf16']:.0f} GFLOP/s (after the rounds {rate['bf16 after']:.0f}), "
          f"fp32 {rate['fp32']:.0f} GFLOP/s.")
    print("| variant | median time (s) | speed-up vs autocast (range) | GFLOP/s | of bf16 matmul rate | labels equal "
          "to fp32 |")
    print("|---|---:|---|---:|---:|---:|")
    for name in sides:
        seconds = statistics.median(result.times[name])
        labels = result.results[name].argmax(1)
        equal = (labels == reference).float().mean().item()
        speed_up = "1 (reference)" if name.startswith("autocast") else result.ratio_text(name)
        print(f"| {name} | {seconds:.2f} | {speed_up} | {gflop / seconds:.0f} | "
              f"{100 * gflop / seconds / rate['bf16']:.0f}% | {100 * equal:.3f}% |")
    if compile_s is not None:
        saved = statistics.median(result.times["autocast (medseg predict)"]) - statistics.median(
            result.times["compiled autocast"])
        print(f"\ntorch.compile: first call (compile + one forward) {compile_s:.0f} s; saves {saved:.2f} s per batch "
              + (f"(break-even after {compile_s / saved:.0f} batches)" if saved > 0 else "(no saving)"))
    for name, forward in sides.items():
        rows = profile(forward)
        print(f"- Profile of one {name} forward: " + "; ".join(f"`{op}` {ms:.0f} ms ({100 * share:.0f}%)"
                                                                for op, ms, share in rows) + ".")


if __name__ == "__main__":
    main()
