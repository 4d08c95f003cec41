#!/usr/bin/env bash
# Train a toy model on world v2 (96 px, 12 x 12 tokens, per-seed scenery) on a CPU, in sessions:
# the GPU recipe (scripts/train_toy_v2_gpu.sh) with the shipped v1 model's size, a step schedule
# (replayable, resumable) and the budgets a 2-core machine affords.
#
#   scripts/train_toy_v2_cpu.sh OUTDIR        -> OUTDIR/work (checkpoints), OUTDIR/model, OUTDIR/train.log
#   MINUTES=100 scripts/train_toy_v2_cpu.sh OUTDIR   # stop after 100 min; run again to go on (--resume)
#   EXTRA="--restart-at 2757" STEPS=6000 scripts/train_toy_v2_cpu.sh OUTDIR   # continue a finished run longer
#   INIT=checkpoints/toy-v2 STEPS=4000 scripts/train_toy_v2_cpu.sh OUTDIR   # continue a committed model on a
#       fresh machine (its VAE and weights; the latents are encoded again, a fresh warmup + cosine over STEPS)
#
# Why the v1 size (8 layers, 4 heads x 32, VAE (16, 32, 32); 4.9 M + 0.6 M params) and not --scale v2
# (16.4 M): on 2 cores, batch 12, the v1 size trains 0.74 steps/s on v2's 720 tokens, v2's size 0.3.
# VAE: 1,000 steps of batch 4 (~17 min); transformer: STEPS (6,000) of batch 12, warmup + cosine to
# 10% over STEPS, phrase dropout 0.2, EMA 0.998 (~125 min). A run that the clock stops keeps its
# checkpoint (every 2 min); the next run resumes it exactly on the same schedule. To end a session
# early without losing a step: `touch OUTDIR/work/STOP` (the stage saves, ends, and the model is exported).
# Overrides: SCALE (full; smoke for the test), MINUTES (this run's wall-clock budget per stage, default 600), STEPS (6000), VAE_STEPS (1000),
# THREADS (2), SEED (0), INIT (an exported model folder to continue: --init-from), EXTRA (more
# `bachvid toy train` arguments).
set -euo pipefail
OUT=${1:?usage: scripts/train_toy_v2_cpu.sh OUTDIR}
mkdir -p "$OUT"
PY=${PYTHON:-python}
stages=vae,latents,transformer,export
init=()
if [ -n "${INIT:-}" ]; then
    stages=latents,transformer,export  # the model's VAE is kept; the latents stage skips latents already there
    init=(--init-from "$INIT")
elif [ -f "$OUT/work/latents.pt" ]; then
    stages=transformer,export  # the VAE and the latents are done: go on with the transformer
fi
# --minutes bounds each stage's clock; --vae-share 0.5 gives both stages the same bound.
# shellcheck disable=SC2086
"$PY" -m bachvid.toy.train --world v2 --scale "${SCALE:-full}" --device cpu --work "$OUT/work" --out "$OUT/model" \
    --stages "$stages" --resume --schedule steps --minutes "$(( 2 * ${MINUTES:-600} ))" --vae-share 0.5 \
    --vae-steps "${VAE_STEPS:-1000}" --vae-batch 4 --clips-per-combo 20 --steps "${STEPS:-6000}" --batch-size 12 \
    --lr 1e-3 --phrase-dropout 0.2 --ema-decay 0.998 --guidance 8 --threads "${THREADS:-2}" --workers 1 \
    --seed "${SEED:-0}" "${init[@]}" ${EXTRA:-} 2>&1 | tee -a "$OUT/train.log"
test -f "$OUT/model/model_index.json"
echo "model: $OUT/model" | tee -a "$OUT/train.log"
