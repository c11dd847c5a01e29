"""Activations: relu, leakyrelu, tanh, sigmoid (element-wise) and softmax (over the last axis).
Each caches its output, which is all its derivative needs (so an executor may let the output
overwrite the input)."""
from __future__ import annotations

from ..errors import ShapeError
from .base import Arg, LayerSpec, register

ACT_STYLE = {"shape": "box", "style": "rounded,filled", "fillcolor": "#fff3cd"}
_EXAMPLE = {"attrs": {}, "in_shapes": [(3, 3, 2)]}


def _same_shape(attrs, in_shapes):
    shape = tuple(in_shapes[0])
    if len(shape) == 0:
        raise ShapeError("an activation needs a tensor input, got the scalar loss")
    return shape


def _relu_forward(ctx, attrs, params, inputs):
    out = ctx.xp.maximum(inputs[0], 0)
    return out, out


def _relu_backward(ctx, attrs, params, out, dout):
    return [dout * (out > 0)], {}


def _leaky_forward(ctx, attrs, params, inputs):
    x = inputs[0]
    out = ctx.xp.where(x > 0, x, x * x.dtype.type(attrs["slope"]))
    return out, out


def _leaky_backward(ctx, attrs, params, out, dout):
    # With slope ≥ 0 the output is positive exactly where the input is: the output suffices.
    return [dout * ctx.xp.where(out > 0, 1.0, attrs["slope"]).astype(dout.dtype)], {}


def _softmax_forward(ctx, attrs, params, inputs):
    x = inputs[0]
    exp = ctx.xp.exp(x - x.max(axis=-1, keepdims=True))  # the shift keeps exp() finite
    out = exp / exp.sum(axis=-1, keepdims=True)
    return out, out


def _softmax_backward(ctx, attrs, params, out, dout):
    # d softmax: y ⊙ (g − Σ g·y), the Jacobian-vector product without forming the Jacobian.
    return [out * (dout - (dout * out).sum(axis=-1, keepdims=True))], {}


def _tanh_forward(ctx, attrs, params, inputs):
    out = ctx.xp.tanh(inputs[0])
    return out, out


def _tanh_backward(ctx, attrs, params, out, dout):
    return [dout * (1 - out * out)], {}


def _sigmoid_forward(ctx, attrs, params, inputs):
    # σ(x) = (1 + tanh(x/2))/2: exact, and never overflows exp() for large |x|.
    out = (ctx.xp.tanh(inputs[0] * 0.5) + 1) * 0.5
    return out, out


def _sigmoid_backward(ctx, attrs, params, out, dout):
    return [dout * out * (1 - out)], {}


register(LayerSpec(
    name="relu", doc="Rectified linear unit: max(x, 0).", args=(), infer_shape=_same_shape,
    forward=_relu_forward, backward=_relu_backward, style=ACT_STYLE,
    example=_EXAMPLE))
register(LayerSpec(
    name="tanh", doc="Hyperbolic tangent.", args=(), infer_shape=_same_shape,
    forward=_tanh_forward, backward=_tanh_backward, style=ACT_STYLE, example=_EXAMPLE))
register(LayerSpec(
    name="sigmoid", doc="Logistic sigmoid 1/(1 + e^−x).", args=(), infer_shape=_same_shape,
    forward=_sigmoid_forward, backward=_sigmoid_backward, style=ACT_STYLE, example=_EXAMPLE))
register(LayerSpec(
    name="leakyrelu", doc="Leaky ReLU: x for x > 0, slope·x otherwise (slope 0.01 by default).",
    aliases=("leaky_relu", "lrelu"),
    args=(Arg("slope", "float", 0.01, doc="gradient for negative inputs", minimum=0),),
    infer_shape=_same_shape, forward=_leaky_forward, backward=_leaky_backward,
    label=("slope",), style=ACT_STYLE, example={"attrs": {"slope": 0.1}, "in_shapes": [(3, 3, 2)]},
    examples=({"attrs": {}, "in_shapes": [(5,)]},)))
register(LayerSpec(
    name="softmax", doc="Softmax over the last axis (channels of each position, or features); "
    "a layer, not a loss.", args=(), infer_shape=_same_shape, forward=_softmax_forward,
    backward=_softmax_backward, style=ACT_STYLE, example={"attrs": {}, "in_shapes": [(5,)]},
    examples=(_EXAMPLE,)))
