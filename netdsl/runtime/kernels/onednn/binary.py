"""The ``mul`` join on oneDNN's binary primitive (forward): an element-wise product of two
equal tensors, or a map times a per-channel gate (C or 1×1×C) that oneDNN broadcasts over
H and W. Backward is the registry's own (two products and a pairwise channel sum): oneDNN has no
backward binary primitive, and the gradient's channel sums are what the reference already does
accurately (layers/reduce.py).
"""
from __future__ import annotations

import numpy as np

from ....layers import get
from ....layers.base import fresh
from . import capi as L
from .common import cached, f32, is_f32, lib, nhwc, plain, primitive, serial


def _gate_md(n, c):
    """A gate (N, C) seen as oneDNN's N×C×1×1."""
    return lib().md_strides((n, c, 1, 1), (c, 1, c, c))


def _prim(map_shape, gate: bool):
    def build():
        d = lib()
        if gate:
            n, h, w, c = map_shape
            src0, src1, dst = nhwc(n, h, w, c), _gate_md(n, c), nhwc(n, h, w, c)
        else:
            src0 = src1 = dst = plain(map_shape)
        pd = d.pd("dnnl_binary_primitive_desc_create", d.engine, L.BINARY_MUL, src0, src1, dst,
                  d.attr())
        return primitive(pd, ("src", "src_1", "dst"))
    return cached(("mul_fwd", map_shape, gate), build)


def _b_is_gate(a_shape, b_shape) -> bool:
    """As the registry's rule: the flat one, else the one with the smaller map."""
    if len(b_shape) == 2 or len(a_shape) == 2:
        return len(b_shape) == 2
    return b_shape[1] * b_shape[2] < a_shape[1] * a_shape[2]


def mul_forward(ctx, attrs, params, inputs):
    """Same contract as the registry's mul forward; the cache is (a, b)."""
    a, b = f32(inputs[0]), f32(inputs[1])
    if a.shape == b.shape:
        x, g, gate = a, b, False
        shape = (a.shape[0], int(np.prod(a.shape[1:], dtype=np.int64)))
    else:
        x, g = (a, b) if _b_is_gate(a.shape, b.shape) else (b, a)
        shape, gate = x.shape, True
    out = fresh(ctx, x.shape, np.float32)
    with serial("mul", x.size):
        _prim(shape, gate)(x, g, out)
    return out, (a, b)


def mul_backward(ctx, attrs, params, cache, dout):
    """The registry's backward (see the module docstring)."""
    return get("mul").backward(ctx, attrs, params, cache, dout)


def mul_supports(attrs, in_shapes, dtype):
    """float32; equal shapes, or an H×W×C map with a C / 1×1×C gate."""
    a, b = (tuple(s) for s in in_shapes)
    return is_f32(dtype) and (a == b or len(a) == 3 or len(b) == 3)
