"""The im2col machinery of the NumPy convolutions: padded copies, window views, and the chunked
gather loop split over worker threads (netdsl/workspace.py parallel_for).

A window view of the padded NHWC input, indexed (N, Ho, Wo, KH, KW, C), reshapes to the im2col
matrix (N·Ho·Wo, KH·KW·C) with one copy. The fast path never makes that whole matrix: it gathers
a chunk of images' rows into a scratch buffer and multiplies it at once, while it is in cache.
"""
from __future__ import annotations

from .. import workspace
from .base import temp


def _pad(xp, x, ph, pw):
    if ph == 0 and pw == 0:
        return x
    return xp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))


def _padded(ctx, x, ph, pw, fill: bool = True):
    """``x`` with ``ph``/``pw`` zero rows/columns each side, in a temporary of this call:
    only the border strips are zeroed and the interior copied (no full zero fill). With
    ``fill=False`` the buffer is left for :func:`_pad_into` to fill image by image."""
    if ph == 0 and pw == 0:
        return x
    n, h, w, c = x.shape
    out = temp(ctx, (n, h + 2 * ph, w + 2 * pw, c), x.dtype)
    if fill:
        _pad_into(out, x, 0, n, ph, pw)
    return out


def _pad_into(out, x, i, j, ph, pw):
    """Images i:j of ``out`` = images i:j of ``x`` zero-padded (``out`` from _padded)."""
    if out is x:
        return
    h, w = x.shape[1:3]
    o = out[i:j]
    if ph:
        o[:, :ph] = 0
        o[:, ph + h:] = 0
    if pw:
        o[:, ph:ph + h, :pw] = 0
        o[:, ph:ph + h, pw + w:] = 0
    o[:, ph:ph + h, pw:pw + w] = x[i:j]


def _window_view(xp, xpad, kernel, stride, dilation, out_hw):
    """(N, Ho, Wo, KH, KW, C) view of the padded input: element [n,i,j,a,b,c] is the pixel
    under kernel offset (a, b) of output position (i, j)."""
    n, _, _, c = xpad.shape
    s_n, s_h, s_w, s_c = xpad.strides
    return xp.lib.stride_tricks.as_strided(
        xpad, shape=(n, out_hw[0], out_hw[1], kernel[0], kernel[1], c),
        strides=(s_n, s_h * stride[0], s_w * stride[1], s_h * dilation[0], s_w * dilation[1], s_c))


_CHUNK_BYTES = 1 << 20
"""Bytes of im2col columns gathered per GEMM (at least one image). Why chunks: a gathered
block that stays in the cache feeds its GEMM from there, and the whole matrix (75 MB for a
32-channel 3×3 conv on 32×32 at batch 64) is never written to memory: 1.2–1.5× faster on CIFAR
shapes, and the scratch region shrinks by the same factor. Chunks of 0.25–2 MB (about the L2
cache) measured alike; 8 MB chunks were 10–20% slower."""


def _chunk_images(n: int, bytes_per_image: int) -> int:
    """Images per chunk: about _CHUNK_BYTES of columns, at least one image."""
    return max(1, min(n, -(-_CHUNK_BYTES // max(1, bytes_per_image))))


def backward_chunk_images(n: int, rows_per_image: int, taps: int, c: int, f: int,
                          itemsize: int) -> int:
    """Images per chunk of the backward loop, whose buffers hold ``taps``·C columns (x, for dW)
    and ``taps``·F (the padded dout, for a fwdconv dx): about _CHUNK_BYTES of the wider. (A
    floor of 2·taps·C rows, so that each chunk's dW term is smaller than its input, measured
    no faster once BLAS stayed single-threaded through the step, and held 40% more memory.)"""
    return _chunk_images(n, rows_per_image * taps * max(c, f) * itemsize)




def _chunks(n: int, per: int):
    """(start, stop) image ranges of ``per`` images covering ``n``."""
    return [(i, min(n, i + per)) for i in range(0, n, per)]


def _workers(ctx, chunks) -> int:
    """Threads a chunk loop runs on (workspace.parallel_for): NumPy only."""
    return workspace.workers(len(chunks)) if ctx.xp.__name__ == "numpy" else 1


def _run(ctx, chunks, body) -> None:
    if ctx.xp.__name__ == "numpy":
        workspace.parallel_for(chunks, body)
    else:
        body(0, chunks)


def _gather(view, i, j, buf):
    """The (rows, K) column block of images i:j of a window view, copied into ``buf``."""
    block = buf[:j - i]
    block[...] = view[i:j]
    return block.reshape((j - i) * view.shape[1] * view.shape[2], -1)
