#!/usr/bin/env bash
# Creates (or updates) the Python virtual environment of the PyTorch side of kdlora's benchmark
# and recipe comparison (bench/torch_reference.py, bench/torch_recipe.py), with the pinned versions
# of bench/requirements-torch.txt.
#
#   bash bench/setup-torch-venv.sh VENV_DIR        # e.g. .venv-bench
#
# Idempotent: an existing venv is reused and pip only installs what is missing or differs.
# PyPI's torch wheel for Linux x86_64 is the CUDA build (it runs on the CPU too; it pulls the
# nvidia-* runtime wheels, a few GiB). Prints the venv's python path as the last line.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 VENV_DIR" >&2
    exit 2
fi
venv=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
req="$here/requirements-torch.txt"
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv" >&2
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
"$venv/bin/python" - >&2 <<'PY'
import importlib
for name in ("torch", "transformers", "peft", "safetensors", "numpy", "scipy"):
    module = importlib.import_module(name)
    print(f"{name} {getattr(module, '__version__', '?')}")
PY
echo "$(cd "$venv" && pwd)/bin/python"
