"""Planned vs measured peak memory of every net in nets/ at the reduced sizes of tests/test_zoo.py,
as a markdown table (docs/performance.md, "Memory planner on the zoo").

    PYTHONPATH=. python tests/bench/zoo_memory.py [BATCH] [--kernels numpy,onednn] [NET ...]

Measured as `netdsl bench` does (netdsl.tools.bench.peak_memory: tracemalloc's peak during a
steady-state step + netdsl.core.workspace.held_bytes()); each mode on its own executor (the other's
Scratch region and oneDNN's scratchpad released), so that one measurement never counts another's
held memory. MiB = 2^20 bytes.
"""
import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/: test_zoo's sizes

from netdsl.runtime import kernels as K  # noqa: E402
from netdsl.tools.bench import peak_memory  # noqa: E402
from netdsl.runtime.memory import plan_memory  # noqa: E402
from test_zoo_memory import _setup, SMALL  # noqa: E402
import test_zoo_memory  # noqa: E402

def _release():
    if K.available("onednn"):
        from netdsl.runtime.kernels.onednn.common import lib
        lib().scratchpad.release()

def row(name, provider, batch):
    test_zoo_memory.BATCH = batch
    ex, x, y = _setup(name, provider)
    _release()
    train = peak_memory(lambda: (ex.forward(x, y, training=True), ex.backward()))
    pt = plan_memory(ex.plan, batch, training=True).peak
    inf = ex.for_inference()
    del ex
    gc.collect()
    _release()
    infer = peak_memory(lambda: inf.forward(x, training=False))
    pi = plan_memory(inf.plan, batch, training=False).peak
    shape, sets = SMALL[name]
    size = " ".join([shape or ""] + [f"{k}={v}" for k, v in sets.items()]).strip() \
        or "as written"
    mib = 2 ** 20
    return (f"| {name} | {size} | {provider} | {pt / mib:.2f} / {train / mib:.2f} "
            f"({pt / train:.3f}) | {pi / mib:.2f} / {infer / mib:.2f} ({pi / infer:.3f}) |")

def main(argv):
    batch, providers, names = 8, ["numpy", "onednn"], []
    it = iter(argv)
    for a in it:
        if a == "--kernels":
            providers = next(it).split(",")
        elif a.isdigit():
            batch = int(a)
        else:
            names.append(a)
    providers = [p for p in providers if p == "numpy" or K.available(p)]
    print(f"batch {batch}, float32; planned / measured MiB (ratio)\n")
    print("| net | input | kernels | train: planned / measured | infer: planned / measured |")
    print("|---|---|---|---|---|")
    for name in names or sorted(SMALL):
        for provider in providers:
            print(row(name, provider, batch), flush=True)
            gc.collect()

if __name__ == "__main__":
    main(sys.argv[1:])
