"""CPU training throughput, fp32 against bf16 autocast, side by side (benchmarks/side_by_side.py).

One training step is what ``medseg train`` does per batch: forward (under the autocast of the side), the 0.5 CE +
0.5 Dice loss, backward and an SGD step (momentum 0.9, weight decay 1e-4). Inputs are random slices in [0, 1] and
random labels of 9 classes (speed does not depend on the values). Every side starts from the same weights; each
round runs every side for ``--steps`` steps (after one warm-up step per side before the first round), alternating
the order over rounds. Reported: slices/s (batch x steps / time) per side, the median per-round ratio against fp32
with its range, and the load average. ``--profile`` adds the self-CPU-time top operators of one step per side.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/train_speed.py --model TransUNet-Tiny --img-size 96 --batch-size 8 \
        --steps 5 --rounds 5 --threads 2
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys

import torch

import medseg
from medseg.engine.inference import cpu_native_bf16
from medseg.engine.losses import combined_loss
from medseg.models import create
from results_file import cpu_name, publish  # benchmarks/results_file.py
from side_by_side import alternate, command_text

HEADING = "## CPU training throughput, fp32 vs bf16 (benchmarks/train_speed.py)"


def make_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, amp: str, channels_last: bool):
    """A zero-argument callable running one training step of ``model`` (its own copy) and returning the loss."""
    model = copy.deepcopy(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    model.train()

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            outputs = model(images)
        loss = combined_loss(outputs, labels, getattr(model, "aux_loss_weights", None)
                             if isinstance(outputs, (tuple, list)) else None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def profile_step(step, label: str, top: int = 8) -> str:
    """Self CPU time of the ``top`` operators of one step, as one Markdown list item."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    parts = [f"`{e.key}` {e.self_cpu_time_total / 1e3:.0f} ms ({100 * e.self_cpu_time_total / total:.0f}%)"
             for e in events[:top]]
    return f"- Profile of one {label} step (self CPU time, {total / 1e3:.0f} ms in all): " + "; ".join(parts) + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="TransUNet-Tiny")
    parser.add_argument("--img-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="training steps per side per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--channels-last", action="store_true", help="also time bf16 with channels-last tensors")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--write", help="append the rows to this RESULTS.md section")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create(args.model, num_classes=9, img_size=args.img_size)
    images = torch.rand(args.batch_size, 1, args.img_size, args.img_size)
    labels = torch.randint(0, 9, (args.batch_size, args.img_size, args.img_size))
    sides = {"fp32": make_step(model, images, labels, "off", False),
             "bf16": make_step(model, images, labels, "bf16", False)}
    if args.channels_last:
        sides["bf16 channels-last"] = make_step(model, images, labels, "bf16", True)
    for step in sides.values():  # warm-up: oneDNN primitive creation, allocator
        step()

    def run_steps(step):
        return lambda: [step() for _ in range(args.steps)]

    result = alternate({name: run_steps(step) for name, step in sides.items()}, args.rounds, "fp32",
                       on_round=lambda i, t: print(f"round {i + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in
                                                                              t.items()), file=sys.stderr))
    slices = args.batch_size * args.steps
    lines = [f"- {args.model}, {args.img_size} px, batch {args.batch_size}, {args.threads} thread(s), "
             f"{args.steps} steps x {args.rounds} rounds per side; load average (1/5/15 min) {result.load_before} "
             f"before, {result.load_after} after. Command: {command_text('train_speed.py')}."]
    for name in sides:
        rate = statistics.median(slices / t for t in result.times[name])
        ratio = "1 (reference)" if name == "fp32" else result.ratio_text(name)
        lines.append(f"  - {name}: {rate:.3g} slices/s (median over rounds), speed-up vs fp32 {ratio}")
    lines.append(f"  - loss after the last step: " + ", ".join(f"{name} {result.results[name][-1]:.4f}"
                                                              for name in sides))
    if args.profile:
        lines += ["  " + profile_step(step, f"{args.model} {name}") for name, step in sides.items()]
    text = "\n".join(lines)
    print(text)
    print(f"machine: {cpu_name()}, {platform.machine()}, torch {torch.__version__}, medseg {medseg.__version__}, "
          f"native bf16: {cpu_native_bf16()}")
    if args.write:
        with open(args.write, "a") as f:  # collected by hand into the section
            f.write(text + "\n")


if __name__ == "__main__":
    main()
