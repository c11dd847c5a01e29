"""A forward convolution that writes oneDNN's blocked layout, then reorders into NHWC.

Why: on AVX2, a first convolution over a single-channel image with few filters (LeNet-5's
C1: 1→6, 5×5 on 32×32) ran 0.60 ms (batch 64) and 2.35 ms (batch 256) on jit:avx2 writing
NHWC, where the 6 channels fill 6 of a vector's 8 lanes; asked for ``format any`` source and
destination, oneDNN picks the same kernel writing 8-channel blocks (``nChw8c``: the 2 padding
channels are written as zeros), 0.37 and 1.52 ms, and the reorder into NHWC costs 0.09 and
0.33 ms (docs/performance.md). The source is the image as it is (one channel: ``nchw`` and
NHWC are the same bytes). On AVX-512 the blocked form ran no faster (0.81 against 0.80 ms),
so the rule holds for AVX2 kernels only. The blocked destination lives at the start of the
provider's shared scratchpad region, the primitives' own scratchpads after it.
"""
from __future__ import annotations

import os

from . import capi as L
from .capi import Scratchpad
from .common import cached, lib, primitive, slow_impl

BLOCKED_DST = os.environ.get("NETDSL_ONEDNN_BLOCKED_DST", "1") != "0"
"""``NETDSL_ONEDNN_BLOCKED_DST=0`` keeps every convolution writing NHWC (for comparison)."""


class BlockedDst:
    """The blocked destination of a forward convolution ``pd`` and its reorder into NHWC
    (``nhwc_md``); :attr:`need` bytes of the shared region in all."""

    def __init__(self, pd, nhwc_md):
        d = lib()
        self.md = d.pd_md(pd, "dst")
        self.nbytes = d.md_size(self.md)
        self.reorder_pd = d.reorder_pd(self.md, nhwc_md)
        self.at = Scratchpad.aligned(self.nbytes)       # where the scratchpads start
        self.need = self.at + max(d.scratch_size(pd), d.scratch_size(self.reorder_pd))
        self._reorder = None

    def run(self, prim, args, out) -> None:
        """Run ``prim`` on ``args`` (all but the destination) into the blocked buffer, then
        reorder it into ``out`` (NHWC)."""
        if self._reorder is None:
            self._reorder = primitive(self.reorder_pd, ("src", "dst"))
        pad = lib().scratchpad
        pad.reserve(self.need)
        buf = pad.array(self.nbytes)
        prim(*args, buf, at=self.at)
        self._reorder(buf, out, at=self.at)


def choose(geo, first_impl: str, descs, weight_dims, bias: bool, training: bool):
    """``(pd, BlockedDst)`` for the conv of ``geo`` (conv.py's geometry and ``descs``) where
    the rule holds (inference, one input channel, fewer than 8 filters, one group, oneDNN's
    first choice an AVX2 jit kernel, and the blocked form reading the image as it is), else
    None. Not in training: there the blocked buffer (1.6 MB for LeNet-5's C1 at batch 64)
    lifted the step's peak above PyTorch's for no step time (4.53 vs 4.56 ms a step on the
    AVX2 cap, quiet, 2026-12-07)."""
    if training or not (BLOCKED_DST and geo["c"] == 1 and geo["g"] == 1 and geo["f"] < 8
                        and first_impl.startswith("jit:avx2")):
        return None
    src, _, b, dst, st, dl, pl, pr, d = descs

    def build():
        prop = L.FORWARD_TRAINING if training else L.FORWARD_INFERENCE
        pd = d.pd("dnnl_convolution_forward_primitive_desc_create", d.engine, prop,
                  L.CONV_DIRECT, d.md_any((geo["n"], 1, geo["h"], geo["w"])),
                  d.md_any(weight_dims), b if bias else None,
                  d.md_any((geo["n"], geo["f"], geo["ho"], geo["wo"])), st, dl, pl, pr,
                  d.attr())
        if (slow_impl(d.impl_name(pd)) or not d.md_equal(d.pd_md(pd, "src"), src)
                or d.md_equal(d.pd_md(pd, "dst"), dst)):
            return None
        return pd, BlockedDst(pd, dst)
    return cached(("conv_blocked_dst", training, bias) + tuple(sorted(geo.items())), build)
