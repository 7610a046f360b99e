#!/usr/bin/env bash
# The cookbook grid for counts (issue 33), in the order it is worth running; every step resumes
# where it stopped (results in benchmarks/results/cookbook/, summary by benchmarks.cookbook).
# Usage: bash benchmarks/cookbook/run.sh [screen|full|sweep|shared|depth|cost] [SEEDS...]
# Hours on 2 CPU cores. Two screen/full jobs can run side by side with one torch thread each
# (OMP_NUM_THREADS=1, different seeds); their epoch times are then not comparable: the cost
# stage measures epoch time alone, one job on the machine.
#
# The converged protocol of the earlier reports (800 epochs, patience 100, 20 warm-up epochs,
# 1000 importance samples): the SCVI, SCVI(n_layers=2), S1, S5 and S5:L2 rows are those of
# benchmarks/results/converged_patience100, copied in once and reused by --resume.
set -euo pipefail
stage="${1:-screen}"; shift || true
seeds=("${@:-0 1 2}")
PROTOCOL=(--max-epochs 800 --patience 100 --kl-warmup-epochs 20 --n-mc-samples 1000
  --out benchmarks/results/cookbook --resume)
BASE=(scvi scvi:L2 S1 S5 S5:L2)
RECIPES=(S1:vamp S1:mog S1:F2 S1:vamp:F2 S5:vamp S5:mog S5:F2 S5:vamp:F2)
seed_in() {  # copy the earlier converged rows in once, so that --resume pairs with them
  local dataset="$1" target="benchmarks/results/cookbook/singlecell_$1.json"
  [[ -e "$target" ]] || cp "benchmarks/results/converged_patience100/singlecell_$dataset.json" "$target"
}
sc() { python -m benchmarks.singlecell "${PROTOCOL[@]}" "$@"; }
mkdir -p benchmarks/results/cookbook
case "$stage" in
  screen)  # every recipe at S = 1 and S = 5, one dataset
    seed_in mouse_bladder
    sc --datasets mouse_bladder --seeds ${seeds[*]} --models "${BASE[@]}" "${RECIPES[@]}" ;;
  full)  # the recipes the screen kept, on every dataset and 5 seeds (edit KEPT after a screen)
    KEPT=(S1:vamp S1:L2:vamp S5:vamp S1:vamp:F2)
    for dataset in sorted_pbmc worm_neuron mouse_bladder; do
      seed_in "$dataset"
      sc --datasets "$dataset" --seeds ${seeds[*]} --models "${BASE[@]}" "${KEPT[@]}"
    done ;;
  sweep)  # the VampPrior's K, from SysVI's 5 to hundreds (at S = 5 on bladder)
    for dataset in mouse_bladder worm_neuron sorted_pbmc; do
      sc --datasets "$dataset" --seeds ${seeds[*]} --models "${BASE[@]}" S1:vamp S1:vamp20 S1:vamp100 S1:vamp300
    done
    sc --datasets mouse_bladder --seeds ${seeds[*]} --models "${BASE[@]}" S5:vamp S5:vamp20 S5:vamp300 ;;
  shared)  # the cheap mixture with the recommended recipe
    sc --datasets mouse_bladder --seeds ${seeds[*]} --models "${BASE[@]}" S5:shared:A1:vamp S50:shared:A1:vamp ;;
  depth)  # the recipes at two layers
    for dataset in worm_neuron sorted_pbmc mouse_bladder; do
      seed_in "$dataset"
      sc --datasets "$dataset" --seeds ${seeds[*]} --models "${BASE[@]}" S1:L2:vamp
    done
    sc --datasets mouse_bladder --seeds ${seeds[*]} --models "${BASE[@]}" S5:L2:vamp S1:L2:vamp:F2 ;;
  cost)  # epoch time against SCVI, alone on the machine
    python -m benchmarks.cost --cells 10000 --repeats 2 --stem cost_cookbook \
      --models scvi scvi:L2 S1:vamp S1:mog S1:F2 S1:vamp:F2 S5 S5:vamp
    python -m benchmarks.cost --cells 10000 --repeats 2 --stem cost_vamp_k \
      --models scvi S1:vamp S1:vamp20 S1:vamp300 S5:vamp S5:vamp20 ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
python -m benchmarks.cookbook --datasets mouse_bladder sorted_pbmc worm_neuron || true
