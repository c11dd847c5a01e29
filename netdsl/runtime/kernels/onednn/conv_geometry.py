"""A oneDNN convolution's geometry and descriptors in netdsl's NHWC terms, and the layouts
oneDNN wants for it (asked with ``format any``): what conv.py's primitives are made from and
what the inference layout decision (netdsl/runtime/layouts.py) asks."""
from __future__ import annotations

from ....layers.geometry import PAIR_ARGS, conv_padding
from ....layers.structure import pair_attrs
from . import capi as L
from .common import cached, lib, nhwc, plain, serial


def geometry(attrs, x_shape, filters) -> dict:
    """The convolution of ``attrs`` on an NHWC batch of ``x_shape`` with ``filters`` outputs,
    in oneDNN's terms: sizes, strides, 0-based dilation, left and right padding, groups."""
    a = pair_attrs(attrs, PAIR_ARGS)
    n, h, w, c = x_shape
    (kh, kw), (sh, sw), (dh, dw) = a["kernel"], a["stride"], a["dilation"]
    ph, pw = conv_padding(a)
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    # oneDNN wants the right/bottom padding that makes its size rule exact (it may be
    # smaller than the left one when the stride leaves pixels over), and 0-based dilation.
    pr = ((ho - 1) * sh + dh * (kh - 1) + 1 - h - ph, (wo - 1) * sw + dw * (kw - 1) + 1 - w - pw)
    return dict(n=n, h=h, w=w, c=c, f=filters, kh=kh, kw=kw, ho=ho, wo=wo, g=a["groups"],
                strides=(sh, sw), dil=(dh - 1, dw - 1), pl=(ph, pw), pr=pr)


def weights_md(geo):
    """oneDNN's memory descriptor of netdsl's own (KH, KW, C/groups, F) weights."""
    kh, kw, c, f, g = geo["kh"], geo["kw"], geo["c"], geo["f"], geo["g"]
    cg, fg = c // g, f // g
    if g == 1:  # logical (O, I, KH, KW) over memory (KH, KW, I, O)
        return lib().md_strides((f, c, kh, kw), (1, f, kw * cg * f, cg * f))
    return lib().md_strides((g, fg, cg, kh, kw), (fg, 1, f, kw * cg * f, cg * f))


def descs(geo):
    """(src, weights, bias, dst, strides, dilation, left pad, right pad, lib): the NHWC
    descriptors and dims every conv primitive of ``geo`` is created with."""
    d = lib()
    return (nhwc(geo["n"], geo["h"], geo["w"], geo["c"]), weights_md(geo), plain((geo["f"],)),
            nhwc(geo["n"], geo["ho"], geo["wo"], geo["f"]),
            L.dims(geo["strides"]), L.dims(geo["dil"]), L.dims(geo["pl"]), L.dims(geo["pr"]), d)


def cache_key(geo, bias):
    """The key of ``geo``'s primitives in the provider's cache."""
    return tuple(sorted(geo.items())), bias


def d_dims(geo):
    """oneDNN's logical weight dims: (O, I, KH, KW), or (G, O/G, I/G, KH, KW) with groups."""
    kh, kw, c, f, g = geo["kh"], geo["kw"], geo["c"], geo["f"], geo["g"]
    return (f, c, kh, kw) if g == 1 else (g, f // g, c // g, kh, kw)


def flops(geo) -> int:
    """2 × multiply-adds of one pass (forward, backward-data and backward-weights alike)."""
    return (2 * geo["n"] * geo["ho"] * geo["wo"] * geo["f"] * geo["kh"] * geo["kw"]
            * (geo["c"] // geo["g"]))


def wanted_layouts(attrs, x_shape, filters, bias, act) -> tuple[bool, bool, str]:
    """Ask oneDNN which activation layouts it wants for this inference convolution: created
    with ``format any`` source and destination (and weights), whether the layouts it picked
    are netdsl's NHWC (source, destination), and the implementation it chose with them."""
    geo = geometry(attrs, x_shape, filters)
    d = lib()
    n, c, f = geo["n"], geo["c"], geo["f"]

    def build():
        _, _, b, _, st, dl, pl, pr, _ = descs(geo)
        return d.pd("dnnl_convolution_forward_primitive_desc_create", d.engine,
                    L.FORWARD_INFERENCE, L.CONV_DIRECT, d.md_any((n, c, geo["h"], geo["w"])),
                    d.md_any(d_dims(geo)), b if bias else None,
                    d.md_any((n, f, geo["ho"], geo["wo"])), st, dl, pl, pr, d.attr(act))
    with serial("conv", flops(geo)):
        pd = cached(("conv_any_pd", act) + cache_key(geo, bias), build)
        return (d.md_equal(d.pd_md(pd, "src"), nhwc(n, geo["h"], geo["w"], c)),
                d.md_equal(d.pd_md(pd, "dst"), nhwc(n, geo["ho"], geo["wo"], f)),
                d.impl_name(pd))
