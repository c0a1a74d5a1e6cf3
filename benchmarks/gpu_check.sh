#!/usr/bin/env bash
# The ready GPU check: at most 10 minutes on one CUDA GPU, every part under its own time budget, one report.
#   1. the full-size paths (make test-full on the GPU: stage 1 at 512 and 768v, CFW, upscale/eval at 512 and 768);
#   2. benchmarks/full_size.py at sd21_base / 512 px: peak memory and seconds per step per memory lever, FLOPs and
#      the achieved fraction of the GPU's fp32 matmul peak, and the largest stage-1 batch MEASURED under 24/40/80 GB
#      allocator caps (--measure-batches) beside the projection;
#   3. benchmarks/acceleration.py: seconds per image and peak memory of 4x upscales to 512^2 and 4096^2 in fp32 and
#      fp16 (the fp16 speed-up, the 4096 px output's peak memory), batched vs compiled;
#   4. the CUDA-only test (the exact tiled VAE keeps accelerator memory bounded by the tile).
# Everything goes to experiments/gpu_check/: one markdown file per part and report.md, all of them in order, which is
# also printed. A part that fails or runs over its budget is reported as such and the next one runs.
#
#   bash benchmarks/gpu_check.sh              # on a machine with one CUDA GPU
#   bash benchmarks/gpu_check.sh --dry-run    # the same parts on the CPU at tiny size (no GPU; checks the plumbing)
#
# PYTHON overrides the interpreter (default .venv/bin/python); OUT the report folder.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-experiments/gpu_check}

full_tests=("$PYTHON" -m pytest -q -s -m full tests/test_full_size.py)
full_size=("$PYTHON" benchmarks/full_size.py --preset sd21_base --crop 512 --steps 2 --measure-batches
           --levers none,unet_checkpointing,encoder_checkpointing,bf16,all)
acceleration=("$PYTHON" benchmarks/acceleration.py --device cuda --model sd21_base --sizes 512 4096
              --dtypes float32 float16 --variants batched compiled --steps 2 --budget 140)
cuda_tests=("$PYTHON" -m pytest -q -m slow tests/test_tiled_vae.py -k cuda)
budgets=(280 150 130 30)  # seconds per part: 590 in all
if [[ ${1-} == --dry-run ]]; then
  OUT=${TMPDIR:-/tmp}/gpu_check_dry_run
  full_tests=(echo "(dry run: the full-size tests need the GPU or about an hour of CPU: make test-full)")
  full_size=("$PYTHON" benchmarks/full_size.py --preset tiny --crop 128 --tile 16 --steps 1 --levers none,all
             --matmul-size 256)
  acceleration=("$PYTHON" benchmarks/acceleration.py --device cpu --model tiny --sizes 64 128 --dtypes float32 bfloat16
                --variants batched compiled --steps 2 --compile-backend aot_eager --budget 600)
  cuda_tests=(echo "(dry run: the CUDA-only test needs a GPU)")
  budgets=(60 600 600 60)
fi
mkdir -p "$OUT"

names=("full-size paths (tests/test_full_size.py)" "memory levers, FLOPs, batch sizes (benchmarks/full_size.py)"
       "upscale speed and memory per precision (benchmarks/acceleration.py)" "CUDA-only test")
commands=(full_tests full_size acceleration cuda_tests)
start=$(date +%s)
report="$OUT/report.md"
{
  echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ), git $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  "$PYTHON" -c "import torch; print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu',
                '| torch', torch.__version__)"
} > "$report.part"
for i in "${!commands[@]}"; do
  declare -n command="${commands[$i]}"
  part="$OUT/part$((i + 1)).md"
  echo "== ${names[$i]} (budget ${budgets[$i]} s)"
  part_start=$(date +%s)
  timeout "${budgets[$i]}" "${command[@]}" 2>&1 | tee "$part"
  status=${PIPESTATUS[0]}
  seconds=$(( $(date +%s) - part_start ))
  case $status in
    0) verdict="passed" ;;
    124) verdict="OVER BUDGET (stopped after ${budgets[$i]} s)" ;;
    *) verdict="FAILED (exit $status)" ;;
  esac
  {
    echo; echo "## $((i + 1)). ${names[$i]}: $verdict in $seconds s"; echo
    grep -E '^(\||###|\[full\]|measured|preset|[0-9]+ (passed|failed))' "$part" || echo "(no table: see $part)"
  } >> "$report.part"
  unset -n command
done
echo >> "$report.part"
echo "total $(( $(date +%s) - start )) s" >> "$report.part"
mv "$report.part" "$report"
echo "== report ($report)"
cat "$report"
