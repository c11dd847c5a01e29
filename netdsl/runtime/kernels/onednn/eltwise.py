"""ReLU, tanh, sigmoid, ReLU6, SiLU, hard swish and hard sigmoid on oneDNN's eltwise
primitives (forward and backward).

The `*_use_dst_for_bwd` algorithms differentiate from the output, which is what the reference
caches too (relu, tanh, sigmoid; relu6 as clip_v2 on [0, 6]); swish, hardswish and hardsigmoid
have no such variant and differentiate from the input, which their cache keeps. oneDNN runs
them vectorised on every thread, where NumPy's ufuncs use one.
"""
from __future__ import annotations

import ctypes
import os

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


TANH = os.environ.get("NETDSL_ONEDNN_TANH", "auto")
"""How tanh runs (the layer, and fused into a conv or fc): ``auto`` (the default) as
2σ(2x) − 1 where oneDNN's own tanh kernel is an AVX2 one, else as oneDNN's tanh; ``tanh`` or
``logistic`` force one way (for measurement). Why: oneDNN 3.2's AVX2 tanh took 1.37 ms on
256×4704 floats (one thread) where its logistic took 0.59; as one binary ×2 with the logistic
and 2y − 1 as post-ops, 0.66 ms, and LeNet-5's C3 with the chain as post-ops 1.55 against
1.75 ms (batch 256). On AVX-512 oneDNN's tanh is the faster (0.33 against 0.47 ms). The
result is within 2·10⁻⁷ of tanh (3 float32 ulps at 1) (docs/performance.md)."""
_VIA_LOGISTIC: bool | None = None


def forward_impl(op: str, shape=(1, 64)) -> str:
    """The implementation oneDNN runs the forward of ``op`` with here (e.g. ``jit:avx2``): the
    widest vectors its kernels use on this host, under any ONEDNN_MAX_CPU_ISA cap."""
    with serial(op, int(np.prod(shape))):   # created in the setting its calls run in
        return lib().impl_name(_fwd_pd(op, tuple(shape)))


def tanh_via_logistic() -> bool:
    """Whether tanh runs as 2σ(2x) − 1 here (:data:`TANH`)."""
    global _VIA_LOGISTIC
    if _VIA_LOGISTIC is None:
        if TANH != "auto":
            _VIA_LOGISTIC = TANH == "logistic"
        else:
            name = forward_impl("tanh")
            _VIA_LOGISTIC = name.startswith("jit") and "avx512" not in name
    return _VIA_LOGISTIC


def post_op_form(act: str | None) -> str | None:
    """The post-ops (a key of capi.POST_OPS) that apply activation ``act`` here."""
    return "tanh:logistic" if act == "tanh" and tanh_via_logistic() else act


_TWO = np.full((1, 1), 2.0, dtype=np.float32)


def _tanh_chain_pd(shape):
    def build():
        d = lib()
        md = plain(shape)
        return d.pd("dnnl_binary_primitive_desc_create", d.engine, L.BINARY_MUL, md,
                    plain((1, 1)), md, d.attr("tanh:logistic-of-2x"))
    return cached(("elt_tanh_chain_pd", shape), build)


def _run_forward(op, x, out) -> None:
    """``out`` ← op(``x``) (``out`` may be ``x``): oneDNN's eltwise, or for tanh where
    :func:`tanh_via_logistic`, a binary x·2 with σ and 2y − 1 as post-ops."""
    flat = _flat(x.shape)
    with serial(op, x.size):
        if op == "tanh" and tanh_via_logistic():
            cached(("elt_tanh_chain", flat), lambda: primitive(
                _tanh_chain_pd(flat), ("src", "src_1", "dst")))(x, _TWO, out)
        else:
            _fwd(op, flat)(x, out)


def scratch_need(op, shape, forward=True, backward=True) -> int:
    """Bytes of scratchpad the forward and/or backward call on a batch of ``shape`` needs,
    from the kernels' own (cached) primitive descriptors: for the memory planner."""
    d, flat = lib(), _flat(tuple(shape))
    need = 0
    with serial(op, int(np.prod(shape))):
        if forward:
            need = d.scratch_size(_tanh_chain_pd(flat) if op == "tanh" and tanh_via_logistic()
                                  else _fwd_pd(op, flat))
        if backward:
            need = max(need, d.scratch_size(_bwd_pd(op, flat)))
    return need


def make(op: str):
    """(forward, backward, supports) for one activation."""
    def forward(ctx, attrs, params, inputs):
        x = f32(inputs[0])
        out = fresh(ctx, x.shape, np.float32)
        _run_forward(op, x, out)
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


POST_OP = os.environ.get("NETDSL_ONEDNN_POSTOP", "auto")
"""Where a conv applies a fused tanh or sigmoid: ``auto`` (the default) as a post-op of the
convolution when it has at least :data:`POST_OP_MIN_CHANNELS` output channels per group,
else as an in-place eltwise call after it; ``always``/``never`` force one way (for
measurement). Why: the post-op runs on the convolution's NHWC output vectors, which a map of
6 channels fills to 6 of 8 (AVX2) or 16 (AVX-512) lanes; the eltwise call sees the same
elements as one flat array. ReLU (one max per vector) is always a post-op."""
POST_OP_MIN_CHANNELS = 16


def post_op_pays(act: str, channels: int) -> bool:
    """Whether a conv with ``channels`` output channels per group applies ``act`` as a
    post-op (True) or as an in-place eltwise call after the convolution (False)."""
    if act == "relu" or POST_OP == "always":
        return True
    return POST_OP != "never" and channels >= POST_OP_MIN_CHANNELS


def act_forward_inplace(act: str, out: np.ndarray) -> None:
    """``out`` ← act(``out``) on oneDNN, in place (src = dst)."""
    _run_forward(act, out, out)


def act_backward(act: str, out, dout, into=None) -> np.ndarray:
    """The gradient through activation ``act`` (relu, tanh or sigmoid: differentiated from
    the output) whose output is ``out``, on oneDNN: dout·(out > 0), dout·(1 − out²),
    dout·out·(1 − out); written into ``into`` (``out`` itself may be given: each element is
    read before it is written) or a fresh array."""
    dx = np.empty_like(out) if into is None else into
    with serial(act, out.size):
        _bwd(act, _flat(out.shape))(out, f32(dout), dx)
    return dx


def relu_backward(out, dout) -> np.ndarray:
    """dout · (out > 0) on oneDNN: the gradient through a ReLU whose output is ``out``."""
    return act_backward("relu", out, dout)


def fused_pair(forward, backward, act: str):
    """(forward, backward) of a layer kernel (conv, fc: ``forward(..., act=act)`` applies the
    activation as a post-op) followed by activation ``act``: the cache also holds the
    output, from which backward differentiates the activation before the layer."""
    def fused_forward(ctx, attrs, params, inputs):
        out, cache = forward(ctx, attrs, params, inputs, act=act)
        return out, (cache, out)

    def fused_backward(ctx, attrs, params, cache, dout):
        cache, out = cache
        # in place where no one reads the output after this (ctx.overwrite_output): one
        # map-sized array less per call, no fresh pages written (cs231n training: 43.5 → 42.7
        # ms a step, peak 47.0 → 39.5 MB)
        into = out if ctx.overwrite_output else None
        return backward(ctx, attrs, params, cache, act_backward(act, out, dout, into))
    fused_forward.__name__ = f"{forward.__name__}_{act}"
    fused_backward.__name__ = f"{backward.__name__}_{act}"
    return fused_forward, fused_backward
