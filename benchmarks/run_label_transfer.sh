#!/usr/bin/env bash
# The label-transfer grid, in the order it is worth running; every step resumes where it stopped.
# Usage: bash benchmarks/run_label_transfer.sh [pbmc|others]   (hours on 2 CPU cores)
# The two halves can run side by side with one torch thread each (OMP_NUM_THREADS=1).
set -euo pipefail
run() { python -m benchmarks.label_transfer --resume --models scvi S5 --logistic "$@"; }
case "${1:-all}" in
  pbmc|all)
    run --datasets sorted_pbmc --tasks A --seeds 0 1 2
    run --datasets sorted_pbmc --tasks A B_small --seeds 0 1 2
    run --datasets sorted_pbmc --tasks A B_small B_largest --seeds 0 1 2 ;;&
  others|all)
    for dataset in mouse_bladder worm_neuron; do run --datasets "$dataset" --tasks A --seeds 0 1 2; done
    for dataset in mouse_bladder worm_neuron; do
      run --datasets "$dataset" --tasks A B_small --seeds 0 1 2
    done ;;
esac
