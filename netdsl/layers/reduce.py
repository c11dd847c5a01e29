"""Accurate sums over long axes of float32 tensors, for numpy and cupy alike.

Why: NumPy sums a non-last axis of a C-contiguous array row by row, one running total per
output element, so the rounding error of ``x.sum(axis=0)`` over M rows grows like M·ε (ε ≈ 6e-8
in float32). Batch norm reduces over N·H·W — 65,536 rows for a 32×32 map at batch 64 — and its
γ/β gradients are sums of nearly cancelling terms: these sums made a ResNet-20's float32
gradients 10–27× less accurate than they are with pairwise summation, whose error bound is
log₂(M)·ε (docs/performance.md).

How: fold the rows in halves, ``s[:h] = s[:h] + s[h:2h]`` (a row left over by an odd count is
added to row 0), until one row is left. Every fold is one vectorised add over whole rows, so it
is pairwise summation and *faster* than NumPy's row-by-row reduction for the narrow channel
counts of CNNs (C = 16…64); it allocates one buffer of half the input, reused by every fold (or
none, folding in a scratch input). On cupy one reduction kernel with float64 accumulators does
the same job in one launch instead of log₂(M).
"""
from __future__ import annotations


def sum_rows(xp, x, overwrite: bool = False, tmp=None):
    """Sum of a 2-D (M, C) or 3-D (A, M, C) array over its M axis, pairwise: returns (C,) or
    (A, C) in ``x``'s dtype with error O(log₂ M · ε · Σ|x|). With ``overwrite`` the folds run
    in ``x`` itself (a scratch array the caller no longer needs): no allocation at all. ``tmp``:
    ``(shape, dtype) -> array`` for the half-size fold buffer (e.g. a scratch temporary)."""
    if getattr(xp, "__name__", "numpy") != "numpy":
        # A GPU reduction kernel is already a tree per output element; accumulating in float64
        # makes it exact enough in one launch instead of log₂ M folds.
        return x.sum(axis=x.ndim - 2, dtype=xp.float64).astype(x.dtype, copy=False)
    flat = x.ndim == 2
    if flat:
        x = x[None]
    m = x.shape[1]
    if m == 1:
        out = x[:, 0].copy()
        return out[0] if flat else out
    h = m // 2
    if overwrite:
        buf = x
        xp.add(x[:, :h], x[:, h:2 * h], out=buf[:, :h])
    else:
        # the one allocation; later folds write into it
        buf = xp.add(x[:, :h], x[:, h:2 * h],
                     out=None if tmp is None else tmp((x.shape[0], h, x.shape[2]), x.dtype))
    if m % 2:
        buf[:, 0] += x[:, 2 * h]
    while h > 1:
        m, h = h, h // 2
        xp.add(buf[:, :h], buf[:, h:2 * h], out=buf[:, :h])
        if m % 2:
            buf[:, 0] += buf[:, 2 * h]
    out = buf[:, 0].copy()   # a copy: a view would keep the whole scratch buffer alive
    return out[0] if flat else out


def channel_sums(xp, x, overwrite: bool = False, tmp=None):
    """Per-channel (last axis) sums over every other axis, pairwise: a (C,) array. With
    ``overwrite`` (only for a C-contiguous scratch array) the folds reuse ``x``'s memory."""
    return sum_rows(xp, x.reshape(-1, x.shape[-1]), overwrite=overwrite, tmp=tmp)
