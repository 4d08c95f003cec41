#!/usr/bin/env bash
# Train the toy model on world v2 (96 px, 12 x 12 tokens, per-seed scenery) in one command:
# VAE, latents, transformer (phrase dropout, EMA) and export, within ~4.5 min wall on one H100.
#
#   scripts/train_toy_v2_gpu.sh OUTDIR     -> OUTDIR/model (diffusers folder), OUTDIR/train.log
#
# Needs torch, transformers, diffusers and bachvid importable (set PYTHONPATH; nothing is installed
# here). Without CUDA, or with SMOKE=1, it runs the same recipe on the CPU with tiny budgets and one
# thread (a ~2 min smoke test; the model is not meant to be good).
# Budgets (CUDA): VAE 45 s, latents ~5 s, transformer 165 s, export ~5 s, start-up ~15 s.
# Overrides: MINUTES (VAE + transformer budget, default 3.5), VAE_SHARE (0.215), BATCH (32),
# WORKERS (render processes, default: cores - 2), SEED (0), EXTRA (more `bachvid toy train` arguments).
set -euo pipefail
OUT=${1:?usage: scripts/train_toy_v2_gpu.sh OUTDIR}
mkdir -p "$OUT"
PY=${PYTHON:-python}
if [ -z "${SMOKE:-}" ] && "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    cores=$(nproc)
    args=(--device cuda --scale v2 --threads 4 --workers "${WORKERS:-$((cores > 3 ? cores - 2 : 1))}"
          --minutes "${MINUTES:-3.5}" --vae-share "${VAE_SHARE:-0.215}" --vae-batch 8
          --clips-per-combo 20 --batch-size "${BATCH:-32}" --lr 1e-3)
else
    echo "no CUDA (or SMOKE=1): CPU smoke run with tiny budgets" >&2
    args=(--device cpu --scale "${SMOKE_SCALE:-v2}" --threads 1 --workers 1
          --minutes "${MINUTES:-1}" --vae-share "${VAE_SHARE:-0.3}" --vae-batch 1
          --clips-per-combo 1 --batch-size 2 --lr 1e-3 --sample-steps 4)
fi
rm -f "$OUT/train.log"
# shellcheck disable=SC2086
"$PY" -m bachvid.toy.train --world v2 --work "$OUT/work" --out "$OUT/model" --schedule time \
    --phrase-dropout 0.2 --ema-decay 0.998 --guidance 8 --seed "${SEED:-0}" "${args[@]}" ${EXTRA:-} \
    2>&1 | tee "$OUT/train.log"
test -f "$OUT/model/model_index.json"
echo "model: $OUT/model" | tee -a "$OUT/train.log"
