#!/bin/sh
# The ablation tables of docs/performance.md: four nets × (train b=64, infer b=256), the full
# pipeline against each pass, plan decision and kernel provider switched off, interleaved in one
# process, 2 threads. Prints each table; with FORMAT=json one JSON line per run instead.
# KERNELS=numpy makes NumPy the full pipeline's provider (the plan's im2col recompute applies to
# NumPy convolutions only); MODES="train 64" runs one mode.
# Usage: [FORMAT=json] [KERNELS=auto] [MODES="train 64,infer 256"] tests/bench/ablate_matrix.sh [STEPS]
STEPS=${1:-10}
PY=${PYTHON:-python}
IFS_SAVED=$IFS
IFS=,
for mode in ${MODES:-train 64,infer 256}; do
  IFS=$IFS_SAVED
  set -- $mode
  for net in "nets/lenet5.net" \
             "nets/cs231n.net --input 32x32x3 --set N=2 --set M=3 --set K=2 --set WIDTH=32 --set HIDDEN=256" \
             "nets/resnet20.net" \
             "nets/inception_small.net --input 32x32x3"; do
    $PY -m netdsl bench $net --ablate --mode "$1" --batch-size "$2" --threads 2 \
        --kernels "${KERNELS:-auto}" --steps "$STEPS" --rounds 5 --format "${FORMAT:-table}"
  done
done
