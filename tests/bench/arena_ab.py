"""Interleaved A/B of the executor's arena (netdsl/runtime/carve.py): the same step with
outputs and gradients carved from the arena (on) and with every array fresh (off, what
NETDSL_ARENA=0 runs), alternated in one process so that both see the same machine load.

    PYTHONPATH=. python tests/bench/arena_ab.py nets/resnet20.net 32x32x3 train 64 [ROUNDS] [STEPS]

Prints the median step time of each and off/on (> 1: the arena is faster). Run it once as the
host is and once with ONEDNN_MAX_CPU_ISA=AVX2 OPENBLAS_CORETYPE=Haswell (docs/performance.md).
"""
import sys
import time

import numpy as np

from netdsl.compile.compiler import compile_file
from netdsl.runtime.kernels import set_threads
from netdsl.tools.bench import netdsl_setup


def main(path, shape, mode, batch, rounds=7, steps=5, threads=2):
    set_threads(int(threads))
    dims = tuple(int(d) for d in shape.split("x"))
    c = compile_file(path, need_data=False, input_override=dims)
    steps_by = {}
    for arena in (True, False):
        step, ex, _, _ = netdsl_setup(c, int(batch), mode, "auto")
        if not arena:
            ex.carver = None
        step()
        step()
        steps_by[arena] = step
    times = {True: [], False: []}
    for r in range(int(rounds)):
        for arena in ((True, False) if r % 2 == 0 else (False, True)):
            t0 = time.perf_counter()
            for _ in range(int(steps)):
                steps_by[arena]()
            times[arena].append((time.perf_counter() - t0) / int(steps))
    on, off = np.median(times[True]), np.median(times[False])
    pairs = np.median([b / a for a, b in zip(times[True], times[False])])
    print(f"{path} {mode} b={batch}: arena on {1000 * on:.2f} ms, off {1000 * off:.2f} ms, "
          f"off/on {off / on:.3f}, median of round ratios {pairs:.3f} ({rounds} rounds of "
          f"{steps} steps, alternated)")

if __name__ == "__main__":
    main(*sys.argv[1:])
