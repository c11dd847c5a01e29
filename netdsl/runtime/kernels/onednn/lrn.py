"""Local response normalisation across channels on oneDNN (forward and backward).

oneDNN computes b = a · (k + α/n · Σ a²)^−β over a centred window of n channels, which is the
registry's `lrn` with alpha_over_n=true (with false, α·n is passed). Only odd n: an even window
is not centred the same way in both. Vectors are treated as 1×1 maps.

Which implementation runs is chosen per host and shape, from the primitive descriptors'
implementation names: oneDNN 3.2 has jit LRN backward kernels only from AVX-512 on
(``lrn_jit:avx512_core`` for NHWC); capped to AVX2 every layout (nchw, nhwc, nChw8c,
nChw16c) falls back to ``ref:any``, 0.3–0.9 s for an AlexNet LRN at batch 32 where the
forward is a 4–13 ms ``jit:avx2``. Wherever oneDNN would run ``ref``, that pass runs
:mod:`.lrn_numpy` instead; a oneDNN forward before a NumPy backward is the inference
primitive, which needs no workspace: the cache keeps the input and the output instead
(docs/performance.md, "LRN on AVX2").
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

from . import capi as L
from .common import cached, f32, is_f32, lib, nhwc, primitive, serial, slow_impl
from .lrn_numpy import (BWD_BUFS, FWD_BUFS, IMPL as NUMPY_IMPL, lrn_backward_numpy,
                        lrn_forward_numpy, tmp_bytes)

FORWARD = os.environ.get("NETDSL_ONEDNN_LRN_FWD", "auto")
BACKWARD = os.environ.get("NETDSL_ONEDNN_LRN_BWD", "auto")
"""Where each pass runs: ``auto`` (oneDNN unless its implementation would be ``ref`` here),
``onednn`` or ``numpy`` (forced; for measurements and tests). oneDNN's backward reads its
forward's workspace, so it runs only after a oneDNN forward."""


def _params(attrs):
    n = int(attrs["size"])
    alpha = float(attrs["alpha"]) * (1 if attrs.get("alpha_over_n", True) else n)
    return n, alpha, float(attrs["beta"]), float(attrs["k"])


def _as_map(shape):
    return tuple(shape) if len(shape) == 4 else (shape[0], 1, 1, shape[1])


def _fwd_pd(shape, p, training=True):
    def build():
        d = lib()
        md = nhwc(*shape)
        n, alpha, beta, k = p
        prop = L.FORWARD_TRAINING if training else L.FORWARD_INFERENCE
        return d.pd("dnnl_lrn_forward_primitive_desc_create", d.engine, prop,
                    L.LRN_ACROSS, md, md, ctypes.c_int64(n), ctypes.c_float(alpha),
                    ctypes.c_float(beta), ctypes.c_float(k), d.attr())
    return cached(("lrn_fwd_pd", shape, p, training), build)


def _ws_size(shape, p, training=True):
    return lib().md_size(lib().pd_md(_fwd_pd(shape, p, training), "workspace"))


def _fwd(shape, p, training=True):
    def build():
        ws = ("workspace",) if _ws_size(shape, p, training) else ()
        return primitive(_fwd_pd(shape, p, training), ("src", "dst") + ws)
    return cached(("lrn_fwd", shape, p, training), build)


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


def _on_onednn(shape, p) -> tuple[bool, bool]:
    """(forward, training backward) on oneDNN for this shape: unless forced, each where
    oneDNN's implementation is not its reference loops."""
    def decide():
        d = lib()
        with serial("lrn"):
            fwd = (FORWARD == "onednn" if FORWARD in ("onednn", "numpy")
                   else not slow_impl(d.impl_name(_fwd_pd(shape, p, False))))
            if not fwd or BACKWARD in ("onednn", "numpy"):
                return fwd, fwd and BACKWARD == "onednn"
            return fwd, not slow_impl(d.impl_name(_bwd_pd(shape, p)))
    return cached(("lrn_on_onednn", shape, p, FORWARD, BACKWARD), decide)


def backward_on_onednn(attrs, x_shape) -> bool:
    """Whether the training backward of an LRN on a batch of shape ``x_shape`` runs on
    oneDNN (otherwise: :func:`.lrn_numpy.lrn_backward_numpy`)."""
    return _on_onednn(_as_map(x_shape), _params(attrs))[1]


def forward_on_onednn(attrs, x_shape) -> bool:
    """Whether the forward runs on oneDNN (otherwise: :func:`.lrn_numpy.lrn_forward_numpy`)."""
    return _on_onednn(_as_map(x_shape), _params(attrs))[0]


def impl_names(attrs, x_shape, training) -> dict:
    """The implementation each pass of one LRN layer runs, by pass (``forward``, and in
    training ``backward``): oneDNN's ``impl_info_str`` (e.g. ``lrn_jit:avx512_core``,
    ``jit:avx2``), or :data:`.lrn_numpy.IMPL` for a NumPy pass."""
    shape, p = _as_map(x_shape), _params(attrs)
    fwd, bwd = _on_onednn(shape, p)
    bwd = bwd and training
    d = lib()
    with serial("lrn"):
        names = {"forward": d.impl_name(_fwd_pd(shape, p, bwd)) if fwd else NUMPY_IMPL}
        if training:
            names["backward"] = d.impl_name(_bwd_pd(shape, p)) if bwd else NUMPY_IMPL
    return names


def plan_sizes(attrs, x_shape, training) -> tuple[int, int]:
    """(bytes of the workspace a forward keeps for backward, bytes of scratchpad the layer's
    calls need), from the kernels' own (cached) primitive descriptors: for the planner."""
    shape, p = _as_map(x_shape), _params(attrs)
    d = lib()
    fwd, bwd = _on_onednn(shape, p)
    if not fwd:
        return 0, 0
    bwd = bwd and training
    with serial("lrn"):
        ws = _ws_size(shape, p, bwd)
        need = d.scratch_size(_fwd_pd(shape, p, bwd))
        if bwd:
            need = max(need, d.scratch_size(_bwd_pd(shape, p)))
    return ws, need


def numpy_tmp_bytes(x_shape, backward: bool) -> int:
    """Bytes of the temporaries a NumPy pass allocates for a batch of ``x_shape`` beside its
    result (where that pass runs in NumPy)."""
    return tmp_bytes(_as_map(x_shape), BWD_BUFS if backward else FWD_BUFS)


def lrn_forward(ctx, attrs, params, inputs):
    """Same contract as the registry's lrn forward; the cache is ("onednn", x, workspace)
    for oneDNN's backward, ("numpy", x, output) for the NumPy one (and at inference)."""
    x = f32(inputs[0])
    shape, p = _as_map(x.shape), _params(attrs)
    fwd, bwd = _on_onednn(shape, p)
    bwd = bwd and ctx.training
    if not fwd:
        n, alpha, beta, k = p
        out = lrn_forward_numpy(x, n, alpha / n, beta, k)
        return out, ("numpy", x, out)
    out = np.empty_like(x)
    with serial("lrn"):
        size = _ws_size(shape, p, bwd)
    ws = np.empty(size, dtype=np.uint8) if size else None
    with serial("lrn"):
        _fwd(shape, p, bwd)(x, out, *((ws,) if size else ()))
    # not training: a backward may still follow (input gradients of an inference model); the
    # NumPy backward needs only references to what exists anyway
    return out, ("onednn", x, ws) if bwd else ("numpy", x, out)


def lrn_backward(ctx, attrs, params, cache, dout):
    """Same contract as the registry's lrn backward."""
    kind, x, kept = cache
    if kind == "numpy":
        n, alpha, beta, k = _params(attrs)
        return [lrn_backward_numpy(x, kept, f32(dout), n, alpha / n, beta, k)], {}
    shape, p = _as_map(x.shape), _params(attrs)
    dx = np.empty_like(x)
    with serial("lrn"):
        _bwd(shape, p)(x, f32(dout), dx, *((kept,) if kept is not None else ()))
    return [dx], {}


def lrn_supports(attrs, in_shapes, dtype):
    """float32, odd window sizes, k > 0."""
    return (is_f32(dtype) and len(in_shapes[0]) in (1, 3) and int(attrs["size"]) % 2 == 1
            and float(attrs["k"]) > 0)
