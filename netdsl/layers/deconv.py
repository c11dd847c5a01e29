"""Transposed convolution ("deconvolution", U-Net's up-conv, learnable upsampling).

Every input pixel (i, j) adds x[i, j] · W[a, b] at output (i·s − p + a·d, j·s − p + b·d): the
adjoint of a convolution with the same kernel, stride, pad and dilation, so

    O = (I − 1)·S − 2P + D·(K − 1) + output_padding + 1.

weight (KH, KW, C/groups, F), the conv layout (PyTorch's ConvTranspose2d weight[c, f, a, b] is
our weight[a, b, c % Cg, g·Fg + f]). Forward is one GEMM per group, (N·H·W, Cg) @ (Cg, KH·KW·Fg),
then a col2im scatter over the KH·KW kernel offsets; backward is the conv's im2col view of the
output gradient times W (dx) and xᵀ times the same columns (dW).
"""
from __future__ import annotations

from ..core.errors import ShapeError
from .base import REQUIRED, Arg, LayerSpec, ParamSpec, register
from .conv import CONV_STYLE, window_view
from .geometry import DECONV_PAIRS, deconv_out_hw
from .structure import as_pair, pair_attrs, require_spatial
from . import naive
from .footprint import Footprint, spatial_shapes

def _deconv_shape(attrs, in_shapes):
    h, w, c = require_spatial("deconv", in_shapes[0],
                              "a transposed conv upsamples a spatial map; it cannot follow FC")
    groups, filters = attrs["groups"], attrs["filters"]
    for what, count in (("input channels", c), ("filters", filters)):
        if count % groups:
            raise ShapeError(f"deconv: {count} {what} are not divisible by groups={groups}",
                             detail=f"{count} mod {groups} = {count % groups}",
                             hint=f"pick groups that divides the {what}")
    return deconv_out_hw(attrs, (h, w)) + (filters,)


def _deconv_params(attrs, in_shapes):
    (kh, kw), c = pair_attrs(attrs, DECONV_PAIRS)["kernel"], in_shapes[0][-1]
    groups, filters = attrs["groups"], attrs["filters"]
    # PyTorch's fans for ConvTranspose2d (its weight is C × F/groups × KH × KW): fan_in =
    # F/groups·KH·KW, fan_out = C·KH·KW, so he/glorot scales match a PyTorch model's.
    specs = {"weight": ParamSpec((kh, kw, c // groups, filters), attrs["init"],
                                 fan_in=kh * kw * filters // groups, fan_out=kh * kw * c)}
    if attrs["bias"]:
        specs["bias"] = ParamSpec((filters,), "zeros")
    return specs


def _deconv_macs(attrs, in_shapes, out_shapes):
    h, w, c = in_shapes[0]
    kh, kw = pair_attrs(attrs, DECONV_PAIRS)["kernel"]
    return h * w * c * kh * kw * attrs["filters"] // attrs["groups"]


def _geometry(attrs, x_shape):
    attrs = pair_attrs(attrs, DECONV_PAIRS)
    ho, wo = deconv_out_hw(attrs, x_shape[1:3])
    ph, pw = attrs["pad"]
    return attrs, (ho, wo), (ho + 2 * ph, wo + 2 * pw)


def _deconv_forward(ctx, attrs, params, inputs):
    xp, x = ctx.xp, inputs[0]
    attrs, (ho, wo), (hf, wf) = _geometry(attrs, x.shape)
    n, h, w, c = x.shape
    weight, groups = params["weight"], attrs["groups"]
    kh, kw, cg, f = weight.shape
    fg = f // groups
    (sh, sw), (dh, dw), (ph, pw) = attrs["stride"], attrs["dilation"], attrs["pad"]
    full = xp.zeros((n, hf, wf, f), dtype=x.dtype)
    rows = x.reshape(n * h * w, c)
    for g in range(groups):
        w_g = weight[..., g * fg:(g + 1) * fg].transpose(2, 0, 1, 3).reshape(cg, -1)
        cols = (rows[:, g * cg:(g + 1) * cg] @ w_g).reshape(n, h, w, kh, kw, fg)
        for a in range(kh):
            for b in range(kw):
                # The canvas is O + 2P = (I − 1)·S + D·(K − 1) + output_padding + 1 tall, so
                # every offset's strided rows fit.
                full[:, a * dh:a * dh + sh * (h - 1) + 1:sh, b * dw:b * dw + sw * (w - 1) + 1:sw,
                     g * fg:(g + 1) * fg] += cols[:, :, :, a, b, :]
        del cols, w_g   # one group's temporaries at a time (the planner counts one)
    out = full[:, ph:ph + ho, pw:pw + wo, :]
    if "bias" in params:
        out = out + params["bias"]
    return out, (x,)


def _deconv_backward(ctx, attrs, params, cache, dout):
    xp = ctx.xp
    (x,) = cache
    attrs, (ho, wo), (hf, wf) = _geometry(attrs, x.shape)
    n, h, w, c = x.shape
    weight, groups = params["weight"], attrs["groups"]
    kh, kw, cg, f = weight.shape
    fg = f // groups
    (ph, pw) = attrs["pad"]
    dout = dout.astype(weight.dtype, copy=False)
    grads = {}
    if "bias" in params:
        grads["bias"] = dout.sum(axis=(0, 1, 2))
    # The gradient on the full canvas, zeros where the output was cropped by the padding.
    canvas = xp.zeros((n, hf, wf, f), dtype=dout.dtype)
    canvas[:, ph:ph + ho, pw:pw + wo, :] = dout
    view = window_view(xp, canvas, (kh, kw), attrs["stride"], attrs["dilation"], (h, w))
    dx = xp.empty(x.shape, dtype=dout.dtype) if ctx.input_grad else None
    dweight = xp.empty_like(weight)
    x_rows = x.reshape(n * h * w, c)
    for g in range(groups):
        fs, cs = slice(g * fg, (g + 1) * fg), slice(g * cg, (g + 1) * cg)
        cols = view[..., fs].reshape(n * h * w, kh * kw * fg)           # one im2col copy
        dw_g = x_rows[:, cs].T @ cols                                     # (Cg, KH·KW·Fg)
        dweight[..., fs] = dw_g.reshape(cg, kh, kw, fg).transpose(1, 2, 0, 3)
        del dw_g
        if dx is not None:
            w_g = weight[..., fs].transpose(0, 1, 3, 2).reshape(-1, cg)  # (KH·KW·Fg, Cg)
            if groups == 1:     # straight into dx: no (N·H·W, C) temporary
                xp.matmul(cols, w_g, out=dx.reshape(n * h * w, c))
            else:
                dx[..., cs] = (cols @ w_g).reshape(n, h, w, cg)
            del w_g
        del cols        # one group's temporaries at a time (the planner counts one)
    grads["weight"] = dweight
    return [dx], grads


def _deconv_random(rng):
    k = [int(v) for v in rng.integers(1, 4, size=2)]
    s = [int(v) for v in rng.integers(1, 4, size=2)]
    d = [int(v) for v in rng.integers(1, 3, size=2)]
    p = [int(rng.integers(0, dd * (kk - 1) // 2 + 1)) for kk, dd in zip(k, d)]  # keeps O ≥ 2
    op = [int(rng.integers(0, max(ss, dd))) for ss, dd in zip(s, d)]
    groups = int(rng.choice([1, 2]))
    return {"attrs": {"filters": 2 * int(rng.integers(1, 3)), "kernel": tuple(k),
                      "stride": tuple(s), "pad": tuple(p), "dilation": tuple(d),
                      "output_padding": tuple(op), "groups": groups,
                      "bias": bool(rng.integers(0, 2))},
            "in_shapes": [(int(rng.integers(2, 5)), int(rng.integers(2, 5)), 2 * groups)]}


def _deconv_footprint(st, n, it, training, scratch=True):
    """Forward: the full canvas, one group's GEMM result and weight copy at a time, then the
    output with its bias (without one the output is a view of the canvas). The cache keeps
    the input. Backward: the canvas of the gradient, one group's columns, its weight-gradient
    block, then its weight copy (and, with groups, its d(input) block)."""
    a = st.node.attrs
    h, w, c, ho, wo, f = spatial_shapes(st)
    kh, kw = as_pair(a["kernel"])
    ph, pw = as_pair(a["pad"])
    g = a["groups"]
    canvas = n * (ho + 2 * ph) * (wo + 2 * pw) * f * it
    out = n * ho * wo * f * it
    cols = n * h * w * kh * kw * (f // g) * it
    wg = kh * kw * (c // g) * (f // g) * it
    if a["bias"]:
        fp = Footprint(out=out, fwd_tmp=canvas + max(wg + cols, out) - out, keep_in=(0,))
    else:
        fp = Footprint(out=canvas, fwd_tmp=wg + cols, keep_in=(0,))
    if st.data_only:
        fp.dx, fp.bwd_tmp = (0,), canvas + cols + wg
    else:
        block = n * h * w * (c // g) * it if g > 1 else 0
        fp.dx, fp.bwd_tmp = (n * h * w * c * it,), canvas + cols + wg + block
    return fp


register(LayerSpec(
    name="deconv", doc="Transposed convolution (learnable upsampling, U-Net's up-conv): "
    "O = (I − 1)·S − 2P + D·(K − 1) + output_padding + 1.",
    aliases=("convtranspose", "conv_transpose", "convtranspose2d", "transposed_conv",
             "transposedconv", "upconv", "up_conv", "deconvolution"),
    args=(Arg("filters", "int", REQUIRED, doc="number of output channels", minimum=1),
          Arg("kernel", "pair", (2, 2), doc="kernel size, k or KHxKW", minimum=1),
          Arg("stride", "pair", (2, 2), doc="upsampling factor (input step)", minimum=1),
          Arg("pad", "pair", (0, 0), doc="pixels cropped from each side of the output",
              minimum=0),
          Arg("output_padding", "pair", (0, 0), doc="extra rows/cols on the bottom/right to "
              "reach an exact size (< stride)", minimum=0),
          Arg("dilation", "pair", (1, 1), doc="spacing between kernel taps", minimum=1),
          Arg("groups", "int", 1, doc="channel groups", minimum=1),
          Arg("bias", "bool", True, doc="add a learned per-filter bias"),
          Arg("init", "str", "he", doc="weight initialiser", choices=("he", "glorot", "lecun"))),
    infer_shape=_deconv_shape, forward=_deconv_forward, backward=_deconv_backward,
    params=_deconv_params, macs=_deconv_macs, compact=("kernel", "filters"),
    label=("filters", "kernel", "stride"), style={**CONV_STYLE, "fillcolor": "#9ec5fe"},
    reference=naive.deconv,
    example={"attrs": {"filters": 2}, "in_shapes": [(2, 3, 3)]},
    examples=({"attrs": {"filters": 3, "kernel": 3, "stride": 2, "pad": 1, "output_padding": 1},
               "in_shapes": [(3, 2, 2)]},
              {"attrs": {"filters": 4, "kernel": 3, "stride": 1, "pad": 1, "groups": 2,
                         "dilation": 2}, "in_shapes": [(3, 3, 4)]},
              {"attrs": {"filters": 2, "kernel": (3, 2), "stride": (3, 1), "output_padding": (2, 0),
                         "bias": False}, "in_shapes": [(2, 3, 1)]}),
    random_example=_deconv_random,
    footprint=_deconv_footprint))
