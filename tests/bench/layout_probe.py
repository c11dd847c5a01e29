"""Probe: one oneDNN inference convolution on netdsl's NHWC activations against the same
convolution on the activation layout oneDNN picks itself (``format any`` src/dst) and on a
on AVX-512, nChw8c on AVX2), weights ``format any`` in both. Interleaved rounds; the best round's ms
per call (the least disturbed by other load); ratios only on a shared machine.

    python tests/bench/layout_probe.py [--net inception_small|resnet50|all] [--reps 20]

Not a test (no assertions): the measurement behind the layout decision (docs/performance.md).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from netdsl.runtime.kernels.onednn import capi as L
from netdsl.runtime.kernels.onednn import load
from netdsl.runtime.kernels.onednn.common import lib, nhwc, primitive

# (n, h, w, c, f, k, stride, pad): the convolutions that dominate each net's inference
CASES = {
    "inception_small": [(256, 8, 8, 16, 32, 3, 1, 1), (256, 4, 4, 32, 48, 3, 1, 1),
                        (256, 8, 8, 8, 8, 5, 1, 2), (256, 8, 8, 32, 16, 1, 1, 0)],
    "cs231n": [(256, 32, 32, 32, 32, 3, 1, 1), (256, 16, 16, 64, 64, 3, 1, 1),
               (256, 8, 8, 128, 128, 3, 1, 1)],
    "resnet20": [(256, 32, 32, 16, 16, 3, 1, 1), (256, 16, 16, 32, 32, 3, 1, 1),
                 (256, 8, 8, 64, 64, 3, 1, 1)],
    "resnet50": [(16, 56, 56, 64, 64, 3, 1, 1), (16, 56, 56, 64, 256, 1, 1, 0),
                 (16, 28, 28, 128, 128, 3, 1, 1), (16, 14, 14, 256, 256, 3, 1, 1),
                 (16, 14, 14, 1024, 256, 1, 1, 0), (16, 7, 7, 512, 512, 3, 1, 1)],
}


NCHW16C, NCHW8C = 78, 102   # dnnl_nChw16c, dnnl_nChw8c (oneDNN 3.2 dnnl_types.h)


def _md(logical, tag):
    """A memory descriptor: NHWC strides (tag None), or a oneDNN format tag (1 = any)."""
    if tag is None:
        n, c, h, w = logical
        return nhwc(n, h, w, c)
    d = lib()
    md = L.VP()
    d.call("dnnl_memory_desc_create_with_tag", L.ctypes.byref(md), 4, L.dims(logical), L.F32,
           tag)
    return md


def _conv(case, tag):
    n, h, w, c, f, k, s, p = case
    d = lib()
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    src, dst = _md((n, c, h, w), tag), _md((n, f, ho, wo), tag)
    pd = d.pd("dnnl_convolution_forward_primitive_desc_create", d.engine, L.FORWARD_INFERENCE,
              L.CONV_DIRECT, src, d.md_any((f, c, k, k)), None, dst, L.dims((s, s)),
              L.dims((0, 0)), L.dims((p, p)), L.dims((p, p)), d.attr(True))
    prim = primitive(pd, ("src", "weights", "dst"))
    bufs = [np.zeros(prim.sizes[a] // 4 + 16, np.float32) for a in ("src", "weights", "dst")]
    return prim, bufs


def _time(prim, bufs, reps: int) -> float:
    prim(*bufs)
    t = time.perf_counter()
    for _ in range(reps):
        prim(*bufs)
    return (time.perf_counter() - t) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--net", default="all", choices=["all"] + sorted(CASES))
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block", type=int, default=16, choices=(8, 16),
                    help="the forced blocked layout: 16 (AVX-512's) or 8 (AVX2's)")
    args = ap.parse_args()
    if not load():
        raise SystemExit("oneDNN not available")
    nets = sorted(CASES) if args.net == "all" else [args.net]
    blk = "16c" if args.block == 16 else "8c"
    print(f"{'net':16} {'conv':28} {'nhwc':>7} {'any':>7} {'nChw'+blk:>9}  (best round, ms)  impls; "
          "what 'any' picked")
    for net in nets:
        for case in CASES[net]:
            runs = [_conv(case, None), _conv(case, 1),
                    _conv(case, NCHW16C if args.block == 16 else NCHW8C)]
            times = [[] for _ in runs]
            for _ in range(args.rounds):   # interleaved: all see the same load
                for r, t in zip(runs, times):
                    t.append(_time(*r, args.reps))
            med = [min(t) for t in times]   # the least loaded round
            n, h, w, c, f, k, s, p = case
            desc = f"b{n} {h}x{w} {c}->{f} k{k}s{s}"
            print(f"{net:16} {desc:28} {med[0]:7.3f} {med[1]:7.3f} {med[2]:9.3f}  "
                  f"{' | '.join(r[0].impl for r in runs)}; {_tag(runs[1][0], case)}")


def _tag(prim, case) -> str:
    """Whether the layout oneDNN picked for src is NHWC itself (what netdsl already runs)."""
    n, h, w, c = case[:4]
    same = lib().md_equal(prim.mds["src"], nhwc(n, h, w, c))
    return "nhwc" if same else "blocked"


if __name__ == "__main__":
    main()
