"""Max / average pooling on oneDNN (forward and backward, NHWC), and global average pooling
(GAP: forward only, as one average pooling over the whole map).

Max pooling in training keeps oneDNN's workspace (the argmax of each window) for backward.
Average pooling divides as the reference does (padding counted unless count_include_pad=false).
Ceil rounding that adds a window is left to the reference: its overhang is counted
differently from oneDNN's padding.
"""
from __future__ import annotations

import numpy as np

from ....layers import get
from ....layers.base import fresh, out_size
from ....layers.pooling import pool_attrs
from . import capi as L
from .choices import NARROW, narrowest
from .common import cached, f32, is_f32, lib, nhwc, primitive, serial


def _geometry(attrs, x_shape):
    a = pool_attrs(attrs)
    n, h, w, c = x_shape
    (kh, kw), (sh, sw), (ph, pw) = a["size"], a["stride"], a["pad"]
    ho = out_size(h, kh, sh, ph, what="pool")
    wo = out_size(w, kw, sw, pw, what="pool")
    pr = ((ho - 1) * sh + kh - h - ph, (wo - 1) * sw + kw - w - pw)
    if a["kind"] == "max":
        alg = L.POOL_MAX
    else:  # the layers may grow a count_include_pad argument; PyTorch's default is True
        alg = L.POOL_AVG_INCLUDE if a.get("count_include_pad", True) else L.POOL_AVG_EXCLUDE
    return dict(n=n, h=h, w=w, c=c, ho=ho, wo=wo, k=(kh, kw), s=(sh, sw), pl=(ph, pw), pr=pr,
                alg=alg)


def _fwd_pd(geo, training):
    def create():
        d = lib()
        return d.pd("dnnl_pooling_forward_primitive_desc_create", d.engine,
                    L.FORWARD_TRAINING if training else L.FORWARD_INFERENCE, geo["alg"],
                    nhwc(geo["n"], geo["h"], geo["w"], geo["c"]),
                    nhwc(geo["n"], geo["ho"], geo["wo"], geo["c"]),
                    L.dims(geo["s"]), L.dims(geo["k"]), L.dims((0, 0)), L.dims(geo["pl"]),
                    L.dims(geo["pr"]), d.attr())

    def build():
        # Inference on few channels: the narrowest kernel that holds them, as for backward
        # (choices.py): LeNet-5's S2 (6 channels, 28→14, batch 256) 0.21 → 0.18 ms on
        # jit:avx2. (Training keeps the first choice: a max pooling's backward reads the
        # workspace its forward kernel lays out, and the rest was not measured.)
        if not NARROW or training:
            return create()
        return narrowest(create, geo["c"])
    return cached(("pool_fwd_pd", tuple(sorted(geo.items())), training), build)


def _fwd(geo, training):
    def build():
        pd = _fwd_pd(geo, training)
        ws = lib().md_size(lib().pd_md(pd, "workspace"))
        return primitive(pd, ("src", "dst") + (("workspace",) if ws else ())), ws
    return cached(("pool_fwd", tuple(sorted(geo.items())), training), build)


def _bwd_pd(geo):
    def create():
        d = lib()
        return d.pd("dnnl_pooling_backward_primitive_desc_create", d.engine, geo["alg"],
                    nhwc(geo["n"], geo["h"], geo["w"], geo["c"]),
                    nhwc(geo["n"], geo["ho"], geo["wo"], geo["c"]),
                    L.dims(geo["s"]), L.dims(geo["k"]), L.dims((0, 0)), L.dims(geo["pl"]),
                    L.dims(geo["pr"]), _fwd_pd(geo, True), d.attr())

    def build():
        if geo["alg"] == L.POOL_MAX or not NARROW:
            return create()
        return narrowest(create, geo["c"])
    return cached(("pool_bwd_pd", tuple(sorted(geo.items()))), build)




def _bwd(geo):
    def build():
        d = lib()
        ws = d.md_size(d.pd_md(_fwd_pd(geo, True), "workspace"))
        return primitive(_bwd_pd(geo), ("diff_dst", "diff_src") + (("workspace",) if ws else ()))
    return cached(("pool_bwd", tuple(sorted(geo.items()))), build)


def plan_sizes(attrs, x_shape, training) -> tuple[int, int]:
    """(bytes of the workspace a training forward keeps for backward, bytes of scratchpad
    the layer's calls need): what the memory planner plans, from the same (cached) primitive
    descriptors the kernels run, made in the same thread setting."""
    geo = _geometry(attrs, x_shape)
    d = lib()
    with serial("pool", int(np.prod(x_shape))):
        fwd = _fwd_pd(geo, training)
        ws = d.md_size(d.pd_md(fwd, "workspace"))
        need = d.scratch_size(fwd)
        if training:
            need = max(need, d.scratch_size(_bwd_pd(geo)))
    return ws, need


def pool_forward(ctx, attrs, params, inputs):
    """Same contract as the registry's pool forward; the cache is (geometry, workspace)."""
    x = f32(inputs[0])
    geo = _geometry(attrs, x.shape)
    with serial("pool", x.size):
        prim, ws_size = _fwd(geo, ctx.training)
        out = fresh(ctx, (geo["n"], geo["ho"], geo["wo"], geo["c"]), np.float32)
        ws = np.empty(ws_size, dtype=np.uint8) if ws_size else None
        prim(x, out, *((ws,) if ws_size else ()))
    return out, (geo, ws)


def pool_backward(ctx, attrs, params, cache, dout):
    """Same contract as the registry's pool backward (after a training forward)."""
    geo, ws = cache
    dx = fresh(ctx, (geo["n"], geo["h"], geo["w"], geo["c"]), np.float32, "dx0")
    if geo["alg"] == L.POOL_MAX and ws is None:
        raise RuntimeError("max pooling backward needs a training forward (its workspace)")
    args = (f32(dout), dx) + ((ws,) if ws is not None else ())
    with serial("pool", dx.size):
        _bwd(geo)(*args)
    return [dx], {}


def pool_supports(attrs, in_shapes, dtype):
    """float32 maps, unless ceil rounding adds a window that floor rounding would not."""
    if not is_f32(dtype) or len(in_shapes[0]) != 3:
        return False
    a = pool_attrs(attrs)
    if not a["ceil"]:   # exact and floor rounding both floor at run time
        return True
    h, w = in_shapes[0][:2]
    return all(out_size(n, k, s, p, ceil=True) == out_size(n, k, s, p)
               for n, k, s, p in zip((h, w), a["size"], a["stride"], a["pad"]))


def gap_attrs(x_shape) -> dict:
    """The average pooling that is GAP over maps of ``x_shape`` (N, H, W, C): one window."""
    h, w = x_shape[1:3]
    return {"size": (h, w), "stride": (h, w), "pad": 0, "kind": "avg", "ceil": False}


def gap_forward(ctx, attrs, params, inputs):
    """Same contract as the registry's gap forward (the cache is the input's shape). Why:
    oneDNN's average pooling was 2.4–5× faster than the reference's pairwise sum on the
    benchmark nets' GAPs (docs/performance.md); its float32 sum of at most a few thousand
    positions stays within float32 accuracy (tests/test_kernels_onednn.py: against float64)."""
    x = f32(inputs[0])
    out, _ = pool_forward(ctx, gap_attrs(x.shape), params, [x])
    n, c = x.shape[0], x.shape[3]
    return (out if attrs.get("keep") else out.reshape(n, c)), x.shape


def gap_backward(ctx, attrs, params, cache, dout):
    """The registry's backward: the mean's gradient spread over the map."""
    return get("gap").backward(ctx, attrs, params, cache, dout)


def gap_supports(attrs, in_shapes, dtype):
    """float32 maps."""
    return is_f32(dtype) and len(in_shapes[0]) == 3
