#!/usr/bin/env bash
# The GPU check: one script, a few minutes on one GPU, that records its figures in benchmarks/RESULTS.md.
#
#   bash benchmarks/gpu_check.sh                 # writes the GPU sections of benchmarks/RESULTS.md
#   bash benchmarks/gpu_check.sh OTHER.md        # writes them to another file
#
# On a GPU (CUDA device 0):
#   1. a 2-case full-size phantom cohort and its slice cache in a temporary folder (for the loader check);
#   2. training throughput of R50-ViT-B_16 at 224, batch 24 (fp32, bf16 autocast, bf16 + channels-last) and
#      DS-TransUNet-B, peak GPU memory, and whether the loader keeps up (real workers vs a pre-filled batch);
#   3. a one-process DDP run through torchrun (NCCL);
#      -> section "GPU check" (benchmarks/gpu_check.py)
#   4. inference of a 512 x 512 x 150 volume against the reference test loop on the same GPU, alternating rounds,
#      peak GPU memory of each path -> section "Inference speed" (benchmarks/infer_speed.py --device cuda)
#   5. the loader benchmark with the measured step time -> how many workers keep the GPU fed
#      -> section "Training input pipeline speed" (benchmarks/loader_speed.py)
# Without a GPU it says so, runs a short CPU smoke run of steps 2-3 (tiny models, nothing written) and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
python=${PYTHON:-python3}
if ! "$python" -c "import torch" >/dev/null 2>&1; then
    echo "gpu_check: $python cannot import torch; activate medseg's environment or set PYTHON" >&2
    exit 2
fi
results=${1:-benchmarks/RESULTS.md}
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-XXXXXX")
trap 'rm -rf "$work"' EXIT
torchrun=("$python" -m torch.distributed.run --standalone --nproc_per_node 1)
start=$SECONDS

if ! "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no GPU present (torch.cuda.is_available() is false): CPU smoke run only, RESULTS.md unchanged"
    "$python" benchmarks/gpu_check.py train --device cpu --smoke --workers 0 --json "$work/train.json"
    "${torchrun[@]}" benchmarks/gpu_check.py ddp --device cpu --smoke --json "$work/ddp.json"
    "$python" benchmarks/gpu_check.py render --json "$work/train.json" --ddp-json "$work/ddp.json" >/dev/null
    echo "gpu_check: CPU smoke run passed in $((SECONDS - start)) s (no GPU figures measured)"
    exit 0
fi

cpus=$(nproc)
workers=$(( cpus < 8 ? cpus : 8 ))
echo "gpu_check: $("$python" -c "import torch; print(torch.cuda.get_device_name(0))"), $cpus CPU cores"
"$python" benchmarks/gpu_check.py prepare --prepared "$work/data" --cases 2 --size full --workers "$workers"
"$python" benchmarks/gpu_check.py train --device cuda --prepared "$work/data/cache" --workers "$workers" \
    --json "$work/train.json"
"${torchrun[@]}" benchmarks/gpu_check.py ddp --device cuda --json "$work/ddp.json"
"$python" benchmarks/gpu_check.py render --json "$work/train.json" --ddp-json "$work/ddp.json" \
    --command-line "bash benchmarks/gpu_check.sh" --write "$results"
"$python" benchmarks/infer_speed.py --device cuda --slices 150 --rounds 3 --batch-size 32 --write "$results"
step_ms=$("$python" -c "import json, sys; rows = json.load(open(sys.argv[1]))['rows']; \
print(next(r['step_ms'] for r in rows if r['mode'] == 'bf16 autocast + channels-last'))" "$work/train.json")
"$python" benchmarks/loader_speed.py --gpu-step-ms "$step_ms" --write "$results"
echo "gpu_check: done in $((SECONDS - start)) s; figures written to $results"
