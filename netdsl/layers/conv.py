"""2-D convolution on NHWC tensors: im2col through a strided view, then one GEMM per group.

Why this shape of algorithm: with NHWC input, a strided view of the padded input indexed
(N, Ho, Wo, KH, KW, C) reshapes to the im2col matrix (N·Ho·Wo, KH·KW·C) with a single copy, and
the product with the (KH·KW·C, F) weight matrix *is* the NHWC output — no transposes. The
backward pass reuses the same columns for dW (colsᵀ @ dout) and scatters dcols = dout @ Wᵀ back
one kernel offset at a time (KH·KW Python iterations, never one per pixel or example).
"""
from __future__ import annotations

from ..errors import ShapeError
from .base import AUTO, Arg, LayerSpec, ParamSpec, out_size, register
from .reduce import sum_rows
from .structure import pair_attrs, require_set, require_spatial
from . import naive

CONV_STYLE = {"shape": "box", "style": "filled", "fillcolor": "#cfe2ff"}


PAIR_ARGS = ("kernel", "stride", "pad", "dilation")


def conv_padding(attrs) -> tuple[int, int]:
    """The (pad_h, pad_w) a conv uses: 'same' = symmetric (dilation·(k−1))/2, 'valid' = 0."""
    attrs = pair_attrs(attrs, PAIR_ARGS)
    pad = attrs["pad"]
    if pad == "valid":
        return (0, 0)
    if pad != "same":
        return tuple(pad)
    pads = []
    for k, d in zip(attrs["kernel"], attrs["dilation"]):
        k_eff = d * (k - 1) + 1
        if k_eff % 2 == 0:
            raise ShapeError(
                f"conv: pad='same' cannot centre an even kernel (k={k}"
                + (f", dilated to {k_eff}" if d > 1 else "") + ")",
                detail=f"'same' needs (k_eff − 1)/2 = {k_eff - 1}/2 pixels on each side",
                hint="give the padding explicitly, e.g. pad=0 or pad=1")
        pads.append((k_eff - 1) // 2)
    return tuple(pads)


def _conv_shape(attrs, in_shapes):
    attrs = pair_attrs(attrs, PAIR_ARGS)
    h, w, c = require_spatial("conv", in_shapes[0],
                              "a conv needs a spatial map; use FC for flat inputs")
    require_set("conv", attrs, "filters",
                "write the filter count, e.g. CONV3-64 or conv(filters=64)")
    groups, filters = attrs["groups"], attrs["filters"]
    if c % groups:
        raise ShapeError(f"conv: {c} input channels are not divisible by groups={groups}",
                         detail=f"{c} mod {groups} = {c % groups}",
                         hint="pick groups that divides the input channels")
    if filters % groups:
        raise ShapeError(f"conv: {filters} filters are not divisible by groups={groups}",
                         detail=f"{filters} mod {groups} = {filters % groups}",
                         hint="pick groups that divides the filter count")
    *_, (ho, wo) = _geometry(attrs, (1, h, w, c))
    return (ho, wo, filters)


def _conv_params(attrs, in_shapes):
    attrs = pair_attrs(attrs, PAIR_ARGS)
    c = in_shapes[0][-1]
    (kh, kw), groups, filters = attrs["kernel"], attrs["groups"], attrs["filters"]
    cg = c // groups
    specs = {"weight": ParamSpec((kh, kw, cg, filters), attrs["init"],
                                 fan_in=kh * kw * cg, fan_out=kh * kw * filters // groups)}
    if attrs["bias"]:
        specs["bias"] = ParamSpec((filters,), "zeros")
    return specs


def _conv_macs(attrs, in_shapes, out_shapes):
    attrs = pair_attrs(attrs, PAIR_ARGS)
    ho, wo, filters = out_shapes[0]
    kh, kw = attrs["kernel"]
    return ho * wo * filters * kh * kw * (in_shapes[0][-1] // attrs["groups"])


def _geometry(attrs, x_shape):
    """Kernel, stride, dilation, padding and output size for an (N, H, W, C) input: the one
    place conv geometry is computed, for shape inference and for the kernels alike."""
    attrs = pair_attrs(attrs, PAIR_ARGS)
    n, h, w, c = x_shape
    (kh, kw), (sh, sw), (dh, dw) = attrs["kernel"], attrs["stride"], attrs["dilation"]
    ph, pw = conv_padding(attrs)
    rounding = attrs.get("round")      # exact refuses a partial window; AUTO floors
    ho = out_size(h, kh, sh, ph, dh, what="conv", rounding=rounding)
    wo = out_size(w, kw, sw, pw, dw, what="conv", rounding=rounding)
    return (kh, kw), (sh, sw), (dh, dw), (ph, pw), (ho, wo)


def _pad(xp, x, ph, pw):
    if ph == 0 and pw == 0:
        return x
    return xp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))


def _window_view(xp, xpad, kernel, stride, dilation, out_hw):
    """(N, Ho, Wo, KH, KW, C) view of the padded input: element [n,i,j,a,b,c] is the pixel
    under kernel offset (a, b) of output position (i, j)."""
    n, _, _, c = xpad.shape
    s_n, s_h, s_w, s_c = xpad.strides
    return xp.lib.stride_tricks.as_strided(
        xpad, shape=(n, out_hw[0], out_hw[1], kernel[0], kernel[1], c),
        strides=(s_n, s_h * stride[0], s_w * stride[1], s_h * dilation[0], s_w * dilation[1], s_c))


def im2col(xp, attrs, x):
    """The (N·Ho·Wo, KH·KW·C) column matrix of a single-group conv on ``x``: what forward
    multiplies by the weights and caches. A plan that keeps only ``x`` rebuilds it for backward."""
    kernel, stride, dilation, (ph, pw), (ho, wo) = _geometry(attrs, x.shape)
    view = _window_view(xp, _pad(xp, x, ph, pw), kernel, stride, dilation, (ho, wo))
    return view.reshape(x.shape[0] * ho * wo, -1)


def _conv_forward(ctx, attrs, params, inputs):
    xp, x = ctx.xp, inputs[0]
    kernel, stride, dilation, (ph, pw), (ho, wo) = _geometry(attrs, x.shape)
    n, c = x.shape[0], x.shape[3]
    groups, weight = attrs["groups"], params["weight"]
    filters = weight.shape[3]
    rows = n * ho * wo
    view = _window_view(xp, _pad(xp, x, ph, pw), kernel, stride, dilation, (ho, wo))
    if groups == 1:
        cols = view.reshape(rows, -1)  # the one im2col copy (a free view for 1×1/stride-1)
        out = cols @ weight.reshape(-1, filters)
    else:
        cg, fg = c // groups, filters // groups
        cols = []
        out = xp.empty((rows, filters), dtype=x.dtype)
        for g in range(groups):
            cols.append(view[..., g * cg:(g + 1) * cg].reshape(rows, -1))
            w_g = weight[..., g * fg:(g + 1) * fg].reshape(-1, fg)
            out[:, g * fg:(g + 1) * fg] = cols[g] @ w_g
    if "bias" in params:
        out += params["bias"]
    return out.reshape(n, ho, wo, filters), (x.shape, cols)


def _col2im_gemm(xp, dout_g, weight_g, x_shape, attrs, channels: slice, dx_pad):
    """dx_pad[..., channels] += col2im(dout_g @ weight_gᵀ), one kernel offset at a time.

    Why per offset: the (N·Ho·Wo, Cg) block of dcols that belongs to offset (a, b) is
    dout_g @ weight_g[a, b]ᵀ. Computing it as its own contiguous GEMM result and adding it to a
    shifted window of dx is ~2× faster than forming the whole dcols matrix and then adding its
    strided (a, b) slices, with the same FLOPs and 1/(KH·KW) of the temporary memory.
    """
    (kh, kw), (sh, sw), (dh, dw), _, (ho, wo) = _geometry(attrs, x_shape)
    n = x_shape[0]
    block = xp.empty((dout_g.shape[0], weight_g.shape[2]), dtype=dx_pad.dtype)
    for a in range(kh):
        for b in range(kw):
            xp.matmul(dout_g, weight_g[a, b].T, out=block)
            rows = slice(a * dh, a * dh + sh * (ho - 1) + 1, sh)
            cols = slice(b * dw, b * dw + sw * (wo - 1) + 1, sw)
            dx_pad[:, rows, cols, channels] += block.reshape(n, ho, wo, -1)


def _conv_backward(ctx, attrs, params, cache, dout):
    xp = ctx.xp
    x_shape, cols = cache
    n, h, w, c = x_shape
    kernel, stride, _, (ph, pw), (ho, wo) = _geometry(attrs, x_shape)
    weight, groups = params["weight"], attrs["groups"]
    filters = weight.shape[3]
    dout2 = dout.reshape(n * ho * wo, filters)
    if dout2.dtype != weight.dtype:
        dout2 = dout2.astype(weight.dtype)
    grads = {}
    if "bias" in params:
        grads["bias"] = sum_rows(xp, dout2)  # pairwise: N·Ho·Wo rows (reduce.py)
    if not ctx.input_grad:
        # The input is the data itself: only the parameters need gradients.
        if groups == 1:
            grads["weight"] = (cols.T @ dout2).reshape(weight.shape)
            return [None], grads
        cg, fg = c // groups, filters // groups
        grads["weight"] = xp.concatenate(
            [(cols[g].T @ dout2[:, g * fg:(g + 1) * fg]).reshape(*kernel, cg, fg)
             for g in range(groups)], axis=3)
        return [None], grads
    if groups == 1 and kernel == (1, 1) and stride == (1, 1) and (ph, pw) == (0, 0):
        # Pointwise: the columns were the input itself, so dcols is dx with no scatter.
        grads["weight"] = (cols.T @ dout2).reshape(weight.shape)
        return [(dout2 @ weight.reshape(c, filters).T).reshape(x_shape)], grads
    dx_pad = xp.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=dout2.dtype)
    if groups == 1:
        grads["weight"] = (cols.T @ dout2).reshape(weight.shape)
        _col2im_gemm(xp, dout2, weight, x_shape, attrs, slice(None), dx_pad)
    else:
        cg, fg = c // groups, filters // groups
        dweight = xp.empty_like(weight)
        for g in range(groups):
            fs = slice(g * fg, (g + 1) * fg)
            dout_g = dout2[:, fs]
            dweight[..., fs] = (cols[g].T @ dout_g).reshape(kernel[0], kernel[1], cg, fg)
            _col2im_gemm(xp, dout_g, weight[..., fs], x_shape, attrs,
                         slice(g * cg, (g + 1) * cg), dx_pad)
        grads["weight"] = dweight
    dx = dx_pad[:, ph:ph + h, pw:pw + w, :] if (ph or pw) else dx_pad
    return [dx], grads


def _conv_random(rng):
    """Random valid conv arguments: kernels, strides, pads, dilations and groups."""
    k = tuple(int(v) for v in rng.integers(1, 4, size=2))
    d = tuple(int(v) for v in rng.integers(1, 3, size=2))
    groups = int(rng.choice([1, 2, 3]))
    pad = "same" if all(dd * (kk - 1) % 2 == 0 for kk, dd in zip(k, d)) and rng.integers(0, 2) \
        else tuple(int(rng.integers(0, 3)) for _ in k)
    hw = tuple(int(rng.integers(dd * (kk - 1) + 1, dd * (kk - 1) + 5)) for kk, dd in zip(k, d))
    return {"attrs": {"filters": groups * int(rng.integers(1, 3)), "kernel": k, "dilation": d,
                      "stride": tuple(int(v) for v in rng.integers(1, 3, size=2)), "pad": pad,
                      "groups": groups, "bias": bool(rng.integers(0, 2))},
            "in_shapes": [hw + (groups * int(rng.integers(1, 3)),)]}


register(LayerSpec(
    name="conv", doc="2-D convolution (NHWC): `filters` kernels of size `kernel`, with bias.",
    aliases=("conv2d", "convolution"),
    args=(Arg("filters", "int", AUTO, doc="number of output channels", minimum=1),
          Arg("kernel", "pair", (3, 3), doc="kernel size, k or KHxKW", minimum=1),
          Arg("stride", "pair", (1, 1), doc="step between windows", minimum=1),
          Arg("pad", "pair", "same", doc="'same', 'valid', or pixels per side",
              choices=("same", "valid"), minimum=0),
          Arg("dilation", "pair", (1, 1), doc="spacing between kernel taps", minimum=1),
          Arg("groups", "int", 1, doc="channel groups (depthwise when = channels)", minimum=1),
          Arg("bias", "bool", True, doc="add a learned per-filter bias"),
          Arg("init", "str", "he", doc="weight initialiser", choices=("he", "glorot", "lecun")),
          # AUTO: the file's ROUND (default exact). No framework rounds convolutions up.
          Arg("round", "str", AUTO, doc="output size not whole: exact (error) or floor",
              choices=("exact", "floor"))),
    infer_shape=_conv_shape, forward=_conv_forward, backward=_conv_backward,
    params=_conv_params, macs=_conv_macs, compact=("kernel", "filters"),
    label=("filters", "kernel", "stride", "dilation", "groups"), style=CONV_STYLE,
    reference=naive.conv, random_example=_conv_random,
    example={"attrs": {"filters": 4, "kernel": 3}, "in_shapes": [(5, 5, 3)]},
    examples=({"attrs": {"filters": 4, "kernel": 3, "groups": 2, "stride": 2, "pad": 1},
               "in_shapes": [(5, 4, 4)]},
              {"attrs": {"filters": 2, "kernel": (3, 2), "dilation": 2, "pad": "valid"},
               "in_shapes": [(6, 5, 2)]})))
