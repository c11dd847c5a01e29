"""Planned vs measured peak memory of one training step and one inference batch.

    python tests/bench/memory_check.py [--kernels numpy|onednn] nets/cs231n.net 32x32x3 64 [K=V ...]

Measured as `netdsl bench` does (netdsl.tools.bench.peak_memory): tracemalloc's peak during a
steady-state step beyond what was held before it, plus what the model holds across steps on
purpose (netdsl.core.workspace.held_bytes(): the oneDNN scratchpad region). Default kernels: numpy.
"""
import sys

import numpy as np

from netdsl.tools.bench import peak_memory
from netdsl.compile.compiler import compile_file
from netdsl.runtime.executor import Executor
from netdsl.runtime.memory import plan_memory


def main(path, shape, batch, *sets, kernels="numpy"):
    overrides = dict(kv.split("=") for kv in sets)
    overrides = {k: int(v) for k, v in overrides.items()}
    shape = tuple(int(d) for d in shape.split("x"))
    c = compile_file(path, overrides=overrides, input_shape=shape, num_classes=10)
    ex = Executor(c.graph, seed=0, kernels=kernels)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((int(batch), *ex.input_shape)).astype(np.float32)
    y = rng.integers(0, 10, int(batch))
    train = peak_memory(lambda: (ex.forward(x, y, training=True), ex.backward()))
    inf = ex.for_inference()
    if kernels != "numpy":   # the region as the inference primitives alone grow it
        from netdsl.runtime.kernels.onednn.common import lib
        lib().scratchpad.release()
    infer = peak_memory(lambda: inf.forward(x, training=False))
    pt = plan_memory(ex.plan, int(batch), training=True)
    pi = plan_memory(inf.plan, int(batch), training=False)
    print(f"{path} b={batch} ({kernels}): train planned {pt.peak / 2**20:.2f} MiB measured "
          f"{train / 2**20:.2f} MiB ({pt.peak / train:.3f}) at {pt.at}; infer planned "
          f"{pi.peak / 2**20:.2f} MiB measured {infer / 2**20:.2f} MiB ({pi.peak / infer:.3f}) "
          f"at {pi.at}")


if __name__ == "__main__":
    argv = sys.argv[1:]
    kernels = "numpy"
    if argv[:1] == ["--kernels"]:
        kernels, argv = argv[1], argv[2:]
    main(*argv, kernels=kernels)
