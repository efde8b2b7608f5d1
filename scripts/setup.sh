#!/usr/bin/env bash
# Install medseg and its dependencies into the current Python environment.
#   bash scripts/setup.sh          the package (what the demo pipeline needs)
#   bash scripts/setup.sh --test   plus the test tools (pytest, medpy, nbclient)
# Without an NVIDIA GPU, PyTorch's CPU build is installed first, so pip does not pull the CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
        "$PYTHON" -m pip install -q "torch>=2.2,<3"
    else
        # CPU build: torch 2.13.0 is served as a CPU wheel where a local wheel cache provides it; set
        # TORCH_CPU_INDEX to a PyTorch CPU wheel index to get the CPU build elsewhere.
        "$PYTHON" -m pip install -q "torch==${MEDSEG_TORCH_VERSION:-2.13.0}" ${TORCH_CPU_INDEX:+--index-url "$TORCH_CPU_INDEX"}
    fi
fi
"$PYTHON" -m pip install -q -e ".${extras}"
"$PYTHON" -c "import medseg, torch; print(f'medseg {medseg.__version__} installed (torch {torch.__version__})')"
