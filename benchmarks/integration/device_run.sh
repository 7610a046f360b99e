#!/bin/bash
# GPU work of one call on a lent GPU machine, within a budget of seconds:
#   1. where an image training step's time goes (benchmarks.image_profile, vanilla, MNIST);
#   2. the Kang ctrl/stim integration embeddings that the CPU runs lack, trained with
#      `benchmarks.integration --train-only`, one process per model and seed, side by side
#      (scored later, on a CPU with scib-metrics, by `--resume` over the kept embeddings).
# Results are packed into $OUT/results.tgz after each stage, so a stage cut short keeps the
# earlier ones; the log streams to $OUT/log.txt.
#
# Usage: OUT=dir SCMIXVAE_DATA_DIR=dir bash benchmarks/integration/device_run.sh [budget_s]
# A quick dry run on a CPU: SMOKE=1 (tiny data, few epochs). SKIP_PROFILE=1 skips stage 1;
# KANG_MODELS and KANG_SEEDS choose stage 2's runs (an empty KANG_SEEDS: none).
set -u
BUDGET=${1:-480}
START=$(date +%s)
RES=$(mktemp -d)
KANG_MODELS=${KANG_MODELS:-"scvi S5 scvi:L2 S5:L2"}
KANG_SEEDS=${KANG_SEEDS-"0 1 2"}
if [ "${SMOKE:-0}" = 1 ]; then
    PROFILE="--steps 3 --warmup 1 --subset 200" KANG="--max-epochs 2 --max-cells 800 --n-genes 300"
else
    PROFILE="--steps 40 --warmup 10 --subset 5000" KANG=""
fi
# shellcheck source=benchmarks/_device_common.sh
source "$(dirname "$0")/../_device_common.sh"

stamp device
nvidia-smi -L 2>/dev/null
"$PY" -c "import torch, scvi, scanpy, scmixvae; print('torch', torch.__version__, \
'scvi-tools', scvi.__version__, 'cuda', torch.cuda.is_available())" || exit 1

stamp "image step profile"
# shellcheck disable=SC2086
[ "${SKIP_PROFILE:-0}" = 1 ] || timeout 150 "$PY" -m benchmarks.images.profile \
    --models S1 S5 S5:shared:A1 S50:shared:A1 S200:shared:A1 $PROFILE --out "$RES" \
    --stem image_profile_vanilla_gpu
pack

stamp "Kang embeddings: $KANG_MODELS x seeds $KANG_SEEDS, side by side"
PIDS=()
for m in $KANG_MODELS; do
    for s in $KANG_SEEDS; do
        # shellcheck disable=SC2086
        timeout $(($(left) - 20)) "$PY" -m benchmarks.integration --task kang_ifnb \
            --models "$m" --seeds "$s" --train-only --threads 1 $KANG --out "$RES/kang" \
            > "$RES/kang_${m//:/_}_seed$s.log" 2>&1 &
        PIDS+=($!)
    done
done
# a bare `wait` (no runs asked for) would also wait for the log's tee
[ ${#PIDS[@]} -eq 0 ] || wait "${PIDS[@]}"
grep -hs '^{' "$RES"/kang_*.log
pack
stamp done
