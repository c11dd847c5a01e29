"""A forward convolution with few filters run with pairs of columns folded into channels.

Why: oneDNN's NHWC (and blocked) forward kernels vectorise over output channels, so a map of
6 channels (LeNet-5's C1: 1→6, 5×5 on 32×32) fills 6 of a vector's 16 lanes on AVX-512 and
the kernel runs at ~40% of its speed. Read with the width split into pairs of columns — the
NHWC batch ``(N, H, W, C)`` as ``(N, H, W/2, 2C)``, the output ``(N, Ho, Wo, F)`` as
``(N, Ho, Wo/2, 2F)``: the same bytes, no copy — the same convolution is one with ``2C``
input and ``2F`` output channels and a kernel ⌈(KW+1)/2⌉ wide, whose weights are the
original ones placed per (output column parity, input column parity) with zeros between:

    W'[ky, j, q·C + c, p·F + f] = W[ky, 2j + q − p, c, f]   (0 where 2j + q − p is off the kernel)

Batch 256, one thread: C1 0.81 → 0.49 ms on jit:avx512_core and 1.85 → 1.42 ms (with the
blocked-destination reorder it replaces) on jit:avx2; with its tanh 1.19 → 0.85 and
2.58 → 2.05 ms (docs/performance.md). The zeros cost 20% more multiply-adds (3 columns of 2
for 5), the lanes pay twice that back. In training too, where only the forward is folded (the
backward passes run on the plain layout, backward-data reordering its own weights): LeNet-5's
training step 4.33 → 4.03 ms capped to AVX2, 2.85 → 2.47 ms natively (docs/performance.md,
"Training steps: bias gradient, in-place activation gradients, folded C1").
``NETDSL_ONEDNN_FOLD=0`` turns it off (for comparison). The folded weights and bias live in
the provider's pack store (packs.py), written in place: made once per weight version (each
training step), refreshed when the weights change, counted by the memory planner
(:func:`held_bytes`).
"""
from __future__ import annotations

import math
import os
import weakref

import numpy as np

from . import choices, eltwise
from .packs import PACKS
from .packs import held_bytes as pack_held_bytes

FOLD = os.environ.get("NETDSL_ONEDNN_FOLD", "1") != "0"
"""``NETDSL_ONEDNN_FOLD=0`` runs every inference convolution unfolded (for comparison)."""
MAX_CHANNELS = 16
"""Folded only up to this many input channels (measured: 16→8 3×3 on 32×32 still 7% faster)."""


def lanes() -> int:
    """float32 lanes of the vectors oneDNN's kernels use here (16 on AVX-512, 8 on AVX2)."""
    global _LANES
    if _LANES is None:
        _LANES = choices.lanes(eltwise.forward_impl("relu")) or 8
    return _LANES


_LANES: int | None = None


def few_filters(c: int, f: int) -> bool:
    """Whether ``f`` filters over ``c`` channels leave enough lanes idle to pay for the zeros:
    doubled they still fit one vector (AVX-512: 8→8 5×5 on 32×32, 7.4 → 4.7 ms; AVX2 lost
    30% on it), or one input channel with fewer filters than lanes (C1: faster on both)."""
    return 2 * f <= lanes() or (c == 1 and f < lanes())


def factor(geo) -> int:
    """2 where the forward convolution of ``geo`` (conv_geometry.geometry) runs folded, else 0:
    one group, stride 1, no dilation, even input and output widths, few filters
    and input channels, a kernel at least 3 wide, and padding across the width that the
    folded convolution can express (a right padding of at least 0 pairs)."""
    if not (FOLD and geo["g"] == 1 and geo["c"] <= MAX_CHANNELS
            and geo["kw"] >= 3 and few_filters(geo["c"], geo["f"])):
        # (multiply-adds grow by 2⌈(KW+1)/2⌉/KW: 1.2 for 5 columns, 1.33 for 3, 2 for 1 or 2)
        return 0
    if geo["strides"] != (1, 1) or geo["dil"] != (0, 0) or geo["w"] % 2 or geo["wo"] % 2:
        return 0
    return 2 if _pads(geo, 2)[2] >= 0 else 0


def _pads(geo, s: int) -> tuple[int, int, int]:
    """(r, left, right) padding of the folded convolution: the original's left padding is
    ``s·left − r`` columns (0 ≤ r < s), the right one what the output width then leaves."""
    left = -(-geo["pl"][1] // s)
    r = s * left - geo["pl"][1]
    kw = (geo["kw"] - 1 + s - 1 + r) // s + 1
    right = geo["wo"] // s - 1 + kw - geo["w"] // s - left
    return r, left, right


def folded_geometry(geo, s: int) -> dict:
    """The geometry of the folded convolution (``s`` columns per pixel)."""
    r, left, right = _pads(geo, s)
    return dict(geo, w=geo["w"] // s, c=geo["c"] * s, f=geo["f"] * s,
                kw=(geo["kw"] - 1 + s - 1 + r) // s + 1, wo=geo["wo"] // s,
                pl=(geo["pl"][0], left), pr=(geo["pr"][0], right))


def fold_weights(weight: np.ndarray, s: int, r: int = 0, into=None) -> np.ndarray:
    """W' of the module docstring from netdsl's ``(KH, KW, C, F)`` weights; ``r``: the
    columns of padding the folded convolution adds on the left beyond the original's.
    Written into ``into`` (float32, W's folded shape) when given: no array is made."""
    kh, kw, c, f = weight.shape
    kw2 = (kw - 1 + s - 1 + r) // s + 1
    if into is None:
        into = np.empty((kh, kw2, s * c, s * f), dtype=np.float32)
    out = into.reshape(kh, kw2, s, c, s, f)       # ky, j, q, c, p, f: a view
    out.fill(0.0)
    for j in range(kw2):
        for q in range(s):
            for p in range(s):
                kx = s * j + q - p - r
                if 0 <= kx < kw:
                    out[:, j, q, :, p, :] = weight[:, kx]
    return into


def _held(source: np.ndarray, tag, shape, make) -> np.ndarray:
    """A float32 array of ``shape`` derived from ``source`` by ``make(into)``, which writes
    it into the array given (no temporary: in training it is remade every step), kept in the
    pack store beside ``source`` and remade when it changes."""
    nbytes = math.prod(shape) * 4

    def fill(buf):
        make(buf.view(np.float32).reshape(shape))
    buf = PACKS.get(source, tag, nbytes, fill, False)
    # the same array object every call while the pack lives: the convolution's own pack of
    # these weights (packs.py) is keyed by the array it reads
    k = (id(source), tag)
    held = _VIEWS.get(k)
    if held is None or held[0] is not buf:
        for dead in [key for key, v in _VIEWS.items() if v[2]() is None]:
            del _VIEWS[dead]
        held = _VIEWS[k] = (buf, buf.view(np.float32).reshape(shape), weakref.ref(source))
    return held[1]


_VIEWS: dict = {}


def fold(geo, g2, params: dict, x: np.ndarray, out: np.ndarray, s: int):
    """(params, x, out) of the folded convolution of geometry ``g2`` (:func:`folded_geometry`
    of ``geo``): views of ``x`` and ``out`` and the folded weights (and bias) from the pack
    store."""
    w = params["weight"]
    p2 = {"weight": _held(w, ("fold", s), (g2["kh"], g2["kw"], g2["c"], g2["f"]),
                          lambda into: fold_weights(np.asarray(w), s, _pads(geo, s)[0], into))}
    if "bias" in params:
        b = params["bias"]
        p2["bias"] = _held(b, ("fold_bias", s), (g2["f"],),
                           lambda into: np.copyto(into.reshape(s, -1), np.asarray(b)))
    return p2, _view(x, (geo["n"], g2["h"], g2["w"], g2["c"])), \
        _view(out, (geo["n"], g2["ho"], g2["wo"], g2["f"]))


def _view(a: np.ndarray, shape) -> np.ndarray:
    """``a`` seen with ``shape``, never a copy (the convolution writes ``out`` through it;
    the kernels hand C-contiguous arrays, which reshape as views)."""
    v = a.reshape(shape)
    if not np.may_share_memory(v, a):      # (reshape(copy=False) needs NumPy 2.1)
        raise RuntimeError("conv_fold: a folded view would be a copy")
    return v


def held_bytes(geo, s: int, bias: bool) -> int:
    """Bytes the folded weights (and bias) hold in the pack store."""
    g2 = folded_geometry(geo, s)
    nbytes = pack_held_bytes(4 * g2["kh"] * g2["kw"] * g2["c"] * g2["f"])
    return nbytes + (pack_held_bytes(4 * g2["f"]) if bias else 0)
