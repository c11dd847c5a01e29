"""Footprint rules of the zoo's newer NumPy layers for the memory planner (netdsl/memory.py):
locally connected, transposed conv, crop, max pooling with switches, max-unpooling, LRN, leaky
ReLU, softmax and the losses softmax_xent2d and svm_loss.

Each rule is read off its kernel (netdsl/layers/<file>.py) array by array: the output (or that
it is a view of an input), what the cache keeps and owns, the temporaries alive at the call's
peak forward and backward, and the input gradients. The kernels make their temporaries in
place where they can, so that each rule is exact for every size: NumPy's elision of
temporaries (in place only for arrays of 256 KB or more) never decides a peak.
tests/test_plan_memory_layers.py checks every rule against tracemalloc, per kernel call, on
every example of every registered layer.

``RULES`` maps op -> rule(st, n, it, training) -> Footprint; memory.footprint asks here for
every op it has no rule of its own for.
"""
from __future__ import annotations

import copy

from .layers import numel
from .layers.structure import as_pair


def _fp(**kw):
    from .memory import Footprint    # memory.py imports this module: import when called
    return Footprint(**kw)


def _bytes(n, shape, it):
    return n * numel(shape) * it


def _leakyrelu(st, n, it, training):
    """One output (slope·x, then max/min with x in place); backward: dout·slope, then dout
    copied where the output is positive: the gradient and a bool mask."""
    x = _bytes(n, st.node.in_shapes[0], it)
    return _fp(out=x, keep_out=True, dx=(x,), bwd_tmp=x // it)


def _softmax(st, n, it, training):
    """The output is shifted, exponentiated and divided in place; the row max and the row sum
    (one value per row) are the temporaries, forward and backward."""
    shape = st.node.in_shapes[0]
    x, rows = _bytes(n, shape, it), _bytes(n, shape[:-1], it)
    return _fp(out=x, keep_out=True, fwd_tmp=rows, dx=(x,), bwd_tmp=rows)


def _lrn(st, n, it, training):
    """Forward: x² and its window sums (the scale, cached), then the output (cached) once x²
    is gone. Backward: t and its window sums beside the gradient."""
    x = _bytes(n, st.node.in_shapes[0], it)
    return _fp(out=x, cache=x, keep_in=(0,), keep_out=True, dx=(x,), bwd_tmp=2 * x)


def _softmax_xent2d(st, n, it, training):
    """(Also softmax_xent's: the same kernel on flat logits.) The probabilities are the cache
    (made in place); per position: the row max, the label rows (int64), the picked logit, the
    sum, its log and log p."""
    *where, k = st.node.in_shapes[0]               # (H, W, K), or (K,) for softmax_xent
    p = n * numel(tuple(where))                     # positions
    x = p * k * it
    return _fp(out=it, cache=x, fwd_tmp=max(8 * p + p * it, 4 * p * it),
               dx=(x,), bwd_tmp=8 * p + p * it)     # the copy; rows, the picked entries


def _svm_loss(st, n, it, training):
    """Margins (one full temporary, in place) and the bool mask of active ones (the cache);
    per row: the row numbers (int64) and the true-class scores."""
    x = _bytes(n, st.node.in_shapes[0], it)
    active = x // it
    return _fp(out=it, cache=active, fwd_tmp=8 * n + x + max(n * it - active, 0),
               dx=(x,), bwd_tmp=16 * n)             # backward: row numbers, active counts


def _crop(st, n, it, training):
    """The output is a view of the first input; backward zero-fills a gradient of its shape."""
    x = _bytes(n, st.node.in_shapes[0], it)
    return _fp(out_alias=0, dx=(x,) + (0,) * (len(st.inputs) - 1))


class _AsMaxPool:
    """A plan step seen as the max pooling it runs (memory.py's rule for that kernel reads
    only the node: its shapes and attrs, here with kind=max)."""

    def __init__(self, st):
        self.node = copy.copy(st.node)
        self.node.attrs = dict(st.node.attrs, kind="max")


def _maxpool_switches(st, n, it, training):
    """The max pooling's own footprint (memory.py's rule for its kernel), and the switches:
    one int64 array made after the pool's temporaries are gone, output with the values."""
    from .memory import _pool
    fp = _pool(_AsMaxPool(st), n, it, training)
    switches = 8 * _bytes(n, st.node.out_shapes[1], 1)
    fp.outs = (fp.out, switches)     # the values and the switches live apart
    fp.out += switches
    fp.fwd_tmp = max(fp.fwd_tmp - switches, 0)
    return fp


def _maxunpool(st, n, it, training):
    """Forward: the flat index (int64) and the output; overlapping windows go through
    bincount (float64 weights and counts, then the cast). The cache keeps the switches (the
    second input)."""
    from .layers.unpool import _unpool_attrs
    pooled = _bytes(n, st.node.in_shapes[0], 1)     # elements of the values
    out_e = _bytes(n, st.node.out_shapes[0], 1)
    a = _unpool_attrs(st.node.attrs)
    if all(s >= k for s, k in zip(a["stride"], a["size"])):
        tmp = 8 * pooled
    else:
        tmp = 8 * pooled + max(8 * pooled + 8 * out_e, 8 * out_e + out_e * it) - out_e * it
    # backward: row and column (int64) at once, then the offsets (in the row array) and the
    # gathered values
    return _fp(out=out_e * it, fwd_tmp=tmp, keep_in=(1,),
               dx=(pooled * it,) + (0,) * (len(st.inputs) - 1),
               bwd_tmp=max(16 * pooled, 8 * pooled + pooled * it) - pooled * it)


def _local(st, n, it, training):
    """Forward: the padded copy and the columns (P, N, K) (cached), then (the padded copy
    gone) the output, which the GEMM writes. Backward: the gradient as (P, N, F), the column
    gradients and the padded input gradient (the parameter gradients count on their own)."""
    a = st.node.attrs
    h, w, c = st.node.in_shapes[0]
    ho, wo, f = st.node.out_shapes[0]
    kh, kw = as_pair(a["kernel"])
    ph, pw = as_pair(a["pad"])
    padded = n * (h + 2 * ph) * (w + 2 * pw) * c * it
    cols = n * ho * wo * kh * kw * c * it
    res = n * ho * wo * f * it
    fp = _fp(out=res, cache=cols, fwd_tmp=max((padded if (ph or pw) else 0) - res, 0))
    if st.data_only:
        fp.dx, fp.bwd_tmp = (0,), res
    else:
        fp.dx, fp.bwd_tmp = (padded,), res + cols
    return fp


def _deconv(st, n, it, training):
    """Forward: the full canvas, one group's GEMM result and weight copy at a time, then the
    output with its bias (without one the output is a view of the canvas). The cache keeps
    the input. Backward: the canvas of the gradient, one group's columns, its weight-gradient
    block, then its weight copy (and, with groups, its d(input) block)."""
    a = st.node.attrs
    h, w, c = st.node.in_shapes[0]
    ho, wo, f = st.node.out_shapes[0]
    kh, kw = as_pair(a["kernel"])
    ph, pw = as_pair(a["pad"])
    g = a["groups"]
    canvas = n * (ho + 2 * ph) * (wo + 2 * pw) * f * it
    out = n * ho * wo * f * it
    cols = n * h * w * kh * kw * (f // g) * it
    wg = kh * kw * (c // g) * (f // g) * it
    if a["bias"]:
        fp = _fp(out=out, fwd_tmp=canvas + max(wg + cols, out) - out, keep_in=(0,))
    else:
        fp = _fp(out=canvas, fwd_tmp=wg + cols, keep_in=(0,))
    if st.data_only:
        fp.dx, fp.bwd_tmp = (0,), canvas + cols + wg
    else:
        block = n * h * w * (c // g) * it if g > 1 else 0
        fp.dx, fp.bwd_tmp = (n * h * w * c * it,), canvas + cols + wg + block
    return fp


RULES = {
    "leakyrelu": _leakyrelu,
    "softmax": _softmax,
    "lrn": _lrn,
    "softmax_xent2d": _softmax_xent2d,
    "svm_loss": _svm_loss,
    "crop": _crop,
    "maxpool_switches": _maxpool_switches,
    "maxunpool": _maxunpool,
    "local": _local,
    "deconv": _deconv,
}
