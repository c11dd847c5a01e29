"""Per-layer probe behind conv.PACK_TRAIN_BYTES: each of ResNet-50's distinct convolutions
(batch 16), one training call (forward + backward) on netdsl's plain weights against the
packed (blocked) copy, in one process, the two settings interleaved so that load hits both.

Usage: python tests/bench/train_pack_probe.py [rounds]
Each line: the conv, its weight size, plain fwd / bwd ms, packed fwd / bwd ms and
packed / plain (medians). ``plain`` is ``NETDSL_ONEDNN_PACK=needed`` (packs only where the
plain layout would run gemm/ref: everything on AVX2), ``packed`` is ``always``; run it with
``ONEDNN_MAX_CPU_ISA=AVX2`` for the capped host. Results: docs/performance.md ("ResNet-50
training: large weights packed in training too").
"""
import sys
import time
import types

import numpy as np

from netdsl.runtime.kernels import onednn
from netdsl.runtime.kernels.onednn import common, conv

# (in channels, filters, input size, kernel, stride, pad): ResNet-50 v1.5 at 224×224
SHAPES = [(64, 64, 56, 1, 1, 0), (64, 64, 56, 3, 1, 1), (64, 256, 56, 1, 1, 0),
          (256, 64, 56, 1, 1, 0), (256, 128, 56, 1, 1, 0), (128, 128, 56, 3, 2, 1),
          (128, 512, 28, 1, 1, 0), (256, 512, 56, 1, 2, 0), (512, 128, 28, 1, 1, 0),
          (128, 128, 28, 3, 1, 1), (512, 256, 28, 1, 1, 0), (256, 256, 28, 3, 2, 1),
          (256, 1024, 14, 1, 1, 0), (512, 1024, 28, 1, 2, 0), (1024, 256, 14, 1, 1, 0),
          (256, 256, 14, 3, 1, 1), (1024, 512, 14, 1, 1, 0), (512, 512, 14, 3, 2, 1),
          (512, 2048, 7, 1, 1, 0), (1024, 2048, 14, 1, 2, 0), (2048, 512, 7, 1, 1, 0),
          (512, 512, 7, 3, 1, 1)]


def _ctx():
    return types.SimpleNamespace(training=True, arena=None, xp=np, input_grad=True)


def probe(shape, rounds: int, batch: int = 16):
    """(plain (fwd, bwd) ms, packed (fwd, bwd) ms): medians of ``rounds`` × 2 calls each."""
    c, f, h, k, s, p = shape
    attrs = dict(kernel=k, stride=s, pad=p, dilation=1, groups=1, filters=f)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, h, h, c), dtype=np.float32)
    params = {"weight": rng.standard_normal((k, k, c, f), dtype=np.float32) * 0.05}
    times = {"needed": [], "always": []}
    for _ in range(rounds):
        for mode in times:
            conv.PACK = mode
            common.clear_cache()       # the primitives of the other setting are forgotten
            out, cache = conv.conv_forward(_ctx(), attrs, params, [x])   # warm-up
            conv.conv_backward(_ctx(), attrs, params, cache, out)
            for _ in range(2):
                t0 = time.perf_counter()
                out, cache = conv.conv_forward(_ctx(), attrs, params, [x])
                t1 = time.perf_counter()
                conv.conv_backward(_ctx(), attrs, params, cache, out)
                times[mode].append(((t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3))
    return (np.median(np.array(times["needed"]), 0), np.median(np.array(times["always"]), 0))


def main() -> None:
    """Print one line per shape."""
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    if not onednn.load():
        sys.exit("oneDNN (libdnnl.so.3) cannot load here")
    for shape in SHAPES:
        c, f, h, k, s, _ = shape
        plain, packed = probe(shape, rounds)
        print(f"{c}->{f} {k}x{k}/{s} @{h} weights {k * k * c * f * 4 / 2**20:.2f} MB: "
              f"plain {plain[0]:.2f} / {plain[1]:.2f} ms, packed {packed[0]:.2f} / "
              f"{packed[1]:.2f} ms, packed/plain {packed.sum() / plain.sum():.2f}", flush=True)


if __name__ == "__main__":
    main()
