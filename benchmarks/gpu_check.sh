#!/usr/bin/env bash
# GPU check for a Mac (Metal) or an NVIDIA machine with MLX's CUDA backend: the GPU-marked tests
# (the real kernel against the ops path) and the benchmark (kernel vs ops path vs torch, with effective
# GB/s and the kernel's fraction of a copy's bandwidth). Run it from the repository root:
#
#   pip install -e ".[cuda13,test]"      # .[cuda12,test] or, on a Mac, .[test]; torch adds rows
#   bash benchmarks/gpu_check.sh
#
# The package is imported from this source tree, so an environment that already has MLX's
# CUDA build, pytest, hypothesis and numpy needs no install of lucid_mlx itself.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi
python3 - <<'EOF'
import sys

import mlx.core as mx

print("mlx", mx.__version__, mx.default_device(), mx.device_info().get("device_name", ""))
if not (mx.metal.is_available() or mx.cuda.is_available()):
    sys.exit("gpu_check: this MLX has no GPU backend (on Linux: mlx[cuda12] or mlx[cuda13])")
EOF
python3 -m pytest -q -ra -m gpu -p no:cacheprovider tests/test_kernels.py
python3 benchmarks/bench_dropout.py --repeats 30
