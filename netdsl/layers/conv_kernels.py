"""The NumPy convolution's backward machinery (layers/conv.py): the chunked rebuild of the
im2col columns for dW and a fwdconv dx (with a fused ReLU's mask and the bias gradient summed
chunk by chunk), the offset-by-offset dx, and GEMMs split over the worker threads."""
from __future__ import annotations

from ..core import workspace
from .base import fresh, temp
from .im2col import (backward_chunk_images, chunk_workers, gather_columns, image_chunks,
                     pad_into, padded_temp, run_chunks, window_view)
from .geometry import conv_geometry
from .reduce import sum_rows


def mm_rows(ctx, a, b, out=None):
    """a @ b, rows split over the worker threads on NumPy (BLAS is single-threaded there);
    into ``out`` when given (NumPy: the same values)."""
    if ctx.xp.__name__ == "numpy":
        return workspace.matmul_rows(a, b, out=out)
    return a @ b


def mm_tn_rows(ctx, a, b):
    """aᵀ @ b, summed over row shares computed by the worker threads on NumPy."""
    if ctx.xp.__name__ != "numpy":
        return a.T @ b
    m = a.shape[0]
    count = workspace.workers(m // 256)
    if count < 2:
        return a.T @ b
    bounds = [m * k // count for k in range(count + 1)]
    parts = [None] * count

    def body(k, share):
        for i, j in share:
            parts[k] = a[i:j].T @ b[i:j]
    workspace.parallel_for(list(zip(bounds, bounds[1:])), body)
    for p in parts[1:]:     # in worker order: the same sum on every run
        parts[0] += p
    return parts[0]


def col2im_gemm(ctx, dout_g, weight_g, x_shape, attrs, channels: slice, dx_pad):
    """dx_pad[..., channels] += col2im(dout_g @ weight_gᵀ), one kernel offset at a time.

    Why per offset: the (N·Ho·Wo, Cg) block of dcols that belongs to offset (a, b) is
    dout_g @ weight_g[a, b]ᵀ. Computing it as its own contiguous GEMM result and adding it to a
    shifted window of dx is ~2× faster than forming the whole dcols matrix and then adding its
    strided (a, b) slices, with the same FLOPs and 1/(KH·KW) of the temporary memory.
    """
    xp = ctx.xp
    (kh, kw), (sh, sw), (dh, dw), _, (ho, wo) = conv_geometry(attrs, x_shape)
    n = x_shape[0]
    # The images split over the worker threads: each adds into its own images of dx_pad.
    shares = image_chunks(n, -(-n // max(1, chunk_workers(ctx, image_chunks(n, 1)))))
    blocks = [temp(ctx, ((j - i) * ho * wo, weight_g.shape[2]), dx_pad.dtype) for i, j in shares]

    def body(k, share):
        for i, j in share:
            d_ij = dout_g[i * ho * wo:j * ho * wo]
            for a in range(kh):
                for b in range(kw):
                    xp.matmul(d_ij, weight_g[a, b].T, out=blocks[k])
                    rows = slice(a * dh, a * dh + sh * (ho - 1) + 1, sh)
                    cols = slice(b * dw, b * dw + sw * (wo - 1) + 1, sw)
                    dx_pad[i:j, rows, cols, channels] += blocks[k].reshape(j - i, ho, wo, -1)
    run_chunks(ctx, shares, body)


def fwdconv_view(ctx, attrs, weight, dout, x_shape, fill: bool = True):
    """For ``fwdconv``: the window view of dout zero-padded by q = (k−1)·d − p each side, and
    the flipped, transposed weights, so that dx[j] = Σₐ dpad[j + a·d] · W[k−1−a]ᵀ (dx_method)."""
    xp = ctx.xp
    n, h, w, c = x_shape
    kernel, _, dilation, pads, _ = conv_geometry(attrs, x_shape)
    q = tuple((k - 1) * d - p for k, d, p in zip(kernel, dilation, pads))
    dpad = padded_temp(ctx, dout, *q, fill=fill)
    view = window_view(xp, dpad, kernel, (1, 1), dilation, (h, w))
    wflip = xp.ascontiguousarray(weight[::-1, ::-1].transpose(0, 1, 3, 2)).reshape(-1, c)
    return view, wflip, dpad, q


def backward_chunked(ctx, attrs, weight, x, dout, dout2, method, relu_out=None, bias=False):
    """dW (and dx by ``fwdconv``) of a single-group conv whose columns were not kept: the
    columns of x (and of the padded dout) rebuilt chunk by chunk into scratch, each used at
    once. With ``relu_out`` (a fused ReLU's output) each chunk of dout is masked first, and
    with ``bias`` its pairwise sum is added up in float64. Returns (dweight, dx or None,
    dbias or None)."""
    xp = ctx.xp
    n, h, w, c = x.shape
    kernel, stride, dilation, pads, (ho, wo) = conv_geometry(attrs, x.shape)
    filters = weight.shape[3]
    xpad = padded_temp(ctx, x, *pads, fill=False)   # each worker pads its own images
    view = window_view(xp, xpad, kernel, stride, dilation, (ho, wo))
    chunks = image_chunks(n, backward_chunk_images(n, ho * wo, kernel[0] * kernel[1], c, filters,
                                              x.itemsize, method == "fwdconv",
                                              relu_out is not None))
    per, count = chunks[0][1], chunk_workers(ctx, chunks)
    k_rows = kernel[0] * kernel[1] * c
    dweight = xp.empty((k_rows, filters), dtype=dout2.dtype)
    # per worker: a column buffer, a dW term, and (worker k > 0) its own dW sum
    bufs = [temp(ctx, (per,) + view.shape[1:], x.dtype) for _ in range(count)]
    parts = [temp(ctx, dweight.shape, dweight.dtype) for _ in range(count)]
    sums = [dweight] + [temp(ctx, dweight.shape, dweight.dtype) for _ in range(count - 1)]
    dx = dview = None
    if method == "fwdconv":
        dview, wflip, dpad, q = fwdconv_view(ctx, attrs, weight, dout, x.shape, fill=False)
        dbufs = [temp(ctx, (per,) + dview.shape[1:], dout2.dtype) for _ in range(count)]
        dx = fresh(ctx, (n * h * w, c), dout2.dtype, "dx0")
    if relu_out is not None:   # per worker: the masked dout chunk, its mask, a fold buffer
        out2 = relu_out.reshape(-1, filters)
        mbufs = [temp(ctx, (per * ho * wo, filters), dout2.dtype) for _ in range(count)]
        masks = [temp(ctx, (per * ho * wo, filters), bool) for _ in range(count)]
        folds = [temp(ctx, (1, per * ho * wo // 2, filters), dout2.dtype) for _ in range(count)]
    bsums = [xp.zeros(filters, dtype=xp.float64) for _ in range(count)] if bias else None

    def body(k, share):
        for i, j in share:
            d_ij = dout2[i * ho * wo:j * ho * wo]
            if relu_out is not None:
                r = (j - i) * ho * wo
                xp.greater(out2[i * ho * wo:j * ho * wo], 0, out=masks[k][:r])
                d_ij = xp.multiply(d_ij, masks[k][:r], out=mbufs[k][:r])
            if bsums is not None:   # pairwise within the chunk, float64 across chunks
                bsums[k] += sum_rows(xp, d_ij, tmp=lambda shp, dt: folds[k][:, :shp[1]])
            pad_into(xpad, x, i, j, *pads)
            cols = gather_columns(view, i, j, bufs[k])
            if i == share[0][0]:
                xp.matmul(cols.T, d_ij, out=sums[k])
            else:
                xp.matmul(cols.T, d_ij, out=parts[k])
                sums[k] += parts[k]
            if dview is not None:
                d4 = d_ij.reshape(j - i, ho, wo, filters)
                pad_into(dpad[i:j], d4, 0, j - i, *q)
                xp.matmul(gather_columns(dview, i, j, dbufs[k]), wflip, out=dx[i * h * w:j * h * w])
    run_chunks(ctx, chunks, body)
    for k in range(1, count):   # in worker order: the same sum on every run
        dweight += sums[k]
    dbias = None
    if bsums is not None:
        dbias = sum(bsums[1:], bsums[0]).astype(dout2.dtype)
    return (dweight.reshape(weight.shape), None if dx is None else dx.reshape(x.shape),
            dbias)
