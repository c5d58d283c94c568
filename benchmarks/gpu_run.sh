#!/usr/bin/env bash
# Everything the GPU machine should run, in one go, results under ${OUT:-gpu_out}:
# GPU tests, the fused-MoE benchmark, then the full profile (its own budget: < 8 minutes on H100).
#   bash benchmarks/gpu_run.sh
set -u
OUT="${OUT:-gpu_out}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv | tee "$OUT/nvidia-smi.txt"
"$PY" -m pytest tests/test_kernels.py -q -m gpu -p no:cacheprovider 2>&1 | tail -20 | tee "$OUT/pytest-gpu.txt"
"$PY" benchmarks/fused_moe_bench.py --device cuda --quick --out "$OUT" 2>&1 | tail -60 | tee "$OUT/fused_moe_bench.txt"
"$PY" -m moesim.profile --device cuda --out "$OUT/h100-sxm" 2>&1 | tail -30
