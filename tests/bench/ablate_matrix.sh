#!/bin/sh
# The ablation tables of docs/performance.md: four nets × (train b=64, infer b=256), the full
# pipeline against each pass, plan decision and kernel provider switched off, interleaved in one
# process, 2 threads. Prints each table; with FORMAT=json one JSON line per run instead.
# Usage: [FORMAT=json] tests/bench/ablate_matrix.sh [STEPS] > ablation.txt
STEPS=${1:-10}
PY=${PYTHON:-python}
for mode in "train 64" "infer 256"; do
  set -- $mode
  for net in "nets/lenet5.net" \
             "nets/cs231n.net --input 32x32x3 --set N=2 --set M=3 --set K=2 --set WIDTH=32 --set HIDDEN=256" \
             "nets/resnet20.net" \
             "nets/inception_small.net --input 32x32x3"; do
    $PY -m netdsl bench $net --ablate --mode "$1" --batch-size "$2" --threads 2 \
        --steps "$STEPS" --rounds 5 --format "${FORMAT:-table}"
  done
done
