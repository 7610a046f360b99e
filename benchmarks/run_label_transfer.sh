#!/usr/bin/env bash
# The label-transfer grid in the order it is worth running (each step resumable; rerun to go on).
# Usage: bash benchmarks/run_label_transfer.sh   (from the repository root; hours on 2 CPU cores)
set -euo pipefail
run() { python -m benchmarks.label_transfer --resume "$@"; }
COMMON=(--models scvi S5 --logistic)
for dataset in sorted_pbmc mouse_bladder worm_neuron; do
  run --datasets "$dataset" --tasks A B_small --seeds 0 1 2 "${COMMON[@]}"
done
for dataset in sorted_pbmc mouse_bladder worm_neuron; do
  run --datasets "$dataset" --tasks A B_small B_largest --seeds 0 1 2 3 4 \
    --models scvi S5 S5:shared:A1 S50:shared:A1 --logistic
done
