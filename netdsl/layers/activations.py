"""Activations: relu, leakyrelu, tanh, sigmoid (element-wise) and softmax (over the last axis).
Each caches its output, which is all its derivative needs (so an executor may let the output
overwrite the input)."""
from __future__ import annotations

from ..core.errors import ShapeError
from .base import Arg, LayerSpec, fresh, register
from .footprint import Footprint, batch_bytes, elementwise, in_bytes

ACT_STYLE = {"shape": "box", "style": "rounded,filled", "fillcolor": "#fff3cd"}
_EXAMPLE = {"attrs": {}, "in_shapes": [(3, 3, 2)]}


def _same_shape(attrs, in_shapes):
    shape = tuple(in_shapes[0])
    if len(shape) == 0:
        raise ShapeError("an activation needs a tensor input, got the scalar loss")
    return shape


def _relu_forward(ctx, attrs, params, inputs):
    x = inputs[0]
    out = ctx.xp.maximum(x, 0, out=fresh(ctx, x.shape, x.dtype))
    return out, out


def _relu_backward(ctx, attrs, params, out, dout):
    dx = fresh(ctx, dout.shape, ctx.xp.result_type(dout, out.dtype), "dx0")
    return [ctx.xp.multiply(dout, out > 0, out=dx)], {}


def _leaky_forward(ctx, attrs, params, inputs):
    x = inputs[0]
    slope = x.dtype.type(attrs["slope"])
    # max(x, slope·x) for slope ≤ 1 (min for a steeper slope): the output is the only array
    # made (a where() would also make the mask and slope·x; _leaky_footprint below).
    out = x * slope
    (ctx.xp.maximum if slope <= 1 else ctx.xp.minimum)(out, x, out=out)
    return out, out


def _leaky_backward(ctx, attrs, params, out, dout):
    # With slope ≥ 0 the output is positive exactly where the input is: the output suffices.
    # slope·dout, then dout itself where the output is positive: the gradient and a bool mask.
    dx = dout * dout.dtype.type(attrs["slope"])
    ctx.xp.copyto(dx, dout, where=out > 0)
    return [dx], {}


def _softmax_forward(ctx, attrs, params, inputs):
    x = inputs[0]
    out = x - x.max(axis=-1, keepdims=True)  # the shift keeps exp() finite
    ctx.xp.exp(out, out=out)                 # in place: the output is the only full array
    out /= out.sum(axis=-1, keepdims=True)
    return out, out


def _softmax_backward(ctx, attrs, params, out, dout):
    # d softmax: y ⊙ (g − Σ g·y), the Jacobian-vector product without forming the Jacobian;
    # computed in the gradient's own buffer (one full array, one per-row sum).
    dx = dout * out
    total = dx.sum(axis=-1, keepdims=True)
    ctx.xp.subtract(dout, total, out=dx)
    dx *= out
    return [dx], {}


def _tanh_forward(ctx, attrs, params, inputs):
    x = inputs[0]
    out = ctx.xp.tanh(x, out=fresh(ctx, x.shape, x.dtype))
    return out, out


def _tanh_backward(ctx, attrs, params, out, dout):
    # dout·(1 − out²) computed in the result's own buffer: one fresh array, no temporary (what
    # the plan's fused tanh and the memory planner count on)
    xp = ctx.xp
    dx = xp.multiply(out, out)
    xp.subtract(1, dx, out=dx)
    dx *= dout
    return [dx], {}


def _sigmoid_forward(ctx, attrs, params, inputs):
    # σ(x) = (1 + tanh(x/2))/2: exact, and never overflows exp() for large |x|.
    out = (ctx.xp.tanh(inputs[0] * 0.5) + 1) * 0.5
    return out, out


def _sigmoid_backward(ctx, attrs, params, out, dout):
    # dout·out·(1 − out) in the result's own buffer: one fresh array, no temporary
    xp = ctx.xp
    dx = xp.subtract(1, out)
    dx *= out
    dx *= dout
    return [dx], {}


def _relu_inplace(xp, x):
    xp.maximum(x, 0, out=x)


def _tanh_inplace(xp, x):
    xp.tanh(x, out=x)


def _sigmoid_inplace(xp, x):
    # the forward's own operations, in the same order: the same numbers
    x *= 0.5
    xp.tanh(x, out=x)
    x += 1
    x *= 0.5


def _relu_footprint(st, n, it, training, scratch=True):
    """A fresh output (the cache); backward: the gradient and its bool mask."""
    return elementwise(st, n, it, 0, 1 / it)


def _tanh_footprint(st, n, it, training, scratch=True):
    """Backward: the result alone (computed in its own buffer)."""
    return elementwise(st, n, it, 0, 0)


def _sigmoid_footprint(st, n, it, training, scratch=True):
    """Forward: e^−x beside the output; backward: the result alone (in its own buffer)."""
    return elementwise(st, n, it, 1, 0)


def _leaky_footprint(st, n, it, training, scratch=True):
    """One output (slope·x, then max/min with x in place); backward: dout·slope, then dout
    copied where the output is positive: the gradient and a bool mask."""
    x = in_bytes(st, n, it)
    return Footprint(out=x, keep_out=True, dx=(x,), bwd_tmp=x // it)


def _softmax_footprint(st, n, it, training, scratch=True):
    """The output is shifted, exponentiated and divided in place; the row max and the row sum
    (one value per row) are the temporaries, forward and backward."""
    shape = st.node.in_shapes[0]
    x, rows = batch_bytes(n, shape, it), batch_bytes(n, shape[:-1], it)
    return Footprint(out=x, keep_out=True, fwd_tmp=rows, dx=(x,), bwd_tmp=rows)


register(LayerSpec(
    name="relu", doc="Rectified linear unit: max(x, 0).", args=(), infer_shape=_same_shape,
    forward=_relu_forward, backward=_relu_backward, inplace=_relu_inplace,
    # non-decreasing, and flat only where its gradient is 0: max pooling after it may run
    # before it, bitwise the same outputs and gradients (tanh, sigmoid: ties in float32 can
    # move a window's gradient to another element, so not those)
    commutes_with_max=True, style=ACT_STYLE,
    example=_EXAMPLE,
    footprint=_relu_footprint))
register(LayerSpec(
    name="tanh", doc="Hyperbolic tangent.", args=(), infer_shape=_same_shape,
    forward=_tanh_forward, backward=_tanh_backward, inplace=_tanh_inplace,
    style=ACT_STYLE, example=_EXAMPLE,
    footprint=_tanh_footprint))
register(LayerSpec(
    name="sigmoid", doc="Logistic sigmoid 1/(1 + e^−x).", args=(), infer_shape=_same_shape,
    forward=_sigmoid_forward, backward=_sigmoid_backward, inplace=_sigmoid_inplace,
    style=ACT_STYLE, example=_EXAMPLE,
    footprint=_sigmoid_footprint))
register(LayerSpec(
    name="leakyrelu", doc="Leaky ReLU: x for x > 0, slope·x otherwise (slope 0.01 by default).",
    aliases=("leaky_relu", "lrelu"),
    args=(Arg("slope", "float", 0.01, doc="gradient for negative inputs", minimum=0),),
    infer_shape=_same_shape, forward=_leaky_forward, backward=_leaky_backward,
    label=("slope",), style=ACT_STYLE, example={"attrs": {"slope": 0.1}, "in_shapes": [(3, 3, 2)]},
    examples=({"attrs": {}, "in_shapes": [(5,)]},),
    footprint=_leaky_footprint))
register(LayerSpec(
    name="softmax", doc="Softmax over the last axis (channels of each position, or features); "
    "a layer, not a loss.", args=(), infer_shape=_same_shape, forward=_softmax_forward,
    backward=_softmax_backward, style=ACT_STYLE, example={"attrs": {}, "in_shapes": [(5,)]},
    examples=(_EXAMPLE,),
    footprint=_softmax_footprint))
