#!/usr/bin/env bash
# The label-transfer grid, in the order it is worth running; every step resumes where it stopped.
# Usage: bash benchmarks/label_transfer/run.sh [pbmc|others|shared|timing|rest]   (hours on 2 CPU cores)
# The first two can run side by side with one torch thread each (OMP_NUM_THREADS=1); time the
# others alone, one job on the machine.
set -euo pipefail
lt() { python -m benchmarks.label_transfer --resume "$@"; }
run() { lt --models scvi S5 --logistic "$@"; }
case "${1:-all}" in
  pbmc|all)
    run --datasets sorted_pbmc --tasks A --seeds 0 1 2
    run --datasets sorted_pbmc --tasks A B_small --seeds 0 1 2
    run --datasets sorted_pbmc --tasks A B_small B_largest --seeds 0 1 2 ;;&
  others|all)
    for dataset in mouse_bladder worm_neuron; do run --datasets "$dataset" --tasks A --seeds 0 1 2; done
    for dataset in mouse_bladder worm_neuron; do
      run --datasets "$dataset" --tasks A B_small --seeds 0 1 2
    done ;;&
  shared|all)
    # the shared encoder with one component drawn per step: the cheap mixture
    for dataset in sorted_pbmc worm_neuron mouse_bladder; do
      lt --models S5:shared:A1 S50:shared:A1 --datasets "$dataset" --tasks A --seeds 0 1 2
    done
    for dataset in sorted_pbmc worm_neuron mouse_bladder; do
      lt --models S5:shared:A1 S50:shared:A1 --datasets "$dataset" --tasks B_small --seeds 0 1 2
    done ;;&
  timing|all)
    # task A rows stored before the load record, run again alone: clean time ratios (--redo
    # skips rows that have the record, so this stage can be rerun)
    for dataset in mouse_bladder worm_neuron sorted_pbmc; do
      lt --redo --models scvi S5:shared:A1 S50:shared:A1 --datasets "$dataset" --tasks A --seeds 0 1 2
    done ;;&
  rest|all)
    # rows scored before every method had the entropy: rerun them (once: see timing)
    lt --redo --models scvi --logistic --datasets sorted_pbmc --tasks B_largest --seeds 0 1 2
    for dataset in mouse_bladder worm_neuron; do
      run --datasets "$dataset" --tasks B_largest --seeds 0 1 2
    done
    lt --redo --models S5 --datasets sorted_pbmc --tasks B_small B_largest --seeds 0 1 2
    lt --redo --models S5 --datasets mouse_bladder --tasks B_small --seeds 0 1 2 ;;
esac
