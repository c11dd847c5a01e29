"""Convolution on oneDNN: forward (with bias), backward-data and backward-weights (the
bias gradient: conv_bias.py).

Activations are NHWC. Weights stay in netdsl's (KH, KW, C/groups, F) layout for the optimizer,
export and checkpoints; the primitives are created with ``format any`` weights, so that oneDNN
picks its direct kernels (brgconv/jit) on every ISA, and read a blocked copy (packs.py):
packed once per weight version at inference, once per step in training. Backward-data reads
the forward's copy where it wants that layout, else reorders its own once per step.
"""
from __future__ import annotations

import os

import numpy as np

from ....layers.base import fresh
from . import capi as L
from .choices import few_channels, jit_few, strided_jit
from .common import cached, f32, is_f32, lib, primitive, serial, slow_impl
from . import choices, conv_bias, conv_dst, conv_fc, conv_fold, eltwise
from .eltwise import fused_pair
from .conv_geometry import cache_key, d_dims, descs, flops, geometry, weights_md
from .packs import PACKS
from .packs import held_bytes as pack_held_bytes


def _fwd_pd(geo, bias, act=None, training=True, plain_weights=False, add=False):
    def create():
        src, wei, b, dst, st, dl, pl, pr, d = descs(geo)
        prop = L.FORWARD_TRAINING if training else L.FORWARD_INFERENCE
        return d.pd("dnnl_convolution_forward_primitive_desc_create", d.engine, prop,
                    L.CONV_DIRECT, src, wei if plain_weights else d.md_any(d_dims(geo)),
                    b if bias else None, dst, st, dl, pl, pr, d.attr(act, add))
    return cached(("conv_fwd_pd", act, training, plain_weights, add) + cache_key(geo, bias),
                  lambda: create() if plain_weights else few_channels(geo, create))


PACK = os.environ.get("NETDSL_ONEDNN_PACK", "auto")
"""When a forward convolution reads a blocked copy of the weights (``format any``) instead of
netdsl's own layout. ``needed``: only where oneDNN has no direct kernel for netdsl's layout
(AVX2 hosts: im2col + GEMM, 2–3× slower; AVX-512 hosts run brgconv on it). ``auto`` (the
default): that in training, plus every layer whose weights reach :data:`PACK_TRAIN_BYTES`,
and always at inference, where the copy is made once and the blocked kernels were ~5%
faster on AVX-512 too. ``always``: everywhere. Measured in docs/performance.md (issue 14)."""

PACK_TRAIN_BYTES = int(os.environ.get("NETDSL_ONEDNN_PACK_TRAIN_BYTES", 2**20))
"""In training (``auto``), weights of at least this many bytes are packed on every host.
Why: AVX-512's brgconv does run on netdsl's plain layout, but where the weights outgrow the
L2 cache (ResNet-50's stages 3–4: 2–9 MB) it ran 1.7–2.6× slower than on the blocked copy
(512→512 3×3 on 7×7, batch 16: 21.6 → 8.4 ms forward, the per-step repack included); below
1 MB the two were within the noise (docs/performance.md)."""


def _packs(training: bool, geo) -> bool | None:
    """True: pack; None: pack only where netdsl's layout would run a slow kernel."""
    if PACK == "always" or (PACK == "auto" and not training):
        return True
    big = geo["kh"] * geo["kw"] * (geo["c"] // geo["g"]) * geo["f"] * 4 >= PACK_TRAIN_BYTES
    return True if PACK == "auto" and big else None


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

    def __init__(self, geo, bias, act, training, add=False):
        d = lib()
        self.key = ("conv_fwd", act, training, add) + cache_key(geo, bias)
        # the fused activation: a post-op of the primitive, or (:attr:`apart`) an in-place
        # eltwise call after it (eltwise.post_op_pays)
        post = act if act is None or eltwise.post_op_pays(act, geo["f"] // geo["g"]) else None
        self.apart = act if post is None else None
        post = eltwise.post_op_form(post)
        self.pd = None
        if not _packs(training, geo) and not jit_few(geo):   # netdsl's layout, where oneDNN
            # runs a direct kernel on it (and would not run the jit kernel: few_channels)
            pd = _fwd_pd(geo, bias, post, training, plain_weights=True, add=add)
            if not slow_impl(d.impl_name(pd)):
                self.pd = pd
        if self.pd is None:
            self.pd = _fwd_pd(geo, bias, post, training, add=add)
        found = None if post or add else conv_dst.choose(
            geo, d.impl_name(self.pd), descs(geo), d_dims(geo), bias, training)
        self.pd, self.dst = found or (self.pd, None)   # dst: a blocked destination (conv_dst)
        self.args = ("src", "weights", "bias", "dst") if bias else ("src", "weights", "dst")
        plain_md = weights_md(geo)
        self.md = d.pd_md(self.pd, "weights")
        self.nbytes = 0 if d.md_equal(self.md, plain_md) else d.md_size(self.md)
        self.reorder_pd = d.reorder_pd(plain_md, self.md) if self.nbytes else None
        self.scratch = max(d.scratch_size(self.pd),
                           d.scratch_size(self.reorder_pd) if self.nbytes else 0)
        self.scratch = max(self.scratch, self.dst.need if self.dst else 0)
        if self.apart:
            out = (geo["n"], geo["ho"], geo["wo"], geo["f"])
            self.scratch = max(self.scratch, eltwise.scratch_need(self.apart, out, backward=False))
        self._prims = None

    def weights(self, weight, refresh: bool):
        """The weights the primitive reads: ``weight`` itself, or its pack (refreshed when
        ``refresh`` or when the weights changed since it was made)."""
        _, reorder = self.prims()
        if reorder is None:
            return f32(weight)
        return PACKS.get(weight, self.key, self.nbytes,
                         lambda buf: reorder(f32(weight), buf), refresh)


def _fwd(geo, bias, act=None, training=True, add=False) -> _Forward:
    return cached(("conv_fwd", act, training, add) + cache_key(geo, bias),
                  lambda: _Forward(geo, bias, act, training, add))


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

    def reads(self, fwd: _Forward | None) -> bool:
        """Whether it can read the forward's pack as it is (the same blocked layout; None: a
        folded inference forward ran, conv_fold.py)."""
        return (fwd is not None and bool(self.reorder_pd) and bool(fwd.nbytes)
                and lib().md_equal(self.chosen, fwd.md))

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
        src, wei, _, dst, st, dl, pl, pr, d = descs(geo)
        def create():
            return d.pd("dnnl_convolution_backward_data_primitive_desc_create", d.engine,
                        L.CONV_DIRECT, src, d.md_any(d_dims(geo)), dst, st, dl, pl, pr,
                        _fwd_pd(geo, bias), d.attr())
        pd = few_channels(geo, create) if jit_few(geo) else strided_jit(geo, create)
        return _Blocked(pd, ("diff_dst", "weights", "diff_src"), "weights", wei)
    # the switch in the key: an in-process A/B gets both kernels (docs/performance.md)
    return cached(("conv_bwd_data", choices.STRIDED_JIT) + cache_key(geo, bias), build)


def _bwd_weights(geo, bias):   # (the bias gradient: conv_bias.py, faster)
    def build():
        src, wei, _, dst, st, dl, pl, pr, d = descs(geo)
        pd = d.pd("dnnl_convolution_backward_weights_primitive_desc_create", d.engine,
                  L.CONV_DIRECT, src, d.md_any(d_dims(geo)), None, dst, st, dl, pl, pr,
                  _fwd_pd(geo, bias), d.attr())
        return _Blocked(pd, ("src", "diff_dst", "diff_weights"), "diff_weights", wei)
    return cached(("conv_bwd_weights",) + cache_key(geo, bias), build)


def scratch_need(attrs, x_shape, filters, bias, act, training, input_grad=True) -> int:
    """Bytes of the shared scratchpad region the calls of one conv layer use (the most any of
    them needs): what the memory planner plans. Asks (and caches) the same primitive
    descriptors as the kernels, in the same thread setting, so the sizes are the ones that
    run; creates no primitive. ``act``: the fused activation (of capi.ACTIVATIONS) or
    None."""
    geo = geometry(attrs, x_shape, filters)
    lib()   # the library loaded (or a clear error) before any descriptor is asked
    if conv_fc.covers_input(geo):
        return conv_fc.scratch_need(geo, bias, act, training, input_grad)
    geo2 = _folded(geo)[0]
    with serial("conv", flops(geo2)):    # the thread setting the kernel runs it in
        fwd = _fwd(geo2, bias, act, training)
        need = fwd.scratch
        if training:
            need = max(need, _bwd_weights(geo, bias).need)
            if input_grad:
                need = max(need, _bwd_data(geo, bias).need_after(fwd))
    if training and bias:
        need = max(need, conv_bias.scratch_need(geo["n"] * geo["ho"] * geo["wo"], geo["f"]))
    return need


def pack_bytes(attrs, x_shape, filters, bias, act, training) -> int:
    """Bytes the blocked copy of one conv layer's weights holds across steps (packs.py; 0
    when oneDNN reads netdsl's layout): what the memory planner adds for it."""
    geo = geometry(attrs, x_shape, filters)
    if conv_fc.covers_input(geo):
        return 0
    geo2, s = _folded(geo)
    with serial("conv", flops(geo2)):
        fwd = _fwd(geo2, bias, act, training)
    held = conv_fold.held_bytes(geo, s, bias) if s else 0
    return held + (pack_held_bytes(fwd.nbytes) if fwd.nbytes else 0)


def impl_names(attrs, x_shape, filters, bias, act, training) -> dict:
    """The implementation oneDNN chose for each primitive of one conv layer (the primitive
    descriptors' ``impl_info_str``, e.g. ``brg:avx2`` or ``jit:avx512_core``), by pass."""
    geo = geometry(attrs, x_shape, filters)
    if conv_fc.covers_input(geo):
        return conv_fc.impl_names(geo, bias, act, training)
    d = lib()
    geo2 = _folded(geo)[0]
    with serial("conv", flops(geo2)):
        names = {"forward": d.impl_name(_fwd(geo2, bias, act, training).pd)}
        if training:
            names["backward_data"] = d.impl_name(_bwd_data(geo, bias).pd)
            names["backward_weights"] = d.impl_name(_bwd_weights(geo, bias).pd)
    return names


def conv_forward(ctx, attrs, params, inputs, act=None):
    """Same contract as the registry's conv forward; the cache is (x, geometry, the forward
    that ran, the weights it read), or conv_fc's for a window covering the input. ``act``:
    an activation (of capi.ACTIVATIONS) applied to the output (see :func:`fused_forms`)."""
    x = f32(inputs[0])
    weight = params["weight"]
    geo, s, geo2 = _geometries(attrs, x.shape, weight.shape[3])
    if conv_fc.covers_input(geo):     # one window: a matrix product (conv_fc.py)
        return conv_fc.forward(ctx, params, x, geo, act)
    out = fresh(ctx, (geo["n"], geo["ho"], geo["wo"], geo["f"]), np.float32)
    training = bool(ctx.training)
    if s:   # columns folded into channels (conv_fold.py): views of x and out
        fwd, w = _run_forward(geo2, *conv_fold.fold(geo, geo2, params, x, out, s), act, training)
        return out, (x, geo, None, None)    # (backward reorders its own weights)
    fwd, w = _run_forward(geo, params, x, out, act, training)
    return out, (x, geo, fwd, w)


_GEOS: dict = {}


def _geometries(attrs, x_shape, filters):
    """(geometry, fold factor, the geometry the forward runs) of a layer on a batch shape,
    cached: ~10 µs of Python a call otherwise (LeNet-5's inference step is ~1.5 ms). Keyed by
    the layer's attrs dict, which the entry holds, so that its id stays its own."""
    k = (id(attrs), x_shape, filters, conv_fold.FOLD)
    e = _GEOS.get(k)
    if e is None or e[0] is not attrs:
        if len(_GEOS) > 4096:    # a long process compiling many nets: start over
            _GEOS.clear()
        geo = geometry(attrs, x_shape, filters)
        geo2, s = (geo, 0) if conv_fc.covers_input(geo) else _folded(geo)
        e = _GEOS[k] = (attrs, geo, s, geo2)
    return e[1:]


def _folded(geo):
    """(the geometry the forward runs, fold factor or 0): conv_fold.py's rule."""
    s = conv_fold.factor(geo)
    return (conv_fold.folded_geometry(geo, s) if s else geo), s


def _run_forward(geo, params, x, out, act, training: bool, add: bool = False):
    """Run the forward convolution of ``geo`` from ``x`` into ``out``; (descriptor, weights
    read). Training: the optimizer updated the weights since the last step, so they are
    repacked once here (backward-data reuses the pack where it can); inference: the pack made
    at the first batch."""
    bias = "bias" in params
    with serial("conv", flops(geo)):
        fwd = _fwd(geo, bias, act, training, add=add)
        prim, _ = fwd.prims()
        w = fwd.weights(params["weight"], refresh=training)     # (packed before the
        args = (x, w, f32(params["bias"])) if bias else (x, w)   # region holds dst)
        fwd.dst.run(prim, args, out) if fwd.dst else prim(*args, out)
    if fwd.apart:
        eltwise.act_forward_inplace(fwd.apart, out)
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
    geo = geometry(attrs, x.shape, weight.shape[3])
    shape = (geo["n"], geo["ho"], geo["wo"], geo["f"])
    if inplace and _writable_f32(short, shape):
        out = short
    else:   # the plan's in-place decision does not hold for this array: a fresh copy
        out = fresh(ctx, shape, np.float32)
        np.copyto(out, short)
    _run_forward(geo, params, x, out, "relu" if relu else None, False, add=True)
    return out, None


def _writable_f32(a, shape) -> bool:
    return (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == shape
            and a.flags.c_contiguous and a.flags.writeable)


def conv_add_impl(attrs, x_shape, filters, bias, relu) -> str:
    """The implementation oneDNN chose for the fused conv + residual add (+ ReLU) of
    :func:`conv_add_forward` (``impl_info_str``)."""
    geo = geometry(attrs, x_shape, filters)
    with serial("conv", flops(geo)):
        return lib().impl_name(_fwd(geo, bias, "relu" if relu else None, False, add=True).pd)


def conv_add_scratch(attrs, x_shape, filters, bias, relu) -> tuple[int, int]:
    """(scratchpad bytes, blocked weight copy bytes) of the fused conv + add: what the memory
    planner plans for it (as :func:`scratch_need` and :func:`pack_bytes` for a plain conv)."""
    geo = geometry(attrs, x_shape, filters)
    with serial("conv", flops(geo)):
        fwd = _fwd(geo, bias, "relu" if relu else None, False, add=True)
    return fwd.scratch, pack_held_bytes(fwd.nbytes) if fwd.nbytes else 0


def fused_forms() -> dict:
    """``{activation: (forward, backward)}``: conv followed by each of capi.ACTIVATIONS in
    one call (eltwise.fused_pair), which the kernel registry offers the plan (select_fused)."""
    return {act: fused_pair(conv_forward, conv_backward, act) for act in L.ACTIVATIONS}


def conv_backward(ctx, attrs, params, cache, dout):
    """Same contract as the registry's conv backward."""
    if cache[0] is conv_fc.IP:
        return conv_fc.backward(ctx, params, cache, dout)
    x, geo, fwd, w = cache
    dout = f32(dout)
    with serial("conv", flops(geo)):
        dx, grads = _conv_backward(ctx, params, x, geo, fwd, w, dout)
    if "bias" in params:
        grads["bias"] = conv_bias.bias_grad(dout)
    return dx, grads


def _conv_backward(ctx, params, x, geo, fwd, packed, dout):
    weight = params["weight"]
    bias = "bias" in params
    grads = {"weight": np.empty(weight.shape, dtype=np.float32)}
    bw = _bwd_weights(geo, bias)
    prim, reorder = bw.prims()
    dw = bw.buffer() if reorder else grads["weight"]
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
