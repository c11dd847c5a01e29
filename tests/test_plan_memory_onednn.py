"""The memory planner on the oneDNN provider's kernels (netdsl/runtime/kernels/onednn/footprint.py)
against what a step really allocates: tracemalloc's peak during a steady-state step plus the
memory held across steps on purpose (netdsl.core.workspace.held_bytes(): the oneDNN scratchpad
region), i.e. `netdsl bench`'s measured peak. The expected values come from tracemalloc, an
independent measurement, never from the planner.

Also: oneDNN's scratchpad is in user mode, so it is NumPy memory that is counted, planned and
shared by every primitive (the results do not depend on what the region held before).
"""
from __future__ import annotations

import numpy as np
import pytest

from netdsl.runtime import kernels
from netdsl.tools.bench import peak_memory
from netdsl.compile.compiler import compile_file
from netdsl.runtime.executor import Executor
from netdsl.runtime.memory import plan_memory

from conftest import NETS

if not kernels.available("onednn"):
    pytest.skip("oneDNN (libdnnl.so.3) cannot load here", allow_module_level=True)

from netdsl.core import workspace  # noqa: E402
from netdsl.runtime.kernels.onednn.common import lib  # noqa: E402

# The four benchmark nets (docs/performance.md), on smaller inputs where the net allows.
BENCH_NETS = {
    "lenet5": ("lenet5.net", None, {}),
    "cs231n": ("cs231n.net", (16, 16, 3), {"N": 2, "M": 3, "K": 2, "WIDTH": 32, "HIDDEN": 256}),
    "resnet20": ("resnet20.net", (16, 16, 3), {}),
    "inception_small": ("inception_small.net", (16, 16, 3), {}),
}

STRIDES_NET = """
INPUT(10x10x3) -> CONV(4, 3) -> MAXPOOL(3, stride=2, ceil=true) -> CONV(6, 3)
  -> concat { residual { CONV(6, 3) -> BN } | CONV(4, 1) }
  -> AVGPOOL(3, stride=2, pad=1) -> CONV(4, 1) -> LOCAL(4, 3, pad=1) -> AVGPOOL(3) -> FC
"""
STRIDED_INPUTS_NET = """
INPUT(24x24x3) -> LOCAL(8, 3) -> RELU -> CROP(size=16x16) -> CONV(8, 3) -> LOCAL(6, 3)
  -> CROP(size=11x11) -> BN -> CROP(size=10x9) -> FC
"""
# The mobile activations (relu6 keeps its output, silu/hswish/hsigmoid their input) and the
# squeeze-and-excitation gate (binary mul)
MOBILE_ACTS_NET = """
INPUT(12x12x3) -> CONV(8, 3) -> SILU -> CONV(8, 3) -> RELU6 -> CONV(8, 3) -> HSWISH
  -> mul { IDENTITY | GAP(keep=true) -> CONV(8, 1) -> SIGMOID }
  -> CONV(8, 3) -> HSIGMOID -> FC
"""
# LRN: 16 channels (oneDNN's jit forward; its backward natively, the NumPy one capped to
# AVX2) and 13 (no oneDNN jit kernel: both passes in NumPy, lrn_numpy.py)
LRN_NET = """
INPUT(12x12x3) -> CONV(16, 3) -> RELU -> LRN(5, alpha=1e-2, beta=0.75, k=2) -> MAXPOOL(2)
  -> CONV(13, 3) -> LRN(5, alpha=0.5, beta=0.6, alpha_over_n=false) -> FC
"""
# Nets whose oneDNN steps read or get strided views (the kernels copy them)
TEXT_NETS = {"strided_grads": STRIDES_NET, "strided_inputs": STRIDED_INPUTS_NET,
             "mobile_acts": MOBILE_ACTS_NET, "lrn": LRN_NET}


def _executor(name, mode):
    if name in TEXT_NETS:
        from netdsl.compile.compiler import compile_text
        g = compile_text(TEXT_NETS[name], num_classes=10).graph
    else:
        path, shape, sets = BENCH_NETS[name]
        g = compile_file(str(NETS / path), overrides=sets, input_shape=shape,
                         num_classes=10).graph
    ex = Executor(g, seed=0, kernels="onednn")
    return ex.for_inference() if mode == "infer" else ex


def _step(ex, mode, batch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *ex.input_shape)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    if mode == "train":
        return lambda: (ex.forward(x, y, training=True), ex.backward())
    return lambda: ex.forward(x, training=False)


def _measured(ex, mode, batch):
    """bench's measured peak, the scratchpad region grown by this net alone."""
    lib().scratchpad.release()      # earlier tests' primitives may have grown it further
    return peak_memory(_step(ex, mode, batch))


@pytest.mark.parametrize("mode", ["train", "infer"])
@pytest.mark.parametrize("name", list(BENCH_NETS))
def test_planned_peak_within_10_percent_of_measured(name, mode):
    ex = _executor(name, mode)
    assert sum(st.provider == "onednn" for st in ex.plan) >= 3
    batch = 8
    measured = _measured(ex, mode, batch)
    planned = plan_memory(ex.plan, batch, itemsize=4, training=mode == "train").peak
    assert abs(planned - measured) <= 0.10 * measured, (planned, measured)


def test_scratchpad_is_user_memory_counted_and_planned():
    """The primitives run on the provider's NumPy scratchpad: after a training step it has
    grown to exactly the region the planner plans (beside the prepacked weights),
    held_bytes() counts it, and the measured
    peak includes it (without user mode oneDNN would malloc it unseen and nbytes stay 0)."""
    ex = _executor("cs231n", "train")
    pad = lib().scratchpad
    measured = _measured(ex, "train", 8)
    plan = plan_memory(ex.plan, 8, itemsize=4, training=True)
    assert pad.nbytes > 0
    # held across steps: the region and the blocked weight copies this net's convs read
    from netdsl.runtime.kernels.onednn.packs import PACKS
    assert plan.held == pad.nbytes + PACKS.used_bytes(workspace.current_window())
    assert workspace.held_bytes() >= pad.nbytes
    assert measured >= pad.nbytes
    # Every primitive with a scratchpad binds one (an execute argument), none owns memory.
    from netdsl.runtime.kernels.onednn import common
    prims = [p for v in common._CACHE.values() for p in _primitives(v)]
    assert any(p.scratch for p in prims)
    assert all(("scratchpad" in p.mds) == bool(p.scratch) for p in prims)


def _primitives(value):
    from netdsl.runtime.kernels.onednn.capi import Primitive
    if isinstance(value, Primitive):
        return [value]
    if isinstance(value, tuple):
        return [v for v in value if isinstance(v, Primitive)]
    if hasattr(value, "prims") and value._prims is not None:
        return [p for p in value._prims if p is not None]
    return []


def test_results_do_not_depend_on_what_the_scratchpad_held():
    """The region is shared: one primitive's leftovers (here NaN everywhere) must not leak
    into another's results (gradients equal to the last bit with a clean region)."""
    ex = _executor("resnet20", "train")
    step = _step(ex, "train", 4)
    pad = lib().scratchpad
    step()
    clean = {k: {p: g.copy() for p, g in v.items()} for k, v in ex.grads.items()}
    pad.array(pad.capacity)[:] = 0xFF          # NaN bit patterns in float32
    step()
    assert np.all(np.isfinite(ex.grads["fc1"]["weight"]))
    for node, tensors in clean.items():
        for k, v in tensors.items():
            np.testing.assert_array_equal(ex.grads[node][k], v, err_msg=f"{node}.{k}")


def test_scratchpad_grows_to_the_largest_need_and_releases():
    from netdsl.runtime.kernels.onednn.capi import Scratchpad
    pad = Scratchpad()
    a = pad.reserve(100)
    assert a % Scratchpad.ALIGN == 0 and pad.nbytes == Scratchpad.held_bytes(100)
    assert pad.reserve(50) == a                    # smaller needs reuse the region
    pad.reserve(1000)
    assert pad.capacity == 1000 and pad.nbytes == 1000 + Scratchpad.ALIGN
    assert pad.array(10).ctypes.data % Scratchpad.ALIGN == 0
    pad.release()
    assert pad.nbytes == 0 and Scratchpad.held_bytes(0) == 0


def _per_call_peaks(ex, step):
    """{(phase, step index): bytes} each kernel call allocated at its peak (tracemalloc)."""
    import tracemalloc
    found = {}
    saved = [(st.forward, st.backward) for st in ex.plan]

    def wrap(fn, key):
        def call(*a):
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            r = fn(*a)
            found[key] = tracemalloc.get_traced_memory()[1] - before
            return r
        return call
    try:
        for i, st in enumerate(ex.plan):
            st.forward, st.backward = wrap(st.forward, ("F", i)), wrap(st.backward, ("B", i))
        tracemalloc.start()
        step()
    finally:
        tracemalloc.stop()
        for st, (f, b) in zip(ex.plan, saved):
            st.forward, st.backward = f, b
    return found


@pytest.mark.parametrize("mode", ["train", "infer"])
@pytest.mark.parametrize("name", list(BENCH_NETS) + list(TEXT_NETS))
def test_each_onednn_rule_is_what_its_kernel_allocates(name, mode):
    """Per oneDNN step: the bytes its forward call allocates at its peak are the rule's output
    + cache + forward temporaries, and its backward's the parameter gradients + fresh input
    gradients + backward temporaries, within 1% (+ 8 KB of Python objects)."""
    from netdsl.runtime.memory import footprint
    ex = _executor(name, mode)
    ex.carver = None   # the rules say what a kernel allocates when nothing is carved
    batch, training = 8, mode == "train"
    step = _step(ex, mode, batch)
    step()
    plan_memory(ex.plan, batch, training=training)   # marks the strided incoming gradients
    found = _per_call_peaks(ex, step)
    checked = 0
    for i, st in enumerate(ex.plan):
        if st.provider != "onednn":
            continue
        fp = footprint(st, batch, 4, training)
        want = {("F", i): fp.out + fp.cache + fp.fwd_tmp}
        if training and ("B", i) in found:
            grads = sum(int(np.prod(p.shape)) * 4 for p in (st.node.param_specs or {}).values()
                        if p.trainable)
            want[("B", i)] = grads + sum(d or 0 for d in fp.dx) + fp.bwd_tmp
        for key, bytes_ in want.items():
            got = found[key]
            assert abs(got - bytes_) <= 0.01 * bytes_ + 8192, (st.node.name, key[0], got, bytes_)
            checked += 1
    assert checked >= 4


def test_strided_incoming_gradients_are_the_ones_marked():
    """Which oneDNN steps get a strided incoming gradient (that their kernels copy) is
    predicted from the NumPy kernels of their readers (concat, GAP, padded pooling and
    locally connected layers, an add passing a concat's slice on to a batch norm): checked
    here against the arrays themselves, so a change to those kernels shows up."""
    from netdsl.runtime.kernels.onednn.footprint import STRIDED
    execs = [_executor(name, "train") for name in ("inception_small", "resnet20", "strided_grads")]
    marked = seen = 0
    for ex in execs:
        plan_memory(ex.plan, 4, training=True)
        contiguous = {}
        saved = [st.backward for st in ex.plan]

        def spy(fn, i):
            def call(ctx, attrs, params, cache, dout):
                contiguous[i] = dout.flags.c_contiguous
                return fn(ctx, attrs, params, cache, dout)
            return call
        for i, st in enumerate(ex.plan):
            if st.provider == "onednn":
                st.backward = spy(st.backward, i)
        try:
            _step(ex, "train", 4)()
        finally:
            for st, b in zip(ex.plan, saved):
                st.backward = b
        for i, flag in contiguous.items():
            st = ex.plan[i]
            assert st.meta[STRIDED] == (not flag), (st.node.name, flag)
            marked += st.meta[STRIDED]
            seen += 1
    assert marked >= 4 and seen > 30          # concat, GAP and padded pooling all occur


def test_strided_inputs_are_the_ones_marked():
    """Likewise for inputs: a crop is a strided view, which the oneDNN kernels copy (the
    planner counts the copy); a locally connected layer's output is contiguous."""
    from netdsl.runtime.kernels.onednn.footprint import STRIDED_X
    ex = _executor("strided_inputs", "train")
    plan_memory(ex.plan, 4, training=True)
    contiguous = {}
    saved = [st.forward for st in ex.plan]

    def spy(fn, i):
        def call(ctx, attrs, params, inputs):
            contiguous[i] = inputs[0].flags.c_contiguous
            return fn(ctx, attrs, params, inputs)
        return call
    for i, st in enumerate(ex.plan):
        if st.provider == "onednn":
            st.forward = spy(st.forward, i)
    try:
        _step(ex, "train", 4)()
    finally:
        for st, f in zip(ex.plan, saved):
            st.forward = f
    assert len(contiguous) >= 4
    for i, flag in contiguous.items():
        assert ex.plan[i].meta[STRIDED_X] == (not flag), (ex.plan[i].node.name, flag)
    assert sum(not flag for flag in contiguous.values()) >= 3


@pytest.mark.parametrize("mode", ["train", "infer"])
def test_blocked_weight_copies_are_planned(mode, monkeypatch):
    """With the forward convolutions on prepacked blocked weights (what an AVX2 host runs;
    forced here so that every host checks it), the copies are held memory the planner plans:
    peaks within 10%, and the held bytes exactly the region plus the copies."""
    from netdsl.runtime.kernels.onednn import common, conv
    from netdsl.runtime.kernels.onednn.packs import PACKS
    monkeypatch.setattr(conv, "PACK", "always")
    common.clear_cache()
    try:
        ex = _executor("resnet20", mode)
        measured = _measured(ex, mode, 8)
        plan = plan_memory(ex.plan, 8, itemsize=4, training=mode == "train")
        packed = PACKS.used_bytes(workspace.current_window())
        assert packed > 0
        assert plan.held == lib().scratchpad.used_bytes(workspace.current_window()) + packed
        assert abs(plan.peak - measured) <= 0.10 * measured, (plan.peak, measured)
    finally:
        common.clear_cache()
