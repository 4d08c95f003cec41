#!/usr/bin/env bash
# The checks of one lent-GPU session (15 device minutes), run from the repository root there:
#
#   bash scripts/device_session.sh bench   # issue 8: injected attention alone + bench of the modes
#   bash scripts/device_session.sh train   # issue 7: train the world-v2 toy model (~4.5 min)
#   bash scripts/device_session.sh profile # where an injected lockstep step spends its time (~2 min)
#   bash scripts/device_session.sh wan     # issue 9: Wan2.1-T2V-1.3B's config, 81x480x832 (~5 min)
#
# The device image has PyTorch and transformers but not diffusers: carry `.gpu` holding the wheels
# (.gpu/whl: diffusers, importlib_metadata, zipp) and a snapshot of the committed package
# (`git archive HEAD src | tar -x -C .gpu`), so that helpers' unfinished edits never travel.
# Results go to $OUT (the device tool brings back at most 8 files).
set -u
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site:$PWD/.gpu/src PYTHONUNBUFFERED=1

case "${1:-bench}" in
bench)
    {
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
        python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
        for fg in 0.3 0.15; do
            timeout 90 python3 -m bachvid.bench_attention --foreground "$fg" --json "$OUT/attention-$fg.json"
        done
    } > "$OUT/attention.txt" 2>&1
    # CogVideoX-5B's config, random bf16 weights, 49x480x720; 3 steps measured, ratios extrapolated
    # to 50 (paper's pre-run, and a coarse pre-run of stride 5) from the per-phase costs.
    timeout "${BENCH_S:-300}" python3 -m bachvid.bench --random-weights cogvideox-5b --steps 3 --extrapolate 50 \
        --coarse 5 --shots 3 --modes "${MODES:-vanilla,lockstep:3,lockstep:1,replay:1}" \
        --json "$OUT/bench.json" > "$OUT/bench.txt" 2>&1
    ;;
profile)
    timeout "${BENCH_S:-200}" python3 -m bachvid.bench --random-weights cogvideox-5b --steps 3 --shots 3 \
        --modes vanilla,lockstep:3 --profile "$OUT/profile.txt" --json "$OUT/profile-bench.json" > "$OUT/profile-bench.txt" 2>&1
    ;;
wan)
    # Wan2.1-T2V-1.3B's config, random bf16 weights, 81x480x832, guidance 5: lockstep and replay vs vanilla.
    timeout "${BENCH_S:-300}" python3 -m bachvid.bench --random-weights wan2.1-t2v-1.3b --steps 3 --extrapolate 50 \
        --shots 3 --modes "${MODES:-vanilla,lockstep:3,lockstep:1,replay:1}" \
        --json "$OUT/bench-wan13.json" > "$OUT/bench-wan13.txt" 2>&1
    ;;
train)
    # The time limit follows MINUTES (training budget) plus ~70 s of start-up, latents and export.
    minutes=${MINUTES:-3.5}
    limit=${TRAIN_S:-$(python3 -c "print(int(float('$minutes') * 60 + 75))")}
    MINUTES=$minutes timeout "$limit" bash scripts/train_toy_v2_gpu.sh /tmp/toy > "$OUT/train.txt" 2>&1
    # Only the exported model comes back: the work folder (latents, checkpoints) is ~500 MB, over
    # what the device tool returns, and a too-large archive loses the model (it happened once).
    tar czf "$OUT/toy-v2-model.tgz" -C /tmp/toy model train.log 2>> "$OUT/train.txt"
    ls -la "$OUT" >> "$OUT/train.txt"
    ;;
*)
    echo "usage: $0 bench|train|profile|wan" >&2
    exit 2
    ;;
esac
