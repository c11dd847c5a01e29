"""The ``concat`` join of maps on oneDNN's concat primitive (forward): every input copied into
its channel slice of a fresh NHWC output in one call. Backward is the registry's own (each
input's gradient is a channel slice, a view, of the incoming one: nothing to compute).

Why: NumPy's ``concatenate`` along the innermost axis copies row by row (a few floats per row:
inception_small's branches are 8–48 channels wide); oneDNN's ``simple`` concat was 2.8–4.7×
faster on inception_small's two concats (b=256, 8×8 and 4×4 maps, AVX-512 and AVX2 alike,
docs/performance.md). Inputs are read with their own strides (a crop's window is read in
place, no contiguous copy); the primitive is cached per (shapes, strides).
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

from ....layers import get
from ....layers.base import fresh
from . import capi as L
from .common import cached, is_f32, lib, nhwc, primitive, serial

MAX_INPUTS = L.MAX_MULTIPLE_SRC

ENABLED = os.environ.get("NETDSL_ONEDNN_CONCAT", "1") != "0"
"""``NETDSL_ONEDNN_CONCAT=0`` leaves concat to NumPy (for comparison)."""


def _md(shape, strides):
    """An NHWC map of ``shape`` laid out with the byte ``strides`` of a float32 array."""
    n, h, w, c = shape
    s = [b // 4 for b in strides]
    return lib().md_strides((n, c, h, w), (s[0], s[3], s[1], s[2]))


def _pd(layouts):
    """The primitive descriptor for inputs of ``layouts`` ((shape, byte strides) each)."""
    def build():
        d = lib()
        n, h, w = layouts[0][0][:3]
        srcs = (L.VP * len(layouts))(*[_md(shape, strides) for shape, strides in layouts])
        dst = nhwc(n, h, w, sum(shape[3] for shape, _ in layouts))
        pd = L.VP()
        # concat along oneDNN's logical dim 1 (channels) of N, C, H, W
        d.call("dnnl_concat_primitive_desc_create", ctypes.byref(pd), d.engine, dst,
               len(layouts), 1, srcs, d.attr())
        return pd
    return cached(("concat_fwd_pd", layouts), build)


def _prim(layouts):
    return cached(("concat_fwd", layouts), lambda: primitive(
        _pd(layouts), tuple(L.multiple_src(i) for i in range(len(layouts))) + ("dst",)))


def _usable(x) -> bool:
    """float32 with strides in whole elements (what a descriptor can say)."""
    return (isinstance(x, np.ndarray) and x.dtype == np.float32
            and all(s % 4 == 0 and s >= 0 for s in x.strides))


def concat_forward(ctx, attrs, params, inputs):
    """Same contract as the registry's concat forward; the cache is the inputs' widths."""
    if not all(_usable(x) for x in inputs):   # e.g. float64 data: the reference does it
        return get("concat").forward(ctx, attrs, params, inputs)
    n, h, w = inputs[0].shape[:3]
    out = fresh(ctx, (n, h, w, sum(x.shape[3] for x in inputs)), np.float32)
    layouts = tuple((x.shape, x.strides) for x in inputs)
    with serial("concat", out.size):
        _prim(layouts)(*inputs, out)
    return out, [x.shape[-1] for x in inputs]


def concat_backward(ctx, attrs, params, widths, dout):
    """The registry's backward: channel slices of ``dout``."""
    return get("concat").backward(ctx, attrs, params, widths, dout)


def concat_supports(attrs, in_shapes, dtype):
    """float32 H×W×C maps (flat vectors stay NumPy's), up to :data:`MAX_INPUTS` of them."""
    return (is_f32(dtype) and len(in_shapes[0]) == 3 and len(in_shapes) <= MAX_INPUTS)


def scratch_need(in_shapes, n: int) -> int:
    """Bytes of scratchpad the concat of contiguous inputs of ``in_shapes`` (batch ``n``)
    needs: what the memory planner plans (asked of the descriptor; no primitive made)."""
    layouts = []
    for shape in in_shapes:
        full = (n,) + tuple(shape)
        h, w, c = shape
        layouts.append((full, (h * w * c * 4, w * c * 4, c * 4, 4)))
    with serial("concat", n * sum(int(np.prod(s)) for s in in_shapes)):
        return lib().scratch_size(_pd(tuple(layouts)))
