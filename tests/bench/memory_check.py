"""Planned vs measured (tracemalloc) peak memory of one training step and one inference batch.

    python tests/bench/memory_check.py nets/cs231n.net 32x32x3 64 [K=V ...]
"""
import sys
import tracemalloc

import numpy as np

from netdsl.compiler import compile_file
from netdsl.executor import Executor
from netdsl.memory import plan_memory


def measure(fn):
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak


def main(path, shape, batch, *sets):
    overrides = dict(kv.split("=") for kv in sets)
    overrides = {k: int(v) for k, v in overrides.items()}
    shape = tuple(int(d) for d in shape.split("x"))
    c = compile_file(path, overrides=overrides, input_shape=shape, num_classes=10)
    ex = Executor(c.graph, seed=0, kernels="numpy")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((int(batch), *ex.input_shape)).astype(np.float32)
    y = rng.integers(0, 10, int(batch))
    ex.forward(x, y, training=True)
    ex.backward()   # warm (lazy imports, first-call caches)
    ex.grads = {}
    train = measure(lambda: (ex.forward(x, y, training=True), ex.backward()))
    inf = ex.for_inference()
    infer = measure(lambda: inf.forward(x, training=False))
    pt = plan_memory(ex.plan, int(batch), training=True)
    pi = plan_memory(inf.plan, int(batch), training=False)
    print(f"{path} b={batch}: train planned {pt.peak / 2**20:.1f} MiB measured "
          f"{train / 2**20:.1f} MiB ({pt.peak / train:.3f}) at {pt.at}; infer planned "
          f"{pi.peak / 2**20:.1f} MiB measured {infer / 2**20:.1f} MiB ({pi.peak / infer:.3f}) at {pi.at}")


if __name__ == "__main__":
    main(*sys.argv[1:])
