"""LRN in NumPy for the passes where oneDNN 3.2 would run its reference loops (``ref:any``):
the backward on AVX2 and below (0.3–0.9 s for an AlexNet LRN at batch 32, docs/performance.md)
and, on any ISA, the forward and backward of channel counts its jit kernels do not take (not a
multiple of 8 on AVX2, of 16 on AVX-512; vectors).

    s = k + α' · Σ_window x²,   y = x · s^−β,
    dx = dy · s^−β − 2α'β · x · Σ_window' (dy · y / s)

where window' is the window with its two sides swapped (the registry's kernel,
netdsl/layers/lrn.py, derives it). The backward recomputes s from x rather than caching it:
the forward can stay oneDNN's jit kernel and the cache stays two arrays (x and y). The data
is walked in chunks of pixels small enough that the chunk temporaries and the chunk's inputs
stay in the core's L2, so the ~20 elementwise passes run from cache rather than memory, split
over the worker threads (``workspace.parallel_for``; NumPy releases the GIL).
"""
from __future__ import annotations

import numpy as np

from ....core import workspace

IMPL = "numpy:window_sums"
"""The name :func:`netdsl.runtime.kernels.onednn.lrn.impl_names` reports for these kernels."""

CHUNK = 65536
"""Elements per chunk and temporary (256 KB of float32). Why this size: fewer, larger chunks
pay less Python overhead per element; larger ones fall out of L2. On AlexNet's two LRN
backwards at batch 32 (AVX2 cap, 2 threads, under load) 16,384 took 81 and 43 ms, 65,536
36–73 and 19–45, 262,144 38 and 22, the whole array in one go 43 and 25."""

SPLIT_BYTES = 1 << 20
"""Below this much input a second thread costs more than it saves (workspace.split_rows's
threshold)."""

FWD_BUFS, BWD_BUFS = 2, 3
"""Chunk temporaries per worker of the forward and the backward."""


def _geometry(shape):
    """(pixels, channels, pixels per chunk, chunk count, workers) of a batch of ``shape``."""
    c = shape[-1]
    rows = int(np.prod(shape[:-1]))
    per = max(1, min(rows, CHUNK // c))
    chunks = -(-rows // per)
    count = workspace.workers(chunks) if rows * c * 4 >= SPLIT_BYTES else 1
    return rows, c, per, chunks, count


def tmp_bytes(shape, bufs: int) -> int:
    """Bytes of temporaries a pass with ``bufs`` chunk buffers per worker allocates for
    float32 ``shape``, its output aside."""
    _, c, per, _, count = _geometry(shape)
    return count * bufs * per * c * 4


def _window_sum(v, out, c: int, before: int, after: int) -> None:
    """out[p, j] = Σ v[p, j − before … j + after] over the existing channels of each pixel p,
    for ``v`` and ``out`` flat (pixels × ``c`` channels, contiguous).

    Why flat: a shifted slice of a (pixels, c) array is strided in both dimensions, and NumPy
    buffers such operands (3–5× slower than the contiguous loop, and a copy of each). The flat
    shifts also add the neighbouring pixel's last (first) channels to the first (last) ones;
    those edge channels are then summed again, column by column (strided 1-D, unbuffered)."""
    np.copyto(out, v)
    before, after = min(before, c - 1), min(after, c - 1)
    for shift in range(1, before + 1):
        np.add(out[shift:], v[:-shift], out=out[shift:])
    for shift in range(1, after + 1):
        np.add(out[:-shift], v[shift:], out=out[:-shift])
    v2, out2 = v.reshape(-1, c), out.reshape(-1, c)
    for j in sorted(set(range(before)) | set(range(c - after, c))):
        lo, hi = max(0, j - before), min(c - 1, j + after)
        np.copyto(out2[:, j], v2[:, lo])
        for i in range(lo + 1, hi + 1):
            np.add(out2[:, j], v2[:, i], out=out2[:, j])


def _scale(x, s, t, c, size, alpha, k) -> None:
    """s = k + α'·Σ_window x² (t: a temporary)."""
    np.multiply(x, x, out=t)
    _window_sum(t, s, c, size // 2, (size - 1) // 2)
    s *= alpha
    s += k


def _pow(s, beta) -> None:
    """s^−β in place, as exp(−β·log s): NumPy's float32 exp and log are vectorised on AVX2,
    its pow is not."""
    np.log(s, out=s)
    s *= -beta
    np.exp(s, out=s)


def _fwd_chunk(x, y, bufs, c, size, alpha, beta, k) -> None:
    s, t = bufs
    _scale(x, s, t, c, size, alpha, k)
    _pow(s, beta)
    np.multiply(x, s, out=y)


def _bwd_chunk(x, y, dy, dx, bufs, c, size, alpha, beta, k) -> None:
    s, t, w = bufs
    _scale(x, s, t, c, size, alpha, k)
    np.multiply(dy, y, out=t)
    t /= s                                   # t = dy · y / s
    _window_sum(t, w, c, (size - 1) // 2, size // 2)
    _pow(s, beta)
    np.multiply(dy, s, out=dx)
    w *= x
    w *= 2 * alpha * beta
    dx -= w


def _run(arrays, nbufs, chunk, *args) -> None:
    """``chunk(*chunks of arrays, bufs, c, *args)`` over the chunks of whole pixels of
    ``arrays`` (same shape, channels last, C-contiguous; the last is written), each chunk
    flat, split over the workers."""
    rows, c, per, chunks, count = _geometry(arrays[0].shape)
    flat = [a.reshape(-1) for a in arrays]
    # every worker's temporaries made here, before any runs: the peak is the same each call
    bufs = [np.empty((nbufs, per * c), dtype=np.float32) for _ in range(count)]

    def body(worker, share):
        for i in share:
            a, b = i * per * c, min(rows, (i + 1) * per) * c
            chunk(*(f[a:b] for f in flat), [buf[:b - a] for buf in bufs[worker]], c, *args)

    if count == 1:
        body(0, range(chunks))
    else:
        workspace.parallel_for(list(range(chunks)), body)


def lrn_forward_numpy(x, size: int, alpha: float, beta: float, k: float):
    """LRN across ``size`` channels of float32 ``x`` (C-contiguous, channels last); α' =
    ``alpha`` (already divided by n where the layer says so)."""
    y = np.empty_like(x)
    _run((x, y), FWD_BUFS, _fwd_chunk, size, alpha, beta, k)
    return y


def lrn_backward_numpy(x, y, dy, size: int, alpha: float, beta: float, k: float):
    """d(input) of LRN from the forward's input ``x``, output ``y`` and the incoming gradient
    ``dy`` (float32, C-contiguous, same shape, channels last); α' as in the forward."""
    dx = np.empty_like(x)
    _run((x, y, dy, dx), BWD_BUFS, _bwd_chunk, size, alpha, beta, k)
    return dx
