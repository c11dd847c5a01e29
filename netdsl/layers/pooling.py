"""Pooling: max / average over windows (pool, maxpool, avgpool share one implementation) and
global average pooling (gap).

Windows are visited by looping over the KH·KW kernel offsets, each a strided slice of the whole
padded batch, so Python never loops over pixels or examples. With ``ceil`` rounding the last
window may run past the padded input; that overhang is filled with −inf (max) or 0 (avg) and
the average's divisor counts only the padded extent (PyTorch's count_include_pad=True rule,
the default); ``count_include_pad=false`` divides by the real pixels of each window instead.
"""
from __future__ import annotations

from ..core.errors import ShapeError
from ..core.workspace import split_rows
from .base import AUTO, Arg, LayerSpec, fresh, out_size, register
from .reduce import sum_rows
from .structure import pair_attrs, require_spatial
from . import naive
from .footprint import Footprint, in_bytes, out_bytes, spatial_shapes

POOL_STYLE = {"shape": "box", "style": "filled", "fillcolor": "#d1e7dd"}


def resolve_pool(attrs, info=None):
    """Fill an AUTO stride with the window size (non-overlapping pooling, the usual case)."""
    if attrs.get("stride") is AUTO:
        attrs = dict(attrs, stride=attrs["size"])
    return attrs


def pool_attrs(attrs) -> dict:
    """attrs with an AUTO stride read as the window size, pairs normalised, and ``round=ceil``
    spelt as ``ceil=True``: the one form every reader (kernels, exporters, tools) checks."""
    attrs = pair_attrs(resolve_pool(attrs), ("size", "stride", "pad"))
    if attrs.get("round") == "ceil":
        attrs["ceil"] = True
    return attrs


def pool_shape_rule(op: str):
    def infer(attrs, in_shapes):
        h, w, c = require_spatial(op, in_shapes[0], "pooling needs a spatial map; "
                                  "it cannot follow FC or FLATTEN")
        attrs = pool_attrs(attrs)
        size, stride, pad = attrs["size"], attrs["stride"], attrs["pad"]
        for k, p in zip(size, pad):
            if p > k // 2:
                raise ShapeError(f"{op}: pad={p} is more than half the window size {k}",
                                 detail=f"pad must be ≤ {k}//2 = {k // 2}",
                                 hint="a window made mostly of padding has nothing to pool; "
                                      "use a smaller pad")
        rounding = attrs.get("round")
        ho = out_size(h, size[0], stride[0], pad[0], ceil=attrs["ceil"], what=op,
                      rounding=rounding)
        wo = out_size(w, size[1], stride[1], pad[1], ceil=attrs["ceil"], what=op,
                      rounding=rounding)
        return (ho, wo, c)
    return infer


def pool_geometry(attrs, x_shape):
    """Window, stride, pad, output size, and the padded extent (with any ceil overhang)."""
    _, h, w, _ = x_shape
    attrs = pool_attrs(attrs)
    size, stride, pad = attrs["size"], attrs["stride"], attrs["pad"]
    ceil, rounding = attrs["ceil"], attrs.get("round")
    ho = out_size(h, size[0], stride[0], pad[0], ceil=ceil, what="pool", rounding=rounding)
    wo = out_size(w, size[1], stride[1], pad[1], ceil=ceil, what="pool", rounding=rounding)
    # Rows/cols the windows touch; may exceed H + 2·pad when ceil lets the last window overhang.
    ext = (max(h + 2 * pad[0], (ho - 1) * stride[0] + size[0]),
           max(w + 2 * pad[1], (wo - 1) * stride[1] + size[1]))
    return size, stride, pad, (ho, wo), ext


def _offsets(size, stride, out_hw):
    """(row slice, col slice) of the padded input for each kernel offset, in window order
    (row-major): slicing the whole batch with them gives that offset's value for every window."""
    for a in range(size[0]):
        for b in range(size[1]):
            yield (slice(a, a + stride[0] * (out_hw[0] - 1) + 1, stride[0]),
                   slice(b, b + stride[1] * (out_hw[1] - 1) + 1, stride[1]))


def _pad_to(xp, x, pad, ext, fill):
    n, h, w, c = x.shape
    if ext == (h, w):
        return x
    out = xp.full((n, ext[0], ext[1], c), fill, dtype=x.dtype)
    out[:, pad[0]:pad[0] + h, pad[1]:pad[1] + w, :] = x
    return out


def pool_fast_path(x_shape, size, stride, pad, out_hw):
    """Non-overlapping windows tiling the input exactly: a reshape does the whole pooling."""
    return (stride == size and pad == (0, 0) and out_hw[0] * size[0] == x_shape[1]
            and out_hw[1] * size[1] == x_shape[2])


def _divisor(xp, x_shape, size, stride, pad, out_hw, ext, dtype, include_pad=True):
    """(Ho, Wo, 1) window sizes clipped to the padded input (count_include_pad=True) or to the
    real pixels (False)."""
    h, w = x_shape[1:3]
    inside = xp.zeros((1, ext[0], ext[1], 1), dtype=dtype)
    if include_pad:
        inside[:, :h + 2 * pad[0], :w + 2 * pad[1], :] = 1
    else:
        inside[:, pad[0]:pad[0] + h, pad[1]:pad[1] + w, :] = 1
    count = xp.zeros((1, out_hw[0], out_hw[1], 1), dtype=dtype)
    for rows, cols in _offsets(size, stride, out_hw):
        count += inside[:, rows, cols, :]
    return count[0]


def pool_forward(ctx, attrs, params, inputs):
    xp, x = ctx.xp, inputs[0]
    n, _, _, c = x.shape
    size, stride, pad, (ho, wo), ext = pool_geometry(attrs, x.shape)
    if attrs["kind"] == "avg":
        if pool_fast_path(x.shape, size, stride, pad, (ho, wo)):
            # sum, then divide in place: the same numbers as mean(), whose division by the
            # integer count runs through buffered casting (up to ~130 KB of transient
            # buffers, which the footprint rule does not count)
            out = x.reshape(n, ho, size[0], wo, size[1], c).sum(axis=(2, 4))
            out /= out.dtype.type(size[0] * size[1])
            return out, (x.shape, None)
        xpad = _pad_to(xp, x, pad, ext, 0)
        out = xp.zeros((n, ho, wo, c), dtype=x.dtype)
        for rows, cols in _offsets(size, stride, (ho, wo)):
            out += xpad[:, rows, cols, :]
        divisor = _divisor(xp, x.shape, size, stride, pad, (ho, wo), ext, x.dtype,
                           attrs.get("count_include_pad", True))
        out /= divisor
        return out, (x.shape, divisor)
    xpad = _pad_to(xp, x, pad, ext, -xp.inf)
    windows = [xpad[:, rows, cols, :] for rows, cols in _offsets(size, stride, (ho, wo))]
    out = fresh(ctx, (n, ho, wo, c), x.dtype)
    switches = xp.empty(out.shape, dtype=xp.uint8 if len(windows) < 256 else xp.int32)

    def images(i, j):   # the images i:j (split over the worker threads when large)
        o = out[i:j]
        o[...] = windows[0][i:j]
        for window in windows[1:]:
            xp.maximum(o, window[i:j], out=o)
        # The switch is the first offset (window order) holding the max, so ties send the
        # whole gradient to one input. Counting the offsets at which the max has already been
        # seen gives K − first; only compares, ORs and adds: masked writes with data-dependent
        # masks are several times slower in NumPy.
        seen = xp.zeros(o.shape, dtype=bool)
        count = xp.zeros(o.shape, dtype=switches.dtype)
        for window in windows:
            seen |= window[i:j] == o
            count += seen
        xp.subtract(len(windows), count, out=switches[i:j], casting="unsafe")
    split_rows(xp, n, x.nbytes, images)
    return out, (x.shape, switches)


def pool_backward(ctx, attrs, params, cache, dout):
    xp = ctx.xp
    x_shape, saved = cache
    n, h, w, c = x_shape
    size, stride, pad, (ho, wo), ext = pool_geometry(attrs, x_shape)
    if attrs["kind"] == "avg" and saved is None:  # fast path: spread evenly over each tile
        tile = dout[:, :, None, :, None, :] * (1.0 / (size[0] * size[1]))
        dx = xp.broadcast_to(tile, (n, ho, size[0], wo, size[1], c)).reshape(x_shape)
        return [dx.astype(dout.dtype, copy=False)], {}
    dx_pad = xp.zeros((n, ext[0], ext[1], c), dtype=dout.dtype)
    if attrs["kind"] == "avg":
        share = dout / saved
        for rows, cols in _offsets(size, stride, (ho, wo)):
            dx_pad[:, rows, cols, :] += share
    else:
        disjoint = all(st >= k for st, k in zip(stride, size))

        def images(i, j):   # the images i:j (split over the worker threads when large)
            for index, (rows, cols) in enumerate(_offsets(size, stride, (ho, wo))):
                routed = dout[i:j] * (saved[i:j] == index)
                if disjoint:  # each input pixel is in one window: plain writes, no read-add
                    dx_pad[i:j, rows, cols, :] = routed
                else:
                    dx_pad[i:j, rows, cols, :] += routed
        split_rows(xp, n, dx_pad.nbytes, images)
    return [dx_pad[:, pad[0]:pad[0] + h, pad[1]:pad[1] + w, :]], {}


def pool_args(kind_default: str):
    return (Arg("size", "pair", (2, 2), doc="window size, k or KHxKW", minimum=1),
            Arg("stride", "pair", AUTO, doc="step between windows (default: the size)",
                minimum=1),
            Arg("pad", "pair", (0, 0), doc="pixels of padding per side", minimum=0),
            Arg("kind", "str", kind_default, doc="max or avg", choices=("max", "avg")),
            Arg("ceil", "bool", False, doc="round the output size up (Caffe style): round=ceil"),
            # AUTO: the file's ROUND (default cover).
            Arg("round", "str", AUTO, doc="output size not whole: cover (floor unless real "
                "pixels are dropped, then an error), exact (error), floor or ceil",
                choices=("cover", "exact", "floor", "ceil")),
            Arg("count_include_pad", "bool", True, doc="avg: padding counts in the divisor "
                "(PyTorch's default); false: divide by the real pixels only"))


def random_pool_example(rng, kinds=("max", "avg")) -> dict:
    """Random valid pooling arguments and input (windows, strides, pads, ceil, divisor rule)."""
    size = tuple(int(v) for v in rng.integers(1, 4, size=2))
    stride = tuple(int(v) for v in rng.integers(1, 4, size=2))
    pad = tuple(int(rng.integers(0, k // 2 + 1)) for k in size)
    hw = tuple(int(rng.integers(k, k + 5)) for k in size)
    return {"attrs": {"size": size, "stride": stride, "pad": pad,
                      "kind": str(rng.choice(kinds)), "ceil": bool(rng.integers(0, 2)),
                      "count_include_pad": bool(rng.integers(0, 2))},
            "in_shapes": [hw + (int(rng.integers(1, 4)),)]}


REDUCE_BUFFER = 132 << 10
"""Bytes: the most NumPy's reduction over strided axes buffers of its input at once."""


def pool_footprint(st, n, it, training, scratch=True):
    """Max: the padded copy, a bool 'seen', the counts and one comparison; the switches kept
    (uint8); backward per window offset a mask and the routed gradient. Average: the padded
    copy unless the windows tile the input (a reshape)."""
    a = st.node.attrs
    h, w, c, ho, wo, _ = spatial_shapes(st)
    size, stride, pad, _, ext = pool_geometry(a, (n, h, w, c))
    padded = n * ext[0] * ext[1] * c * it if ext != (h, w) else 0
    o, o1 = n * ho * wo * c * it, n * ho * wo * c
    if a["kind"] == "max":
        # backward: per window offset a mask and the routed gradient, which the next offset's
        # replaces (both alive for a moment: two, where the window has several offsets)
        routed = o * (2 if size[0] * size[1] > 1 else 1)
        return Footprint(out=o, fwd_tmp=padded + 3 * o1, cache=o1, bwd_tmp=routed + o1,
                         dx=(n * ext[0] * ext[1] * c * it,))
    if pool_fast_path((n, h, w, c), size, stride, pad, (ho, wo)):
        # NumPy's mean over the two window axes copies the input through its iterator's
        # buffer: all of it, up to ~128 KiB (measured: 2×28×28×6 float32 → 39 KB; larger
        # inputs → 130 KB)
        return Footprint(out=o, fwd_tmp=min(n * h * w * c * it, REDUCE_BUFFER), bwd_tmp=o,
                         dx=(n * h * w * c * it,))
    return Footprint(out=o, fwd_tmp=padded, bwd_tmp=o, dx=(n * ext[0] * ext[1] * c * it,))


def _gap_footprint(st, n, it, training, scratch=True):
    """Forward: the pairwise sum over H·W folds into half the input."""
    h, w, c = st.node.in_shapes[0]
    out = out_bytes(st, n, it)
    return Footprint(out=out, dx=(in_bytes(st, n, it),), bwd_tmp=out,
                     fwd_tmp=n * (h * w // 2) * c * it)


def _pool_spec(name: str, kind: str, aliases: tuple, doc: str) -> LayerSpec:
    """One pooling spec; pool, maxpool and avgpool differ only in name and default kind."""
    return LayerSpec(
        name=name, doc=doc, aliases=aliases, args=pool_args(kind),
        infer_shape=pool_shape_rule(name), forward=pool_forward, backward=pool_backward,
        compact=("size", "stride"), style=POOL_STYLE,
        # Only the generic POOL needs its kind spelt out; MAXPOOL/AVGPOOL say it in the name.
        label=(("kind",) if name == "pool" else ()) + ("size", "stride"),
        downsamples=True, resolve=resolve_pool,
        reference=naive.pool, random_example=random_pool_example,
        example={"attrs": {"size": 2}, "in_shapes": [(4, 5, 2)]},
        examples=({"attrs": {"size": 3, "stride": 2, "pad": 1, "ceil": True},
                   "in_shapes": [(6, 6, 2)]},
                  {"attrs": {"size": 3, "stride": 1, "pad": 1, "kind": "avg",
                             "count_include_pad": False}, "in_shapes": [(4, 5, 2)]},
                  {"attrs": {"size": (3, 2), "stride": (1, 2), "pad": (1, 0)},
                   "in_shapes": [(4, 5, 1)]}),
                   footprint=pool_footprint)


register(_pool_spec("pool", "max", ("pooling",),
                    "Spatial pooling (max or avg) over size×size windows."))
register(_pool_spec("maxpool", "max", ("max_pool", "maxpool2d"),
                    "Max pooling: the largest value in each window."))
register(_pool_spec("avgpool", "avg", ("avg_pool", "avgpool2d"),
                    "Average pooling: the mean of each window (padding counts as zeros unless "
                    "count_include_pad=false)."))


# --------------------------------------------------------------------------------------------
# gap

def _gap_shape(attrs, in_shapes):
    h, w, c = require_spatial("gap", in_shapes[0], "GAP averages a spatial map; the input is "
                              "already flat")
    return (1, 1, c) if attrs.get("keep") else (c,)


def _gap_forward(ctx, attrs, params, inputs):
    x = inputs[0]
    n, h, w, c = x.shape
    # Pairwise over the H·W positions (reduce.py); NumPy's mean sums them one by one.
    out = sum_rows(ctx.xp, x.reshape(n, h * w, c)) / (h * w)
    return (out.reshape(n, 1, 1, c) if attrs.get("keep") else out), x.shape


def _gap_backward(ctx, attrs, params, x_shape, dout):
    n, h, w, c = x_shape
    dout = dout.reshape(n, c)     # keep=true: (N, 1, 1, C)
    dx = ctx.xp.broadcast_to((dout * (1.0 / (h * w)))[:, None, None, :], x_shape)
    return [dx.astype(dout.dtype, copy=True)], {}


register(LayerSpec(
    name="gap", doc="Global average pooling: H×W×C → C (one mean per channel); keep=true "
    "gives a 1×1×C map (squeeze-and-excitation).",
    aliases=("globalavgpool", "global_avg_pool", "globalaveragepool"),
    args=(Arg("keep", "bool", False, doc="true: a 1×1×C map instead of a C vector"),),
    infer_shape=_gap_shape, forward=_gap_forward, backward=_gap_backward, style=POOL_STYLE,
    example={"attrs": {}, "in_shapes": [(3, 4, 2)]},
    examples=({"attrs": {"keep": True}, "in_shapes": [(3, 4, 2)]},),
    footprint=_gap_footprint))
