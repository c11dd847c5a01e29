"""A convolution's bias gradient on oneDNN: the sum of the output gradient over the batch and
every position, as one matrix product ``ones(1, M) @ dout(M, F)`` (M = N·Ho·Wo).

Why not the backward-weights primitive's own ``diff_bias``: oneDNN 3.2's jit backward-weights
kernels on NHWC reduce the bias at a fraction of their speed. cs231n's first two convolutions
at batch 64 (AVX-512): 0.42 → 1.32 ms and 2.75 → 3.43 ms with ``diff_bias`` asked (AVX2 cap:
+0.7 ms each); in a training step the matrix product took 0.15 ms for the largest map, on
``gemm:jit`` (oneDNN's first choice, ``brg``, split the one row over one thread: 0.44 ms)
(tests/bench/bias_grad_probe.py; docs/performance.md, "Training steps: bias gradient,
in-place activation gradients, folded C1"). The row of ones is written at the start of the
shared scratchpad region before each call (M floats: 256 KB for cs231n's largest map), so
nothing is held between steps and the memory planner sees it in :func:`scratch_need`.
"""
from __future__ import annotations

import numpy as np

from .capi import Scratchpad
from .choices import choose_impl
from .common import cached, lib, plain, primitive, serial


def _key(m: int, f: int) -> tuple:
    # the thread setting is part of the key: a primitive keeps the one it was created in
    return m, f, serial("add", m * f).active


def _pd(m: int, f: int):
    """The matrix product's descriptor, on ``gemm:jit`` where oneDNN lists it (cached; made in
    the thread setting its calls run in)."""
    def build():
        d = lib()

        def create():
            return d.pd("dnnl_matmul_primitive_desc_create", d.engine, plain((1, m)),
                        plain((m, f)), None, plain((1, f)), d.attr())
        return choose_impl(create, lambda name: "gemm" in name)
    with serial("add", m * f):
        return cached(("conv_bias_grad_pd",) + _key(m, f), build)


def scratch_need(m: int, f: int) -> int:
    """Bytes of the shared scratchpad region one bias gradient of ``m`` rows by ``f`` uses
    (asks the descriptor; creates no primitive)."""
    return Scratchpad.aligned(4 * m) + lib().scratch_size(_pd(m, f))


def bias_grad(dout: np.ndarray) -> np.ndarray:
    """The bias gradient (F,) of a convolution whose output gradient is the contiguous
    float32 NHWC array ``dout``."""
    f = dout.shape[-1]
    m = dout.size // f
    pd = _pd(m, f)
    with serial("add", m * f):
        prim = cached(("conv_bias_grad",) + _key(m, f),
                      lambda: primitive(pd, ("src", "weights", "dst")))
        at = Scratchpad.aligned(4 * m)
        lib().scratchpad.reserve(at + prim.scratch)     # the whole call's region first
        ones = lib().scratchpad.array(4 * m).view(np.float32)
        ones.fill(1.0)
        out = np.empty(f, dtype=np.float32)
        prim(ones, dout, out, at=at)
    return out
