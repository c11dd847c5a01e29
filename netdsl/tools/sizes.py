"""Valid input sizes: the square sides S for which every windowed layer divides exactly.

A convolution or pooling window fits a side exactly when (I − K_eff + 2P) is a multiple of the
stride S, i.e. (I − K_eff + 2P)/S + 1 is a whole number; otherwise the last rows and columns of
the input are silently dropped (floor) — AlexNet at 224 is the classic case (227 is exact).
``valid_sizes`` compiles the network at each candidate side (so concat/add mismatches and
non-positive sizes are caught by the compiler's own shape rules) and then checks exactness
layer by layer from the attributes. Pooling written with ``ceil=true`` is an explicit opt-in to
rounding and is not held to exactness.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..core import graph as G
from ..core.errors import NetdslError
from ..layers import get
from ..layers.geometry import PAIR_ARGS, conv_padding
from ..layers.pooling import pool_attrs
from ..layers.structure import pair_attrs
from ..compile.shapes import infer_shapes, resolve_auto


@dataclass
class SizeCheck:
    """One candidate side: valid, or the first layer that does not fit and its arithmetic."""
    size: int
    valid: bool
    reason: str = ""


def _windows(rec):
    """Per spatial axis (kernel_eff, stride, pad) of a conv or pooling node, or None."""
    a = rec.attrs
    if rec.op == "conv":
        p = pair_attrs(a, PAIR_ARGS)
        ks = [d * (k - 1) + 1 for k, d in zip(p["kernel"], p["dilation"])]
        return list(zip(ks, p["stride"], conv_padding(a))), False
    if "size" in a and "stride" in a and get(rec.op).downsamples:
        p = pool_attrs(a)
        return list(zip(p["size"], p["stride"], p["pad"])), p["ceil"]
    return None, False


def inexact_layer(g) -> str:
    """'' when every windowed layer of the shaped graph ``g`` divides exactly, else why not."""
    for rec in G.nodes(g):
        win, ceil = _windows(rec)
        if win is None or ceil:
            continue
        h, w = rec.in_shapes[0][:2]
        for side, (k, s, p) in zip((h, w), win):
            span = side - k + 2 * p
            if span % s:
                return (f"{rec.name} at {rec.loc}: ({side} − {k} + 2·{p})/{s} + 1 = "
                        f"{span / s + 1:g}, not whole")
    return ""


def check_size(base, size: int, channels: int, num_classes: int = 10) -> SizeCheck:
    """Compile a copy of the expanded graph ``base`` at side ``size`` and check exactness."""
    g = G.copy_graph(base)
    src = next(rec for rec in G.nodes(g) if get(rec.op).role == "source")
    src.attrs["shape"] = (size, size, channels)
    try:
        resolve_auto(g, input_shape=(size, size, channels), num_classes=num_classes)
        infer_shapes(g)
    except NetdslError as err:
        return SizeCheck(size, False, f"{err.message}" + (f" ({err.detail})" if err.detail else ""))
    why = inexact_layer(g)
    return SizeCheck(size, not why, why)


WORK_BUDGET = 500_000
"""Layer checks (sides × layers) one `sizes` call does at most, ~30 s at ~60 µs a layer
(2026-12-06, this repository's 2-core machine): every side of 1..8192 for a net of up to 61
layers, the default range 32..512 for up to ~1,000, 25 sides for a chain of 20,000 (the
range 1..8192 took ~2 h there before)."""


def valid_sizes(base, lo: int, hi: int, channels: int, num_classes: int = 10,
                near: int | None = None) -> tuple[list[SizeCheck], bool]:
    """Check the sides in [lo, hi], nearest to ``near`` first when given, else from ``lo``;
    ``base`` is an expanded graph (before shapes). Returns (checks in side order, whether
    every side was checked): a deep net checks only as many sides as WORK_BUDGET allows."""
    sides = list(range(lo, hi + 1))
    if near is not None:
        sides.sort(key=lambda s: (abs(s - near), s))
    most = max(1, WORK_BUDGET // max(1, base.number_of_nodes()))
    checks = [check_size(base, s, channels, num_classes) for s in sides[:most]]
    return sorted(checks, key=lambda c: c.size), len(sides) <= most


def nearest(checks: list[SizeCheck], target: int, count: int = 3) -> list[int]:
    """The ``count`` valid sides closest to ``target`` (ties: the smaller first)."""
    ok = [c.size for c in checks if c.valid]
    return sorted(ok, key=lambda s: (abs(s - target), s))[:count]


def parse_range(text: str) -> tuple[int, int]:
    """'32:512' → (32, 512), or a NetdslError."""
    try:
        lo, hi = (int(t) for t in text.split(":"))
    except ValueError:
        raise NetdslError(f"--range expects LO:HI like 32:512, got '{text}'") from None
    if not 1 <= lo <= hi <= 8192:
        raise NetdslError(f"--range {text} is out of range: need 1 ≤ LO ≤ HI ≤ 8192")
    return lo, hi
