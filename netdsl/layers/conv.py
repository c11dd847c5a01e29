"""2-D convolution on NHWC tensors: im2col through a strided view, then one GEMM per group.

Why this shape of algorithm: with NHWC input, a strided view of the padded input indexed
(N, Ho, Wo, KH, KW, C) reshapes to the im2col matrix (N·Ho·Wo, KH·KW·C) with a single copy, and
the product with the (KH·KW·C, F) weight matrix *is* the NHWC output — no transposes.

With the executor's Scratch region (ctx.scratch) a single-group conv never makes the whole
matrix: it gathers ~2 MB chunks of images' columns and multiplies each at once, in cache, the
chunks split over the worker threads (layers/im2col.py); backward rebuilds the columns the same
way from the kept input for dW, and computes d(input) as the plan chose from the shapes
(:func:`dx_method`): a forward-style convolution of the padded dout with the flipped weights,
one GEMM per kernel offset scattered into dx, or dout @ Wᵀ for 1×1 (layers/conv_kernels.py).
A following ReLU can be fused into the kernel (the plan does so): applied per chunk, and its
mask applied per chunk of dout in backward. Without scratch (ctx.scratch None: the numerics
walker, a test calling the layer) the columns are one fresh array, cached.
"""
from __future__ import annotations

from ..core.errors import ShapeError
from .base import AUTO, Arg, LayerSpec, ParamSpec, fresh, register, temp
from .im2col import (chunk_images, chunk_workers, gather_columns, image_chunks,  # noqa: F401
                     pad_into, pad_zeros, padded_temp, run_chunks, window_view)
from .conv_kernels import backward_chunked, col2im_gemm, fwdconv_view, mm_rows, mm_tn_rows
from .geometry import PAIR_ARGS, conv_geometry, conv_is_pointwise, conv_padding
from .im2col import backward_chunk_images
from .reduce import sum_rows
from .structure import as_pair, pair_attrs, require_set, require_spatial
from . import naive
from .footprint import Footprint, aligned, iter_buffer, spatial_shapes
from ..core.workspace import workers

CONV_STYLE = {"shape": "box", "style": "filled", "fillcolor": "#cfe2ff"}


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
    *_, (ho, wo) = conv_geometry(attrs, (1, h, w, c))
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


def im2col(xp, attrs, x):
    """The (N·Ho·Wo, KH·KW·C) column matrix of a single-group conv on ``x`` (fresh memory):
    what forward multiplies by the weights."""
    kernel, stride, dilation, (ph, pw), (ho, wo) = conv_geometry(attrs, x.shape)
    view = window_view(xp, pad_zeros(xp, x, ph, pw), kernel, stride, dilation, (ho, wo))
    return view.reshape(x.shape[0] * ho * wo, -1)


def dx_method(attrs, x_shape) -> str:
    """How the NumPy conv computes d(input) for an (…, H, W, C) input, chosen from the shapes
    alone (the plan records it in ``Step.meta['dx']``, the kernel recomputes the same answer):

    * ``pointwise``: 1×1, stride 1, no padding: dx = dout @ Wᵀ, no scatter;
    * ``fwdconv``: stride 1, one group, padding at most the kernel's reach, and the input not
      much larger than the output ('same'-like): dx is the forward convolution of the
      (k−1)·d−p padded dout with the flipped, transposed weights — gathers and GEMMs with
      K = KH·KW·F, chunk by chunk, into a fresh contiguous dx;
    * ``offsets``: otherwise (strides, groups, 'valid' convs whose padded dout would be mostly
      zeros): one GEMM per kernel offset added into a shifted window of the padded dx.
    """
    attrs = pair_attrs(attrs, PAIR_ARGS)
    h, w = x_shape[-3], x_shape[-2]
    kernel, stride, dilation, pads, (ho, wo) = conv_geometry(attrs, (1, h, w, x_shape[-1]))
    if attrs["groups"] == 1 and kernel == (1, 1) and stride == (1, 1) and pads == (0, 0):
        return "pointwise"
    reach_ok = all((k - 1) * d >= p for k, d, p in zip(kernel, dilation, pads))
    if (attrs["groups"] == 1 and stride == (1, 1) and reach_ok
            and 4 * h * w <= 5 * ho * wo):
        return "fwdconv"
    return "offsets"


def _conv_forward(ctx, attrs, params, inputs, relu: bool = False):
    xp, x = ctx.xp, inputs[0]
    kernel, stride, dilation, pads, (ho, wo) = conv_geometry(attrs, x.shape)
    n, c = x.shape[0], x.shape[3]
    groups, weight = attrs["groups"], params["weight"]
    filters = weight.shape[3]
    rows = n * ho * wo
    pointwise = kernel == (1, 1) and stride == (1, 1) and pads == (0, 0)
    if groups == 1 and ctx.scratch is not None and not pointwise:
        # Columns gathered chunk by chunk into scratch, each multiplied at once; backward
        # rebuilds them from the input, which is what the cache keeps.
        xpad = padded_temp(ctx, x, *pads, fill=False)   # each worker pads its own images
        view = window_view(xp, xpad, kernel, stride, dilation, (ho, wo))
        chunks = image_chunks(n, chunk_images(n, ho * wo * kernel[0] * kernel[1] * c * x.itemsize))
        bufs = [temp(ctx, (chunks[0][1],) + view.shape[1:], x.dtype)
                for _ in range(chunk_workers(ctx, chunks))]
        out = fresh(ctx, (rows, filters), x.dtype)
        wm, bias = weight.reshape(-1, filters), params.get("bias")

        def body(k, share):
            for i, j in share:
                pad_into(xpad, x, i, j, *pads)
                o = out[i * ho * wo:j * ho * wo]
                xp.matmul(gather_columns(view, i, j, bufs[k]), wm, out=o)
                if bias is not None:
                    o += bias        # while the block is in cache
                if relu:
                    xp.maximum(o, 0, out=o)
        run_chunks(ctx, chunks, body)
        keep = (None, x)
    elif groups == 1:   # fresh columns (a free view when pointwise), cached
        cols = im2col(xp, attrs, x)
        out = mm_rows(ctx, cols, weight.reshape(-1, filters),
                      out=fresh(ctx, (rows, filters), x.dtype))
        keep = (cols, None)
    else:
        view = window_view(xp, padded_temp(ctx, x, *pads), kernel, stride, dilation, (ho, wo))
        cg, fg = c // groups, filters // groups
        cols = []
        out = fresh(ctx, (rows, filters), x.dtype)
        for g in range(groups):
            cols.append(view[..., g * cg:(g + 1) * cg].reshape(rows, -1))  # fresh: cached
            w_g = weight[..., g * fg:(g + 1) * fg].reshape(-1, fg)
            xp.matmul(cols[g], w_g, out=out[:, g * fg:(g + 1) * fg])
        keep = (cols, None)
    if keep[1] is None:   # (the chunk loop did both already)
        if "bias" in params:
            out += params["bias"]
        if relu:
            xp.maximum(out, 0, out=out)
    out = out.reshape(n, ho, wo, filters)
    return out, (x.shape,) + keep + ((out,) if relu else ())


def _conv_relu_forward(ctx, attrs, params, inputs):
    """conv + bias + ReLU in one kernel (the plan's fused activation for a NumPy conv): the
    ReLU runs on each chunk while it is in cache; the cache adds the output (its mask)."""
    return _conv_forward(ctx, attrs, params, inputs, relu=True)


def _conv_relu_backward(ctx, attrs, params, cache, dout):
    """Backward of :func:`_conv_relu_forward`: where the columns are rebuilt chunk by chunk
    (and dx is by fwdconv or not needed), each chunk of dout is masked, summed for the bias and
    used in cache; otherwise dout is masked whole first and the conv's backward runs."""
    x_shape, cols, x, out = cache
    method = dx_method(attrs, x_shape) if ctx.input_grad else None
    if cols is None and attrs["groups"] == 1 and method in (None, "fwdconv"):
        return _conv_backward(ctx, attrs, params, (x_shape, cols, x), dout, relu_out=out)
    xp = ctx.xp
    mark = ctx.scratch.mark() if ctx.scratch is not None else 0
    mask = temp(ctx, out.shape, bool)
    xp.greater(out, 0, out=mask)
    masked = xp.multiply(dout, mask)
    if ctx.scratch is not None:
        ctx.scratch.rewind(mark)
    del out, mask
    return _conv_backward(ctx, attrs, params, (x_shape, cols, x), masked)


def _conv_backward(ctx, attrs, params, cache, dout, relu_out=None):
    xp = ctx.xp
    x_shape, cols, x = cache
    n, h, w, c = x_shape
    kernel, stride, dilation, (ph, pw), (ho, wo) = conv_geometry(attrs, x_shape)
    weight, groups = params["weight"], attrs["groups"]
    filters = weight.shape[3]
    dout2 = dout.reshape(n * ho * wo, filters)
    if dout2.dtype != weight.dtype:
        dout2 = dout2.astype(weight.dtype)
    grads = {}
    mark = ctx.scratch.mark() if ctx.scratch is not None else 0
    if "bias" in params and relu_out is None:
        grads["bias"] = sum_rows(xp, dout2, tmp=lambda s, d: temp(ctx, s, d))  # pairwise
        if ctx.scratch is not None:
            ctx.scratch.rewind(mark)   # the fold buffer is dead
    method = dx_method(attrs, x_shape) if ctx.input_grad else None
    if groups == 1:
        if cols is None:   # the columns were not kept: rebuilt chunk by chunk
            dweight, dx, dbias = backward_chunked(ctx, attrs, weight, x, dout, dout2, method,
                                                   relu_out, "bias" in params and relu_out
                                                   is not None)
            if dbias is not None:
                grads["bias"] = dbias
            grads["weight"] = dweight
            if dx is not None:
                return [dx], grads
            if ctx.scratch is not None:
                ctx.scratch.rewind(mark)
        else:
            grads["weight"] = mm_tn_rows(ctx, cols, dout2).reshape(weight.shape)
        cols = x = None
        if method is None:
            # The input is the data itself: only the parameters need gradients.
            return [None], grads
        if method == "pointwise":
            # The columns were the input itself, so dcols is dx with no scatter.
            dx = fresh(ctx, (n * h * w, c), dout2.dtype, "dx0")
            return [mm_rows(ctx, dout2, weight.reshape(c, filters).T, out=dx).reshape(x_shape)], \
                grads
        if method == "fwdconv":
            dview, wflip, _, _ = fwdconv_view(ctx, attrs, weight, dout, x_shape)
            dx = xp.matmul(dview.reshape(n * h * w, -1), wflip,
                           out=fresh(ctx, (n * h * w, c), dout2.dtype, "dx0"))
            return [dx.reshape(x_shape)], grads
        dx_pad = xp.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=dout2.dtype)
        col2im_gemm(ctx, dout2, weight, x_shape, attrs, slice(None), dx_pad)
    else:
        cg, fg = c // groups, filters // groups
        dweight = xp.empty_like(weight)
        for g in range(groups):
            fs = slice(g * fg, (g + 1) * fg)
            dweight[..., fs] = (cols[g].T @ dout2[:, fs]).reshape(kernel[0], kernel[1], cg, fg)
        grads["weight"] = dweight
        if method is None:
            return [None], grads
        dx_pad = xp.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=dout2.dtype)
        for g in range(groups):
            fs = slice(g * fg, (g + 1) * fg)
            col2im_gemm(ctx, dout2[:, fs], weight[..., fs], x_shape, attrs,
                         slice(g * cg, (g + 1) * cg), dx_pad)
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


def _conv_footprint(st, n, it, training, scratch=True):
    """The footprint of the im2col conv (this module, im2col.py, conv_kernels.py). With a
    Scratch region the padded copy and a chunk of columns are scratch, the input is kept and
    backward rebuilds the columns chunk by chunk; a conv whose plan keeps its columns runs
    without scratch (fresh columns, cached). The bias add (``out += bias``) is a broadcast:
    NumPy's iterator buffer beside the output."""
    fp = _conv_footprint_calls(st, n, it, training, scratch)
    if st.node.attrs["bias"]:
        fp.fwd_tmp += iter_buffer(fp.out, it)
    return fp


def _conv_footprint_calls(st, n, it, training, scratch=True):
    a = st.node.attrs
    h, w, c, ho, wo, f = spatial_shapes(st)
    kh, kw = as_pair(a["kernel"])
    ph, pw = conv_padding(a)
    g = a["groups"]
    kept = st.cols_exceed_input and not st.recompute
    on_scratch = scratch and not kept
    S = aligned if on_scratch else (lambda b: b)          # a scratch take, or a fresh temporary
    pad = n * (h + 2 * ph) * (w + 2 * pw) * c * it if (ph or pw) else 0
    pointwise = conv_is_pointwise(a) and g == 1
    cols = 0 if pointwise else n * ho * wo * kh * kw * c * it
    half = S((n * ho * wo // 2) * f * it) if a["bias"] else 0   # the bias gradient's fold
    method = None if st.data_only else dx_method(a, (h, w, c))
    dx = {None: 0, "pointwise": n * h * w * c * it, "fwdconv": n * h * w * c * it,
          "offsets": n * (h + 2 * ph) * (w + 2 * pw) * c * it}[method]
    block = S(n * ho * wo * (c // g) * it)            # offsets: one kernel offset's dcols
    dh, dw = as_pair(a["dilation"])
    qh, qw = (kh - 1) * dh - ph, (kw - 1) * dw - pw
    dpad = n * (ho + 2 * qh) * (wo + 2 * qw) * f * it if (qh or qw) else 0
    out = n * ho * wo * f * it
    fp = Footprint(out=out, dx=(dx,))
    relu = bool(st.meta.get("relu"))                  # the ReLU fused into the kernel
    fp.keep_out = relu                                # its output is the mask
    chunked = g == 1 and not pointwise and not kept and (scratch or st.recompute)
    # A fused ReLU masks dout chunk by chunk inside the loop (chunked, dx by fwdconv or none);
    # otherwise the masked dout is a fresh array made first, its bool mask a scratch take.
    masked_whole = relu and not (chunked and method in (None, "fwdconv"))
    if masked_whole:
        fp.bwd_tmp += out
        if on_scratch or (g != 1 and scratch) or (pointwise and scratch):
            fp.bwd_scratch = aligned(out // it)
        else:
            fp.bwd_tmp += out // it
    if g != 1 or kept or (not chunked and not pointwise):
        # Whole columns: fresh (cached when kept or grouped); the padded copy a temporary.
        if g != 1 and scratch:
            fp.fwd_scratch = aligned(pad)
        else:
            fp.fwd_tmp = pad
        fp.fwd_tmp += 0 if (kept or g != 1) else cols
        fp.cache = cols if (kept or g != 1) else 0
        tail = {None: 0, "pointwise": 0, "offsets": block,
                "fwdconv": S(dpad) + S(n * h * w * kh * kw * f * it)}[method]
        if on_scratch or (g != 1 and scratch):
            fp.bwd_scratch = max(fp.bwd_scratch, half, tail)
        else:
            fp.bwd_tmp += max(half - dx, tail)
        return fp
    fp.keep_in = (0,)                                 # the input (pointwise: the columns)
    if pointwise:
        if scratch:
            fp.bwd_scratch = max(fp.bwd_scratch, half)
        else:
            fp.bwd_tmp += max(0, half - dx)
        return fp
    # Chunks of ``per`` images, one column buffer per worker thread (workspace.parallel_for)
    per = chunk_images(n, ho * wo * kh * kw * c * it)
    nw = workers(-(-n // per))
    fp.fwd_tmp, fp.fwd_scratch = (0, aligned(pad) + nw * aligned(per * ho * wo * kh * kw * c * it)) \
        if scratch else (pad + cols, 0)               # no scratch: whole columns, dropped
    per = backward_chunk_images(n, ho * wo, kh * kw, c, f, it, method == "fwdconv",
                                relu and not masked_whole)
    nw = workers(-(-n // per))
    dw = S(kh * kw * c * f * it)                      # a dW term per worker, a sum per extra
    rebuilt = S(pad) + nw * S(per * ho * wo * kh * kw * c * it) + (2 * nw - 1) * dw
    if method == "fwdconv":
        rebuilt += S(dpad) + nw * S(per * h * w * kh * kw * f * it)
    if relu and not masked_whole:   # per worker: masked chunk, its mask, its bias fold
        rows = per * ho * wo
        rebuilt += nw * (S(rows * f * it) + S(rows * f) + S((rows // 2) * f * it))
        half = 0                    # the bias is summed chunk by chunk
    phases = [fp.bwd_scratch, half, rebuilt, block if method == "offsets" else 0]
    if scratch:
        fp.bwd_scratch = max(phases)
    else:   # the half fold and the rebuilt columns live before the fresh dx is made
        fp.bwd_tmp = max(half - dx, rebuilt - (0 if method == "fwdconv" else dx),
                         phases[2])
    return fp


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
          # AUTO: the file's ROUND (default cover). No framework rounds convolutions up.
          Arg("round", "str", AUTO, doc="output size not whole: cover (floor unless real "
              "pixels are dropped, then an error), exact (error) or floor",
              choices=("cover", "exact", "floor"))),
    infer_shape=_conv_shape, forward=_conv_forward, backward=_conv_backward,
    params=_conv_params, macs=_conv_macs, compact=("kernel", "filters"),
    label=("filters", "kernel", "stride", "dilation", "groups"), style=CONV_STYLE,
    reference=naive.conv, random_example=_conv_random,
    example={"attrs": {"filters": 4, "kernel": 3}, "in_shapes": [(5, 5, 3)]},
    examples=({"attrs": {"filters": 4, "kernel": 3, "groups": 2, "stride": 2, "pad": 1},
               "in_shapes": [(5, 4, 4)]},
              {"attrs": {"filters": 2, "kernel": (3, 2), "dilation": 2, "pad": "valid"},
               "in_shapes": [(6, 5, 2)]}),
    footprint=_conv_footprint,
    fused={"relu": (_conv_relu_forward, _conv_relu_backward)}))
