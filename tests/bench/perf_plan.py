"""Training-step time and peak memory (tracemalloc) of cs231n and a CIFAR ResNet-20, for
docs/performance.md. Run from a checkout: PYTHONPATH=. python tests/bench/perf_plan.py [steps]
(works on older checkouts too: it only uses compile_text, Executor, forward and backward)."""
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from netdsl.compile.compiler import compile_text
from netdsl.runtime.executor import Executor

RESNET20 = """
block basic(c, stride=1) {
  residual { CONV(c, 3, stride=stride, bias=false) -> BN -> RELU -> CONV(c, 3, bias=false) -> BN }
  -> RELU
}
INPUT -> CONV(16, 3, bias=false) -> BN -> RELU
  -> [basic(16)]*3 -> basic(32, 2) -> [basic(32)]*2 -> basic(64, 2) -> [basic(64)]*2 -> GAP -> FC
"""
CS231N = (Path(__file__).resolve().parents[2] / "nets" / "cs231n.net").read_text()
NETS = {"cs231n": (CS231N, {"N": 2, "M": 3, "K": 2, "WIDTH": 32, "HIDDEN": 256}),
        "resnet20": (RESNET20, {})}


def main(steps=5, batch=64):
    for name, (text, sets) in NETS.items():
        g = compile_text(text, name=f"{name}.net", overrides=sets, input_shape=(32, 32, 3),
                         num_classes=10).graph
        ex = Executor(g, seed=0)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, 32, 32, 3)).astype(np.float32)
        y = rng.integers(0, 10, batch)
        with threadpool_limits(limits=2):
            ex.forward(x, y, training=True)
            ex.backward()
            times = []
            for _ in range(steps):
                t = time.perf_counter()
                ex.forward(x, y, training=True)
                ex.backward()
                times.append(time.perf_counter() - t)
        ex.grads = {}
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        ex.forward(x, y, training=True)
        ex.backward()
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        print(f"{name} b={batch}: step median {1000 * np.median(times):.0f} ms "
              f"(min {1000 * min(times):.0f}), peak {peak / 2**20:.0f} MiB")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
