"""The compiled plan: a bound model's graph as a flat list of kernel calls.

Each :class:`Step` knows its node, the kernel functions chosen for it
(:func:`netdsl.runtime.kernels.select`), where its inputs come from (plan index and output port), how
many inputs read it (so the executor drops a tensor as soon as its last reader has run, in
training as in inference: whatever backward needs is held by the caches) and two decisions the
compiler takes per layer:

* ``act``: an activation fused into the step (``fuse_activations``): applied to the step's own
  fresh output in place (its registry entry's ``inplace`` form); its backward differentiates
  it from that output. Where the provider has a fused kernel for it (``kernels.select_fused``:
  oneDNN's conv/fc + ReLU/tanh/sigmoid post-op, BN+ReLU), that kernel does both and ``act``
  is left None.
* ``recompute``: a NumPy convolution whose im2col matrix is larger than its input keeps the
  *input* for backward and rebuilds the columns there, instead of caching the columns
  (kh·kw times the input's size). One more copy per backward; the memory of every such layer's
  columns is never held across the step.

A NumPy conv followed by a ReLU gets the conv's own fused kernel (the ReLU applied chunk by
chunk, ``meta['relu']``), and records how its backward computes d(input) (``meta['dx']``).
``run_forward``/``run_backward`` reset the executor's Scratch region (netdsl/core/workspace.py)
before each kernel call.

The memory planner (netdsl/runtime/memory.py) reads the same plan, so what it predicts is what runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..core import graph as G
from ..layers import get
from ..core import workspace
from ..layers.base import temp
from ..layers.conv import dx_method
from ..layers.geometry import conv_is_pointwise


ALIAS = "alias_of_input"
"""``Step.meta`` key: the step's output is its first input itself (its work was fused into
the producer: netdsl/runtime/residual.py); it runs no kernel and owns no buffer."""


@dataclass
class Step:
    node: G.Node
    spec: object
    inputs: list               # [(producer index in plan, port)]
    consumers: int             # how many inputs read this step's outputs
    forward: object = None     # the kernel chosen for this node
    backward: object = None
    provider: str = "numpy"
    act: str | None = None     # fused activation applied in place to the output
    recompute: bool = False    # conv: cache the input, rebuild im2col in backward
    cols_exceed_input: bool = False   # a NumPy conv whose im2col matrix is not a free view
    data_only: bool = False    # reads only the network input: no d(input) needed
    meta: dict = field(default_factory=dict)


def resolve_provider(kernels: str, xp=None, dtype=None) -> str:
    """'auto' → onednn when that provider can run here, else numpy; other names pass through.
    Delegates to ``netdsl.runtime.kernels.resolve`` where the kernels package provides it."""
    from . import kernels as K
    resolve = getattr(K, "resolve", None)
    if resolve is not None:
        return resolve(kernels, xp, dtype)
    if kernels != "auto":
        return kernels
    available = getattr(K, "available", None)
    return "onednn" if available is not None and available("onednn") else "numpy"


def build_plan(g, *, dtype, kernels: str = "numpy", xp=None) -> list[Step]:
    """The steps of graph ``g`` in topological order, kernels chosen for ``xp``/``dtype``."""
    from .kernels import select, select_fused
    provider = resolve_provider(kernels, xp, dtype)
    order = G.nodes(g)
    index = {rec.name: i for i, rec in enumerate(order)}
    uses = {rec.name: 0 for rec in order}
    for rec in order:
        for src, _ in rec.inputs:
            uses[src] += 1
    steps = []
    for rec in order:
        spec = get(rec.op)
        in_shapes, act = list(rec.in_shapes or ()), rec.meta.get("act")
        fused = act and select_fused(spec, rec.attrs, in_shapes, dtype, provider, act)
        if fused:  # the provider applies the activation inside the layer's kernel (post-op)
            (fwd, bwd, chosen), act = fused, None
        else:
            fwd, bwd, chosen = select(spec, rec.attrs, in_shapes, dtype, provider)
        reference_fused = act and chosen == "numpy" and spec.fused.get(act)
        if reference_fused:   # e.g. the NumPy conv applies the ReLU chunk by chunk
            (fwd, bwd), fused_act, act = reference_fused, act, None
        st = Step(rec, spec, [(index[s], p) for s, p in rec.inputs], uses[rec.name],
                  fwd, bwd, chosen, act=act)
        if reference_fused:
            st.meta[fused_act] = True     # the footprint rule reads it (meta["relu"])
        st.cols_exceed_input = chosen == "numpy" and _conv_cols_exceed_input(rec)
        st.recompute = st.cols_exceed_input
        steps.append(st)
    for st in steps:
        st.data_only = bool(st.inputs) and all(steps[j].spec.role == "source"
                                               for j, _ in st.inputs)
        if st.node.op == "conv" and st.provider == "numpy":
            # How backward computes d(input) (layers/conv.py dx_method); bench shows it
            st.meta["dx"] = None if st.data_only else dx_method(st.node.attrs,
                                                                st.node.in_shapes[0])
    return steps


def _conv_cols_exceed_input(rec: G.Node) -> bool:
    """True for a single-group conv whose im2col matrix is not a free view of its input."""
    if rec.op != "conv" or rec.attrs["groups"] != 1:
        return False
    return not conv_is_pointwise(rec.attrs)


# --------------------------------------------------------------------------------------------
# Running one step: the kernel plus the plan's decisions.

def keeps_columns(st: Step) -> bool:
    """A NumPy conv whose plan caches its im2col columns (``recompute`` switched off): its
    kernel runs without scratch, since the columns outlive the call."""
    return st.cols_exceed_input and not st.recompute


def _call_ctx(st: Step, ctx):
    """The context of one kernel call: the Scratch region reset (every temporary of the
    previous call is dead), or no scratch for a conv that keeps its columns."""
    if ctx.scratch is None:
        return ctx
    ctx.scratch.reset()
    return replace(ctx, scratch=None) if keeps_columns(st) else ctx


def run_forward(st: Step, ctx, params, ins):
    """(out, cache) of one step, honouring ``recompute`` and ``act``."""
    ctx = _call_ctx(st, ctx)
    out, cache = st.forward(ctx, st.node.attrs, params, ins)
    if st.recompute and ctx.training and cache[1] is not None:
        cache = (cache[0], None, ins[0]) + tuple(cache[3:])   # drop the columns, keep x
    if st.act is not None:
        out, act_cache = _act_forward(ctx, st.act, out)
        cache = (cache, act_cache)
    return out, cache


def run_backward(st: Step, ctx, params, held: list):
    """(dinputs, dparams) of one step, undoing ``act`` then ``recompute``. ``held`` is
    ``[cache, dout]``, emptied here: so that the caller holds no reference and the incoming
    gradient is freed as soon as the fused activation has replaced it by the masked one."""
    dout = held.pop()
    cache = held.pop()
    ctx = _call_ctx(st, ctx)   # as its forward ran
    if st.act is not None:
        cache, act_cache = cache
        dout = _act_backward(ctx, st.act, act_cache, dout)
        del act_cache
    return st.backward(ctx, st.node.attrs, params, cache, dout)


def _act_backward(ctx, act: str, act_cache, dout):
    if act == "relu":   # dout · (out > 0) with the mask in scratch: one fresh array
        xp = ctx.xp
        mark = ctx.scratch.mark() if ctx.scratch is not None else 0
        mask = temp(ctx, act_cache.shape, bool)
        dx = xp.empty(act_cache.shape, dtype=dout.dtype)

        def rows(a, b):
            xp.greater(act_cache[a:b], 0, out=mask[a:b])
            xp.multiply(dout[a:b], mask[a:b], out=dx[a:b])
        _split_rows(ctx, act_cache, rows)
        if ctx.scratch is not None:
            ctx.scratch.rewind(mark)   # the mask is dead: the layer's backward reuses it
        return dx
    return get(act).backward(ctx, {}, {}, act_cache, dout)[0][0]


def _act_forward(ctx, act: str, out):
    inplace = get(act).inplace
    if inplace is not None:
        # The producer's output is fresh and read by nobody else (the fusion pass checked):
        # overwrite it. The activation's cache is its output, as its registry entry's is.
        _split_rows(ctx, out, lambda a, b: inplace(ctx.xp, out[a:b]))
        return out, out
    return get(act).forward(ctx, {}, {}, [out])


def _split_rows(ctx, like, fn) -> None:
    """``fn(a, b)`` over ranges of ``like``'s first axis, split over the worker threads."""
    workspace.split_rows(ctx.xp, like.shape[0], like.nbytes, fn)


def add_input_grads(plan, douts: list, st, dins, arena=None) -> None:
    """Add a step's input gradients ``dins`` into ``douts`` (one slot per step, a tuple per
    port for a step with several outputs), summing where a tensor fans out to several readers
    (out of place: a layer may hand the same array to several inputs; into the executor's
    ``arena`` buffer "sum<k>" where the memory planner placed one)."""
    for k, ((j, port), d) in enumerate(zip(st.inputs, dins)):
        if d is None:
            continue
        if plan[j].spec.outputs == 1:
            douts[j] = d if douts[j] is None else summed(douts[j], d, arena, k)
        else:
            slot = list(douts[j]) if douts[j] is not None else \
                [None] * len(plan[j].node.out_shapes)
            slot[port] = d if slot[port] is None else summed(slot[port], d)
            douts[j] = tuple(slot)


def summed(a, b, arena=None, k: int = 0):
    """``a + b`` in a C-ordered array: the arena's buffer for the step's input ``k`` when
    there is one, else a fresh array. Two NumPy batches of one shape are added split over the
    worker threads (a residual block's input gets two full-map gradients per step: in
    ResNet-20 the nine sums were ~4% of a training step on one thread); the same values as
    ``a + b`` either way (one rounding per element)."""
    import numpy as np   # the arena exists on NumPy executors only
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)) or a.shape != b.shape \
            or a.ndim == 0:
        return a + b
    out = arena.take(f"sum{k}", a.shape, a.dtype) \
        if arena is not None and a.dtype == b.dtype else None
    if out is None:
        out = np.empty(a.shape, dtype=np.result_type(a, b))
    workspace.split_rows(np, a.shape[0], out.nbytes,
                         lambda i, j: np.add(a[i:j], b[i:j], out=out[i:j]))
    return out
