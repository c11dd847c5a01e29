"""Which oneDNN implementation a primitive runs where oneDNN's first choice is measured slow.

oneDNN lists, for each primitive description, the implementations that can run it, best
first by its own ranking; a descriptor can be moved along that list
(``dnnl_primitive_desc_next_impl``). Its ranking prefers the widest vectors and the newest
kernels, which lose on maps with few channels (the NHWC kernels vectorise over channels):
the two rules here move such primitives to the kernel measured faster, on the ISA where it
was measured. Every rule is deterministic (a function of the shapes and of the host's list,
never of a timing), so that a run picks the same kernels, and the same numbers, every time.
"""
from __future__ import annotations

import os

from .common import lib


def choose_impl(create, accept):
    """A primitive descriptor from ``create()`` moved along oneDNN's list of implementations
    (best first) to the first whose name ``accept(name)`` holds; a fresh ``create()`` (oneDNN's
    own choice) when none does. Walked by name, not by position: once a primitive of the same
    description is in oneDNN's primitive cache, a new descriptor starts at that one's
    implementation and repeats it once."""
    d = lib()
    pd = create()
    while not accept(d.impl_name(pd)):
        if d.dll.dnnl_primitive_desc_next_impl(pd) != 0:    # the list's end
            d.dll.dnnl_primitive_desc_destroy(pd)
            return create()
    return pd


JIT_FEW = os.environ.get("NETDSL_ONEDNN_JIT_FEW", "1") != "0"
"""On AVX-512 hosts, a conv with fewer than 16 channels on one side (one group, kernel
larger than 1×1) runs forward and backward-data on ``jit:avx512_core`` rather than oneDNN's
first choice, brgconv (``NETDSL_ONEDNN_JIT_FEW=0`` keeps that, for comparison). Why: brgconv
vectorises over 16 channels; LeNet-5's C3 (6→16, 5×5, batch 64) ran forward 0.20 → 0.14 ms
and backward-data 0.64 → 0.36 ms on the jit kernel, 8→16 and 12→24 3×3 convs 10–30% faster
too, while on AVX2 brgconv:avx2 stayed as fast or faster (docs/performance.md)."""


def jit_few(geo) -> bool:
    """Whether the conv of ``geo`` (conv.py's geometry) is one :data:`JIT_FEW` applies to."""
    return (JIT_FEW and geo["g"] == 1 and geo["kh"] * geo["kw"] > 1
            and min(geo["c"], geo["f"]) < 16)


def few_channels(geo, create):
    """``create()``'s conv descriptor, moved to ``jit:avx512_core`` where :func:`jit_few`
    holds and oneDNN's first choice is an AVX-512 brgconv."""
    if not jit_few(geo):
        return create()
    pd = create()
    first = lib().impl_name(pd)
    if not (first.startswith("brg") and "avx512" in first):
        return pd
    lib().dll.dnnl_primitive_desc_destroy(pd)
    return choose_impl(create, lambda name: name == "jit:avx512_core")


STRIDED_JIT = os.environ.get("NETDSL_ONEDNN_STRIDED_JIT", "1") != "0"
"""A strided conv's backward-data on at most 32 input channels runs the jit kernel of the
ISA (``jit_1x1`` for 1×1 windows, else ``jit``) rather than oneDNN's first choice,
``brgconv_strided`` (``NETDSL_ONEDNN_STRIDED_JIT=0`` keeps that, for comparison). Why: on
ResNet-20's stride-2 convs (batch 64) it ran, ms, 3×3 16→32 1.32 → 0.79 (AVX-512) and
1.81 → 1.49 (AVX2), 3×3 32→64 0.98 → 0.84 and 1.66 → 1.52, 1×1 16→32 0.50 → 0.24 and
0.50 → 0.30, 1×1 32→64 0.32 → 0.14 and 0.37 → 0.27; on ResNet-50's (128–1024 input
channels) brgconv_strided was as fast or up to 1.5× faster (docs/performance.md)."""


def strided_jit(geo, create):
    """``create()``'s backward-data descriptor, moved to the jit kernel of the first choice's
    ISA where :data:`STRIDED_JIT` applies to ``geo`` and oneDNN's first choice is
    ``brgconv_strided``."""
    if not (STRIDED_JIT and geo["g"] == 1 and geo["c"] <= 32 and max(geo["strides"]) > 1):
        return create()
    pd = create()
    first = lib().impl_name(pd)
    if not first.startswith("brgconv_strided:"):
        return pd
    lib().dll.dnnl_primitive_desc_destroy(pd)
    isa = ":" + first.split(":", 1)[1]
    return choose_impl(create, lambda name: name.startswith("jit") and name.endswith(isa))


NARROW = os.environ.get("NETDSL_ONEDNN_POOL_NARROW", "1") != "0"
"""Average-pooling backward on few channels runs the jit kernel whose vectors fit them
(:func:`narrowest`); ``NETDSL_ONEDNN_POOL_NARROW=0`` keeps oneDNN's first choice (for
comparison). Why: oneDNN's NHWC pooling kernels vectorise over channels, and the widest one
handles a map narrower than its vector badly: LeNet-5's S2 backward (6 channels, 28→14,
batch 64) took 0.36 ms with jit:avx512_core against 0.084 with jit:avx2; 3 channels, 0.29
with jit:avx2 against 0.088 with jit:sse41 (docs/performance.md). Max pooling keeps the
first choice: its backward reads the forward's workspace, laid out by the forward's kernel."""
LANES = {"avx512": 16, "avx2": 8, "avx": 8, "sse41": 4}
"""float32 lanes of a jit kernel's vectors, by the ISA its implementation name gives."""


def lanes(impl: str) -> int | None:
    """Vector lanes of a ``jit:<isa>`` implementation name, None for another kind."""
    if not impl.startswith("jit:"):
        return None
    isa = impl[4:]
    return next((v for k, v in LANES.items() if isa.startswith(k)), None)


def narrowest(create, channels: int):
    """A primitive descriptor from ``create()`` (a fresh one per call), moved along oneDNN's
    implementation list to the first jit kernel whose vectors are the narrowest that still
    hold ``channels`` (more than 8: the first choice, unmoved), when the list has one."""
    if channels > 8:   # 12 channels measured as fast on 16 lanes as on 4, slower on 8
        return create()
    want = 4 if channels <= 4 else 8
    return choose_impl(create, lambda name: lanes(name) == want)
