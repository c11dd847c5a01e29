"""The ``mul`` and ``add`` joins on oneDNN's binary primitive (forward).

``mul``: an element-wise product of two equal tensors, or a map times a per-channel gate (C or
1×1×C) that oneDNN broadcasts over H and W. Backward is the registry's own (two products and a
pairwise channel sum): oneDNN has no backward binary primitive, and the gradient's channel sums
are what the reference already does accurately (layers/reduce.py).

``add`` of two equal tensors, and its fused form ``relu(a + b)`` (the residual join of a
ResNet block with the ReLU after it, fused by the compiler's ``fuse_activations``): one pass
with a ReLU post-op where the add and a separate ReLU made two, each reading and writing a
whole map. Its backward masks the gradient once (oneDNN's eltwise backward on the output) and
hands that one array to both inputs, as the reference add hands its incoming gradient.
"""
from __future__ import annotations

import numpy as np

from ....layers import get
from ....layers.base import fresh
from . import capi as L
from .common import cached, f32, is_f32, lib, nhwc, plain, primitive, serial
from .eltwise import relu_backward, scratch_need


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


def _add_prim(shape, relu: bool):
    def build():
        d = lib()
        md = plain(shape)
        pd = d.pd("dnnl_binary_primitive_desc_create", d.engine, L.BINARY_ADD, md, md, md,
                  d.attr("relu" if relu else None))
        return primitive(pd, ("src", "src_1", "dst"))
    return cached(("add_fwd", shape, relu), build)


def _flat(shape):
    return (shape[0], int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1)


def add_forward(ctx, attrs, params, inputs, relu=False):
    """Same contract as the registry's add forward (two inputs); the cache is the input
    count, or with ``relu`` the output (the mask of the backward)."""
    a, b = f32(inputs[0]), f32(inputs[1])
    out = fresh(ctx, a.shape, np.float32)
    with serial("add", a.size):
        _add_prim(_flat(a.shape), relu)(a, b, out)
    return out, (out if relu else 2)


def add_backward(ctx, attrs, params, cache, dout):
    """The registry's backward: the incoming gradient itself to both inputs."""
    return [dout, dout], {}


def add_relu_forward(ctx, attrs, params, inputs):
    """``relu(a + b)`` in one oneDNN call (a ReLU post-op on the binary add)."""
    return add_forward(ctx, attrs, params, inputs, relu=True)


def add_relu_backward(ctx, attrs, params, out, dout):
    """Backward of :func:`add_relu_forward`: ``dout · (out > 0)``, one array to both inputs
    (read-only: the executor sums fanned-out gradients out of place)."""
    dx = relu_backward(out, dout)
    return [dx, dx], {}


def add_scratch_need(shape, relu: bool, training: bool) -> int:
    """Bytes of scratchpad the add (and in training a fused ReLU's backward) needs, from the
    kernels' own (cached) primitives: for the memory planner."""
    d = lib()
    with serial("add", int(np.prod(shape))):
        need = d.scratch_size(_add_prim(_flat(tuple(shape)), relu).pd)
    if relu and training:
        need = max(need, scratch_need("relu", shape, forward=False))
    return need


def add_supports(attrs, in_shapes, dtype):
    """float32, two inputs (of equal shapes: the layer's rule)."""
    return is_f32(dtype) and len(in_shapes) == 2


def mul_supports(attrs, in_shapes, dtype):
    """float32; equal shapes, or an H×W×C map with a C / 1×1×C gate."""
    a, b = (tuple(s) for s in in_shapes)
    return is_f32(dtype) and (a == b or len(a) == 3 or len(b) == 3)
