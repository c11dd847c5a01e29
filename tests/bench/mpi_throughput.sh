#!/bin/bash
# Issue 17's throughput rows in docs/performance.md: cs231n (N=2 M=3 K=2) and ResNet-20 on
# synthetic CIFAR-shaped data, 1 process x 2 threads against 2 MPI ranks x 1 thread with the
# all-reduce overlapped and not (--no-overlap), 3 interleaved rounds; prints the second epoch's
# images/s and the all-reduce line `run` prints. Needs the mpi extra. About 5 min quiet.
# Usage: [PYTHON=.venv/bin/python] [WORK=/tmp/mpi_throughput] tests/bench/mpi_throughput.sh
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-python}
WORK=${WORK:-/tmp/mpi_throughput}
mkdir -p "$WORK" && cd "$WORK" || exit 1
[ -f c10.npz ] || $PY -c "import numpy as np; r=np.random.default_rng(0); np.savez('c10.npz', x=r.integers(0,256,(2400,32,32,3)).astype(np.uint8), y=r.integers(0,10,2400))"
CS="$ROOT/nets/cs231n.net --input 32x32x3 --set N=2 --set M=3 --set K=2"
RN="$ROOT/nets/resnet20.net"
for round in 1 2 3; do
  for net in cs RN; do
    if [ $net = cs ]; then N="$CS"; else N="$RN"; fi
    for mode in single ranks ranks_nooverlap; do
      case $mode in
        single) extra="--threads 2";;
        ranks) extra="--workers 2";;
        ranks_nooverlap) extra="--workers 2 --no-overlap";;
      esac
      out=$($PY -m netdsl run $N --data npz:c10.npz --holdout 480 --epochs 2 --batch-size 64 --quiet --no-plots --log none $extra --out o_${net}_${mode} --overwrite 2>&1)
      ips=$(echo "$out" | grep "^epoch 2/2" | sed -E 's/.* ([0-9]+) img\/s.*/\1/')
      comm=$(echo "$out" | grep "gradient all-reduce" | head -1)
      echo "round=$round net=$net mode=$mode ips=$ips | $comm"
    done
  done
done
