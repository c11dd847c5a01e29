"""Fully connected layers on oneDNN's inner product: forward (+bias), backward data and
weights (+bias). The input is flattened row-major (as the reference does); the weight stays
netdsl's (inputs, units) matrix, described to oneDNN as an (O, I) array with strides (1, O).
"""
from __future__ import annotations

import numpy as np

from ....layers.base import fresh
from . import capi as L
from .common import cached, f32, is_f32, lib, plain, primitive, serial
from .eltwise import fused_pair, post_op_form


def _descs(n, k, units):
    d = lib()
    return plain((n, k)), d.md_strides((units, k), (1, units)), plain((units,)), plain((n, units))


def _fwd_pd(n, k, units, bias, act=None, training=True):
    def build():
        d = lib()
        src, wei, b, dst = _descs(n, k, units)
        return d.pd("dnnl_inner_product_forward_primitive_desc_create", d.engine,
                    L.FORWARD_TRAINING if training else L.FORWARD_INFERENCE, src, wei,
                    b if bias else None, dst, d.attr(act))
    return cached(("fc_fwd_pd", n, k, units, bias, act, training), build)


def _fwd(n, k, units, bias, act=None, training=True):
    args = ("src", "weights", "bias", "dst") if bias else ("src", "weights", "dst")
    return cached(("fc_fwd", n, k, units, bias, act, training),
                  lambda: primitive(_fwd_pd(n, k, units, bias, act, training), args))


def _bwd_data_pd(n, k, units, bias):
    def build():
        d = lib()
        src, wei, _, dst = _descs(n, k, units)
        return d.pd("dnnl_inner_product_backward_data_primitive_desc_create", d.engine,
                    src, wei, dst, _fwd_pd(n, k, units, bias), d.attr())
    return cached(("fc_bwd_data_pd", n, k, units, bias), build)


def _bwd_data(n, k, units, bias):
    return cached(("fc_bwd_data", n, k, units, bias),
                  lambda: primitive(_bwd_data_pd(n, k, units, bias),
                                    ("diff_dst", "weights", "diff_src")))


def _bwd_weights_pd(n, k, units, bias):
    def build():
        d = lib()
        src, wei, b, dst = _descs(n, k, units)
        return d.pd("dnnl_inner_product_backward_weights_primitive_desc_create", d.engine,
                    src, wei, b if bias else None, dst, _fwd_pd(n, k, units, bias), d.attr())
    return cached(("fc_bwd_weights_pd", n, k, units, bias), build)


def _bwd_weights(n, k, units, bias):
    args = ("src", "diff_dst", "diff_weights") + (("diff_bias",) if bias else ())
    return cached(("fc_bwd_weights", n, k, units, bias),
                  lambda: primitive(_bwd_weights_pd(n, k, units, bias), args))


def scratch_need(n, k, units, bias, act, training, input_grad=True) -> int:
    """Bytes of scratchpad the calls of one fc layer need (the most of any), from the kernels'
    own (cached) primitive descriptors, made in the same thread setting: for the planner.
    ``act``: the fused activation (of capi.ACTIVATIONS) or None."""
    d = lib()
    with serial("fc", 2 * n * k * units):
        need = d.scratch_size(_fwd_pd(n, k, units, bias, post_op_form(act), training))
        if training:
            need = max(need, d.scratch_size(_bwd_weights_pd(n, k, units, bias)))
            if input_grad:
                need = max(need, d.scratch_size(_bwd_data_pd(n, k, units, bias)))
    return need


def impl_names(n, k, units, bias, act, training) -> dict:
    """The implementation oneDNN chose for each primitive of one fc layer, by pass."""
    d = lib()
    with serial("fc", 2 * n * k * units):
        names = {"forward": d.impl_name(_fwd_pd(n, k, units, bias, post_op_form(act),
                                                training))}
        if training:
            names["backward_data"] = d.impl_name(_bwd_data_pd(n, k, units, bias))
            names["backward_weights"] = d.impl_name(_bwd_weights_pd(n, k, units, bias))
    return names


def fc_forward(ctx, attrs, params, inputs, act=None):
    """Same contract as the registry's fc forward; the cache is (input shape, flat input).
    ``act``: an activation (of capi.ACTIVATIONS) applied to the output as oneDNN
    post-op. Inference runs a ``forward_inference`` primitive."""
    x = inputs[0]
    x2 = f32(x.reshape(x.shape[0], -1))
    weight = params["weight"]
    n, (k, units) = x2.shape[0], weight.shape
    bias = "bias" in params
    out = fresh(ctx, (n, units), np.float32)
    training, act = bool(ctx.training), post_op_form(act)
    with serial("fc", 2 * n * k * units):
        if bias:
            _fwd(n, k, units, True, act, training)(x2, f32(weight), f32(params["bias"]), out)
        else:
            _fwd(n, k, units, False, act, training)(x2, f32(weight), out)
    return out, (x.shape, x2)


def fc_backward(ctx, attrs, params, cache, dout):
    """Same contract as the registry's fc backward."""
    x_shape, x2 = cache
    with serial("fc", 2 * x2.size * params["weight"].shape[1]):
        return _fc_backward(ctx, params, x_shape, x2, dout)


def _fc_backward(ctx, params, x_shape, x2, dout):
    dout = f32(dout)
    weight = params["weight"]
    n, (k, units) = x2.shape[0], weight.shape
    bias = "bias" in params
    grads = {"weight": np.empty(weight.shape, dtype=np.float32)}
    if bias:
        grads["bias"] = np.empty(units, dtype=np.float32)
        _bwd_weights(n, k, units, True)(x2, dout, grads["weight"], grads["bias"])
    else:
        _bwd_weights(n, k, units, False)(x2, dout, grads["weight"])
    if not ctx.input_grad:
        return [None], grads
    dx = fresh(ctx, (n, k), np.float32, "dx0")
    _bwd_data(n, k, units, bias)(dout, f32(weight), dx)
    return [dx.reshape(x_shape)], grads


def fused_forms() -> dict:
    """``{activation: (forward, backward)}``: fc followed by that activation in one oneDNN
    call (bias and activation as post-ops), for every activation of capi.ACTIVATIONS."""
    return {act: fused_pair(fc_forward, fc_backward, act) for act in L.ACTIVATIONS}


def fc_supports(attrs, in_shapes, dtype):
    """float32, any input shape (it is flattened)."""
    return is_f32(dtype)
