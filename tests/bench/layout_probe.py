"""Probe: one oneDNN inference convolution on netdsl's NHWC activations, on the activation
layout oneDNN picks itself (``format any`` src/dst; where that is not NHWC, timed with the
reorders from and to NHWC that a network then needs around the layer), and on a forced
blocked layout (nChw16c, AVX-512's, or nChw8c, AVX2's; skipped for fewer channels than a block,
where oneDNN has only its reference loops); weights ``format any`` in all three. Interleaved
rounds; the best round's ms per call (the least disturbed by other load): ratios only on a
shared machine.

    python tests/bench/layout_probe.py [--net first|inception_small|cs231n|resnet20|resnet50|all]
                                       [--reps 20] [--rounds 5] [--block 16|8]

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
    # each net's first convolution (1 or 3 input channels): the one where oneDNN, asked
    # with format any, picks a layout other than NHWC (timed with the reorders it then needs)
    "first": [(256, 32, 32, 1, 6, 5, 1, 0), (256, 8, 8, 1, 32, 3, 1, 1),
              (256, 32, 32, 3, 32, 3, 1, 1), (256, 32, 32, 3, 16, 3, 1, 1),
              (16, 224, 224, 3, 64, 7, 2, 3), (8, 224, 224, 3, 64, 3, 1, 1)],
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
    calls = [(prim, bufs)]
    if tag is not None:   # the reorders from and to netdsl's NHWC, where the layout differs
        for arg, logical, k in (("src", (n, c, h, w), 0), ("dst", (n, f, ho, wo), 2)):
            plain = _md(logical, None)
            chosen = d.pd_md(pd, arg)
            if d.md_equal(chosen, plain):
                continue
            a, b = (plain, chosen) if arg == "src" else (chosen, plain)
            r = primitive(d.reorder_pd(a, b), ("src", "dst"))
            outer = np.zeros(d.md_size(plain) // 4 + 16, np.float32)
            pair = [outer, bufs[0]] if arg == "src" else [bufs[2], outer]
            calls.insert(0 if arg == "src" else len(calls), (r, pair))
    return prim, calls


def _time(prim, calls, reps: int) -> float:
    for p, bufs in calls:
        p(*bufs)
    t = time.perf_counter()
    for _ in range(reps):
        for p, bufs in calls:
            p(*bufs)
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
    print(f"{'net':16} {'conv':28} {'nhwc':>7} {'any':>7} {'(conv)':>7} {'nChw'+blk:>9}  "
          "(best round, ms; 'any' with its reorders, then the conv alone)  impls; "
          "what 'any' picked (src/dst)")
    for net in nets:
        for case in CASES[net]:
            anyc = _conv(case, 1)
            runs = [_conv(case, None), anyc, (anyc[0], [c for c in anyc[1] if c[0] is anyc[0]])]
            if case[3] >= args.block:
                runs.append(_conv(case, NCHW16C if args.block == 16 else NCHW8C))
            times = [[] for _ in runs]
            for _ in range(args.rounds):   # interleaved: all see the same load
                for r, t in zip(runs, times):
                    t.append(_time(*r, args.reps))
            med = [min(t) for t in times]   # the least loaded round
            n, h, w, c, f, k, s, p = case
            desc = f"b{n} {h}x{w} {c}->{f} k{k}s{s}"
            forced = f"{med[3]:9.3f}" if len(med) > 3 else f"{'-':>9}"
            print(f"{net:16} {desc:28} {med[0]:7.3f} {med[1]:7.3f} {med[2]:7.3f} {forced}  "
                  f"{' | '.join(r[0].impl for i, r in enumerate(runs) if i != 2)}; "
                  f"{_tag(runs[1][0], case)}")


def _tag(prim, case) -> str:
    """Whether the layouts oneDNN picked for src and dst are NHWC (what netdsl runs)."""
    n, h, w, c, f, k, s, p = case
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    d = lib()
    src = d.md_equal(prim.mds["src"], nhwc(n, h, w, c))
    dst = d.md_equal(prim.mds["dst"], nhwc(n, ho, wo, f))
    return f"{'nhwc' if src else 'other'}/{'nhwc' if dst else 'other'}"


if __name__ == "__main__":
    main()
