#!/usr/bin/env bash
# The ready GPU check (about 8 minutes on one GPU): the slow tests (GPU ones included), then seconds per image and
# peak accelerator memory of 4x upscales (sd21_base, random weights) to 512^2, 2048^2, 4096^2 in fp32/fp16, batched
# vs per-tile, eager vs compiled, printed as one table and written to experiments/gpu_check/table.md.
#
#   bash benchmarks/gpu_check.sh                                   # on a machine with one CUDA GPU
#   bash benchmarks/gpu_check.sh --dry-run                         # the same code on CPU at tiny size (no GPU)
#
# Further arguments go to benchmarks/acceleration.py and override the defaults below. PYTHON overrides the
# interpreter (default .venv/bin/python), TEST_BUDGET the seconds for the slow tests (default 150).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
table=(--device cuda --model sd21_base --sizes 512 2048 4096 --dtypes float32 float16
       --variants batched compiled per_tile --steps 3 --budget 300 --out experiments/gpu_check/table.md)
run_tests=1
if [[ ${1-} == --dry-run ]]; then
  shift
  run_tests=0
  table=(--device cpu --model tiny --sizes 64 128 --dtypes float32 bfloat16 --variants batched compiled per_tile
         --steps 2 --compile-backend aot_eager --budget 1500 --out "${TMPDIR:-/tmp}/gpu_check_dry_run.md")
fi

start=$(date +%s)
if (( run_tests )); then
  echo "== slow tests (budget ${TEST_BUDGET:-150} s)"
  timeout "${TEST_BUDGET:-150}" "$PYTHON" -m pytest -q -m slow || echo "slow tests: FAILED or over budget (exit $?)"
fi
echo "== upscale table"
"$PYTHON" benchmarks/acceleration.py "${table[@]}" "$@"
echo "== total $(( $(date +%s) - start )) s"
