#!/usr/bin/env bash
# The GPU check for a lent NVIDIA machine, as one script: the GPU-marked tests (real CUDA
# kernel against the ops path) and the benchmark, with MLX's CUDA build already installed
# into python3 by the two calls that ../shared/device/mlx-cuda-prepare prepares:
#   call 1: carry [".mlxcuda/1"]  command: bash .mlxcuda/1/stage.sh
#   call 2: carry [".mlxcuda/2"]  command: bash .mlxcuda/2/install.sh && bash benchmarks/gpu_check.sh
# The machine has no network: lucid_mlx runs from the source tree (PYTHONPATH), and pytest,
# hypothesis and numpy must be there or travel as wheels (see the device tool's README).
set -euo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; fi
python3 -c "import mlx.core as mx; print('mlx', mx.__version__, mx.default_device(), mx.device_info())"
python3 -m pytest -q -ra -m gpu -p no:cacheprovider tests/test_kernels.py
python3 benchmarks/bench_dropout.py --repeats 30
