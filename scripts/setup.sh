#!/usr/bin/env bash
# Install medseg and its dependencies into the current Python environment (a virtual environment is best:
#   python3 -m venv .venv && . .venv/bin/activate), saying what it installs as it goes.
#   bash scripts/setup.sh          the package (what the demo pipeline needs)
#   bash scripts/setup.sh --test   plus the test tools (pytest, medpy, nbclient; gdcmconv and dciodvfy with apt-get)
# PYTHON selects the interpreter (default: python3). Without an NVIDIA GPU, PyTorch's CPU build is installed first,
# so pip does not pull the CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
pip_install() { "$PYTHON" -m pip install --progress-bar off "$@"; }

echo "setup: python $("$PYTHON" -c 'import sys; print(sys.version.split()[0], sys.executable)')"
if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    echo "setup: torch $("$PYTHON" -c 'import torch; print(torch.__version__)') already installed, kept"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    echo "setup: installing torch>=2.2,<3 (CUDA build: an NVIDIA GPU is present)"
    pip_install "torch>=2.2,<3"
else
    # CPU build: torch 2.13.0 is served as a CPU wheel where a local wheel cache provides it; set
    # TORCH_CPU_INDEX to a PyTorch CPU wheel index to get the CPU build elsewhere.
    version=${MEDSEG_TORCH_VERSION:-2.13.0}
    echo "setup: installing torch==$version (CPU build: no NVIDIA GPU found)"
    pip_install "torch==$version" ${TORCH_CPU_INDEX:+--index-url "$TORCH_CPU_INDEX"}
fi
if [ -n "$extras" ]; then
    # The DICOM tests encode series with GDCM's gdcmconv and validate outputs with dicom3tools' dciodvfy (Debian).
    missing=()
    command -v gdcmconv >/dev/null 2>&1 || missing+=(libgdcm-tools)
    command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
    if [ "${#missing[@]}" -gt 0 ]; then
        sudo=""
        [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo"
        if [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; then
            echo "setup: installing ${missing[*]} with apt-get (DICOM test tools)"
            $sudo apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        else
            echo "setup: cannot install ${missing[*]} (not root, no sudo): the DICOM tool tests will skip"
        fi
    fi
fi
echo "setup: installing medseg${extras} (editable) and its dependencies from pyproject.toml"
pip_install -e ".${extras}"
"$PYTHON" - "$extras" <<'PY'
import sys
from importlib.metadata import version

import medseg
names = ["torch", "monai", "numpy", "scipy", "nibabel", "SimpleITK", "pydicom", "highdicom", "scikit-image", "pandas",
         "h5py", "matplotlib", "tqdm", "PyYAML", "transformers"]
if sys.argv[1]:
    names += ["pytest", "medpy", "nbclient", "nbformat", "ipykernel"]
print("setup: installed " + ", ".join(f"{name} {version(name)}" for name in names))
if sys.argv[1]:  # the DICOM tests' Debian tools (.ci/run installs them with apt-get)
    import shutil
    tools = {"gdcmconv": "libgdcm-tools", "dciodvfy": "dicom3tools"}
    missing = [package for tool, package in tools.items() if shutil.which(tool) is None]
    print("setup: DICOM test tools " + (f"missing: apt-get install {' '.join(missing)}" if missing else "present"))
print(f"setup: medseg {medseg.__version__} ready")
PY
