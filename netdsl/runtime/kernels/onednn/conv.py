"""Convolution on oneDNN: forward (with bias), backward-data and backward-weights (+bias).

Activations are NHWC. Weights stay in netdsl's (KH, KW, C/groups, F) layout for the optimizer,
export and checkpoints; the primitives are created with ``format any`` weights, so that oneDNN
picks its direct kernels (brgconv/jit) on every ISA, and read a blocked copy (packs.py):
packed once per weight version at inference, once per step in training. Backward-data reads
the forward's copy where it wants that layout, else reorders its own once per step.
"""
from __future__ import annotations

import os

import numpy as np

from ....layers.geometry import PAIR_ARGS, conv_padding
from ....layers.structure import pair_attrs
from ....layers.base import fresh
from . import capi as L
from .common import cached, f32, is_f32, lib, nhwc, plain, primitive, serial, slow_impl
from .packs import PACKS
from .packs import held_bytes as pack_held_bytes


def _geometry(attrs, x_shape, filters):
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


def _weights_md(geo):
    kh, kw, c, f, g = geo["kh"], geo["kw"], geo["c"], geo["f"], geo["g"]
    cg, fg = c // g, f // g
    if g == 1:  # logical (O, I, KH, KW) over memory (KH, KW, I, O)
        return lib().md_strides((f, c, kh, kw), (1, f, kw * cg * f, cg * f))
    return lib().md_strides((g, fg, cg, kh, kw), (fg, 1, f, kw * cg * f, cg * f))


def _descs(geo):
    d = lib()
    return (nhwc(geo["n"], geo["h"], geo["w"], geo["c"]), _weights_md(geo), plain((geo["f"],)),
            nhwc(geo["n"], geo["ho"], geo["wo"], geo["f"]),
            L.dims(geo["strides"]), L.dims(geo["dil"]), L.dims(geo["pl"]), L.dims(geo["pr"]), d)


def _key(geo, bias):
    return tuple(sorted(geo.items())), bias


def _fwd_pd(geo, bias, relu=False, training=True, plain_weights=False, add=False):
    def build():
        src, wei, b, dst, st, dl, pl, pr, d = _descs(geo)
        prop = L.FORWARD_TRAINING if training else L.FORWARD_INFERENCE
        return d.pd("dnnl_convolution_forward_primitive_desc_create", d.engine, prop,
                    L.CONV_DIRECT, src, wei if plain_weights else d.md_any(d_dims(geo)),
                    b if bias else None, dst, st, dl, pl, pr, d.attr(relu, add))
    return cached(("conv_fwd_pd", relu, training, plain_weights, add) + _key(geo, bias), build)


PACK = os.environ.get("NETDSL_ONEDNN_PACK", "auto")
"""When a forward convolution reads a blocked copy of the weights (``format any``) instead of
netdsl's own layout. ``needed``: only where oneDNN has no direct kernel for netdsl's layout
(AVX2 hosts: im2col + GEMM, 2–3× slower; AVX-512 hosts run brgconv on it). ``auto`` (the
default): that in training, and always at inference, where the copy is made once and the
blocked kernels were ~5% faster on AVX-512 too. ``always``: everywhere. Measured in
docs/performance.md (issue 14)."""


def _packs(training: bool) -> bool | None:
    """True: pack; None: pack only where netdsl's layout would run a slow kernel."""
    return True if PACK == "always" or (PACK == "auto" and not training) else None


class _WithReorder:
    """A convolution descriptor ``pd`` (run with ``args``) and the reorder ``reorder_pd`` (or
    None) between netdsl's layout and the one oneDNN chose for it."""

    def prims(self):
        """(primitive, reorder primitive or None), created on first use."""
        if self._prims is None:
            self._prims = (primitive(self.pd, self.args),
                           self.reorder_pd and primitive(self.reorder_pd, ("src", "dst")))
        return self._prims


class _Forward(_WithReorder):
    """A forward convolution: its primitive descriptor, on netdsl's weight layout where that
    runs a direct kernel (:data:`PACK`), else on ``format any`` weights; the layout it reads
    (:attr:`md`), and the reorder that packs netdsl's weights into it (None when it reads
    netdsl's own layout)."""

    def __init__(self, geo, bias, relu, training, add=False):
        d = lib()
        self.key = ("conv_fwd", relu, training, add) + _key(geo, bias)
        self.pd = None
        if not _packs(training):    # netdsl's layout where oneDNN runs a direct kernel on it
            pd = _fwd_pd(geo, bias, relu, training, plain_weights=True, add=add)
            if not slow_impl(d.impl_name(pd)):
                self.pd = pd
        if self.pd is None:
            self.pd = _fwd_pd(geo, bias, relu, training, add=add)
        self.args = ("src", "weights", "bias", "dst") if bias else ("src", "weights", "dst")
        plain_md = _weights_md(geo)
        self.md = d.pd_md(self.pd, "weights")
        self.nbytes = 0 if d.md_equal(self.md, plain_md) else d.md_size(self.md)
        self.reorder_pd = d.reorder_pd(plain_md, self.md) if self.nbytes else None
        self.scratch = max(d.scratch_size(self.pd),
                           d.scratch_size(self.reorder_pd) if self.nbytes else 0)
        self._prims = None

    def weights(self, weight, refresh: bool):
        """The weights the primitive reads: ``weight`` itself, or its pack (refreshed when
        ``refresh`` or when the weights changed since it was made)."""
        _, reorder = self.prims()
        if reorder is None:
            return f32(weight)
        return PACKS.get(weight, self.key, self.nbytes,
                         lambda buf: reorder(f32(weight), buf), refresh)


def _fwd(geo, bias, relu=False, training=True, add=False) -> _Forward:
    return cached(("conv_fwd", relu, training, add) + _key(geo, bias),
                  lambda: _Forward(geo, bias, relu, training, add))


class _Blocked(_WithReorder):
    """A backward convolution whose weights take oneDNN's preferred (blocked) layout, as
    primitive descriptors (cheap: what the memory planner asks about) and primitives (:meth:`prims`).

    Why: given plain `hwio` weights, oneDNN 3.2 runs both backward convolutions as im2col +
    GEMM (x64:gemm:jit), 3–10× slower than its brgconv kernels, which want blocked weights.
    The weights are reordered per call into a buffer at the start of the shared scratchpad
    region (weights are small next to activations), the primitives' own scratchpads follow it
    from byte :attr:`at` (:attr:`need` bytes in all), and the optimizer keeps netdsl's layout.
    """

    def __init__(self, pd, args, arg, plain_md):
        d = lib()
        self.pd, self.args = pd, args
        self.chosen = chosen = d.pd_md(pd, arg)
        self.reorder_pd = None
        self.nbytes = 0            # bytes of the blocked buffer (0: no reorder)
        self.own_scratch = scratch = d.scratch_size(pd)
        if not d.md_equal(chosen, plain_md):
            self.nbytes = d.md_size(chosen)
            src, dst = (plain_md, chosen) if arg == "weights" else (chosen, plain_md)
            self.reorder_pd = d.reorder_pd(src, dst)
            scratch = max(scratch, d.scratch_size(self.reorder_pd))
        self.at = L.Scratchpad.aligned(self.nbytes)      # where the scratchpads start
        self.need = self.at + scratch if scratch else self.nbytes
        self._prims = None

    def reads(self, fwd: _Forward) -> bool:
        """Whether it can read the forward's pack as it is (the same blocked layout)."""
        return bool(self.reorder_pd) and bool(fwd.nbytes) and lib().md_equal(self.chosen, fwd.md)

    def need_after(self, fwd: _Forward) -> int:
        """Bytes of the shared region a call needs when the forward ran before it."""
        return self.own_scratch if self.reads(fwd) else self.need

    def buffer(self) -> np.ndarray:
        """The blocked buffer (the region reserved for the whole call first, so that the
        primitives' scratchpads behind it never move it)."""
        pad = lib().scratchpad
        pad.reserve(self.need)
        return pad.array(self.nbytes)


def _bwd_data(geo, bias):
    def build():
        src, wei, _, dst, st, dl, pl, pr, d = _descs(geo)
        pd = d.pd("dnnl_convolution_backward_data_primitive_desc_create", d.engine,
                  L.CONV_DIRECT, src, d.md_any(d_dims(geo)), dst, st, dl, pl, pr,
                  _fwd_pd(geo, bias), d.attr())
        return _Blocked(pd, ("diff_dst", "weights", "diff_src"), "weights", wei)
    return cached(("conv_bwd_data",) + _key(geo, bias), build)


def _bwd_weights(geo, bias):
    def build():
        src, wei, b, dst, st, dl, pl, pr, d = _descs(geo)
        pd = d.pd("dnnl_convolution_backward_weights_primitive_desc_create", d.engine,
                  L.CONV_DIRECT, src, d.md_any(d_dims(geo)), b if bias else None, dst, st,
                  dl, pl, pr, _fwd_pd(geo, bias), d.attr())
        args = ("src", "diff_dst", "diff_weights") + (("diff_bias",) if bias else ())
        return _Blocked(pd, args, "diff_weights", wei)
    return cached(("conv_bwd_weights",) + _key(geo, bias), build)


def scratch_need(attrs, x_shape, filters, bias, relu, training, input_grad=True) -> int:
    """Bytes of the shared scratchpad region the calls of one conv layer use (the most any of
    them needs): what the memory planner plans. Asks (and caches) the same primitive
    descriptors as the kernels, in the same thread setting, so the sizes are the ones that
    run; creates no primitive."""
    geo = _geometry(attrs, x_shape, filters)
    lib()   # the library loaded (or a clear error) before any descriptor is asked
    with serial("conv", _flops(geo)):
        fwd = _fwd(geo, bias, relu, training)
        need = fwd.scratch
        if training:
            need = max(need, _bwd_weights(geo, bias).need)
            if input_grad:
                need = max(need, _bwd_data(geo, bias).need_after(fwd))
    return need


def pack_bytes(attrs, x_shape, filters, bias, relu, training) -> int:
    """Bytes the blocked copy of one conv layer's weights holds across steps (packs.py; 0
    when oneDNN reads netdsl's layout): what the memory planner adds for it."""
    geo = _geometry(attrs, x_shape, filters)
    with serial("conv", _flops(geo)):
        fwd = _fwd(geo, bias, relu, training)
    return pack_held_bytes(fwd.nbytes) if fwd.nbytes else 0


def impl_names(attrs, x_shape, filters, bias, relu, training) -> dict:
    """The implementation oneDNN chose for each primitive of one conv layer (the primitive
    descriptors' ``impl_info_str``, e.g. ``brg:avx2`` or ``jit:avx512_core``), by pass."""
    geo = _geometry(attrs, x_shape, filters)
    d = lib()
    with serial("conv", _flops(geo)):
        names = {"forward": d.impl_name(_fwd(geo, bias, relu, training).pd)}
        if training:
            names["backward_data"] = d.impl_name(_bwd_data(geo, bias).pd)
            names["backward_weights"] = d.impl_name(_bwd_weights(geo, bias).pd)
    return names


def d_dims(geo):
    """oneDNN's logical weight dims: (O, I, KH, KW), or (G, O/G, I/G, KH, KW) with groups."""
    kh, kw, c, f, g = geo["kh"], geo["kw"], geo["c"], geo["f"], geo["g"]
    return (f, c, kh, kw) if g == 1 else (g, f // g, c // g, kh, kw)


def _flops(geo) -> int:
    """2 × multiply-adds of one pass (forward, backward-data and backward-weights alike)."""
    return (2 * geo["n"] * geo["ho"] * geo["wo"] * geo["f"] * geo["kh"] * geo["kw"]
            * (geo["c"] // geo["g"]))


def conv_forward(ctx, attrs, params, inputs, relu=False):
    """Same contract as the registry's conv forward; the cache is (x, geometry, the forward
    that ran, the weights it read). ``relu``: apply ReLU to the output as a oneDNN post-op
    (see :func:`conv_relu_forward`)."""
    x = f32(inputs[0])
    weight = params["weight"]
    geo = _geometry(attrs, x.shape, weight.shape[3])
    out = fresh(ctx, (geo["n"], geo["ho"], geo["wo"], geo["f"]), np.float32)
    fwd, w = _run_forward(geo, params, x, out, relu, bool(ctx.training))
    return out, (x, geo, fwd, w)


def _run_forward(geo, params, x, out, relu: bool, training: bool, add: bool = False):
    """Run the forward convolution of ``geo`` from ``x`` into ``out``; (descriptor, weights
    read). Training: the optimizer updated the weights since the last step, so they are
    repacked once here (backward-data reuses the pack where it can); inference: the pack made
    at the first batch."""
    bias = "bias" in params
    with serial("conv", _flops(geo)):
        fwd = _fwd(geo, bias, relu, training, add=add)
        prim, _ = fwd.prims()
        w = fwd.weights(params["weight"], refresh=training)
        prim(*((x, w, f32(params["bias"]), out) if bias else (x, w, out)))
    return fwd, w


def conv_add_forward(ctx, attrs, params, inputs, relu=False, inplace=False):
    """conv(inputs[0]) + inputs[1] (then ReLU if ``relu``) in one oneDNN call: the residual
    join as a ``sum`` post-op (netdsl/runtime/residual.py fuses it at inference). The sum
    reads the destination, so the output starts as the shortcut: with ``inplace`` (the plan
    found no later reader of it) the shortcut's own buffer, else a copy. Inference only
    (the cache is None)."""
    if ctx.training:
        raise RuntimeError("a fused inference plan (Executor.for_inference) cannot train: "
                           "use the training executor")
    x, short = f32(inputs[0]), inputs[1]
    weight = params["weight"]
    geo = _geometry(attrs, x.shape, weight.shape[3])
    shape = (geo["n"], geo["ho"], geo["wo"], geo["f"])
    if inplace and _writable_f32(short, shape):
        out = short
    else:   # the plan's in-place decision does not hold for this array: a fresh copy
        out = fresh(ctx, shape, np.float32)
        np.copyto(out, short)
    _run_forward(geo, params, x, out, relu, False, add=True)
    return out, None


def _writable_f32(a, shape) -> bool:
    return (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == shape
            and a.flags.c_contiguous and a.flags.writeable)


def conv_add_impl(attrs, x_shape, filters, bias, relu) -> str:
    """The implementation oneDNN chose for the fused conv + residual add (+ ReLU) of
    :func:`conv_add_forward` (``impl_info_str``)."""
    geo = _geometry(attrs, x_shape, filters)
    with serial("conv", _flops(geo)):
        return lib().impl_name(_fwd(geo, bias, relu, False, add=True).pd)


def conv_add_scratch(attrs, x_shape, filters, bias, relu) -> tuple[int, int]:
    """(scratchpad bytes, blocked weight copy bytes) of the fused conv + add: what the memory
    planner plans for it (as :func:`scratch_need` and :func:`pack_bytes` for a plain conv)."""
    geo = _geometry(attrs, x_shape, filters)
    with serial("conv", _flops(geo)):
        fwd = _fwd(geo, bias, relu, False, add=True)
    return fwd.scratch, pack_held_bytes(fwd.nbytes) if fwd.nbytes else 0


def conv_relu_forward(ctx, attrs, params, inputs):
    """conv followed by ReLU in one oneDNN call (bias and ReLU as post-ops); the cache also
    holds the output, from which the backward masks the incoming gradient."""
    out, cache = conv_forward(ctx, attrs, params, inputs, relu=True)
    return out, cache + (out,)


def conv_relu_backward(ctx, attrs, params, cache, dout):
    """Backward of :func:`conv_relu_forward`: ReLU's mask (from the output), then conv's."""
    from .eltwise import relu_backward
    return conv_backward(ctx, attrs, params, cache[:4], relu_backward(cache[4], dout))


def conv_backward(ctx, attrs, params, cache, dout):
    """Same contract as the registry's conv backward."""
    x, geo, fwd, w = cache
    with serial("conv", _flops(geo)):
        return _conv_backward(ctx, params, x, geo, fwd, w, dout)


def _conv_backward(ctx, params, x, geo, fwd, packed, dout):
    dout = f32(dout)
    weight = params["weight"]
    bias = "bias" in params
    grads = {"weight": np.empty(weight.shape, dtype=np.float32)}
    bw = _bwd_weights(geo, bias)
    prim, reorder = bw.prims()
    dw = bw.buffer() if reorder else grads["weight"]
    if bias:
        grads["bias"] = np.empty(weight.shape[3], dtype=np.float32)
        prim(x, dout, dw, grads["bias"], at=bw.at)
    else:
        prim(x, dout, dw, at=bw.at)
    if reorder:
        reorder(dw, grads["weight"], at=bw.at)
    del dw
    if not ctx.input_grad:
        return [None], grads
    dx = fresh(ctx, x.shape, np.float32, "dx0")
    bd = _bwd_data(geo, bias)
    prim, reorder = bd.prims()
    if bd.reads(fwd):        # the forward's blocked copy of this step's weights
        prim(dout, packed, dx, at=0)
        return [dx], grads
    w = f32(weight)
    if reorder:
        buf = bd.buffer()
        reorder(w, buf, at=bd.at)
        w = buf
    prim(dout, w, dx, at=bd.at)
    return [dx], grads


def conv_supports(attrs, in_shapes, dtype):
    """float32 NHWC maps; every stride, padding, dilation and group count."""
    return is_f32(dtype) and len(in_shapes[0]) == 3
