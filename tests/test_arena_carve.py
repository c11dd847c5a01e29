"""The executor's arena (netdsl/runtime/carve.py): outputs, input gradients and fan-out sums
carved from one region at the memory planner's offsets.

The reference is the same executor with every array fresh (``carver = None``, what
``NETDSL_ARENA=0`` runs): losses, logits and gradients must be bitwise equal over several
steps, in training and inference, on the NumPy and oneDNN kernels. A buffer the planner laid
out with a wrong lifetime would be overwritten while still read, and the numbers would differ.
The carving itself is checked on the arrays: every output the planner offered is a view of the
region, and every buffer offered was taken (runtime/carving.py lists the kernels' hooks).
"""
from __future__ import annotations

import numpy as np
import pytest

from netdsl.layers import Ctx, fresh
from netdsl.runtime import kernels
from netdsl.runtime.carve import Carver
from netdsl.runtime.executor import Executor
from test_zoo import compile_small

NETS = ["lenet5", "resnet20", "cs231n", "inception_small"]
PROVIDERS = ["numpy"] + (["onednn"] if kernels.available("onednn") else [])
BATCH = 4


def _zoo():
    """Every other net of the zoo at its reduced size (multi-output pooling, crops, auxiliary
    heads, LRN, locally connected layers, dropout): slow, 1–20 s each."""
    from test_zoo import SMALL
    for name in sorted(set(SMALL) - set(NETS)):
        for provider in PROVIDERS:
            yield pytest.param(name, provider, marks=pytest.mark.slow, id=f"{name}-{provider}")


def _executor(g, provider, arena):
    ex = Executor(g, seed=0, kernels=provider)
    if not arena:
        ex.carver = None
    return ex


def _run(g, classes, provider, arena):
    """Two SGD steps, an evaluation on the training executor, then two inference batches:
    every number a caller sees, copied."""
    ex = _executor(g, provider, arena)
    rng = np.random.default_rng(0)
    seen = []
    for _ in range(2):
        x = rng.standard_normal((BATCH, *ex.input_shape)).astype(np.float32)
        y = rng.integers(0, classes[-1], size=(BATCH, *classes[:-1]))   # per pixel: SegNet
        r = ex.forward(x, y, training=True)
        grads = ex.backward()
        seen += [np.asarray(r.loss).copy(), r.logits.copy()]
        seen += [grads[n][k].copy() for n in sorted(grads) for k in sorted(grads[n])]
        for n in grads:
            for k, d in grads[n].items():
                ex.params[n][k] -= np.float32(0.01) * d
    seen.append(ex.forward(x, training=False).logits.copy())
    inf = ex.for_inference()
    if not arena:
        inf.carver = None
    for _ in range(2):
        x = rng.standard_normal((BATCH, *ex.input_shape)).astype(np.float32)
        seen.append(inf.forward(x, training=False).logits.copy())
    return seen, ex, inf


@pytest.mark.parametrize("name,provider", [(n, p) for n in NETS for p in PROVIDERS]
                         + list(_zoo()))
def test_arena_is_bitwise_the_fresh_arrays(name, provider):
    g, classes = compile_small(name)
    carved, ex, inf = _run(g, classes, provider, True)
    fresh_, _, _ = _run(g, classes, provider, False)
    assert ex.carver is not None and ex.carver.nbytes > 0
    assert len(carved) == len(fresh_)
    for k, (a, b) in enumerate(zip(carved, fresh_)):
        assert a.shape == b.shape and np.array_equal(a, b), k


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("name", NETS)
def test_every_offered_buffer_is_carved(name, provider):
    """The first pass (fresh arrays, checked) finds the footprint rules true to the arrays and
    every offered buffer asked for: the carving table (runtime/carving.py) says what the
    kernels do. From the second pass on, each step output offered is a view of the region."""
    g, classes = compile_small(name)
    ex = Executor(g, seed=0, kernels=provider)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((BATCH, *ex.input_shape)).astype(np.float32)
    y = rng.integers(0, classes[-1], size=(BATCH, *classes[:-1]))
    ex.forward(x, y, training=True)
    ex.backward()                      # the probe
    outs = {}
    for i, st in enumerate(ex.plan):
        def spy(*a, _f=st.forward, _i=i):
            out, cache = _f(*a)
            outs[_i] = out
            return out, cache
        st.forward = spy
    ex.forward(x, y, training=True)
    ex.backward()
    layout = ex.carver.layouts[(BATCH, True)]
    offered = set(layout.slots)
    assert layout.problem is None
    assert offered and layout.taken == offered, sorted(offered - layout.taken)
    region = ex.carver.region
    out_steps = [i for i, role in offered if role == "out"]
    assert len(out_steps) >= 4
    for i in out_steps:
        assert np.shares_memory(outs[i], region), ex.plan[i].node.name
    logits_step = ex.plan[ex.main_head].inputs[0][0]
    assert not np.shares_memory(outs[logits_step], region)   # the caller keeps it
    inf = ex.for_inference()
    inf.forward(x, training=False)
    layout = inf.carver.layouts[(BATCH, False)]
    assert layout.problem is None and layout.slots and layout.taken == set(layout.slots)
    assert np.shares_memory(inf.forward(x, training=False).logits, inf.carver.region) is False


def test_a_view_the_footprint_does_not_declare_turns_the_arena_off():
    """An output that is a view of its input where the footprint promised a fresh array (here:
    the residual add's kernel — with its ReLU fused, the net has no ReLU step of its own —
    replaced by one returning its first input) is found by the first pass: that kind of pass
    then carves nothing."""
    g, classes = compile_small("resnet20")
    ex = Executor(g, seed=0, kernels="numpy")
    target = next(st for st in ex.plan if st.node.op == "add")
    real = target.forward
    target.forward = lambda ctx, attrs, params, inputs: (inputs[0], real(ctx, attrs, params,
                                                                          inputs)[1])
    x = np.random.default_rng(2).standard_normal((BATCH, *ex.input_shape)).astype(np.float32)
    ex.forward(x, training=False)
    layout = ex.carver.layouts[(BATCH, False)]
    assert layout.problem is not None and "view of an input" in layout.problem
    assert layout.size == 0 and not layout.by_step


def test_carver_falls_back_to_fresh_arrays():
    """A size the planner did not plan, a role asked twice, or no arena: a fresh array."""
    from netdsl.runtime.carve import _Layout
    carver = Carver([], 4)
    carver.layouts[(2, True)] = layout = _Layout({(0, "out"): (64, 0, 1)}, 2, [None], True)
    layout.place([(0, "out")])
    layout.probing = False
    carver.region = np.empty(64, dtype=np.uint8)
    carver.start(2, True)
    carver.at(0)
    ctx = Ctx(xp=np, arena=carver)
    a = fresh(ctx, (3,), np.float32)                           # 12 bytes: not the slot's 64
    assert a.shape == (3,) and not np.shares_memory(a, carver.region)
    carver.at(1)
    assert carver.take("out", (16,), np.float32) is None      # no slot at step 1
    carver.at(0)
    a = fresh(ctx, (16,), np.float32)
    assert np.shares_memory(a, carver.region)
    b = fresh(ctx, (16,), np.float32)                          # asked twice
    assert not np.shares_memory(b, carver.region)
    c = fresh(Ctx(xp=np), (16,), np.float32)
    assert c.shape == (16,) and c.base is None
