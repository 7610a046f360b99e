#!/bin/bash
# GPU measurements in one call on a lent GPU machine, within a budget of seconds:
#   1. single-cell epoch time against SCVI (benchmarks.cost, 10,000 synthetic cells; S5:D with
#      the counts resident on the GPU);
#   2. image epoch time against S=1 (benchmarks.image_cost, vanilla, MNIST; images on the GPU
#      and the host DataLoader side by side);
#   3. vanilla MNIST test NLL against S at the largest common epoch budget that fits the time
#      left: every configuration trains one epoch side by side (a probe of the speed), then all
#      resume from there to the same epoch count, and are evaluated with 5,000 importance
#      samples per image on 2,000 test images.
# Results are packed into $OUT/results.tgz after each stage, so a stage cut short keeps the
# earlier ones; the log streams to $OUT/log.txt. The image runs' small files (configuration,
# training summary, evaluation, machine; no checkpoints) go to runs/ in the pack, so that the
# report can be rebuilt elsewhere: `benchmarks.image_nll_vs_s --runs <that folder> --report-only`.
#
# Usage: OUT=dir SCMIXVAE_DATA_DIR=dir [PYTHON=interpreter] bash benchmarks/device_run.sh [budget_seconds]
# Settings (environment): SKIP_COST=1 skips stages 1-2; IMAGE_MODELS, IMAGE_SEEDS (default 0;
# every model and seed is one process, side by side); IMAGE_EPOCHS fixes the epochs (no probe,
# e.g. to match an earlier seed); IMAGE_STEM names the report.
# A quick dry run on a CPU: SMOKE=1 (tiny data, few epochs).
set -u
BUDGET=${1:-540}
START=$(date +%s)
RES=$(mktemp -d)
RUNS=$(mktemp -d)
IMAGE_MODELS=${IMAGE_MODELS:-"S1 S5 S5:shared:A1 S50:shared:A1 S200:shared:A1"}
IMAGE_SEEDS=${IMAGE_SEEDS:-0}
IMAGE_STEM=${IMAGE_STEM:-image_vanilla_mnist_gpu}
WARMUP=10
if [ "${SMOKE:-0}" = 1 ]; then
    CELLS=600 STEPS=8 SUBSET="--subset 300" TEST="--test-subset 50" SAMPLES=50
else
    CELLS=10000 STEPS=200 SUBSET="" TEST="--test-subset 2000" SAMPLES=5000
fi
# shellcheck source=benchmarks/_device_common.sh
source "$(dirname "$0")/_device_common.sh"

stamp device
nvidia-smi -L 2>/dev/null
"$PY" -c "import torch, scvi, scmixvae; print('torch', torch.__version__, 'scvi-tools', \
scvi.__version__, 'cuda', torch.cuda.is_available())" || exit 1

if [ "${SKIP_COST:-0}" != 1 ]; then
stamp "single-cell cost"
timeout 170 "$PY" -m benchmarks.cost --cells $CELLS --epochs 4 --min-steps $STEPS --repeats 1 \
    --stem cost_gpu --out "$RES" \
    --models scvi S5 S5:D scvi:L2 S5:L2 S5:shared:A1 S50:shared:A1 S200:shared:A1
pkill -f "benchmarks.cost --child"  # a child outlives its parent's timeout
pack

stamp "image cost"
# shellcheck disable=SC2086
timeout 130 "$PY" -m benchmarks.images.cost --arch vanilla --epochs 2 $SUBSET \
    --stem image_cost_vanilla_gpu --out "$RES" --models S1 S5 S5:shared:A1 --data device loader
pkill -f "benchmarks.images.cost --child"
pack
fi

image_run() {  # $1: model; $2: seed; $3: epochs; $4: samples per image; $5: stem
    # shellcheck disable=SC2086
    "$PY" -m benchmarks.images.nll_vs_s --arch vanilla --dataset mnist --models "$1" \
        --seeds "$2" --epochs "$3" --warmup-epochs $WARMUP --total-samples "$4" $SUBSET $TEST \
        --runs "$RUNS" --out "$RES/parts" --stem "$5" --threads 2 --resume
}
side_by_side() {  # $1: epochs; $2: samples per image; $3: stem prefix
    local pids=() m s name
    for s in $IMAGE_SEEDS; do
        for m in $IMAGE_MODELS; do
            name="$3_${m//:/_}_seed$s"
            image_run "$m" "$s" "$1" "$2" "$name" > "$RES/$name.log" 2>&1 &
            pids+=($!)
        done
    done
    # a bare `wait` (no runs asked for) would also wait for the log's tee
    [ ${#pids[@]} -eq 0 ] || wait "${pids[@]}"
}

if [ -n "${IMAGE_EPOCHS:-}" ]; then
    EPOCHS=$IMAGE_EPOCHS
else
    stamp "image probe: one epoch of each configuration, side by side"
    side_by_side 1 10 probe
    SLOWEST=$("$PY" - "$RUNS" <<'EOF'
import json, pathlib, sys
times = [json.loads(p.read_text())["seconds_per_epoch"]
         for p in pathlib.Path(sys.argv[1]).glob("*/training.json")]
print(max(times) if times else 0)
EOF
)
    if [ "$SLOWEST" = 0 ]; then stamp "no probe finished (see probe_*.log)"; pack; exit 1; fi
    # keep 90 s for the evaluation at the full sample count and the combined report
    EPOCHS=$("$PY" -c "print(max(2, min(500, int(($(left) - 90) / ($SLOWEST * 1.15)))))")
    stamp "slowest probe epoch ${SLOWEST} s"
fi
stamp "training every configuration and seed to $EPOCHS epochs, side by side"
side_by_side "$EPOCHS" $SAMPLES run
stamp "combined report (reuses the trained and evaluated runs)"
for d in "$RUNS"/*/; do
    mkdir -p "$RES/runs/$(basename "$d")"
    cp "$d"/*.json "$d"/*.txt "$RES/runs/$(basename "$d")/" 2>/dev/null
done
pack
# shellcheck disable=SC2086
"$PY" -m benchmarks.images.nll_vs_s --arch vanilla --dataset mnist --models $IMAGE_MODELS \
    --seeds $IMAGE_SEEDS --epochs "$EPOCHS" --warmup-epochs $WARMUP --total-samples $SAMPLES \
    $SUBSET $TEST --runs "$RUNS" --out "$RES" --stem "$IMAGE_STEM" --resume
pack
stamp done
