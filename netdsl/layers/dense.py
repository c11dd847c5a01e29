"""Fully connected (dense) layer: flattens its input and multiplies by a (in, units) matrix."""
from __future__ import annotations

from ..core.workspace import matmul_rows
from .base import AUTO, Arg, LayerSpec, ParamSpec, fresh, numel, register
from .reduce import sum_rows
from .structure import require_set
from .footprint import Footprint, in_bytes, out_bytes

DENSE_STYLE = {"shape": "box", "style": "filled", "fillcolor": "#e2d9f3"}


def _fc_shape(attrs, in_shapes):
    require_set("fc", attrs, "units",
                "write the unit count, e.g. FC-4096 or fc(units=10); only the last FC "
                "before the loss gets it from the dataset")
    return (attrs["units"],)


def _fc_params(attrs, in_shapes):
    fan_in, units = numel(in_shapes[0]), attrs["units"]
    specs = {"weight": ParamSpec((fan_in, units), attrs["init"], fan_in=fan_in, fan_out=units)}
    if attrs["bias"]:
        specs["bias"] = ParamSpec((units,), "zeros")
    return specs


def _fc_macs(attrs, in_shapes, out_shapes):
    return numel(in_shapes[0]) * attrs["units"]


def _fc_forward(ctx, attrs, params, inputs):
    x = inputs[0]
    # Row-major flatten of NHWC matches FLATTEN, so FC on a map equals FLATTEN then FC.
    x2 = x.reshape(x.shape[0], -1)
    weight = params["weight"]
    out = fresh(ctx, (x2.shape[0], weight.shape[1]), ctx.xp.result_type(x2, weight))
    out = matmul_rows(x2, weight, out=out)   # split over the NumPy worker threads
    if "bias" in params:
        out += params["bias"]
    return out, (x.shape, x2)


def _fc_backward(ctx, attrs, params, cache, dout):
    x_shape, x2 = cache
    grads = {"weight": matmul_rows(x2.T, dout)}
    if "bias" in params:
        grads["bias"] = sum_rows(ctx.xp, dout)  # pairwise over the batch (reduce.py)
    weight = params["weight"]
    dx = fresh(ctx, (dout.shape[0], weight.shape[0]), ctx.xp.result_type(dout, weight), "dx0")
    dx = matmul_rows(dout, weight.T, out=dx).reshape(x_shape)
    return [dx], grads


def _fc_footprint(st, n, it, training, scratch=True):
    """A fresh output, the input kept; backward: the bias gradient's pairwise sum (half of
    dout) before dx."""
    x, out = in_bytes(st, n, it), out_bytes(st, n, it)
    half = (n // 2) * (out // max(n, 1)) if st.node.attrs["bias"] else 0
    return Footprint(out=out, keep_in=(0,), dx=(x,), bwd_tmp=max(half - x, 0))


register(LayerSpec(
    name="fc", doc="Fully connected layer: flattens the input, then `units` outputs.",
    aliases=("dense", "linear", "fullyconnected"),
    args=(Arg("units", "int", AUTO, doc="number of outputs", minimum=1),
          Arg("bias", "bool", True, doc="add a learned bias"),
          Arg("init", "str", "he", doc="weight initialiser", choices=("he", "glorot", "lecun"))),
    infer_shape=_fc_shape, forward=_fc_forward, backward=_fc_backward,
    params=_fc_params, macs=_fc_macs, compact=("units",), label=("units",), style=DENSE_STYLE,
    example={"attrs": {"units": 3}, "in_shapes": [(2, 2, 3)]},
    examples=({"attrs": {"units": 4, "bias": False}, "in_shapes": [(6,)]},),
    footprint=_fc_footprint))
