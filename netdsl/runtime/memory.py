"""The memory planner: what a training step or an inference batch of a plan holds, when.

It walks the executor's plan (netdsl/runtime/plan.py) exactly as the executor does — forward in order,
dropping a tensor once its last reader has run; backward in reverse, dropping each cache and
incoming gradient after its step — with buffers instead of arrays. Every buffer has a size and a
lifetime [first step, last step]; from those it derives

* the **planned peak**: the largest sum of live buffers plus the step's own workspace
  (im2col columns, padded copies, the temporaries of an element-wise expression), which is what
  ``tracemalloc`` measures for a step (parameters excluded, parameter gradients included);
* an **arena layout**: offsets for the long-lived buffers (activations, caches, gradients) by
  first-fit over their lifetimes, so that buffers whose lifetimes do not overlap share memory.

What each layer allocates is described by its registry entry's ``footprint`` hook
(netdsl/layers/footprint.py: bytes of its output or whether it is a view of an input, what its
cache keeps, its workspace forward and backward, whether its input gradients are fresh or views
of the incoming one). A layer without one gets a conservative default (fresh output, cache
keeps inputs and output). Steps whose kernel comes from the oneDNN provider follow that
provider's rules (netdsl/runtime/kernels/onednn/footprint.py),
and the peak includes the scratchpad region its primitives share, held across steps; a NumPy
executor's Scratch region (netdsl/core/workspace.py: the largest temporaries of any one kernel call)
is held too and planned likewise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.graph import nodes, records
from ..layers import numel
from ..layers.footprint import Footprint, aligned
from .arena import layout_arena, layout_slots
from .carving import ENABLED as ARENA, offered
from .plan import ALIAS


def footprint(st, n: int, it: int, training: bool, scratch: bool = True) -> Footprint:
    """The footprint of plan step ``st`` for a batch of ``n`` with ``it``-byte elements;
    ``scratch``: the executor gives its kernels a Scratch region (NumPy executors do). A
    NumPy step follows its layer's own ``footprint`` hook (its registry entry); a oneDNN step
    its provider's rules."""
    if st.meta.get(ALIAS):           # fused into its producer: a view of it
        return Footprint(out_alias=0, dx=(None,))
    if st.provider == "onednn":     # the provider's own rules, next to its kernels
        from .kernels.onednn.footprint import footprint as onednn_footprint
        return onednn_footprint(st, n, it, training)
    rule = st.spec.footprint if st.provider == "numpy" else None
    if rule is not None:
        fp = rule(st, n, it, training, scratch)
    else:   # a layer (or provider) without a rule: fresh output, the cache keeps everything
        x = n * numel(st.node.in_shapes[0]) * it if st.node.in_shapes else 0
        out = n * numel(st.node.out_shapes[0]) * it
        fp = Footprint(out=out, keep_in=tuple(range(len(st.inputs))), keep_out=True,
                       fwd_tmp=out, dx=(x,) * len(st.inputs))
    if st.act is not None:      # fused activation: in place forward; its cache is the output
        fp.keep_out = True
    return fp


@dataclass
class MemoryPlan:
    peak: int                    # bytes: the most a step holds at once (planned)
    arena: int                   # bytes: long-lived buffers laid out by lifetime
    at: str                      # where the peak is: "forward <node>" / "backward <node>"
    gradients: int               # bytes of parameter gradients (part of a training peak)
    kept: int = 0                # bytes alive when forward ends: what backward will read
    held: int = 0                # bytes held across steps on purpose (part of peak)
    scratch: int = 0             # of which the NumPy executor's Scratch region
    offsets: dict = field(default_factory=dict)   # buffer id -> arena offset
    carved: int = 0              # bytes: the executor's arena (part of peak; runtime/carve.py)
    slots: dict = field(default_factory=dict)     # (step, role) -> (bytes, born, died):
    steps: int = 0               # the buffers the executor may carve (runtime/carve.py)


class _Sim:
    """Buffers with reference counts; tracks the live total, the peak and lifetimes."""

    def __init__(self):
        self.size, self.refs, self.born, self.died = {}, {}, {}, {}
        self.live = self.peak = self.t = 0
        self.at = ""
        self.trace: list = []   # (bytes held, where) at each step

    def new(self, nbytes: int) -> int | None:
        if nbytes <= 0:
            return None
        b = len(self.size)
        self.size[b], self.refs[b], self.born[b] = nbytes, 0, self.t
        self.live += nbytes
        return b

    def ref(self, b):
        if b is not None:
            self.refs[b] += 1

    def unref(self, b):
        if b is None:
            return
        self.refs[b] -= 1
        if self.refs[b] == 0:
            self.live -= self.size[b]
            self.died[b] = self.t

    def touch(self, extra: int, where: str):
        self.trace.append((self.live + extra, where))
        if self.live + extra > self.peak:
            self.peak, self.at = self.live + extra, where
        self.t += 1


def plan_memory(plan, batch: int, *, itemsize: int = 4, training: bool = True,
                scratch: bool = True, arena: bool | None = None) -> MemoryPlan:
    """Simulate the executor on ``plan`` for one batch; see the module docstring. ``scratch``:
    the executor owns a Scratch region (a NumPy executor does): its size, the most any one
    kernel call takes, is held for the whole step and added to the peak. ``arena``: it carves
    outputs and gradients from its arena (runtime/carve.py; default: a NumPy executor does
    unless NETDSL_ARENA=0), held for the whole step, and ``slots`` lists them."""
    arena = (ARENA and scratch) if arena is None else arena
    s = _Sim()
    persistent = _providers(plan, batch, training)      # before the footprints: it marks steps
    fps = [footprint(st, batch, itemsize, training, scratch) for st in plan]
    region = max([fp.fwd_scratch for fp in fps] + [0])
    if training:
        region = max([region] + [fp.bwd_scratch for fp in fps])
        if scratch:   # a fused ReLU's backward mask (bool) is a scratch take of its own call
            region = max([region] + [aligned(fp.out // itemsize) for st, fp in zip(plan, fps)
                                     if st.act == "relu"])
    # value[i]: step i's output buffer, or for several outputs one buffer per port: the
    # executor holds them together (a tuple) until the step's last reader has run, then each
    # lives as long as the caches that keep it (SegNet's switches and pooled values apart)
    value: list = [None] * len(plan)
    cache: list = [()] * len(plan)
    remaining = [st.consumers for st in plan]
    heads = [i for i, st in enumerate(plan) if st.spec.role == "loss"]
    logits_at = _logits_index(plan, heads)
    roles: dict = {}   # (step, role) -> buffer: what the executor carves from its arena

    def port(j, p):
        return value[j][p] if fps[j].outs else value[j]
    for i, (st, fp) in enumerate(zip(plan, fps)):
        ins = [port(j, p) for j, p in st.inputs]
        if fp.out_alias is not None:
            value[i] = ins[fp.out_alias] if ins else None
            s.ref(value[i])
        elif fp.outs:
            value[i] = [s.new(b) for b in fp.outs]
            for b in value[i]:
                s.ref(b)
        else:
            value[i] = s.new(fp.out)
            s.ref(value[i])
            if value[i] is not None and i != logits_at and st.spec.role != "loss" \
                    and arena and offered(st, "out"):
                roles[(i, "out")] = value[i]   # not what forward returns to the caller
        own = s.new(fp.cache)
        s.touch(fp.fwd_tmp, f"forward {st.node.name}")
        mine = value[i] if fp.outs else [value[i]]
        held = [own] + [ins[k] for k in fp.keep_in] + (list(mine) if fp.keep_out else [])
        if training:
            for b in held:
                s.ref(b)
            cache[i] = held
        else:
            s.ref(own)
            s.unref(own)
        for j, _ in st.inputs:
            remaining[j] -= 1
            # The prediction (the main head's input) is the step's result: the executor
            # returns it, and the caller holds it through backward (a segmentation net's
            # per-pixel logits are as large as any activation).
            if remaining[j] == 0 and j != logits_at:
                for b in (value[j] if fps[j].outs else [value[j]]):
                    s.unref(b)
    if not training:
        size, offsets = layout_arena(s)
        peak, at, carved = _with_arena(s, roles)
        return MemoryPlan(peak + persistent + region, size, at, 0,
                          held=persistent + region, scratch=region, carved=carved, offsets=offsets,
                          **_carve(s, roles))
    kept = s.live
    dout = [None] * len(plan)
    grads = 0
    for i in range(len(plan) - 1, -1, -1):
        st, fp = plan[i], fps[i]
        if st.spec.role == "source" or (dout[i] is None and i not in heads):
            for b in cache[i]:
                s.unref(b)
            continue
        if st.act is not None:
            # The masked gradient replaces dout (both live with the mask for a moment); then
            # the activation's output is let go before the layer's own backward.
            mask = 0 if scratch and st.act == "relu" else fp.out // itemsize
            s.touch(fp.out + mask, f"backward {st.node.name}")
            cache[i] = [b for b in cache[i] if b != value[i]]
            s.unref(value[i])
        pgrad = sum(numel(p.shape) * itemsize for p in (st.node.param_specs or {}).values()
                    if p.trainable)
        grads += pgrad
        s.new(pgrad)                                     # kept: the step's result
        fresh = [s.new(d) if d else None for d in (fp.dx or ())]
        if arena:
            roles.update(((i, f"dx{k}"), b) for k, b in enumerate(fresh)
                         if b is not None and offered(st, f"dx{k}")
                         and s.size[b] == batch * numel(st.node.in_shapes[k]) * itemsize)
        s.touch(fp.bwd_tmp + (fp.bwd_tmp_prediction if i == logits_at else 0),
                f"backward {st.node.name}")
        for b in cache[i]:
            s.unref(b)
        got = []
        for (j, _), d, nb in zip(st.inputs, fp.dx or (), fresh):
            g = nb if d else (dout[i] if d is None else None)
            s.ref(g)
            got.append((j, g))
        # The step has returned: its incoming gradient lives on only through views of it
        # (run_backward let it go), not while the fan-out sums below are made.
        s.unref(dout[i])
        dout[i] = None
        for k, ((j, port), (_, g)) in enumerate(zip(st.inputs, got)):
            if g is None:
                continue
            if dout[j] is not None:                      # fan-out: a + b into a new buffer
                # of the tensor's size (a gradient may be a view of a larger, padded one)
                total = s.new(batch * numel(plan[j].node.out_shapes[port]) * itemsize)
                if not fps[j].outs and arena:
                    roles[(i, f"sum{k}")] = total
                s.touch(0, f"backward {st.node.name}")
                s.ref(total)
                s.unref(dout[j])
                s.unref(g)
                g = total
            dout[j] = g
    size, offsets = layout_arena(s)
    peak, at, carved = _with_arena(s, roles)
    return MemoryPlan(peak + persistent + region, size, at, grads, kept,
                      held=persistent + region, scratch=region, carved=carved, offsets=offsets,
                      **_carve(s, roles))


def _with_arena(s, roles: dict) -> tuple[int, str, int]:
    """(peak, where, arena bytes) of the step when the buffers ``roles`` are carved from the
    executor's arena (runtime/carve.py): the arena is held for the whole step, the other
    buffers come and go as before, so the peak is the arena plus the most the others hold at
    once (above the simulation's peak where the carved buffers peak at another time)."""
    if not roles:
        return s.peak, s.at, 0
    slots = {k: (s.size[b], s.born[b], s.died.get(b, s.t)) for k, b in roles.items()}
    size, _ = layout_slots(slots, s.t)
    change = [0] * (s.t + 2)
    for nbytes, born, died in slots.values():   # held at the steps born <= t < died
        change[born] += nbytes
        change[died] -= nbytes
    carved, other, at = 0, -1, s.at
    for t, (held, where) in enumerate(s.trace):
        carved += change[t]
        if held - carved > other:
            other, at = held - carved, where
    return size + max(other, 0), at, size


def _carve(s, roles: dict) -> dict:
    """What the executor may carve from its arena (runtime/carve.py): the outputs, fresh input
    gradients and fan-out sums of the steps, by (step, role), with their bytes and lifetimes.
    Caches and parameter gradients stay fresh arrays: the caller keeps the gradients past the
    step."""
    return {"slots": {key: (s.size[b], s.born[b], s.died.get(b, s.t)) for key, b in roles.items()},
            "steps": s.t}


def _logits_index(plan, heads) -> int | None:
    """The plan index of the main head's input (as verify.main_head chooses the head: the
    largest weight, the first such), or None without heads."""
    if not heads:
        return None
    best = max(range(len(heads)),
               key=lambda k: (plan[heads[k]].node.attrs.get("weight", 1.0), -k))
    return plan[heads[best]].inputs[0][0]


def _providers(plan, batch: int, training: bool) -> int:
    """Let the oneDNN provider's rules see the whole plan (its kernels copy an incoming
    gradient that is a strided view) and return what the plan's kernels hold across steps
    (netdsl/core/workspace.py): that provider's shared scratchpad region."""
    if not any(st.provider == "onednn" for st in plan):
        return 0
    from .kernels.onednn.footprint import prepare
    return prepare(plan, batch, training)


def beyond_addressable(g, batch: int, itemsize: int) -> str | None:
    """Why the graph cannot be planned: the first tensor (a batch of outputs, or a parameter)
    of more bytes than a 64-bit address space holds; None when every one fits."""
    limit = 2 ** 63 - 1
    for rec in records(g):      # source order; no topological sort needed to find one
        for shape in rec.out_shapes or ():
            if batch * numel(shape) * itemsize > limit:
                return f"{rec.name}'s output for batch {batch} exceeds 2^63 bytes"
        for name, ps in (rec.param_specs or {}).items():
            if numel(ps.shape) * itemsize > limit:
                return f"{rec.name}.{name} exceeds 2^63 bytes"
    return None


def _placeholder(zero, shape, rec, name: str):
    """A broadcast zero of ``shape``; a located user error when a dimension is past what NumPy
    can index (legal in a .net file, e.g. FC(10^30)), instead of NumPy's ValueError."""
    if any(d > np.iinfo(np.intp).max for d in shape):
        from ..core.errors import NetdslError
        raise NetdslError(f"cannot plan the memory of {rec.name} ({rec.op}): its '{name}' has "
                          f"shape {tuple(shape)}, past what an array can hold", rec.loc,
                          hint="use smaller layer sizes; `netdsl check` validates the file "
                               "without planning memory")
    return np.broadcast_to(zero, shape)


def placeholder_params(g, dtype=np.float32) -> dict:
    """Broadcast zeros in every parameter's shape (no memory), for planning without weights; a
    located NetdslError when a shape is beyond what NumPy can index (a legal program can ask
    for FC(10^15), whose counts the summary still prints)."""
    from ..core.errors import NetdslError
    zero = np.zeros((), dtype=dtype)
    params = {}
    for rec in nodes(g):
        for k, ps in (rec.param_specs or {}).items():
            try:
                params.setdefault(rec.name, {})[k] = np.broadcast_to(zero, ps.shape)
            except ValueError:
                raise NetdslError(f"{rec.name}: its {k} of shape {'×'.join(map(str, ps.shape))} "
                                  f"is too large to plan memory for", rec.loc,
                                  hint="use fewer units or filters") from None
    return params


def memory_table(g, batch: int, *, dtype=np.float32, passes=None, kernels: str = "auto") -> dict:
    """Planned peaks (bytes) of a training step and an inference batch of the graph ``g`` under
    the pipelines ``passes`` selects: what `netdsl summary` prints. No weights are allocated:
    the passes run on placeholder (broadcast zero) weights, which only BN folding reads."""
    from ..core.graph import copy_graph
    from ..compile.model import BoundModel
    from .plan import build_plan
    too_big = beyond_addressable(g, batch, np.dtype(dtype).itemsize)
    if too_big:
        # NumPy cannot even describe such a tensor (no machine could hold it): no plan.
        return {"batch": batch, "dtype": np.dtype(dtype).name, "unplanned": too_big}
    zero = np.zeros((), dtype=dtype)
    params = {rec.name: {k: _placeholder(zero, ps.shape, rec, k)
                         for k, ps in rec.param_specs.items()}
              for rec in records(g) if rec.param_specs}
    model = BoundModel(copy_graph(g), params, dtype=dtype)
    model.optimize("train", passes)
    it = np.dtype(dtype).itemsize
    train = plan_memory(build_plan(model.graph, dtype=dtype, kernels=kernels), batch,
                        itemsize=it, training=True)
    # what for_inference does, in place: the training model is not needed again (a second
    # copy of a 100,000-node graph costs seconds)
    model.optimize("infer", passes)
    plan = build_plan(model.graph, dtype=dtype, kernels=kernels)
    from .residual import FUSE_RESIDUAL, fuse_residual
    if FUSE_RESIDUAL:   # as Executor.for_inference
        fuse_residual(plan)
    infer = plan_memory(plan, batch, itemsize=it, training=False)
    return {"batch": batch, "dtype": np.dtype(dtype).name,
            "train_peak_bytes": train.peak, "train_peak_at": train.at,
            "train_gradient_bytes": train.gradients, "train_arena_bytes": train.arena,
            "infer_peak_bytes": infer.peak, "infer_peak_at": infer.at,
            "infer_arena_bytes": infer.arena}
