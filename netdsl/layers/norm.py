"""Batch normalisation over every axis but the last (N,H,W for maps, N for vectors)."""
from __future__ import annotations

from ..core.errors import ShapeError
from .base import Arg, LayerSpec, ParamSpec, fresh, register, shape_str
from ..core.workspace import split_rows
from .reduce import channel_sums
from .base import numel
from .footprint import Footprint, in_bytes

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


def _rows(ctx, x, fn) -> None:
    """``fn(a, b)`` over ranges of the batch, split over the worker threads when large
    (workspace.split_rows): every element-wise pass of batch norm is independent per row."""
    split_rows(ctx.xp, x.shape[0], x.nbytes, fn)


def _sums(ctx, x, overwrite: bool = False):
    """Per-channel pairwise sums (reduce.py) of each worker's rows, added in row order: the
    error bound of one pairwise sum plus one addition per extra worker."""
    parts = {}

    def part(a, b):
        parts[a] = channel_sums(ctx.xp, x[a:b], overwrite=overwrite)
    _rows(ctx, x, part)
    keys = sorted(parts)
    total = parts[keys[0]]
    for k in keys[1:]:
        total = total + parts[k]
    return total


def _bn_forward(ctx, attrs, params, inputs):
    xp, x = ctx.xp, inputs[0]
    gamma, beta = params["gamma"], params["beta"]
    centred = xp.empty(x.shape, dtype=x.dtype)        # x̂ below, the cache
    out = fresh(ctx, x.shape, x.dtype)
    if ctx.training:
        # Two passes (mean, then the variance of the centred values) with pairwise sums: a
        # one-pass E[x²] − E[x]² cancels catastrophically in float32 when |mean| ≫ std.
        count = x.size // x.shape[-1]
        sums = _sums(ctx, x)
        if ctx.sync is not None:   # sync_bn: the global batch's statistics, on every rank
            (sums,), count = ctx.sync.batch_sums([sums], count)
        mean = sums / count

        def centre(a, b):
            xp.subtract(x[a:b], mean, out=centred[a:b])
            xp.multiply(centred[a:b], centred[a:b], out=out[a:b])   # scratch, then the output
        _rows(ctx, x, centre)
        squares = _sums(ctx, out, overwrite=True)
        if ctx.sync is not None:
            (squares,), _ = ctx.sync.batch_sums([squares], count)
        var = squares / count  # biased, as normalised
        m = attrs["momentum"]
        # PyTorch convention: the running variance tracks the unbiased estimate.
        unbiased = var * (count / (count - 1)) if count > 1 else var
        params["running_mean"][...] = (1 - m) * params["running_mean"] + m * mean
        params["running_var"][...] = (1 - m) * params["running_var"] + m * unbiased
    else:
        _rows(ctx, x, lambda a, b: xp.subtract(x[a:b], params["running_mean"],
                                               out=centred[a:b]))
        var = params["running_var"]
    inv_std = (1.0 / xp.sqrt(var + attrs["eps"])).astype(x.dtype, copy=False)
    xhat = centred

    def normalise(a, b):
        xhat[a:b] *= inv_std                          # in place: centred is our own temporary
        xp.multiply(xhat[a:b], gamma, out=out[a:b])
        out[a:b] += beta
    _rows(ctx, x, normalise)
    return out, (xhat, inv_std, ctx.training)


def _bn_backward(ctx, attrs, params, cache, dout):
    xp = ctx.xp
    xhat, inv_std, batch_stats = cache
    gamma = params["gamma"]
    scratch = fresh(ctx, xhat.shape, dout.dtype, "dx0")   # becomes dx
    _rows(ctx, xhat, lambda a, b: xp.multiply(dout[a:b], xhat[a:b], out=scratch[a:b]))
    # Pairwise per-channel sums: the γ/β gradients nearly cancel, and NumPy's row-by-row
    # float32 sums made a ResNet-20's gradients 10× less accurate (tests/test_float32_accuracy).
    sum_dout = _sums(ctx, dout)
    sum_dout_xhat = _sums(ctx, scratch, overwrite=True)   # scratch is reused below
    grads = {"gamma": sum_dout_xhat, "beta": sum_dout}
    if not batch_stats:  # fixed statistics: an affine map
        return [dout * (gamma * inv_std)], grads
    # Through the batch mean and variance, with dxhat = γ·dout:
    #   dx = (dxhat − mean(dxhat) − xhat·mean(dxhat·xhat))·σ⁻¹
    #      = γσ⁻¹·(dout − Σdout/M − xhat·Σ(dout·xhat)/M), in one scratch buffer.
    count = dout.size // dout.shape[-1]
    if ctx.sync is not None:   # sync_bn: through the global batch's mean and variance
        (sum_dout_xhat, sum_dout), count = ctx.sync.batch_sums([sum_dout_xhat, sum_dout], count,
                                                               grads=True)
    k_xhat, k_mean, k_out = sum_dout_xhat / count, sum_dout / count, gamma * inv_std
    dx = scratch

    def through(a, b):
        d = dx[a:b]
        xp.multiply(xhat[a:b], k_xhat, out=d)
        d += k_mean
        xp.subtract(dout[a:b], d, out=d)
        d *= k_out
    _rows(ctx, xhat, through)
    return [dx], grads


def _bn_footprint(st, n, it, training, scratch=True):
    """Forward: the pairwise sum of x folds into a half-size buffer; x − μ becomes x̂ (the
    cache) in place and the output is the variance's scratch. Backward: dx is the scratch of
    Σ dout·x̂, and Σ dout needs a half-size buffer (layers/reduce.py)."""
    x = in_bytes(st, n, it)
    half = (n * numel(st.node.in_shapes[0][:-1]) // 2) * st.node.in_shapes[0][-1] * it
    return Footprint(out=x, fwd_tmp=half if training else 0, cache=x, bwd_tmp=half, dx=(x,))


register(LayerSpec(
    name="batchnorm", doc="Batch normalisation with learned scale/shift and running statistics.",
    aliases=("bn", "batchnorm2d", "batch_norm"),
    args=(Arg("eps", "float", 1e-5, doc="added to the variance", minimum=0),
          Arg("momentum", "float", 0.1, doc="weight of the batch in the running stats",
              minimum=0)),
    infer_shape=_bn_shape, forward=_bn_forward, backward=_bn_backward, params=_bn_params,
    style=NORM_STYLE, example={"attrs": {}, "in_shapes": [(3, 3, 2)]},
    examples=({"attrs": {}, "in_shapes": [(5,)]},),
    footprint=_bn_footprint))
