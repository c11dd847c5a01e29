"""The optimizer's step alone: SGD with momentum on a net's parameters and one step's
gradients, whole arrays on one thread (``BLOCK`` larger than any parameter) against blocks
of 2^16–2^18 elements split over ``--threads`` workers (netdsl/train/optim.py, ``blocked``).

Usage: PYTHONPATH=. python tests/bench/optim_probe.py NET HxWxC [BATCH] [--threads N]
Prints the median ms of 30 steps per block size.
"""
import argparse
import time

import numpy as np

from netdsl.runtime import kernels
from netdsl.tools.bench import compile_bench_args, netdsl_setup
from netdsl.train import optim


def main() -> None:
    """Print one line per block size."""
    ap = argparse.ArgumentParser()
    ap.add_argument("net")
    ap.add_argument("input")
    ap.add_argument("batch", type=int, nargs="?", default=64)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    kernels.set_threads(a.threads)
    c = compile_bench_args(argparse.Namespace(file=a.net, set=[], input=a.input, mode="train"))
    _, ex, x, y = netdsl_setup(c, a.batch, "train", "auto")
    ex.forward(x, y, training=True)
    grads = ex.backward()
    for block in (1 << 16, 1 << 17, 1 << 18, 1 << 40):
        optim.BLOCK = block
        opt = optim.SGD(0.01, momentum=0.9)
        opt.step(ex.params, grads)
        times = []
        for _ in range(30):
            t0 = time.perf_counter()
            opt.step(ex.params, grads)
            times.append(time.perf_counter() - t0)
        name = "whole arrays" if block == 1 << 40 else f"blocks of {block}"
        print(f"{name}: {np.median(times) * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
