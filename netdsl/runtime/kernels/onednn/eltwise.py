"""ReLU, tanh, sigmoid, ReLU6, SiLU, hard swish and hard sigmoid on oneDNN's eltwise
primitives (forward and backward).

The `*_use_dst_for_bwd` algorithms differentiate from the output, which is what the reference
caches too (relu, tanh, sigmoid; relu6 as clip_v2 on [0, 6]); swish, hardswish and hardsigmoid
have no such variant and differentiate from the input, which their cache keeps. oneDNN runs
them vectorised on every thread, where NumPy's ufuncs use one.
"""
from __future__ import annotations

import ctypes

import numpy as np

from ....layers.base import fresh
from . import capi as L
from .common import cached, f32, is_f32, lib, plain, primitive, serial

ALG = {"relu": L.ELTWISE_RELU_DST, "tanh": L.ELTWISE_TANH_DST, "sigmoid": L.ELTWISE_LOGISTIC_DST,
       "relu6": L.ELTWISE_CLIP_V2_DST, "silu": L.ELTWISE_SWISH, "hswish": L.ELTWISE_HARDSWISH,
       "hsigmoid": L.ELTWISE_HARDSIGMOID}
# (alpha, beta) of each algorithm: clip_v2 clips to [alpha, beta]; swish is x·σ(alpha·x);
# hardswish x·clip(alpha·x + beta, 0, 1) and hardsigmoid clip(alpha·x + beta, 0, 1).
ALPHA_BETA = {"relu6": (0.0, 6.0), "silu": (1.0, 0.0), "hswish": (1 / 6, 0.5),
              "hsigmoid": (1 / 6, 0.5)}
FROM_INPUT = ("silu", "hswish", "hsigmoid")
"""The ops whose backward reads the input (no *_use_dst_for_bwd algorithm in oneDNN)."""


def _ab(op):
    alpha, beta = ALPHA_BETA.get(op, (0.0, 0.0))
    return ctypes.c_float(alpha), ctypes.c_float(beta)


def _flat(shape):
    """Element-wise ops see a (N, rest) matrix: any layout of the same elements will do."""
    return (shape[0], int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1)


def _fwd_pd(op, shape):
    def build():
        d = lib()
        md = plain(shape)
        return d.pd("dnnl_eltwise_forward_primitive_desc_create", d.engine, L.FORWARD_TRAINING,
                    ALG[op], md, md, *_ab(op), d.attr())
    return cached(("elt_fwd_pd", op, shape), build)


def _fwd(op, shape):
    return cached(("elt_fwd", op, shape), lambda: primitive(_fwd_pd(op, shape), ("src", "dst")))


def _bwd_pd(op, shape):
    def build():
        d = lib()
        md = plain(shape)
        return d.pd("dnnl_eltwise_backward_primitive_desc_create", d.engine, ALG[op], md, md,
                    md, *_ab(op), _fwd_pd(op, shape), d.attr())
    return cached(("elt_bwd_pd", op, shape), build)


def _bwd(op, shape):
    return cached(("elt_bwd", op, shape),
                  lambda: primitive(_bwd_pd(op, shape), ("src" if op in FROM_INPUT else "dst",
                                                         "diff_dst", "diff_src")))


def scratch_need(op, shape, forward=True, backward=True) -> int:
    """Bytes of scratchpad the forward and/or backward call on a batch of ``shape`` needs,
    from the kernels' own (cached) primitive descriptors: for the memory planner."""
    d, flat = lib(), _flat(tuple(shape))
    need = 0
    with serial(op, int(np.prod(shape))):
        if forward:
            need = d.scratch_size(_fwd_pd(op, flat))
        if backward:
            need = max(need, d.scratch_size(_bwd_pd(op, flat)))
    return need


def make(op: str):
    """(forward, backward, supports) for one activation."""
    def forward(ctx, attrs, params, inputs):
        x = f32(inputs[0])
        out = fresh(ctx, x.shape, np.float32)
        with serial(op, x.size):
            _fwd(op, _flat(x.shape))(x, out)
        return out, (x if op in FROM_INPUT else out)

    def backward(ctx, attrs, params, kept, dout):
        # kept: the output, or the input for the ops in FROM_INPUT
        dx = fresh(ctx, kept.shape, np.float32, "dx0")
        with serial(op, kept.size):
            _bwd(op, _flat(kept.shape))(kept, f32(dout), dx)
        return [dx], {}

    def supports(attrs, in_shapes, dtype):
        return is_f32(dtype) and len(in_shapes[0]) >= 1
    return forward, backward, supports


def relu_backward(out, dout) -> np.ndarray:
    """dout · (out > 0) on oneDNN: the gradient through a ReLU whose output is ``out``."""
    dx = np.empty_like(out)
    with serial("relu", out.size):
        _bwd("relu", _flat(out.shape))(out, f32(dout), dx)
    return dx
