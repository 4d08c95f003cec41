#!/usr/bin/env bash
# Judge a trained world-v2 toy model before it may ship: how much each prompt phrase steers the model
# (seconds; ~0 means a phrase is ignored), plain samples read by the pixel evaluator
# (quality bars on held-out prompts; held-out and training combinations side by side), then the
# paper's analysis against the truth (mask IoU and match accuracy per layer and step).
#
#   scripts/eval_toy_v2.sh MODEL OUTDIR      -> OUTDIR/steering.json, OUTDIR/quality/, OUTDIR/quality-training/, OUTDIR/analyze/
#
# ~10 min on 2 CPU cores for the defaults. Overrides: SAMPLES (32), VIDEOS (8), THREADS (2).
set -euo pipefail
MODEL=${1:?usage: scripts/eval_toy_v2.sh MODEL OUTDIR}
OUT=${2:?usage: scripts/eval_toy_v2.sh MODEL OUTDIR}
PY=${PYTHON:-python}
mkdir -p "$OUT"
"$PY" -m bachvid.toy.steering --model "$MODEL" --json 2>/dev/null | tee "$OUT/steering.json"
"$PY" -m bachvid.toy.quality --model "$MODEL" --samples "${SAMPLES:-32}" --threads "${THREADS:-2}" \
    --out "$OUT/quality" | tail -4
"$PY" -m bachvid.toy.quality --model "$MODEL" --samples 16 --combinations training --threads "${THREADS:-2}" \
    --out "$OUT/quality-training" | tail -4
"$PY" -m bachvid.cli analyze --model "$MODEL" --videos "${VIDEOS:-8}" --fractions 0.0,0.1,0.2,0.4,0.6 \
    --threads "${THREADS:-2}" --out "$OUT/analyze" 2>/dev/null | tail -4
