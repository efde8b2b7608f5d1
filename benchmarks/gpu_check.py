"""The GPU check's Python side (run by ``benchmarks/gpu_check.sh``): training throughput, loader, one-process DDP.

Usage::

    python benchmarks/gpu_check.py train --device cuda --prepared DIR --json out.json   # throughput + loader
    torchrun --standalone --nproc_per_node 1 benchmarks/gpu_check.py ddp --device cuda --json ddp.json
    python benchmarks/gpu_check.py render --json out.json --ddp-json ddp.json --write benchmarks/RESULTS.md
    python benchmarks/gpu_check.py train --device cpu --smoke ...                       # the CPU smoke run

What ``train`` measures (every step: forward, 0.5 CE + 0.5 Dice loss as in training, backward, SGD step, on a batch
already on the device; the median of the timed steps after warm-up, with the peak GPU memory):

* R50-ViT-B_16 at 224, batch 24: fp32, bf16 autocast, bf16 autocast + channels-last;
* DS-TransUNet-B at 224, batch 24: bf16 autocast + channels-last (its auxiliary outputs weighted as in training);
* whether the loader keeps up: the R50-ViT-B_16 bf16 + channels-last step fed by a real ``DataLoader`` over a
  prepared slice cache (``SliceDataset`` with the augmentation, ``--workers`` processes, pinned memory) against
  the same step on a pre-filled batch.

``ddp`` runs under ``torchrun`` (one process): it joins a process group itself (NCCL on a GPU, gloo on the CPU),
wraps R50-ViT-B_16 (TransUNet-Tiny in the smoke run) in ``DistributedDataParallel`` and times its steps.
``--smoke`` shrinks everything (TransUNet-Tiny and DS-TransUNet-Tiny in fp32, 32 px, batch 2, one timed step,
a two-case small phantom cache made in a temporary folder, one thread) so that the CPU-only run of
``gpu_check.sh`` finishes in seconds; its figures are not performance figures and are not written to RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

SECTION_HEADING = "## GPU check (benchmarks/gpu_check.sh)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model, device: torch.device, amp: bool, channels_last: bool):
    """One training step as the trainer takes it: ``step(images, labels)`` (SGD, 0.5 CE + 0.5 Dice of
    :func:`medseg.engine.losses.combined_loss`, auxiliary outputs weighted by the model's ``aux_loss_weights``)."""
    from medseg.engine.losses import combined_loss

    module = model.module if hasattr(model, "module") else model  # a DDP wrapper
    weights = getattr(module, "aux_loss_weights", None)
    model = model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step(images, labels):
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            outputs = model(images)
        loss = combined_loss(outputs, labels, weights if isinstance(outputs, (tuple, list)) else None)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return loss
    return step


def time_steps(step, batches, device: torch.device, warmup: int, steps: int) -> dict:
    """Median step time (ms) over ``steps`` steps after ``warmup``; ``batches`` yields ``(images, labels)``."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    iterator = iter(batches)
    for index in range(warmup + steps):
        images, labels = next(iterator)
        _sync(device)
        start = time.perf_counter()
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        step(images, labels)
        _sync(device)
        if index >= warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"step_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3, "max_ms": max(times) * 1e3,
            "peak_gib": peak, "steps": steps}


def prefilled(batch: int, size: int, num_classes: int, device: torch.device):
    """An endless stream of one batch already on the device (no loader cost at all)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 1, size, size, generator=generator).to(device)
    labels = torch.randint(0, num_classes, (batch, size, size), generator=generator).to(device)
    while True:
        yield images, labels


def loader_batches(prepared: Path, batch: int, size: int, workers: int, device: torch.device):
    """Batches of a real training DataLoader (augmentation on, shuffled, pinned memory on CUDA), endlessly."""
    from torch.utils.data import DataLoader

    from medseg.data.dataset import SliceDataset

    dataset = SliceDataset(prepared, split="all", img_size=size, augment=True, augmentation="fused")
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    while True:
        for sample in loader:
            yield sample["image"], sample["label"]


def build(name: str, size: int, num_classes: int):
    from medseg.models import create

    torch.manual_seed(0)
    return create(name, num_classes=num_classes, img_size=size)


def command_train(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    num_classes = 9
    if args.smoke:
        torch.set_num_threads(1)
        size, batch, warmup, steps = 32, 2, 1, 1
        r50, ds = "TransUNet-Tiny", "DS-TransUNet-Tiny"
    else:
        size, batch, warmup, steps = 224, args.batch_size, args.warmup, args.steps
        r50, ds = "R50-ViT-B_16", "DS-TransUNet-B"
    rows = []
    runs = [(r50, "fp32", False, False), (r50, "bf16 autocast", True, False),
            (r50, "bf16 autocast + channels-last", True, True), (ds, "bf16 autocast + channels-last", True, True)]
    if args.smoke:  # the code paths, not figures: fp32 on the CPU, one run per model
        runs = [(r50, "fp32 + channels-last", False, True), (ds, "fp32", False, False)]
    for name, mode, amp, channels_last in runs:
        step = make_step(build(name, size, num_classes), device, amp, channels_last)
        timing = time_steps(step, prefilled(batch, size, num_classes, device), device, warmup, steps)
        rows.append({"model": name, "mode": mode, "batch": batch, "size": size, **timing,
                     "images_per_s": batch / timing["step_ms"] * 1e3})
        print(f"{name} {mode}: {timing['step_ms']:.1f} ms/step", flush=True)
        del step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    loader = None
    if args.smoke and not args.prepared:  # a two-case small phantom cache in a temporary folder
        import tempfile

        with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
            args.prepared, args.cases, args.size = str(Path(folder) / "data"), 2, "small"
            command_prepare(args)
            args.prepared = str(Path(folder) / "data" / "cache")
            loader = loader_check(args, r50, size, batch, warmup, steps, num_classes, device)
    elif args.prepared:
        loader = loader_check(args, r50, size, batch, warmup, steps, num_classes, device)
    result = {"device": str(device), "device_name": _device_name(device), "rows": rows, "loader": loader,
              "smoke": args.smoke, "torch": torch.__version__, "cpus": os.cpu_count()}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


def loader_check(args, r50: str, size: int, batch: int, warmup: int, steps: int, num_classes: int,
                 device: torch.device) -> dict:
    """The step fed by a real DataLoader over ``args.prepared`` against the same step on a pre-filled batch."""
    amp = device.type == "cuda"
    step = make_step(build(r50, size, num_classes), device, amp, device.type == "cuda")
    batches = loader_batches(Path(args.prepared), batch, size, args.workers, device)
    fed = time_steps(step, batches, device, warmup, steps)
    batches.close()  # stops the loader's workers
    filled = time_steps(step, prefilled(batch, size, num_classes, device), device, warmup, steps)
    print(f"loader: {fed['step_ms']:.1f} ms/step with {args.workers} workers, "
          f"{filled['step_ms']:.1f} ms pre-filled", flush=True)
    return {"model": r50, "workers": args.workers, "loader_ms": fed["step_ms"], "prefilled_ms": filled["step_ms"],
            "ratio": fed["step_ms"] / filled["step_ms"]}


def command_prepare(args) -> None:
    """A phantom cohort and its slice cache for the loader check (``--cases`` cases, ``--size`` small/full)."""
    from medseg.phantom import write_cohort
    from medseg.data.slice_cache import prepare_cohort

    out = Path(args.prepared)
    write_cohort(out / "raw", args.cases, seed=0, size=args.size, workers=max(1, args.workers), progress=False,
                 preview=False)
    prepare_cohort(out / "raw", out / "cache", split="auto", workers=max(1, args.workers), progress=False)


def command_ddp(args) -> dict:
    """One-process DDP under torchrun: join a group, wrap the model, time steps."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if "LOCAL_RANK" not in os.environ:
        raise SystemExit("ddp: run this under torchrun (torchrun --standalone --nproc_per_node 1 ...)")
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device(args.device if args.device == "cpu" else f"cuda:{local_rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        if args.smoke:
            torch.set_num_threads(1)
        name, size, batch, warmup, steps = (("TransUNet-Tiny", 32, 2, 1, 1) if args.smoke else
                                            ("R50-ViT-B_16", 224, args.batch_size, args.warmup, args.steps))
        model = build(name, size, 9).to(device)
        if device.type == "cuda":  # the layout is set before wrapping, so DDP's gradient buckets match it
            model = model.to(memory_format=torch.channels_last)
        ddp_model = DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
        step = make_step(ddp_model, device, amp=device.type == "cuda", channels_last=False)
        timing = time_steps(step, prefilled(batch, size, 9, device), device, warmup, steps)
        result = {"model": name, "world_size": dist.get_world_size(), "backend": dist.get_backend(),
                  "device": str(device), **timing}
        print(f"ddp {name}: world size {result['world_size']} ({result['backend']}), "
              f"{timing['step_ms']:.1f} ms/step", flush=True)
    finally:
        dist.destroy_process_group()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def render(train: dict, ddp: "dict | None", command: str) -> str:
    lines = [SECTION_HEADING, "",
             f"Command: `{command}`. Device: {train['device_name']}, torch {train['torch']}, {train['cpus']} CPU "
             "cores for the loader workers.",
             "",
             "Training throughput (forward + CE/Dice loss + backward + SGD step on a pre-filled batch on the device; "
             "median of the timed steps after warm-up):",
             "",
             "| model | precision / layout | batch | step (ms, median) | min-max (ms) | images/s | peak GPU memory "
             "(GiB) |",
             "|---|---|---:|---:|---|---:|---:|"]
    for row in train["rows"]:
        peak = f"{row['peak_gib']:.1f}" if row["peak_gib"] is not None else "-"
        lines.append(f"| {row['model']} | {row['mode']} | {row['batch']} | {row['step_ms']:.1f} | "
                     f"{row['min_ms']:.1f}-{row['max_ms']:.1f} | {row['images_per_s']:.0f} | {peak} |")
    loader = train.get("loader")
    if loader:
        verdict = ("keeps up (within 10 %)" if loader["ratio"] < 1.1 else
                   "does NOT keep up (the fed step is more than 10 % slower)")
        pinned = ", pinned memory" if train["device"].startswith("cuda") else ""
        lines += ["", f"- Loader: the {loader['model']} step fed by a real DataLoader ({loader['workers']} worker "
                      f"processes, fused augmentation{pinned}) takes {loader['loader_ms']:.1f} ms against "
                      f"{loader['prefilled_ms']:.1f} ms on a pre-filled batch ({loader['ratio']:.2f}x): the loader "
                      f"{verdict}."]
    if ddp:
        lines.append(f"- DDP through torchrun (one process, {ddp['backend']}): {ddp['model']} "
                     f"{ddp['step_ms']:.1f} ms per step (world size {ddp['world_size']}).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("prepare", "train", "ddp", "render"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (the CPU-only run of gpu_check.sh)")
    parser.add_argument("--prepared", help="slice cache for the loader check (train); prepare: writes DIR/raw and "
                                           "DIR/cache")
    parser.add_argument("--cases", type=int, default=2, help="prepare: phantom cases (default 2)")
    parser.add_argument("--size", default="full", help="prepare: phantom size, small or full (default full)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", help="write the figures here (train, ddp); read them from here (render)")
    parser.add_argument("--ddp-json", help="render: the ddp figures")
    parser.add_argument("--command-line", default="bash benchmarks/gpu_check.sh", help="render: the command")
    parser.add_argument("--write", type=Path, help="render: (re)write this section of a RESULTS.md")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        command_prepare(args)
    elif args.command == "train":
        command_train(args)
    elif args.command == "ddp":
        command_ddp(args)
    else:
        train = json.loads(Path(args.json).read_text())
        ddp = json.loads(Path(args.ddp_json).read_text()) if args.ddp_json and Path(args.ddp_json).exists() else None
        section = render(train, ddp, args.command_line)
        print(section)
        if args.write:
            sys.path.insert(0, str(Path(__file__).parent))
            from results_file import write_section

            write_section(args.write, SECTION_HEADING, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
