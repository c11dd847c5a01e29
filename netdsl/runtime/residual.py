"""Inference plans: a residual join fused into the oneDNN convolution that feeds it.

``conv → add(·, shortcut) → relu`` becomes one oneDNN call, ``relu(conv(x) + shortcut)``:
the add as a ``sum`` post-op (the convolution adds its result to what its destination
holds) and the ReLU as an eltwise post-op. The add and the ReLU steps stay in the plan as
views of the conv's output (no kernel, no buffer), so every other step keeps its index.

The destination starts as the shortcut: where no step after the conv reads the shortcut
(every other reader ran before it) and its buffer is a fresh activation (not the network
input, not a view of another tensor), the conv writes into the shortcut's own buffer
(``inplace``); else into a copy. Why: in ResNet-20 inference (b=256, AVX2) the nine adds and
the ReLUs after them took ~12% of the step, each a full memory pass over a map that the conv
had just written.

Inference only (no caches, so no backward), oneDNN convolutions only, two-input adds of equal
shapes. The memory planner reads the same decisions (``Step.meta``), so what it plans is what
runs.
"""
from __future__ import annotations

import os
from functools import partial

from .kernels.onednn.footprint import RESIDUAL
from .plan import ALIAS, Step

FUSE_RESIDUAL = os.environ.get("NETDSL_FUSE_RESIDUAL", "1") != "0"
"""Inference executors (and the memory planner's inference plans) fuse the residual adds;
``NETDSL_FUSE_RESIDUAL=0`` keeps them apart (for comparison)."""

FRESH = ("conv", "batchnorm", "relu", "add", "pool", "maxpool", "avgpool")
"""Ops whose output is a buffer of its own (or, for an add/relu fused here, the conv's):
a shortcut from one of them may be overwritten in place once nobody else reads it."""


def _readers(plan: list[Step]) -> dict:
    out: dict = {}
    for i, st in enumerate(plan):
        for j, p in st.inputs:
            out.setdefault(j, []).append(i)
    return out


def _conv_ok(plan, c: int, a: int) -> bool:
    st = plan[c]
    return (st.node.op == "conv" and st.provider == "onednn" and st.act is None
            and not st.node.meta.get("act") and st.consumers == 1 and st.spec.outputs == 1
            and not st.meta and plan[a].inputs.count((c, 0)) == 1)


def _owner(plan, s: int) -> int:
    """The step whose buffer step ``s``'s output is (through the views made here)."""
    while plan[s].meta.get(ALIAS):
        s = plan[s].inputs[0][0]
    return s


def fuse_residual(plan: list[Step]) -> int:
    """Fuse every eligible ``conv → add (→ relu)`` of an inference ``plan`` in place (see the
    module docstring). Returns how many adds were fused."""
    from .kernels.onednn.conv import conv_add_forward
    readers = _readers(plan)
    # what a loss head reads is returned to the caller (the predictions): never overwritten
    results = {j for st in plan if st.spec.role == "loss" for j, _ in st.inputs}
    fused = 0
    for a, st in enumerate(plan):
        if st.node.op != "add" or len(st.inputs) != 2 or st.act is not None \
                or st.node.in_shapes[0] != st.node.in_shapes[1]:
            continue
        # The later conv of the two (the shortcut must exist before the conv runs)
        cands = [(plan_i, k) for k, (plan_i, port) in enumerate(st.inputs)
                 if port == 0 and _conv_ok(plan, plan_i, a)
                 and st.inputs[1 - k][0] < plan_i]
        if not cands:
            continue
        c, k = max(cands)
        s = st.inputs[1 - k]
        nxt = readers.get(a, [])
        # the ReLU after the join: fused into the add by the compiler (fuse_activations), or
        # a step of its own
        own_relu = st.node.meta.get("act") == "relu"
        relu = own_relu or (st.consumers == 1 and len(nxt) == 1
                            and plan[nxt[0]].node.op == "relu" and plan[nxt[0]].act is None
                            and len(plan[nxt[0]].inputs) == 1)
        owner = _owner(plan, s[0])
        inplace = (s[1] == 0 and plan[s[0]].spec.outputs == 1
                   and plan[owner].node.op in FRESH and plan[owner].spec.role != "source"
                   and s[0] not in results
                   and all(r < c for r in readers.get(s[0], []) if r != a))
        conv = plan[c]
        conv.inputs = conv.inputs + [s]
        conv.meta[RESIDUAL] = {"relu": relu, "inplace": inplace}
        conv.forward = partial(conv_add_forward, relu=relu, inplace=inplace)
        conv.backward = None
        readers.setdefault(s[0], []).append(c)
        readers[s[0]].remove(a)
        st.inputs = [(c, 0)]
        _make_view(st)
        if relu and not own_relu:
            _make_view(plan[nxt[0]])
        fused += 1
    return fused


def _view_forward(ctx, attrs, params, inputs):
    return inputs[0], None


def _make_view(st: Step) -> None:
    """The step now passes its (first) input through: the fused conv did its work."""
    st.meta[ALIAS] = True
    st.forward, st.backward = _view_forward, None
