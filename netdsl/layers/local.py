"""Locally-connected 2-D layer (DeepFace L4–L6): a convolution whose weights are not shared,
one KH×KW×C×F filter bank per output position.

weight (Ho, Wo, KH, KW, C, F), bias (Ho, Wo, F). The forward is the conv's im2col view
(N, Ho, Wo, KH, KW, C) turned into one batched GEMM over positions: (P, N, K) @ (P, K, F) with
P = Ho·Wo, K = KH·KW·C. The backward reuses the columns for dW and scatters dcols back one
kernel offset at a time (KH·KW Python iterations).
"""
from __future__ import annotations

from .base import AUTO, Arg, LayerSpec, ParamSpec, out_size, register
from .conv import CONV_STYLE, pad_zeros, window_view
from .structure import as_pair, pair_attrs, require_set, require_spatial
from . import naive
from .footprint import Footprint, spatial_shapes

LOCAL_PAIRS = ("kernel", "stride", "pad")


def _local_shape(attrs, in_shapes):
    attrs = pair_attrs(attrs, LOCAL_PAIRS)
    h, w, c = require_spatial("local", in_shapes[0],
                              "a locally-connected layer needs a spatial map; use FC for vectors")
    require_set("local", attrs, "filters",
                "write the filter count, e.g. LOCAL(filters=16, kernel=9)")
    (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["pad"]
    return (out_size(h, kh, sh, ph, what="local"), out_size(w, kw, sw, pw, what="local"),
            attrs["filters"])


def _local_params(attrs, in_shapes):
    attrs = pair_attrs(attrs, LOCAL_PAIRS)
    ho, wo, f = _local_shape(attrs, in_shapes)
    (kh, kw), c = attrs["kernel"], in_shapes[0][-1]
    specs = {"weight": ParamSpec((ho, wo, kh, kw, c, f), attrs["init"], fan_in=kh * kw * c,
                                 fan_out=kh * kw * f)}
    if attrs["bias"]:
        specs["bias"] = ParamSpec((ho, wo, f), "zeros")
    return specs


def _local_macs(attrs, in_shapes, out_shapes):
    kh, kw = pair_attrs(attrs, LOCAL_PAIRS)["kernel"]
    ho, wo, f = out_shapes[0]
    return ho * wo * f * kh * kw * in_shapes[0][-1]


def _local_forward(ctx, attrs, params, inputs):
    xp, x = ctx.xp, inputs[0]
    attrs = pair_attrs(attrs, LOCAL_PAIRS)
    weight = params["weight"]
    ho, wo, kh, kw, c, f = weight.shape
    n = x.shape[0]
    ph, pw = attrs["pad"]
    view = window_view(xp, pad_zeros(xp, x, ph, pw), (kh, kw), attrs["stride"], (1, 1), (ho, wo))
    # (P, N, K), the batched GEMM's left operand, copied straight from the window view (one
    # copy: a reshape of the view would make a second, transient one).
    cols = xp.empty((ho * wo, n, kh * kw * c), dtype=x.dtype)
    cols.reshape(ho, wo, n, kh, kw, c)[...] = view.transpose(1, 2, 0, 3, 4, 5)
    del view            # and with it the padded copy, before the GEMM's output exists
    # The GEMM writes (P, N, F) straight into a contiguous NHWC output: no second array, and
    # the layers after it get (and give back) NHWC-contiguous tensors.
    w2 = weight.reshape(ho * wo, kh * kw * c, f)
    if getattr(xp, "__name__", "numpy") == "numpy":
        out = xp.empty((n, ho, wo, f), dtype=cols.dtype)
        xp.matmul(cols, w2, out=out.reshape(n, ho * wo, f).transpose(1, 0, 2))
    else:   # (CuPy: a GEMM into a strided output is not guaranteed; one copy instead)
        out = xp.ascontiguousarray(xp.matmul(cols, w2).transpose(1, 0, 2)).reshape(n, ho, wo, f)
    if "bias" in params:
        out += params["bias"]
    return out, (x.shape, cols)


def _local_backward(ctx, attrs, params, cache, dout):
    xp = ctx.xp
    attrs = pair_attrs(attrs, LOCAL_PAIRS)
    x_shape, cols = cache
    weight = params["weight"]
    ho, wo, kh, kw, c, f = weight.shape
    n, h, w, _ = x_shape
    (sh, sw), (ph, pw) = attrs["stride"], attrs["pad"]
    dout = dout.astype(weight.dtype, copy=False)
    grads = {}
    if "bias" in params:
        grads["bias"] = dout.sum(axis=0)
    dpos = xp.ascontiguousarray(dout.reshape(n, ho * wo, f).transpose(1, 0, 2))  # (P, N, F)
    grads["weight"] = xp.matmul(cols.transpose(0, 2, 1), dpos).reshape(weight.shape)
    if not ctx.input_grad:
        return [None], grads
    dcols = xp.matmul(dpos, weight.reshape(ho * wo, kh * kw * c, f).transpose(0, 2, 1))
    dcols = dcols.reshape(ho, wo, n, kh, kw, c)
    dx_pad = xp.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=dout.dtype)
    for a in range(kh):
        for b in range(kw):
            rows = slice(a, a + sh * (ho - 1) + 1, sh)
            cols_ = slice(b, b + sw * (wo - 1) + 1, sw)
            dx_pad[:, rows, cols_, :] += dcols[:, :, :, a, b, :].transpose(2, 0, 1, 3)
    return [dx_pad[:, ph:ph + h, pw:pw + w, :]], grads


def _local_random(rng):
    kh, kw = (int(v) for v in rng.integers(1, 4, size=2))
    sh, sw = (int(v) for v in rng.integers(1, 3, size=2))
    ph, pw = int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))
    return {"attrs": {"filters": int(rng.integers(1, 4)), "kernel": (kh, kw), "stride": (sh, sw),
                      "pad": (ph, pw), "bias": bool(rng.integers(0, 2))},
            "in_shapes": [(int(rng.integers(kh, kh + 4)), int(rng.integers(kw, kw + 4)),
                           int(rng.integers(1, 4)))]}


def _local_footprint(st, n, it, training, scratch=True):
    """Forward: the padded copy and the columns (P, N, K) (cached), then (the padded copy
    gone) the output, which the GEMM writes. Backward: the gradient as (P, N, F), the column
    gradients and the padded input gradient (the parameter gradients count on their own)."""
    a = st.node.attrs
    h, w, c, ho, wo, f = spatial_shapes(st)
    kh, kw = as_pair(a["kernel"])
    ph, pw = as_pair(a["pad"])
    padded = n * (h + 2 * ph) * (w + 2 * pw) * c * it
    cols = n * ho * wo * kh * kw * c * it
    res = n * ho * wo * f * it
    fp = Footprint(out=res, cache=cols, fwd_tmp=max((padded if (ph or pw) else 0) - res, 0))
    if st.data_only:
        fp.dx, fp.bwd_tmp = (0,), res
    else:
        fp.dx, fp.bwd_tmp = (padded,), res + cols
    return fp


register(LayerSpec(
    name="local", doc="Locally-connected 2-D layer: a convolution with separate (unshared) "
    "weights at every output position (DeepFace L4–L6).",
    aliases=("locally_connected", "locallyconnected", "locallyconnected2d", "local2d"),
    args=(Arg("filters", "int", AUTO, doc="number of output channels", minimum=1),
          Arg("kernel", "pair", (3, 3), doc="kernel size, k or KHxKW", minimum=1),
          Arg("stride", "pair", (1, 1), doc="step between windows", minimum=1),
          Arg("pad", "pair", (0, 0), doc="pixels of zero padding per side", minimum=0),
          Arg("bias", "bool", True, doc="add a learned bias per position and filter"),
          Arg("init", "str", "he", doc="weight initialiser", choices=("he", "glorot", "lecun"))),
    infer_shape=_local_shape, forward=_local_forward, backward=_local_backward,
    params=_local_params, macs=_local_macs, compact=("kernel", "filters"),
    label=("filters", "kernel", "stride"), style={**CONV_STYLE, "fillcolor": "#b6d4fe"},
    reference=naive.local,
    example={"attrs": {"filters": 2, "kernel": 2}, "in_shapes": [(3, 4, 2)]},
    examples=({"attrs": {"filters": 3, "kernel": (3, 2), "stride": 2, "pad": 1, "bias": False},
               "in_shapes": [(5, 4, 2)]},),
    random_example=_local_random,
    footprint=_local_footprint))
