"""A convolution whose window covers its whole input (no padding, no dilation, one group: a
1×1 output, as LeNet's C5 or a classifier written as a conv) run as oneDNN's inner product.

Why: such a conv is one matrix product of the flattened NHWC input, (N, H·W·C), with the
weights, whose (KH, KW, C, F) layout read as (KH·KW·C, F) is exactly netdsl's fc layout; the
convolution kernels treat it as a sliding window with a single position and ran LeNet-5's
C5 (16→120, 5×5 on 5×5) 3–5× slower than the inner product of the same sizes (forward
0.18 ms against 0.035 ms at batch 64, AVX-512; docs/performance.md). Nothing is gathered:
the inner product reads the input and the weights as they are (``x64:gemm:jit``, a GEMM with
no im2col; with ``format any`` weights oneDNN's brgemm kernel ran no faster and
backward-weights stayed on the GEMM on AVX2).
"""
from __future__ import annotations

from . import dense
from .common import f32

IP = "inner_product"
"""First item of the cache of a conv run here (conv.conv_backward dispatches on it), and the
prefix of the implementation names it reports (impls.py)."""


def covers_input(geo) -> bool:
    """Whether the conv of ``geo`` (conv.py's geometry) has one window covering its input."""
    return (geo["g"] == 1 and geo["kh"] == geo["h"] and geo["kw"] == geo["w"]
            and geo["ho"] == 1 and geo["wo"] == 1 and geo["pl"] == (0, 0)
            and geo["pr"] == (0, 0) and geo["dil"] == (0, 0))


def _flat(params) -> dict:
    """The conv's parameters as the fc's: the weights viewed as (KH·KW·C, F)."""
    w = params["weight"]
    return dict(params, weight=w.reshape(-1, w.shape[3]))


def forward(ctx, params, x, geo, act):
    """(output (N, 1, 1, F), cache) of the conv as an inner product, ``act`` a post-op."""
    out, cache = dense.fc_forward(ctx, {}, _flat(params), [x], act=act)
    return out.reshape(geo["n"], 1, 1, geo["f"]), (IP, cache)


def backward(ctx, params, cache, dout):
    """(dinputs, dparams) of :func:`forward`: the fc's, the weight gradient as (KH, KW, C, F)."""
    dins, grads = dense.fc_backward(ctx, {}, _flat(params), cache[1],
                                    f32(dout).reshape(dout.shape[0], -1))
    grads["weight"] = grads["weight"].reshape(params["weight"].shape)
    return dins, grads


def scratch_need(geo, bias, act, training, input_grad) -> int:
    """Bytes of scratchpad its inner-product calls need (dense.scratch_need)."""
    k = geo["kh"] * geo["kw"] * geo["c"]
    return dense.scratch_need(geo["n"], k, geo["f"], bias, act, training, input_grad)


def impl_names(geo, bias, act, training) -> dict:
    """``{pass: "inner_product:<implementation>"}`` (dense.impl_names)."""
    k = geo["kh"] * geo["kw"] * geo["c"]
    return {p: f"{IP}:{name}"
            for p, name in dense.impl_names(geo["n"], k, geo["f"], bias, act, training).items()}
