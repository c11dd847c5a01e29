"""Which buffers of a step its kernels carve from the executor's arena (runtime/carve.py):
the memory planner offers exactly these (MemoryPlan.slots) and plans the peak with them in
the arena, so that what it predicts is what the executor holds.

A kernel carves by asking ``netdsl.layers.fresh(ctx, shape, dtype, role)`` for its output
("out") or the gradient of its input k ("dx<k>"); the executor's fan-out sums ("sum<k>") are
always carved. A kernel that gains (or loses) the hook gets (or loses) its entry here;
tests/test_arena_carve.py checks that every buffer offered on the benchmark nets is taken.
"""
from __future__ import annotations

import os

ENABLED = os.environ.get("NETDSL_ARENA", "1") != "0"
"""Whether NumPy executors carve from an arena (``NETDSL_ARENA=0``: every array fresh, for
A/B measurements)."""

_ACT = ("out", "dx0")

NUMPY = {"conv": _ACT, "fc": _ACT, "relu": _ACT, "tanh": ("out",), "batchnorm": _ACT,
         "add": ("out",), "concat": ("out",), "maxpool": ("out",), "pool": ("out",)}
"""Roles the registry's own (NumPy) kernels carve, by op (layers/*.py)."""

ONEDNN = {"conv": _ACT, "fc": _ACT, "batchnorm": _ACT, "pool": _ACT, "maxpool": _ACT,
          "avgpool": _ACT, "relu": _ACT, "tanh": _ACT, "sigmoid": _ACT, "relu6": _ACT,
          "silu": _ACT, "hswish": _ACT, "hsigmoid": _ACT, "mul": ("out",), "add": ("out",),
          "concat": ("out",)}
"""Roles the oneDNN provider's kernels carve, by op (runtime/kernels/onednn/*.py)."""


def offered(st, role: str) -> bool:
    """Whether plan step ``st``'s kernels ask the arena for ``role`` (a buffer the planner
    sized exactly: the step's output or an input's size)."""
    if role.startswith("sum"):
        return True
    op = st.node.op
    if st.provider == "onednn":
        return role in ONEDNN.get(op, ())
    if st.provider != "numpy" or role not in NUMPY.get(op, ()):
        return False
    if op == "conv" and role == "dx0":   # the offsets method scatters into a padded dx
        return st.meta.get("dx") in ("pointwise", "fwdconv")
    if op == "pool" and role == "out":   # the average's output is NumPy's mean
        return st.node.attrs.get("kind", "max") == "max"
    return True
