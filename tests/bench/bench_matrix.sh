#!/bin/sh
# The docs/performance.md table: four nets × (train b=64, infer b=256) × (onednn, numpy), each
# interleaved with PyTorch in one process, 2 threads. One JSON line per run on stdout.
# Usage: [KERNELS="onednn numpy"] tests/bench/bench_matrix.sh [STEPS] [RESNET20_FILE] > results.jsonl
# The issue-14 matrix (native and AVX2-capped, every peer, ResNet-50/VGG-16/AlexNet at their real
# size, each framework pair in its own process) is tests/bench/isa_matrix.py.
STEPS=${1:-10}
RESNET=${2:-nets/resnet20.net}
PY=${PYTHON:-python}
for kernels in ${KERNELS:-onednn numpy}; do
  for mode in "train 64" "infer 256"; do
    set -- $mode
    for net in "nets/lenet5.net" \
               "nets/cs231n.net --input 32x32x3 --set N=2 --set M=3 --set K=2 --set WIDTH=32 --set HIDDEN=256" \
               "$RESNET" \
               "nets/inception_small.net --input 32x32x3"; do
      $PY -m netdsl bench $net --mode "$1" --batch-size "$2" --kernels "$kernels" \
          --threads 2 --steps "$STEPS" --rounds 5 --compare torch --no-layers --format json
    done
  done
done
