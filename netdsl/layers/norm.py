"""Batch normalisation over every axis but the last (N,H,W for maps, N for vectors)."""
from __future__ import annotations

from ..errors import ShapeError
from .base import Arg, LayerSpec, ParamSpec, register, shape_str

NORM_STYLE = {"shape": "box", "style": "filled", "fillcolor": "#ffe5d0"}


def _bn_shape(attrs, in_shapes):
    shape = tuple(in_shapes[0])
    if len(shape) not in (1, 3):
        raise ShapeError("batchnorm needs an H×W×C map or a feature vector, "
                         f"got {shape_str(shape)}")
    return shape


def _bn_params(attrs, in_shapes):
    c = in_shapes[0][-1]
    return {"gamma": ParamSpec((c,), "ones"), "beta": ParamSpec((c,), "zeros"),
            "running_mean": ParamSpec((c,), "zeros", trainable=False),
            "running_var": ParamSpec((c,), "ones", trainable=False)}


def _bn_forward(ctx, attrs, params, inputs):
    xp, x = ctx.xp, inputs[0]
    axes = tuple(range(x.ndim - 1))
    gamma, beta = params["gamma"], params["beta"]
    if ctx.training:
        mean = x.mean(axis=axes)
        centred = x - mean
        var = (centred * centred).mean(axis=axes)  # biased: what normalises the batch
        count = x.size // x.shape[-1]
        m = attrs["momentum"]
        # PyTorch convention: the running variance tracks the unbiased estimate.
        unbiased = var * (count / (count - 1)) if count > 1 else var
        params["running_mean"][...] = (1 - m) * params["running_mean"] + m * mean
        params["running_var"][...] = (1 - m) * params["running_var"] + m * unbiased
    else:
        centred = x - params["running_mean"]
        var = params["running_var"]
    inv_std = 1.0 / xp.sqrt(var + attrs["eps"])
    xhat = centred * inv_std
    out = xhat * gamma + beta
    return out, (xhat, inv_std, ctx.training)


def _bn_backward(ctx, attrs, params, cache, dout):
    xhat, inv_std, batch_stats = cache
    axes = tuple(range(dout.ndim - 1))
    gamma = params["gamma"]
    grads = {"gamma": (dout * xhat).sum(axis=axes), "beta": dout.sum(axis=axes)}
    dxhat = dout * gamma
    if not batch_stats:  # fixed statistics: an affine map
        return [dxhat * inv_std], grads
    # Through the batch mean and variance: dx = (dxhat − mean(dxhat) − xhat·mean(dxhat·xhat))/σ
    dx = (dxhat - dxhat.mean(axis=axes) - xhat * (dxhat * xhat).mean(axis=axes)) * inv_std
    return [dx], grads


register(LayerSpec(
    name="batchnorm", doc="Batch normalisation with learned scale/shift and running statistics.",
    aliases=("bn", "batchnorm2d", "batch_norm"),
    args=(Arg("eps", "float", 1e-5, doc="added to the variance", minimum=0),
          Arg("momentum", "float", 0.1, doc="weight of the batch in the running stats",
              minimum=0)),
    infer_shape=_bn_shape, forward=_bn_forward, backward=_bn_backward, params=_bn_params,
    style=NORM_STYLE, example={"attrs": {}, "in_shapes": [(3, 3, 2)]},
    examples=({"attrs": {}, "in_shapes": [(5,)]},)))
