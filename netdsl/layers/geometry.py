"""The sizing arithmetic of the windowed layers (conv, deconv, maxunpool, crop): padding and
output sizes, each with the ShapeError that explains a size that does not work.

Shape rules, fast kernels, providers and the naive references all read them from here, so
that the one formula is written once and no layer module imports another to reach it.
"""
from __future__ import annotations

from ..core.errors import NetdslError, ShapeError
from .base import AUTO, out_size
from .structure import as_pair, pair_attrs


# conv attributes written as one number or HxW
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


def conv_geometry(attrs, x_shape):
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


def conv_is_pointwise(attrs) -> bool:
    """1×1, stride 1, no padding: the im2col matrix is the input itself."""
    return (as_pair(attrs["kernel"]) == (1, 1) and as_pair(attrs["stride"]) == (1, 1)
            and conv_padding(attrs) == (0, 0))


# deconv attributes written as one number or HxW
DECONV_PAIRS = ("kernel", "stride", "pad", "dilation", "output_padding")


def deconv_out_hw(attrs, hw) -> tuple[int, int]:
    """(Ho, Wo) of a transposed conv on an H×W input; a ShapeError with the arithmetic when
    output_padding is too large or the size is not positive."""
    attrs = pair_attrs(attrs, DECONV_PAIRS)
    out = []
    for size, k, s, p, d, op in zip(hw, *(attrs[n] for n in DECONV_PAIRS)):
        if op >= max(s, d):
            raise ShapeError(f"deconv: output_padding={op} must be smaller than the stride "
                             f"({s}) or the dilation ({d})",
                             detail=f"output_padding < max({s}, {d}) = {max(s, d)}",
                             hint="output_padding only picks among the sizes a stride-"
                                  f"{s} conv maps to the same input size")
        o = (size - 1) * s - 2 * p + d * (k - 1) + op + 1
        if o < 1:
            raise ShapeError(f"deconv k={k} on {size}-wide input gives a non-positive size",
                             detail=f"({size} − 1)·{s} − 2·{p} + {d}·({k} − 1) + {op} + 1 = "
                                    f"{o}".replace("-", "−"),
                             hint="use less padding")
        out.append(o)
    return tuple(out)


def unpool_attrs(attrs) -> dict:
    """maxunpool's attrs with pairs normalised and an AUTO stride read as the window size."""
    attrs = pair_attrs(attrs, ("size", "stride", "pad", "out"))
    if attrs["stride"] is AUTO:
        attrs["stride"] = attrs["size"]
    return attrs


def unpool_out_hw(attrs, in_shapes) -> tuple[int, int]:
    """The H×W maxunpool restores: the third input's, ``out``, or (Ho − 1)·S − 2P + K; a
    ShapeError with the arithmetic when pooling that size cannot give the values' Ho×Wo."""
    attrs = unpool_attrs(attrs)
    pooled = tuple(in_shapes[0][:2])
    size, stride, pad = attrs["size"], attrs["stride"], attrs["pad"]
    if len(in_shapes) > 2:
        target, source = tuple(in_shapes[2][:2]), "the third input"
    elif attrs["out"] != "auto":
        target, source = tuple(attrs["out"]), "out"
    else:
        return tuple((o - 1) * s - 2 * p + k for o, s, p, k in zip(pooled, stride, pad, size))
    for o, t, k, s, p in zip(pooled, target, size, stride, pad):
        fits = []
        for ceil in (False, True):
            try:
                fits.append(out_size(t, k, s, p, ceil=ceil, what="maxunpool"))
            except NetdslError:
                fits.append(None)
        if o not in fits:
            raise ShapeError(
                f"maxunpool: {source} asks for size {t}, but pooling {t} with k={k}, s={s}, "
                f"p={p} gives {fits[0]}, not the {o} of the values",
                detail=f"⌊({t} − {k} + 2·{p})/{s}⌋ + 1 = {fits[0]}",
                hint="unpool to the size of the tensor that was pooled (pass it as the third "
                     "input), with the pool's own size, stride and pad")
    return target


def crop_hw(attrs, in_shapes) -> tuple[int, int]:
    """The target (h, w): the second input's spatial size, else ``size``."""
    if len(in_shapes) > 1:
        return tuple(int(d) for d in in_shapes[1][:2])
    return as_pair(attrs["size"])
