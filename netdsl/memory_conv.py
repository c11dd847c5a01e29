"""Footprint rules of the NumPy convolution (layers/conv.py, layers/im2col.py) for the memory
planner (netdsl/memory.py): what a conv step allocates fresh, what it takes from the executor's
Scratch region (per worker thread for the chunked im2col), what its cache keeps, forward and
backward, for each d(input) formulation."""
from __future__ import annotations

from .layers.conv import conv_padding
from .layers.structure import as_pair


def _geom(st, n):
    h, w, c = st.node.in_shapes[0]
    ho, wo, f = st.node.out_shapes[0]
    return h, w, c, ho, wo, f


def _al(nbytes: int) -> int:
    """Bytes a scratch take of ``nbytes`` occupies (workspace.Scratch aligns takes)."""
    return -(-nbytes // 64) * 64 if nbytes > 0 else 0


def conv_footprint(st, n, it, training, scratch=True):
    """im2col conv (layers/conv.py). With a Scratch region the padded copy and a chunk of
    columns are scratch, the input is kept and backward rebuilds the columns chunk by chunk;
    a conv whose plan keeps its columns runs without scratch (fresh columns, cached)."""
    from .layers.conv import _chunk_images, dx_method
    from .layers.im2col import backward_chunk_images
    from .memory import Footprint
    from .plan import is_pointwise, keeps_columns
    from .workspace import workers
    a = st.node.attrs
    h, w, c, ho, wo, f = _geom(st, n)
    kh, kw = as_pair(a["kernel"])
    ph, pw = conv_padding(a)
    g = a["groups"]
    kept = keeps_columns(st)
    on_scratch = scratch and not kept
    S = _al if on_scratch else (lambda b: b)          # a scratch take, or a fresh temporary
    pad = n * (h + 2 * ph) * (w + 2 * pw) * c * it if (ph or pw) else 0
    pointwise = is_pointwise(a) and g == 1
    cols = 0 if pointwise else n * ho * wo * kh * kw * c * it
    half = S((n * ho * wo // 2) * f * it) if a["bias"] else 0   # the bias gradient's fold
    method = None if st.data_only else dx_method(a, (h, w, c))
    dx = {None: 0, "pointwise": n * h * w * c * it, "fwdconv": n * h * w * c * it,
          "offsets": n * (h + 2 * ph) * (w + 2 * pw) * c * it}[method]
    block = S(n * ho * wo * (c // g) * it)            # offsets: one kernel offset's dcols
    dh, dw = as_pair(a["dilation"])
    qh, qw = (kh - 1) * dh - ph, (kw - 1) * dw - pw
    dpad = n * (ho + 2 * qh) * (wo + 2 * qw) * f * it if (qh or qw) else 0
    out = n * ho * wo * f * it
    fp = Footprint(out=out, dx=(dx,))
    relu = bool(st.meta.get("relu"))                  # the ReLU fused into the kernel
    fp.keep_out = relu                                # its output is the mask
    chunked = g == 1 and not pointwise and not kept and (scratch or st.recompute)
    # A fused ReLU masks dout chunk by chunk inside the loop (chunked, dx by fwdconv or none);
    # otherwise the masked dout is a fresh array made first, its bool mask a scratch take.
    masked_whole = relu and not (chunked and method in (None, "fwdconv"))
    if masked_whole:
        fp.bwd_tmp += out
        if on_scratch or (g != 1 and scratch) or (pointwise and scratch):
            fp.bwd_scratch = _al(out // it)
        else:
            fp.bwd_tmp += out // it
    if g != 1 or kept or (not chunked and not pointwise):
        # Whole columns: fresh (cached when kept or grouped); the padded copy a temporary.
        if g != 1 and scratch:
            fp.fwd_scratch = _al(pad)
        else:
            fp.fwd_tmp = pad
        fp.fwd_tmp += 0 if (kept or g != 1) else cols
        fp.cache = cols if (kept or g != 1) else 0
        tail = {None: 0, "pointwise": 0, "offsets": block,
                "fwdconv": S(dpad) + S(n * h * w * kh * kw * f * it)}[method]
        if on_scratch or (g != 1 and scratch):
            fp.bwd_scratch = max(fp.bwd_scratch, half, tail)
        else:
            fp.bwd_tmp += max(half - dx, tail)
        return fp
    fp.keep_in = (0,)                                 # the input (pointwise: the columns)
    if pointwise:
        if scratch:
            fp.bwd_scratch = max(fp.bwd_scratch, half)
        else:
            fp.bwd_tmp += max(0, half - dx)
        return fp
    # Chunks of ``per`` images, one column buffer per worker thread (workspace.parallel_for)
    per = _chunk_images(n, ho * wo * kh * kw * c * it)
    nw = workers(-(-n // per))
    fp.fwd_tmp, fp.fwd_scratch = (0, _al(pad) + nw * _al(per * ho * wo * kh * kw * c * it)) \
        if scratch else (pad + cols, 0)               # no scratch: whole columns, dropped
    per = backward_chunk_images(n, ho * wo, kh * kw, c, f, it, method == "fwdconv",
                                relu and not masked_whole)
    nw = workers(-(-n // per))
    dw = S(kh * kw * c * f * it)                      # a dW term per worker, a sum per extra
    rebuilt = S(pad) + nw * S(per * ho * wo * kh * kw * c * it) + (2 * nw - 1) * dw
    if method == "fwdconv":
        rebuilt += S(dpad) + nw * S(per * h * w * kh * kw * f * it)
    if relu and not masked_whole:   # per worker: masked chunk, its mask, its bias fold
        rows = per * ho * wo
        rebuilt += nw * (S(rows * f * it) + S(rows * f) + S((rows // 2) * f * it))
        half = 0                    # the bias is summed chunk by chunk
    phases = [fp.bwd_scratch, half, rebuilt, block if method == "offsets" else 0]
    if scratch:
        fp.bwd_scratch = max(phases)
    else:   # the half fold and the rebuilt columns live before the fresh dx is made
        fp.bwd_tmp = max(half - dx, rebuilt - (0 if method == "fwdconv" else dx),
                         phases[2])
    return fp
