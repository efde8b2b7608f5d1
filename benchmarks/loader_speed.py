"""Training input pipeline speed: slices per second per loader worker, reference vs medseg's two augmentation modes.

Usage::

    python benchmarks/loader_speed.py                                  # 64 samples per side, 5 rounds
    python benchmarks/loader_speed.py --gpu-step-ms 120                # workers needed for a measured GPU step
    python benchmarks/loader_speed.py --write benchmarks/RESULTS.md    # also (re)write this script's section there

What runs, each on the same 512 x 512 slices (float32 image in [0, 1] and uint8 label from a full-size phantom case)
and the same sample seeds, one thread (a data-loader worker process runs one sample at a time on one core):

* **reference**: the TransUNet reference ``RandomGenerator`` re-stated (datasets/dataset_synapse.py): Python's
  ``random`` picks rot90+flip / rotate / nothing, ``np.random`` draws k, the axis or the integer angle,
  ``scipy.ndimage.rotate(order=0, reshape=False)``, then ``scipy.ndimage.zoom`` 512 -> 224 (image order 3, label
  order 0), then the tensors.
* **medseg paper**: :class:`medseg.data.transforms.PaperAugmentd` in ``paper`` mode (the same steps and arrays).
* **medseg fused**: the same in ``fused`` mode (one torch ``grid_sample`` per slice: image bicubic, label nearest).

Every side runs once per round, alternating (``benchmarks/side_by_side.py``); the speed-up is the median of the
per-round ratios with its range. Workers needed to feed a GPU: ``ceil(batch / (slices/s per worker x step time))``
for the step time given with ``--gpu-step-ms`` (measured by ``benchmarks/gpu_check.sh`` on a GPU); without it the
script uses an estimate from FLOPs and says so.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from results_file import cpu_name, publish  # noqa: E402
from side_by_side import alternate, command_text, load_average  # noqa: E402

SECTION_HEADING = "## Training input pipeline speed (benchmarks/loader_speed.py)"
#: R50-ViT-B_16 forward at 224: 57.0 GFLOP per slice (benchmarks/infer_speed.py's counter); a training step is
#: about 3 forwards (forward + backward). The estimate assumes an achieved 100 TFLOP/s, a bf16 rate an A100/H100-class
#: GPU can sustain on this model; it is a labelled estimate until gpu_check.sh measures the step.
FORWARD_GFLOP = 57.0
ESTIMATED_TFLOPS = 100.0


def benchmark_slices(count: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` axial slices (image float32 in [0, 1], label uint8), 512 x 512, from a full-size phantom case."""
    from medseg.phantom import generate_case
    from medseg.preprocessing import PreprocessingParams
    from medseg.engine.inference import orient_view

    image, label = generate_case(1, seed, "full")
    params = PreprocessingParams()
    hu = orient_view(image.array, image.affine, params.axcodes).astype(np.float32)
    labels = orient_view(label.array, label.affine, params.axcodes)
    scaled = np.clip((hu - params.hu_min) / (params.hu_max - params.hu_min), 0.0, 1.0)
    depth = scaled.shape[2]
    picks = np.linspace(depth // 4, 3 * depth // 4, count).astype(int)
    return [(np.ascontiguousarray(scaled[:, :, k]), np.ascontiguousarray(labels[:, :, k]).astype(np.uint8))
            for k in picks]


def reference_generator(image: np.ndarray, label: np.ndarray, output_size: int):
    """The reference ``RandomGenerator.__call__``, drawing from the global ``random`` and ``np.random``."""
    from scipy import ndimage

    if random.random() > 0.5:
        k = np.random.randint(0, 4)
        image, label = np.rot90(image, k), np.rot90(label, k)
        axis = np.random.randint(0, 2)
        image, label = np.flip(image, axis=axis).copy(), np.flip(label, axis=axis).copy()
    elif random.random() > 0.5:
        angle = np.random.randint(-20, 20)
        image = ndimage.rotate(image, angle, order=0, reshape=False)
        label = ndimage.rotate(label, angle, order=0, reshape=False)
    x, y = image.shape
    if (x, y) != (output_size, output_size):
        image = ndimage.zoom(image, (output_size / x, output_size / y), order=3)
        label = ndimage.zoom(label, (output_size / x, output_size / y), order=0)
    return torch.from_numpy(image.astype(np.float32)).unsqueeze(0), torch.from_numpy(label.astype(np.float32)).long()


def run(args) -> dict:
    from medseg.data.transforms import PaperAugmentd

    torch.set_num_threads(1)
    slices = benchmark_slices(args.slices)
    seeds = list(range(args.samples))

    def samples():
        for index in seeds:
            image, label = slices[index % len(slices)]
            yield index, image, label

    def reference():
        for index, image, label in samples():
            random.seed(index)
            np.random.seed(index)
            reference_generator(image, label, args.img_size)

    def medseg(mode: str):
        step = PaperAugmentd(args.img_size, mode=mode)

        def call():
            for index, image, label in samples():
                # as SliceDataset.__getitem__ builds a sample from the slice cache
                step({"image": torch.from_numpy(np.array(image, dtype=np.float32))[None],
                      "label": torch.from_numpy(np.array(label, dtype=np.int64)), "seed": index})
        return call

    sides = {"reference (scipy rotate + zoom)": reference, "medseg paper": medseg("paper"),
             "medseg fused": medseg("fused")}
    for function in sides.values():  # warm-up
        function()

    def on_round(index, seconds):
        print(f"round {index + 1}: " + ", ".join(f"{n}: {t:.2f} s" for n, t in seconds.items()) +
              f"; load {load_average()}", flush=True)

    comparison = alternate(sides, args.rounds, "reference (scipy rotate + zoom)", on_round=on_round)
    if args.gpu_step_ms:
        step_s, step_text = args.gpu_step_ms / 1000, f"{args.gpu_step_ms:.0f} ms (measured, given with --gpu-step-ms)"
    else:
        step_s = 3 * FORWARD_GFLOP * args.batch_size / (ESTIMATED_TFLOPS * 1e3)
        step_text = (f"{step_s * 1e3:.0f} ms (an ESTIMATE, not measured: 3 x {FORWARD_GFLOP:.0f} GFLOP x "
                     f"{args.batch_size} slices at an assumed {ESTIMATED_TFLOPS:.0f} TFLOP/s bf16)")
    rows = []
    for name in sides:
        rate = args.samples / comparison.median_time(name)
        workers = math.ceil(args.batch_size / (rate * step_s))
        rows.append({"side": name, "rate": rate, "workers": workers,
                     "ratio": "1 (reference)" if name == comparison.reference else comparison.ratio_text(name)})
    return {"rows": rows, "comparison": comparison, "step_text": step_text, "args": args}


def render(result: dict) -> str:
    args = result["args"]
    comparison = result["comparison"]
    lines = [SECTION_HEADING, "",
             f"Command: {command_text('loader_speed.py')}. Machine: "
             f"{cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, 1 thread (one loader "
             f"worker); load average (1/5/15 min) {comparison.load_before} before, {comparison.load_after} after "
             "(shared machine: times are inflated, the alternating rounds keep the ratios fair).",
             f"{args.samples} training samples per side and round ({args.slices} different 512 x 512 phantom slices, "
             f"sample seeds 0..{args.samples - 1}, the same for every side) augmented and resized to "
             f"{args.img_size} x {args.img_size}; {comparison.rounds} alternating rounds, speed-up = median of the "
             "per-round ratios (range in brackets); slices/s comes from each side's median time over the rounds, so under a "
             "moving load the two columns need not agree.",
             "",
             "| pipeline | slices/s per worker | speed-up vs reference (range) | workers to feed one GPU step |",
             "|---|---:|---|---:|"]
    for row in result["rows"]:
        lines.append(f"| {row['side']} | {row['rate']:.1f} | {row['ratio']} | {row['workers']} |")
    lines += ["",
              f"- Workers to feed a step of R50-ViT-B_16 at batch {args.batch_size}: ceil(batch / (slices/s per "
              f"worker x step time)) with a step time of {result['step_text']}, assuming each worker has a core of "
              "this speed to itself.",
              "- `paper` gives the reference's arrays for the same draw (tests/test_transforms.py); `fused` draws "
              "from the same distribution with a continuous angle (torch generator) and resamples once (bicubic, "
              "clamped to [0, 1]), so its pixels differ slightly; both draw per sample from the sample's seed."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=64, help="samples per side and round (default 64)")
    parser.add_argument("--slices", type=int, default=16, help="distinct phantom slices (default 16)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=24, help="GPU batch to feed (default 24, the recipe)")
    parser.add_argument("--gpu-step-ms", type=float, default=None, help="measured GPU step time in ms")
    parser.add_argument("--write", type=Path, help="(re)write this script's section of a RESULTS.md")
    args = parser.parse_args(argv)
    publish(render(run(args)), SECTION_HEADING, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
