"""Which oneDNN implementation each convolution (and LRN) of a plan runs: the name its primitive
descriptor reports (``impl_info_str``), for `ONEDNN_VERBOSE`-free checks that no convolution
falls back to im2col + GEMM (``gemm``) or the reference loops (``ref``) on this host's ISA
(tests/test_onednn_impls.py and tests/test_onednn_lrn.py run it natively and capped with
ONEDNN_MAX_CPU_ISA=AVX2)."""
from __future__ import annotations

from . import conv, lrn
from .conv_fc import IP
from .common import slow_impl
from .footprint import fused_act


def conv_impls(plan, n: int, training: bool) -> dict:
    """``{node name: {pass: implementation}}`` for the oneDNN conv steps of ``plan`` on a
    batch of ``n`` (passes: forward, and in training backward_data and backward_weights).
    Creates primitive descriptors only (the same, cached, that the kernels run)."""
    out = {}
    for st in plan:
        if st.provider != "onednn" or st.node.op != "conv":
            continue
        names = conv.impl_names(st.node.attrs, (n,) + tuple(st.node.in_shapes[0]),
                                st.node.out_shapes[0][-1], bool(st.node.attrs.get("bias")),
                                fused_act(st), training)
        if st.data_only:       # the first conv computes no d(input)
            names.pop("backward_data", None)
        out[st.node.name] = names
    return out


def lrn_impls(nodes, n: int, training: bool) -> dict:
    """``{node name: {pass: implementation}}`` for the LRN nodes among ``nodes`` (graph
    records, e.g. ``[st.node for st in plan if st.provider == "onednn"]``) on a batch of
    ``n`` (passes: forward, and in training backward): oneDNN's names, or
    ``numpy:window_sums`` where that pass runs the NumPy kernel because oneDNN's would be
    ``ref`` (lrn.py)."""
    return {node.name: lrn.impl_names(node.attrs, (n,) + tuple(node.in_shapes[0]), training)
            for node in nodes if node.op == "lrn"}


def slow(name: str) -> bool:
    """Whether an implementation name is a slow fallback: im2col + GEMM or reference loops.
    A conv whose one window covers its input runs as an inner product (conv_fc.py: a GEMM
    of the input as it is, nothing gathered), reported as ``inner_product:<impl>``: that
    GEMM is the problem's own fast kernel, not a fallback; a reference loop still counts."""
    if name.startswith(IP + ":"):
        return "ref" in name
    return slow_impl(name)
