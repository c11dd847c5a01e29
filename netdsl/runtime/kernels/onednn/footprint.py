"""What the oneDNN kernels allocate: the memory planner's rules for steps of the ``onednn``
provider (netdsl/runtime/memory.py asks here for every such step).

Each rule says, for one layer on a batch of ``n``, exactly what its kernels in this package
allocate with NumPy (so tracemalloc sees it): the output, what the cache keeps (the input, the
output, oneDNN's workspace), the input gradients, and the transients of a call. Everything a
primitive needs beyond that is scratchpad: every primitive is created in oneDNN's *user*
scratchpad mode and runs on the provider's one shared region (``_lib.Scratchpad``), which the
planner adds once, at the size of the largest need of the plan's steps (:func:`held_bytes`).

Sizes that oneDNN chooses (workspaces, scratchpads, blocked-weight buffers) are asked of the
same primitive descriptors the kernels run, made in the same thread setting (both are cached
per shape, so planning then running costs no second creation).
"""
from __future__ import annotations

from ....layers import numel
from ....layers.footprint import Footprint
from . import binary, concat, conv, dense, eltwise, lrn, norm, pool
from .capi import DnnlError, Scratchpad


def fused_act(st) -> str | None:
    """The activation the step's kernel applies itself (its fused form: build_plan then
    leaves ``st.act`` None), or None."""
    return st.node.meta.get("act") if st.act is None else None


def _shape(st, n, k=0):
    return (n,) + tuple(st.node.in_shapes[k])


def _bias(st) -> bool:
    return bool(st.node.attrs.get("bias"))


def _params_bytes(st, it):
    return sum(numel(p.shape) * it for p in (st.node.param_specs or {}).values())


def footprint(st, n: int, it: int, training: bool) -> Footprint:
    """The footprint of plan step ``st`` (provider ``onednn``) for a batch of ``n``."""
    op = st.node.op
    x = n * numel(st.node.in_shapes[0]) * it
    out = n * numel(st.node.out_shapes[0]) * it
    dx = (0,) if st.data_only else (x,)      # a layer reading only the data: no d(input)
    act = fused_act(st)
    if st.meta.get(RESIDUAL):   # inference: the output is the shortcut's buffer, or a copy
        inplace = st.meta[RESIDUAL]["inplace"]
        return Footprint(out=0 if inplace else out, out_alias=1 if inplace else None)
    if op == "concat":   # oneDNN reads strided inputs in place; d(inputs): views of dout
        return Footprint(out=out, dx=(None,) * len(st.inputs))
    if op in ("conv", "fc"):
        # Forward: the output; the cache keeps the input (and the output, from which a fused
        # activation is differentiated). Backward: the activation's gradient
        # (eltwise.act_backward) is written over the output, or, for the prediction, lives
        # through the call; the blocked weights live in the scratchpad region.
        fp = Footprint(out=out, keep_in=(0,), keep_out=bool(act), dx=dx,
                       bwd_tmp_prediction=out if act else 0)
    elif op == "batchnorm":
        relu = act == "relu"
        ws = _asked(st, n, lambda m: norm.plan_sizes(_shape(st, m), float(st.node.attrs["eps"]),
                                                     training, relu)[0], x, per_example=True)
        c = st.node.in_shapes[0][-1]
        # Training: batch mean and variance (c each) and the fused ReLU's mask are cached;
        # the running-statistics update makes c-sized temporaries (three at once).
        stats = 2 * c * it if training else 0
        fp = Footprint(out=out, keep_in=(0,), cache=ws + stats, dx=(x,),
                       fwd_tmp=3 * c * it if training else 0)
    elif op in ("pool", "maxpool", "avgpool"):
        ws = _asked(st, n, lambda m: pool.plan_sizes(st.node.attrs, _shape(st, m), training)[0],
                    out, per_example=True)
        fp = Footprint(out=out, cache=ws, dx=(x,))     # max: the argmax workspace (uint8)
    elif op == "gap":   # backward is the reference's: dout / (H·W), then spread over the map
        fp = Footprint(out=out, dx=(x,), bwd_tmp=out)
    elif op == "lrn" and training and _asked(
            st, n, lambda m: int(lrn.backward_on_onednn(st.node.attrs, _shape(st, m))), 1):
        # oneDNN's backward: the cache keeps the input and the forward's workspace
        ws = _asked(st, n, lambda m: lrn.plan_sizes(st.node.attrs, _shape(st, m), training)[0],
                    x, per_example=True)
        fp = Footprint(out=out, keep_in=(0,), cache=ws, dx=(x,))
    elif op == "lrn":
        # inference (no workspace), or the NumPy backward (lrn_numpy.py): the cache keeps the
        # input and the output. A NumPy pass's chunk temporaries live through its call.
        fwd = _asked(st, n, lambda m: int(lrn.forward_on_onednn(st.node.attrs, _shape(st, m))),
                     1)
        fp = Footprint(out=out, keep_in=(0,), keep_out=training, dx=(x,),
                       fwd_tmp=0 if fwd else lrn.numpy_tmp_bytes(_shape(st, n), False),
                       bwd_tmp=lrn.numpy_tmp_bytes(_shape(st, n), True) if training else 0)
    elif op in ("relu", "tanh", "sigmoid", "relu6"):
        fp = Footprint(out=out, keep_out=True, dx=(x,))
    elif op in eltwise.FROM_INPUT:     # silu, hswish, hsigmoid: backward reads the input
        fp = Footprint(out=out, keep_in=(0,), dx=(x,))
    elif op == "add":
        # binary.py: a fresh output; each input's gradient is the incoming one itself, or with
        # the fused ReLU the masked one (one array for both), made while dout still lives.
        relu = act == "relu"
        fp = Footprint(out=out, keep_out=relu, dx=(None,) * len(st.inputs),
                       bwd_tmp=out if relu and training else 0)
    elif op == "mul":   # binary.py: the product; backward is the reference's (both grads)
        fp = Footprint(out=out, keep_in=(0, 1),
                       dx=(x, n * numel(st.node.in_shapes[1]) * it))
    else:   # a kernel this module has no rule for yet: conservative, as memory.py's default
        fp = Footprint(out=out, keep_in=tuple(range(len(st.inputs))), keep_out=True,
                       fwd_tmp=out, dx=(x,) * len(st.inputs))
    if st.act is not None:   # an activation the executor applies after the kernel (in place)
        fp.keep_out = True
    if st.meta.get(STRIDED_X):
        # The kernel reads a contiguous copy of its strided input (``common.f32``): a cache
        # that keeps the input keeps (owns) that copy; otherwise it is a forward transient.
        if fp.keep_in:
            fp.cache, fp.keep_in = fp.cache + x, ()
        else:
            fp.fwd_tmp += x
    if st.meta.get(STRIDED):
        # The contiguous copy of dout (out bytes) lives through the call, except in a fused
        # activation's backward, where it lives while that runs (before the grads exist),
        # with the activation's gradient beside it only for the prediction (not overwritten).
        if act:
            fresh = sum(d or 0 for d in fp.dx) + _params_bytes(st, it)
            both = max(fp.bwd_tmp, out + out - fresh)
            # conv/fc write the activation's gradient over their output (see above): it dies
            # inside the call. Not the add + ReLU: its masked gradient is what it passes on,
            # so it stays a fresh array (written over the output, it would outlive the
            # region the planner gives that output).
            if op in ("conv", "fc"):
                fp.bwd_tmp = max(fp.bwd_tmp, out - fresh)
                fp.bwd_tmp_prediction = both - fp.bwd_tmp
            else:
                fp.bwd_tmp = both
        else:
            fp.bwd_tmp += out
    return fp


SAFE_ELEMENTS = 2**31 - 1
"""The largest tensor (elements) oneDNN is asked to make descriptors for while planning."""


def _safe_batch(st, n: int) -> int:
    """The batch oneDNN is asked about for step ``st``: ``n``, or, where a tensor of the step
    would pass :data:`SAFE_ELEMENTS` (8 GiB of float32: beyond any step a CPU runs; oneDNN
    3.2 dies of SIGFPE making descriptors for a 224×224 ResNet-34 at batch 3·10^8, which
    `netdsl summary --batch` may be asked to plan), the largest batch that stays under it; 0
    when not even one example does."""
    shapes = list(st.node.in_shapes or ()) + list(st.node.out_shapes or ())
    per = max((numel(s) for s in shapes), default=1)
    return min(n, SAFE_ELEMENTS // max(per, 1))


def _asked(st, n: int, size_at, fallback: int, per_example: bool = False) -> int:
    """A size oneDNN reports for step ``st`` on a batch of ``n``: ``size_at(m)`` at the
    :func:`_safe_batch` ``m`` (scaled by n/m if the size grows with the batch, as workspaces
    do; scratchpads barely do). ``fallback`` (a bound) where oneDNN cannot make the
    descriptor or ``m`` is 0: planning never fails."""
    m = _safe_batch(st, n)
    if m < 1:
        return fallback
    try:
        size = size_at(m)
    except DnnlError:
        return fallback
    return -(-size * n // m) if per_example else size


def scratch_need(st, n: int, training: bool) -> int:
    """Bytes of the shared scratchpad region the calls of plan step ``st`` need (0 where
    oneDNN cannot make the descriptors: see :func:`_asked`)."""
    return _asked(st, n, lambda m: _scratch_need(st, m, training), 0)


def _scratch_need(st, n: int, training: bool) -> int:
    op, a = st.node.op, st.node.attrs
    act = fused_act(st)
    grad_in = not st.data_only
    if op == "conv" and st.meta.get(RESIDUAL):
        need = conv.conv_add_scratch(a, _shape(st, n), st.node.out_shapes[0][-1], _bias(st),
                                     st.meta[RESIDUAL]["relu"])[0]
    elif op == "conv":
        need = conv.scratch_need(a, _shape(st, n), st.node.out_shapes[0][-1], _bias(st), act,
                                 training, grad_in)
    elif op == "fc":
        k = numel(st.node.in_shapes[0])
        need = dense.scratch_need(n, k, st.node.out_shapes[0][-1], _bias(st), act, training,
                                  grad_in)
    elif op == "batchnorm":
        need = norm.plan_sizes(_shape(st, n), float(a["eps"]), training, act == "relu")[1]
    elif op in ("pool", "maxpool", "avgpool"):
        need = pool.plan_sizes(a, _shape(st, n), training)[1]
    elif op == "lrn":
        need = lrn.plan_sizes(a, _shape(st, n), training)[1]
    elif op in eltwise.ALG:
        need = eltwise.scratch_need(op, _shape(st, n), backward=training)
    elif op == "add":
        need = binary.add_scratch_need(_shape(st, n), act == "relu", training)
    elif op == "concat":
        need = concat.scratch_need(st.node.in_shapes, n)
    elif op == "gap":    # forward only on oneDNN
        need = pool.plan_sizes(pool.gap_attrs(_shape(st, n)), _shape(st, n), False)[1]
    else:
        need = 0
    if act and training and op in ("conv", "fc"):   # its backward runs act_backward first
        out_shape = (n,) + tuple(st.node.out_shapes[0])
        need = max(need, eltwise.scratch_need(act, out_shape, forward=False))
    return need


def held_bytes(plan, n: int, training: bool) -> int:
    """Bytes the provider holds across steps once the oneDNN steps of ``plan`` have run on a
    batch of ``n``: the shared scratchpad region (the most any step needs, aligned) and the
    blocked weight copies of its convolutions (packs.py, one per layer): what
    ``workspace.held_bytes()`` then counts for them."""
    need, packed, asked = 0, 0, {}
    for st in plan:
        if st.provider != "onednn":
            continue
        # steps alike ask alike: one descriptor query per kind of step (a chain of 100,000
        # equal layers asked 100,000 times, 2 s)
        key = (st.node.op, repr(sorted(st.node.attrs.items())), repr(st.node.in_shapes),
               repr(st.node.out_shapes), fused_act(st), st.data_only,
               repr(st.meta.get(RESIDUAL)))
        if key not in asked:
            asked[key] = (scratch_need(st, n, training), pack_bytes(st, n, training))
        need = max(need, asked[key][0])
        packed += asked[key][1]
    return Scratchpad.held_bytes(need) + packed


def pack_bytes(st, n: int, training: bool) -> int:
    """Bytes of the blocked weight copy plan step ``st`` holds (0: none, or oneDNN cannot
    make the descriptor)."""
    if st.node.op != "conv":
        return 0
    if st.meta.get(RESIDUAL):
        return _asked(st, n, lambda m: conv.conv_add_scratch(
            st.node.attrs, _shape(st, m), st.node.out_shapes[0][-1], _bias(st),
            st.meta[RESIDUAL]["relu"])[1], 0)
    return _asked(st, n, lambda m: conv.pack_bytes(
        st.node.attrs, _shape(st, m), st.node.out_shapes[0][-1], _bias(st), fused_act(st),
        training), 0)


STRIDED = "onednn_strided_dout"
"""``Step.meta`` key: the step's incoming gradient is a strided view, which its kernels copy
into a contiguous array (``common.f32``) before oneDNN can read it."""


STRIDED_X = "onednn_strided_input"
"""``Step.meta`` key: the step's input is a strided view, which its kernels copy."""


def _strided_output(producer, n: int) -> bool:
    """Whether ``producer``'s output is a strided view (NumPy kernels, checked in
    tests/test_plan_memory_onednn.py): a crop's is a window of its input. (A locally
    connected layer's GEMM writes a contiguous output.)"""
    op = producer.node.op
    if op == "crop":
        h, w, _ = producer.node.in_shapes[0]
        th, tw, _ = producer.node.out_shapes[0]
        return (th > 1 and tw != w) or (n > 1 and th * tw != h * w)
    return False


def _strided_gradient(consumer, n: int, strided_in: bool) -> bool:
    """Whether the gradient ``consumer`` hands back to its input is a strided view (for a
    batch of ``n``; ``strided_in``: whether its own incoming gradient is). These are facts
    about the NumPy kernels (tests/test_plan_memory_onednn.py checks them against the arrays):
    a concat's is a channel slice of its own gradient; GAP's is its broadcast copied in 'K'
    order (N, C, H, W in memory); a pooling that pads or overhangs, or a padded locally
    connected layer, slices its padded gradient; an add hands its own incoming gradient on
    (with a fused ReLU the masked one, a fresh array)."""
    op = consumer.node.op
    if op == "add":
        return strided_in and not (consumer.act or consumer.node.meta.get("act"))
    if op == "concat":
        return len(consumer.inputs) > 1
    if op == "gap":
        h, w, c = consumer.node.in_shapes[0]
        return h * w > 1 and c > 1
    if op in ("pool", "maxpool", "avgpool", "maxpool_switches") and consumer.provider == "numpy":
        from ....layers.pooling import pool_fast_path, pool_geometry
        h, w, c = consumer.node.in_shapes[0]
        attrs = dict(consumer.node.attrs, kind=consumer.node.attrs.get("kind", "max"))
        size, stride, pad, out_hw, ext = pool_geometry(attrs, (n, h, w, c))
        if attrs["kind"] == "avg" and pool_fast_path((n, h, w, c), size, stride, pad,
                                                               out_hw):
            return False                  # spread over the tiles by a reshape: contiguous
        return _window_is_strided(n, h, w, ext)
    if op == "local":
        from ....layers.local import LOCAL_PAIRS
        from ....layers.structure import pair_attrs
        h, w, _ = consumer.node.in_shapes[0]
        ph, pw = pair_attrs(consumer.node.attrs, LOCAL_PAIRS)["pad"]
        return _window_is_strided(n, h, w, (h + 2 * ph, w + 2 * pw))
    return False


def _window_is_strided(n, h, w, ext) -> bool:
    """Whether dx_pad[:, p0:p0 + h, p1:p1 + w, :] of an (n, *ext, c) array is strided."""
    e0, e1 = ext
    return (h > 1 and e1 != w) or (n > 1 and e0 * e1 != h * w)


def prepare(plan, n: int, training: bool) -> int:
    """Mark the oneDNN steps of ``plan`` whose input is a strided view, and those whose
    incoming gradient is one (a single reader that hands back one; several readers' gradients
    are summed into a fresh array); return :func:`held_bytes`."""
    readers: dict = {}
    for st in plan:
        for j, _ in st.inputs:
            readers.setdefault(j, []).append(st)
    index = {id(st): i for i, st in enumerate(plan)}
    strided = [False] * len(plan)
    for i in range(len(plan) - 1, -1, -1):       # readers come later in the plan
        got = readers.get(i, [])
        strided[i] = (training and len(got) == 1
                      and _strided_gradient(got[0], n, strided[index[id(got[0])]]))
        st = plan[i]
        if st.provider == "onednn":
            st.meta[STRIDED] = strided[i]
            st.meta[STRIDED_X] = bool(st.inputs) and _strided_output(plan[st.inputs[0][0]], n)
    return held_bytes(plan, n, training)


RESIDUAL = "onednn_residual"
"""``Step.meta`` key: the conv also adds the shortcut (its second input) and maybe applies
ReLU, as oneDNN post-ops (netdsl/runtime/residual.py): ``{"relu": bool, "inplace": bool}``;
in place, its output is the shortcut's buffer."""
