"""Batch normalisation on oneDNN: training (batch statistics) and inference (running ones),
forward and backward, on NHWC maps and on (N, F) vectors.

oneDNN returns the batch mean and biased variance; the running statistics are updated here
with the reference's rule (PyTorch's: the running variance tracks the unbiased estimate).
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

from ....layers.base import fresh
from . import capi as L
from .choices import choose_impl
from .common import cached, f32, is_f32, lib, nhwc, plain, primitive, serial

BARRIER_FREE = frozenset(p for p in os.environ.get("NETDSL_ONEDNN_BN_TBB", "forward")
                         .split(",") if p and p != "none")
"""The passes (``forward``, ``backward``) of a threaded batch norm that run oneDNN's
barrier-free kernel (``bnorm_tbb_jit:<isa>``, separate parallel regions) instead of its first
choice, ``bnorm_jit:<isa>``, whose threads meet at spinning barriers inside one region, on
AVX-512 hosts. Default ``forward``; ``forward,backward`` for hosts that share their cores,
``none`` keeps the first choice (``NETDSL_ONEDNN_BN_TBB``). Why: on a shared 2-core host a
spinning barrier waits whole time slices for a descheduled partner: a 64×32×32×16 forward's
median call took 16 ms on 2 threads against 0.29 (tbb); quiet, the two forwards were within
0.05 ms a call, while the jit backward was 0.1–0.2 ms a call faster (≈ 2.5 ms of a quiet
ResNet-20 step, 8 ms a call slower under load: hence backward only on request). Not on AVX2:
there the tbb forward ran 2–40× slower than the jit one on 16×16×32 and 8×8×64 maps even
on one thread, and backward's first choice is the tbb kernel already. docs/performance.md."""


def _moved(kind: str) -> bool:
    """Whether :data:`BARRIER_FREE` names ``kind`` (part of the cache keys, so that switching
    it in one process gets the other primitives: the in-process A/B of docs/performance.md)."""
    return kind in BARRIER_FREE


def _barrier_free(create, kind: str):
    """``create()``'s descriptor, moved to the barrier-free kernel of the first choice's ISA
    where :data:`BARRIER_FREE` names ``kind``, the first choice is an AVX-512 ``bnorm_jit``
    and the host's list has the other."""
    if not _moved(kind):
        return create()
    pd = create()
    first = lib().impl_name(pd)
    lib().dll.dnnl_primitive_desc_destroy(pd)
    if not (first.startswith("bnorm_jit:") and "avx512" in first):
        return create()
    want = "bnorm_tbb_jit:" + first.split(":", 1)[1]
    return choose_impl(create, lambda name: name == want)


def _data_md(shape):
    if len(shape) == 4:
        return nhwc(*shape)
    return plain(shape)


def _flags(batch_stats, relu=False):
    return (L.BN_SCALE | L.BN_SHIFT | (0 if batch_stats else L.BN_GLOBAL_STATS)
            | (L.BN_FUSE_RELU if relu else 0))


def _fwd_pd(shape, eps, batch_stats, relu=False):
    def create():
        d = lib()
        md = _data_md(shape)
        return d.pd("dnnl_batch_normalization_forward_primitive_desc_create", d.engine,
                    L.FORWARD_TRAINING, md, md, ctypes.c_float(eps),
                    ctypes.c_uint(_flags(batch_stats, relu)), d.attr())
    return cached(("bn_fwd_pd", shape, eps, batch_stats, relu, _moved("forward")),
                  lambda: _barrier_free(create, "forward"))


def _ws_size(shape, eps, batch_stats, relu):
    """Bytes of the workspace (the ReLU mask) a fused BN+ReLU keeps for its backward."""
    d = lib()
    return d.md_size(d.pd_md(_fwd_pd(shape, eps, batch_stats, relu), "workspace"))


def _fwd(shape, eps, batch_stats, relu=False):
    def build():
        ws = ("workspace",) if _ws_size(shape, eps, batch_stats, relu) else ()
        args = ("src", "scale", "shift", "mean", "variance", "dst") + ws
        return primitive(_fwd_pd(shape, eps, batch_stats, relu), args)
    return cached(("bn_fwd", shape, eps, batch_stats, relu, _moved("forward")), build)


def _bwd_pd(shape, eps, batch_stats, relu=False):
    def create():
        d = lib()
        md = _data_md(shape)
        return d.pd("dnnl_batch_normalization_backward_primitive_desc_create", d.engine,
                    L.BACKWARD, md, md, md, ctypes.c_float(eps),
                    ctypes.c_uint(_flags(batch_stats, relu)),
                    _fwd_pd(shape, eps, batch_stats, relu), d.attr())
    return cached(("bn_bwd_pd", shape, eps, batch_stats, relu, _moved("forward"),
                   _moved("backward")),
                  lambda: _barrier_free(create, "backward"))


def _bwd(shape, eps, batch_stats, relu=False):
    def build():
        ws = ("workspace",) if _ws_size(shape, eps, batch_stats, relu) else ()
        args = ("src", "mean", "variance", "diff_dst", "scale", "diff_src", "diff_scale",
                "diff_shift") + ws
        return primitive(_bwd_pd(shape, eps, batch_stats, relu), args)
    return cached(("bn_bwd", shape, eps, batch_stats, relu, _moved("forward"),
                   _moved("backward")), build)


def plan_sizes(shape, eps, training, relu) -> tuple[int, int]:
    """(bytes of the workspace, the ReLU mask, a forward keeps for backward; bytes of
    scratchpad the layer's calls need): what the memory planner plans, from the kernels' own
    (cached) primitive descriptors, made in the same thread setting."""
    d = lib()
    with serial("batchnorm"):
        ws = _ws_size(shape, eps, training, relu)
        need = d.scratch_size(_fwd_pd(shape, eps, training, relu))
        if training:
            need = max(need, d.scratch_size(_bwd_pd(shape, eps, training, relu)))
    return ws, need


def bn_forward(ctx, attrs, params, inputs, relu=False):
    """Same contract as the registry's batchnorm forward; cache (x, mean, var, batch_stats,
    workspace). ``relu``: apply ReLU to the output too (oneDNN's fused BN+ReLU)."""
    x = f32(inputs[0])
    eps = float(attrs["eps"])
    batch_stats = bool(ctx.training)
    c = x.shape[-1]
    out = fresh(ctx, x.shape, np.float32)
    gamma, beta = f32(params["gamma"]), f32(params["beta"])
    with serial("batchnorm"):
        size = _ws_size(x.shape, eps, batch_stats, relu)
        ws = (np.empty(size, dtype=np.uint8),) if size else ()
        if batch_stats:
            mean = np.empty(c, dtype=np.float32)
            var = np.empty(c, dtype=np.float32)
        else:
            mean, var = f32(params["running_mean"]), f32(params["running_var"])
        _fwd(x.shape, eps, batch_stats, relu)(x, gamma, beta, mean, var, out, *ws)
    if batch_stats:
        count = x.size // c
        m = attrs["momentum"]
        unbiased = var * (count / (count - 1)) if count > 1 else var
        params["running_mean"][...] = (1 - m) * params["running_mean"] + m * mean
        params["running_var"][...] = (1 - m) * params["running_var"] + m * unbiased
    return out, (x, mean, var, batch_stats, ws)


def bn_backward(ctx, attrs, params, cache, dout, relu=False):
    """Same contract as the registry's batchnorm backward."""
    x, mean, var, batch_stats, ws = cache
    dx = fresh(ctx, x.shape, np.float32, "dx0")
    c = x.shape[-1]
    dgamma = np.empty(c, dtype=np.float32)
    dbeta = np.empty(c, dtype=np.float32)
    with serial("batchnorm"):
        _bwd(x.shape, float(attrs["eps"]), batch_stats, relu)(
            x, mean, var, f32(dout), f32(params["gamma"]), dx, dgamma, dbeta, *ws)
    return [dx], {"gamma": dgamma, "beta": dbeta}


def bn_relu_forward(ctx, attrs, params, inputs):
    """Batch norm followed by ReLU in one oneDNN call (the mask kept as its workspace)."""
    return bn_forward(ctx, attrs, params, inputs, relu=True)


def bn_relu_backward(ctx, attrs, params, cache, dout):
    """Backward of :func:`bn_relu_forward`; ``dout`` is the gradient of the ReLU's output."""
    return bn_backward(ctx, attrs, params, cache, dout, relu=True)


def bn_supports(attrs, in_shapes, dtype):
    """float32 maps and vectors."""
    return is_f32(dtype) and len(in_shapes[0]) in (1, 3)
