"""Local response normalisation across channels on oneDNN (forward and backward).

oneDNN computes b = a · (k + α/n · Σ a²)^−β over a centred window of n channels, which is the
registry's `lrn` with alpha_over_n=true (with false, α·n is passed). Only odd n: an even window
is not centred the same way in both. Vectors are treated as 1×1 maps.
"""
from __future__ import annotations

import ctypes

import numpy as np

from . import capi as L
from .common import cached, f32, is_f32, lib, nhwc, primitive, serial


def _params(attrs):
    n = int(attrs["size"])
    alpha = float(attrs["alpha"]) * (1 if attrs.get("alpha_over_n", True) else n)
    return n, alpha, float(attrs["beta"]), float(attrs["k"])


def _as_map(shape):
    return tuple(shape) if len(shape) == 4 else (shape[0], 1, 1, shape[1])


def _fwd_pd(shape, p):
    def build():
        d = lib()
        md = nhwc(*shape)
        n, alpha, beta, k = p
        return d.pd("dnnl_lrn_forward_primitive_desc_create", d.engine, L.FORWARD_TRAINING,
                    L.LRN_ACROSS, md, md, ctypes.c_int64(n), ctypes.c_float(alpha),
                    ctypes.c_float(beta), ctypes.c_float(k), d.attr())
    return cached(("lrn_fwd_pd", shape, p), build)


def _ws_size(shape, p):
    return lib().md_size(lib().pd_md(_fwd_pd(shape, p), "workspace"))


def _fwd(shape, p):
    ws = ("workspace",) if _ws_size(shape, p) else ()
    return cached(("lrn_fwd", shape, p),
                  lambda: primitive(_fwd_pd(shape, p), ("src", "dst") + ws))


def _bwd_pd(shape, p):
    def build():
        d = lib()
        md = nhwc(*shape)
        n, alpha, beta, k = p
        return d.pd("dnnl_lrn_backward_primitive_desc_create", d.engine, L.LRN_ACROSS, md, md,
                    md, ctypes.c_int64(n), ctypes.c_float(alpha), ctypes.c_float(beta),
                    ctypes.c_float(k), _fwd_pd(shape, p), d.attr())
    return cached(("lrn_bwd_pd", shape, p), build)


def _bwd(shape, p):
    def build():
        ws = ("workspace",) if _ws_size(shape, p) else ()
        return primitive(_bwd_pd(shape, p), ("src", "diff_dst", "diff_src") + ws)
    return cached(("lrn_bwd", shape, p), build)


def plan_sizes(attrs, x_shape, training) -> tuple[int, int]:
    """(bytes of the workspace a forward keeps for backward, bytes of scratchpad the layer's
    calls need), from the kernels' own (cached) primitive descriptors: for the planner."""
    shape, p = _as_map(x_shape), _params(attrs)
    d = lib()
    with serial("lrn"):
        ws = _ws_size(shape, p)
        need = d.scratch_size(_fwd_pd(shape, p))
        if training:
            need = max(need, d.scratch_size(_bwd_pd(shape, p)))
    return ws, need


def lrn_forward(ctx, attrs, params, inputs):
    """Same contract as the registry's lrn forward; the cache is (x, workspace)."""
    x = f32(inputs[0])
    shape, p = _as_map(x.shape), _params(attrs)
    out = np.empty_like(x)
    with serial("lrn"):
        size = _ws_size(shape, p)
    ws = np.empty(size, dtype=np.uint8) if size else None
    with serial("lrn"):
        _fwd(shape, p)(x, out, *((ws,) if size else ()))
    return out, (x, ws)


def lrn_backward(ctx, attrs, params, cache, dout):
    """Same contract as the registry's lrn backward."""
    x, ws = cache
    shape, p = _as_map(x.shape), _params(attrs)
    dx = np.empty_like(x)
    with serial("lrn"):
        _bwd(shape, p)(x, f32(dout), dx, *((ws,) if ws is not None else ()))
    return [dx], {}


def lrn_supports(attrs, in_shapes, dtype):
    """float32, odd window sizes, k > 0."""
    return (is_f32(dtype) and len(in_shapes[0]) in (1, 3) and int(attrs["size"]) % 2 == 1
            and float(attrs["k"]) > 0)
