"""The activations of the mobile nets: silu (swish, EfficientNet), relu6 (MobileNet v2),
hswish and hsigmoid (MobileNet v3's hard-swish and hard-sigmoid, PyTorch's definitions).

Each is element-wise and written so that a kernel call makes a known set of full-size arrays
(the footprint rules below count them): the output plus, for silu, the sigmoid it keeps for
backward; relu6 and hsigmoid keep their output, silu and hswish their input.
"""
from __future__ import annotations

from .activations import ACT_STYLE
from .footprint import Footprint, elementwise, in_bytes
from .base import LayerSpec, register
from ..core.errors import ShapeError

_EXAMPLE = {"attrs": {}, "in_shapes": [(3, 3, 2)]}
# Wide enough a spread that every piece of the piecewise activations (below −3, between, above
# 3 or 6) is hit by the generic tests' random inputs, and a flat input.
_MORE = ({"attrs": {}, "in_shapes": [(7,)]},)


def _same_shape(attrs, in_shapes):
    shape = tuple(in_shapes[0])
    if len(shape) == 0:
        raise ShapeError("an activation needs a tensor input, got the scalar loss")
    return shape


# --------------------------------------------------------------------------------------------
# silu: x·σ(x)

def _sigmoid_into(xp, x):
    """σ(x) as a fresh array, via (1 + tanh(x/2))/2: never overflows, one allocation."""
    s = x * x.dtype.type(0.5)
    xp.tanh(s, out=s)
    s += 1
    s *= 0.5
    return s


def _silu_forward(ctx, attrs, params, inputs):
    x = inputs[0]
    s = _sigmoid_into(ctx.xp, x)
    out = x * s
    return out, (x, s)


def _silu_backward(ctx, attrs, params, cache, dout):
    # d/dx x·σ(x) = σ·(1 + x·(1 − σ)), computed in one fresh array (the gradient).
    x, s = cache
    g = 1 - s
    g *= x
    g += 1
    g *= s
    g *= dout
    return [g], {}


def _silu_footprint(st, n, it, training, scratch=True):
    """The output and σ(x) (the cache keeps it with the input); backward: the gradient only."""
    x = in_bytes(st, n, it)
    if training:
        return Footprint(out=x, keep_in=(0,), cache=x, dx=(x,))
    return Footprint(out=x, fwd_tmp=x, dx=(x,))


# --------------------------------------------------------------------------------------------
# relu6 and hsigmoid: clip(x + shift, 0, top)/top·scale — the output decides the gradient

def _relu6_forward(ctx, attrs, params, inputs):
    out = ctx.xp.clip(inputs[0], 0, 6)
    return out, out


def _band_mask(out, low, high):
    """low < out < high as one bool array (the second comparison's array is freed at once)."""
    mask = out > low
    mask &= out < high
    return mask


def _relu6_backward(ctx, attrs, params, out, dout):
    return [dout * _band_mask(out, 0, 6)], {}


def _hsigmoid_forward(ctx, attrs, params, inputs):
    # relu6(x + 3)/6, PyTorch's Hardsigmoid, in the one fresh array.
    out = inputs[0] + 3
    ctx.xp.clip(out, 0, 6, out=out)
    out *= out.dtype.type(1 / 6)
    return out, out


def _hsigmoid_backward(ctx, attrs, params, out, dout):
    dx = dout * _band_mask(out, 0, 1)
    dx *= dx.dtype.type(1 / 6)
    return [dx], {}


def _clip_footprint(st, n, it, training, scratch=True):
    """A fresh output (the cache); backward: two bool masks, then one mask and the gradient."""
    return elementwise(st, n, it, 0, 1 / it)


# --------------------------------------------------------------------------------------------
# hswish: x·relu6(x + 3)/6

def _hswish_forward(ctx, attrs, params, inputs):
    x = inputs[0]
    out = x + 3
    ctx.xp.clip(out, 0, 6, out=out)
    out *= x
    out *= out.dtype.type(1 / 6)
    return out, x


def _hswish_backward(ctx, attrs, params, x, dout):
    # PyTorch's derivative: 0 below −3, x/3 + 1/2 on [−3, 3], 1 above 3.
    xp = ctx.xp
    g = x * x.dtype.type(1 / 3)
    g += 0.5
    g *= x >= -3
    xp.copyto(g, 1, where=x > 3)
    g *= dout
    return [g], {}


def _hswish_footprint(st, n, it, training, scratch=True):
    """A fresh output; the cache is the input. Backward: the gradient and one bool mask."""
    x = in_bytes(st, n, it)
    return Footprint(out=x, keep_in=(0,), dx=(x,), bwd_tmp=x // it)


register(LayerSpec(
    name="silu", doc="SiLU / swish: x·σ(x) (EfficientNet).", aliases=("swish",), args=(),
    infer_shape=_same_shape, forward=_silu_forward, backward=_silu_backward, style=ACT_STYLE,
    example=_EXAMPLE, examples=_MORE, footprint=_silu_footprint))
register(LayerSpec(
    name="relu6", doc="ReLU capped at 6: min(max(x, 0), 6) (MobileNet v2).", args=(),
    infer_shape=_same_shape, forward=_relu6_forward, backward=_relu6_backward, style=ACT_STYLE,
    example=_EXAMPLE, examples=_MORE, footprint=_clip_footprint))
register(LayerSpec(
    name="hswish", doc="Hard swish: x·relu6(x + 3)/6 (MobileNet v3; PyTorch's Hardswish).",
    aliases=("hardswish", "hard_swish"), args=(), infer_shape=_same_shape,
    forward=_hswish_forward, backward=_hswish_backward, style=ACT_STYLE, example=_EXAMPLE,
    examples=_MORE, footprint=_hswish_footprint))
register(LayerSpec(
    name="hsigmoid", doc="Hard sigmoid: relu6(x + 3)/6 (MobileNet v3; PyTorch's Hardsigmoid).",
    aliases=("hardsigmoid", "hard_sigmoid"), args=(), infer_shape=_same_shape,
    forward=_hsigmoid_forward, backward=_hsigmoid_backward, style=ACT_STYLE, example=_EXAMPLE,
    examples=_MORE, footprint=_clip_footprint))
