"""Every NumPy layer's memory-planner rule (the ``footprint`` hook of its registry entry,
netdsl/layers/footprint.py) against what its kernel really allocates, per kernel call.

Generic over the registry: every registered op, every example of its LayerSpec, run as a plan
step (plan.run_forward / run_backward, as the executor runs it: recompute decisions included)
on a batch large enough that the first input is ~4 MB, so that a missing or wrong temporary
of a tensor's size is far outside the tolerance. The expected bytes come from tracemalloc (an
independent measurement), never from the planner: the forward call's peak must be the rule's
output + cache + forward temporaries, the backward call's the parameter gradients + fresh input
gradients + backward temporaries, within 1% + 128 KB (NumPy's iterator buffers and Python
objects), as for the oneDNN kernels (tests/test_plan_memory_onednn.py); and the bytes it takes from the executor's Scratch
region must be the rule's scratch bytes.
"""
from __future__ import annotations

import math
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest

from netdsl.tools.gradcheck import bound_attrs, layer_inputs, layer_labels
from netdsl.layers import Ctx, all_specs
from netdsl.layers.init import init_param
from netdsl.runtime.memory import footprint
from netdsl.runtime.plan import Step, _conv_cols_exceed_input, run_backward, run_forward
from netdsl.core.workspace import Scratch

TARGET = 4 << 20    # bytes of the first input (float32)
# NumPy's iterators buffer strided or broadcast operands 8192 elements at a time (up to ~100 KB
# per call, whatever the sizes); Python objects add a few KB.
SLACK = 128 << 10


def _cases():
    for spec in all_specs():
        if spec.role == "source":
            continue
        for k, example in enumerate(spec.all_examples()):
            yield pytest.param(spec, example, id=f"{spec.name}-ex{k}")


CASES = list(_cases())


def _step(spec, example):
    attrs = bound_attrs(spec, example["attrs"])
    shapes = [tuple(s) for s in example["in_shapes"]]
    out = spec.infer_shape(attrs, shapes)
    node = SimpleNamespace(name=spec.name, op=spec.name, attrs=attrs, in_shapes=tuple(shapes),
                           out_shapes=tuple(out) if spec.outputs > 1 else (out,),
                           param_specs=spec.params(attrs, shapes), meta={}, loc=None)
    st = Step(node, spec, [(0, 0)] * len(shapes), 1, spec.forward, spec.backward)
    st.cols_exceed_input = st.recompute = _conv_cols_exceed_input(node)
    return st


def _peak(fn):
    """(result, bytes allocated at the call's peak beyond what was held before it)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        result = fn()
        return result, tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def _close(got, want):
    return abs(got - want) <= 0.01 * want + SLACK


def _case(spec, example, training):
    st = _step(spec, example)
    shapes = st.node.in_shapes
    batch = max(2, math.ceil(TARGET / (4 * math.prod(shapes[0]))))
    rng = np.random.default_rng(0)
    inputs = [x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x
              for x in layer_inputs(spec, st.node.attrs, shapes, rng, batch)]
    params = {k: init_param(np, rng, ps, np.float32) for k, ps in st.node.param_specs.items()}
    labels = layer_labels(spec, shapes, rng, batch)
    return st, batch, inputs, params, labels


def _dout(spec, out):
    if spec.role == "loss":
        return np.asarray(1.0, dtype=np.float32)
    outs = out if spec.outputs > 1 else (out,)
    douts = tuple(np.ones_like(o, order="C") if np.issubdtype(o.dtype, np.floating) else None
                  for o in outs)
    return douts if spec.outputs > 1 else douts[0]


# Known off (conv's footprint hook, layers/conv.py): the NumPy conv's fresh backward allocations
# for a grouped conv (ex1: +40% of the input) and a dilated valid one (ex2: +50%)
# on a large batch of tiny maps. Not strict: the chunking depends on the worker threads.
KNOWN_OFF = {("conv", 1, True), ("conv", 2, True)}


def _marked(cases):
    for case in cases:
        spec, example = case.values
        k = spec.all_examples().index(example)
        for training in (True, False):
            marks = [pytest.mark.xfail(reason="the conv footprint's backward rule", strict=False)] \
                if (spec.name, k, training) in KNOWN_OFF else []
            yield pytest.param(spec, example, training, marks=marks,
                               id=f"{case.id}-{'train' if training else 'infer'}")


@pytest.fixture(autouse=True)
def one_worker(monkeypatch):
    """The rules are exact for one kernel call on one worker thread. With more (NETDSL_TEST_
    THREADS=2, or a `--threads 2` run earlier in the process), element-wise and pooling
    kernels split their rows and each share's temporaries are smaller: the rule is then an
    upper bound, which a planner may be, but this test holds the rules to the byte."""
    from netdsl.core import workspace
    monkeypatch.setattr(workspace, "_THREADS", 1)


@pytest.mark.parametrize("spec,example,training", list(_marked(CASES)))
def test_rule_is_what_the_kernel_allocates(spec, example, training):
    """As the executor runs a step: with a Scratch region (netdsl/core/workspace.py) per pass,
    grown by a first step, so the measured step allocates only what outlives its temporaries
    (and the region's use is compared with the rule's scratch bytes)."""
    st, batch, inputs, params, labels = _case(spec, example, training)
    fwd_s, bwd_s = Scratch(np), Scratch(np)

    def ctx(scratch):
        return Ctx(xp=np, training=training, rng=np.random.default_rng(1), dtype=np.float32,
                   labels=labels, scratch=scratch)
    out, cache = run_forward(st, ctx(fwd_s), params, inputs)          # grows the regions
    if training:
        run_backward(st, ctx(bwd_s), params, [cache, _dout(spec, out)])
    del out, cache
    fwd_s.reset()
    bwd_s.reset()
    fp = footprint(st, batch, 4, training, scratch=True)
    (out, cache), got = _peak(lambda: run_forward(st, ctx(fwd_s), params, inputs))
    want = fp.out + fp.cache + fp.fwd_tmp
    assert _close(got, want), ("forward", got, want)
    assert _close(fwd_s.needed, fp.fwd_scratch), ("forward scratch", fwd_s.needed,
                                                  fp.fwd_scratch)
    if not training:
        return
    held = [cache, _dout(spec, out)]
    del out, cache
    _, got = _peak(lambda: run_backward(st, ctx(bwd_s), params, held))
    grads = sum(math.prod(p.shape) * 4 for p in st.node.param_specs.values() if p.trainable)
    want = grads + sum(d or 0 for d in fp.dx) + fp.bwd_tmp
    assert _close(got, want), ("backward", got, want)
    assert _close(bwd_s.needed, fp.bwd_scratch), ("backward scratch", bwd_s.needed,
                                                  fp.bwd_scratch)


def test_every_layer_has_a_rule_of_its_own():
    """No registered layer falls to memory.py's conservative default: each entry carries its
    own ``footprint`` hook (as it carries its shape rule and MACs)."""
    missing = {s.name for s in all_specs() if s.footprint is None}
    assert not missing, missing
