"""Element-wise activations: relu, tanh, sigmoid. Each caches its output, which is all its
derivative needs (so an executor may let the output overwrite the input)."""
from __future__ import annotations

from ..errors import ShapeError
from .base import LayerSpec, register

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
