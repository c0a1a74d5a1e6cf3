#!/usr/bin/env bash
# The demo's benchmark: sweep w x tile overlap with the tiny model on the bundled held-out pairs
# (data/samples/heldout_pairs, LR 32 -> HR 128) and write the report to experiments/demo_tiny/.
#
#   scripts/demo_eval.sh                      # trained demo weights (the paths below must exist)
#   ALLOW_RANDOM_WEIGHTS=1 scripts/demo_eval.sh   # no trained weights: random-weight tiny model (checks the chain only)
#
# Environment (defaults in brackets): PYTHON [.venv/bin/python], PRIOR [runs/demo/prior/model],
# STAGE1 [runs/demo/stage1/stage1.safetensors], CFW [runs/demo/cfw/cfw.safetensors], STEPS [20],
# SWEEP_DIR [runs/eval/demo_tiny/sweep], REPORT_DIR [experiments/demo_tiny], OVERWRITE [false; true re-samples
# every image]. Re-running with the same SWEEP_DIR resumes: finished runs are skipped, missing images sampled.
# The report in REPORT_DIR (table.md, table.csv, plots/, strips/) is regenerated every time; its README.md is not.
# It is committed, so it is written only from a clean git tree (--require-clean) and without timings; the sweep's
# own report (SWEEP_DIR/report) shows the seconds per image.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
PRIOR=${PRIOR:-runs/demo/prior/model}
STAGE1=${STAGE1:-runs/demo/stage1/stage1.safetensors}
CFW=${CFW:-runs/demo/cfw/cfw.safetensors}
STEPS=${STEPS:-20}
SWEEP_DIR=${SWEEP_DIR:-runs/eval/demo_tiny/sweep}
REPORT_DIR=${REPORT_DIR:-experiments/demo_tiny}
OVERWRITE=${OVERWRITE:-false}

weights=()
if [[ -d "$PRIOR" && -f "$STAGE1" && -f "$CFW" ]]; then
  weights=("model.pretrained=$PRIOR" "ckpt=$STAGE1" "cfw_ckpt=$CFW")
elif [[ "${ALLOW_RANDOM_WEIGHTS:-0}" == 1 ]]; then
  echo "demo_eval: trained weights not found ($PRIOR, $STAGE1, $CFW): RANDOM-WEIGHT tiny model" >&2
else
  echo "demo_eval: missing trained weights ($PRIOR, $STAGE1, $CFW); train them (make demo) or set ALLOW_RANDOM_WEIGHTS=1" >&2
  exit 1
fi

# The held-out latents (16 x 16) fit in one 16 px tile, so the overlap axis must come out flat: a check that
# single-tile aggregation does not depend on the overlap.
"$PYTHON" eval.py -m model=tiny data=samples_heldout "${weights[@]}" experiment_name=demo_tiny \
  steps="$STEPS" w=0,0.5,1 tile.size=16 tile.overlap=0,8 color_fix=adain seed=42 \
  'metrics=[psnr_y,ssim_y,psnr,ssim,lpips_alex,fid]' progress=false overwrite="$OVERWRITE" report_timings=true \
  hydra.sweep.dir="$SWEEP_DIR"
"$PYTHON" -m sr.report "$SWEEP_DIR" --name demo_tiny --out "$REPORT_DIR" --overwrite --require-clean
