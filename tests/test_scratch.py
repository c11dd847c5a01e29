"""The Scratch region (netdsl/core/workspace.py) and the fast NumPy conv built on it.

* Scratch itself: takes are disjoint until a reset, reuse the same memory after it, grow the
  region only between calls, count in held_bytes().
* Each d(input) formulation of the conv (pointwise, fwdconv, offsets) against the adjoint of
  the naive loop reference (layers/naive.py), in float64, with and without scratch and with
  column chunks of one image (so the chunk loop runs several times).
* The executor with its Scratch region against the same executor without one (ctx.scratch
  None: fresh arrays everywhere), on every net in nets/ at a reduced size: what catches a
  scratch array that escaped its kernel call (a cache or an output overwritten later).
* A second training step from the same state gives the first step's result exactly.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import NETS
from netdsl.compile.compiler import compile_file
from netdsl.runtime.executor import Executor
from netdsl.layers import Ctx, get
from netdsl.layers import conv as conv_mod
from netdsl.layers.geometry import conv_padding
from netdsl.layers import im2col as im2col_mod
from netdsl.layers.naive import conv as naive_conv
from netdsl.layers.structure import as_pair
from netdsl.core import workspace
from netdsl.core.workspace import Scratch, held_bytes


# --------------------------------------------------------------------------------------------
# Scratch

def test_takes_are_disjoint_then_reused_after_reset():
    s = Scratch()
    a = s.take((10, 3), np.float32)       # first call: the region is empty, so fresh arrays
    b = s.take((7,), np.float64)
    assert not np.shares_memory(a, s._region)
    s.reset()                             # grows to what that call needed
    assert s.nbytes >= 10 * 3 * 4 + 7 * 8
    a = s.take((10, 3), np.float32)
    b = s.take((7,), np.float64)
    assert not np.shares_memory(a, b)
    a[...] = 1.0
    b[...] = 2.0
    assert np.all(a == 1.0) and np.all(b == 2.0)
    s.reset()
    c = s.take((10, 3), np.float32)
    assert np.shares_memory(a, c)         # the same memory, call after call
    assert c.flags.c_contiguous and c.ctypes.data % 64 == 0


def test_region_grows_only_between_calls():
    s = Scratch()
    s.take((100,), np.float32)
    s.reset()
    first = s.take((100,), np.float32)
    s.reset()
    small = s.take((100,), np.float32)
    big = s.take((1000,), np.float32)     # does not fit: a fresh array, the region unchanged
    assert np.shares_memory(first, small) and not np.shares_memory(big, small)
    assert s.nbytes < 1100 * 4
    s.reset()
    assert s.nbytes >= 1100 * 4 and s.needed == s.nbytes
    small2, big2 = s.take((100,), np.float32), s.take((1000,), np.float32)
    assert not np.shares_memory(small2, big2)
    assert np.shares_memory(small2, s._region) and np.shares_memory(big2, s._region)


def test_zeroed_take_mark_rewind_and_held_bytes():
    s = Scratch()
    s.take((64,), np.float64)
    s.reset()
    x = s.take((64,), np.float64)
    x[...] = 7
    s.reset()
    assert np.all(s.take((64,), np.float64, zero=True) == 0)
    s.reset()
    m = s.mark()
    y = s.take((8,), np.float64)
    s.rewind(m)
    assert np.shares_memory(y, s.take((8,), np.float64))
    before = held_bytes()
    t = Scratch()
    t.take((1 << 16,), np.uint8)
    t.reset()
    assert held_bytes() - before == t.nbytes >= 1 << 16


# --------------------------------------------------------------------------------------------
# The conv's d(input) formulations against the naive reference's adjoint

CASES = [   # (attrs, input H×W×C, the formulation dx_method must pick)
    ({"kernel": 3, "pad": "same"}, (5, 6, 3), "fwdconv"),
    ({"kernel": 3, "pad": "same", "dilation": 2}, (6, 5, 2), "fwdconv"),
    ({"kernel": (3, 2), "pad": (1, 1)}, (5, 5, 2), "fwdconv"),
    ({"kernel": 3, "pad": "same", "stride": 2}, (6, 6, 2), "offsets"),
    ({"kernel": 3, "pad": (2, 2)}, (4, 5, 2), "fwdconv"),     # q = 0: no padding of dout
    ({"kernel": 3, "pad": (3, 1)}, (4, 5, 2), "offsets"),     # pad beyond the kernel's reach
    ({"kernel": 5, "pad": "valid"}, (9, 8, 2), "offsets"),    # 'valid': mostly-zero padding
    ({"kernel": 3, "pad": "same", "groups": 2}, (5, 5, 4), "offsets"),
    ({"kernel": 1, "pad": 0}, (4, 3, 3), "pointwise"),
    ({"kernel": 1, "pad": 0, "stride": 2}, (5, 5, 3), "offsets"),
]


def _attrs(extra, filters=4):
    base = {"filters": filters, "kernel": 3, "stride": 1, "pad": "same", "dilation": 1,
            "groups": 1, "bias": True, "init": "he", "round": "floor"}
    base.update(extra)
    return base


def _reference_grads(attrs, w, x, dout):
    """dx by the adjoint of the naive conv (linear in x: the basis images go in as one batch),
    dW by its defining sum over the padded input."""
    n, h, wd, c = x.shape
    zero_bias = {"weight": w}
    basis = np.eye(h * wd * c).reshape(h * wd * c, h, wd, c)
    jac = naive_conv(attrs, zero_bias, [basis])                  # (H·W·C, Ho, Wo, F)
    dx = np.einsum("dijf,nijf->nd", jac, dout).reshape(x.shape)
    kh, kw, cg, f = w.shape
    (sh, sw), (dh, dw) = as_pair(attrs["stride"]), as_pair(attrs["dilation"])
    ph, pw = conv_padding(attrs)
    xpad = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    fg = f // attrs["groups"]
    dwt = np.zeros_like(w)
    ho, wo = dout.shape[1:3]
    for a in range(kh):
        for b in range(kw):
            win = xpad[:, a * dh:a * dh + sh * (ho - 1) + 1:sh, b * dw:b * dw + sw * (wo - 1) + 1:sw]
            for o in range(f):
                g = o // fg
                dwt[a, b, :, o] = np.einsum("nijc,nij->c", win[..., g * cg:(g + 1) * cg],
                                            dout[..., o])
    return dx, dwt, dout.sum(axis=(0, 1, 2))


@pytest.mark.parametrize("use_scratch,threads", [(True, 1), (False, 1), (True, 2)])
@pytest.mark.parametrize("extra,hwc,method", CASES)
def test_dx_formulations_match_the_naive_adjoint(extra, hwc, method, use_scratch, threads,
                                                 monkeypatch):
    monkeypatch.setattr(im2col_mod, "_CHUNK_BYTES", 1)     # one image per chunk: the loop runs
    monkeypatch.setattr(workspace, "_THREADS", threads)  # chunks split over 2 threads
    attrs = _attrs(extra)
    assert conv_mod.dx_method(attrs, hwc) == method
    rng = np.random.default_rng(3)
    spec = get("conv")
    pspec = spec.params(attrs, [hwc])
    params = {k: rng.standard_normal(p.shape) for k, p in pspec.items()}
    x = rng.standard_normal((3, *hwc))
    scratch = Scratch() if use_scratch else None
    ctx = Ctx(xp=np, training=True, dtype=np.float64, scratch=scratch)
    for _ in range(2):        # the second round runs in a grown region
        if scratch is not None:
            scratch.reset()
        out, cache = spec.forward(ctx, attrs, params, [x])
        np.testing.assert_allclose(out, naive_conv(attrs, params, [x]), rtol=1e-10, atol=1e-12)
        dout = rng.standard_normal(out.shape)
        if scratch is not None:
            scratch.reset()
            scratch.take((999,), np.float64)[...] = np.nan   # overwrite the forward's temps
        (dx,), grads = spec.backward(ctx, attrs, params, cache, dout)
        rdx, rdw, rdb = _reference_grads(attrs, params["weight"], x, dout)
        np.testing.assert_allclose(dx, rdx, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(grads["weight"], rdw, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(grads["bias"], rdb, rtol=1e-10, atol=1e-12)


def test_plan_records_the_dx_formulation():
    g = compile_file(str(NETS / "lenet5.net"), need_data=False).graph
    ex = Executor(g, seed=0, kernels="numpy")
    convs = [st for st in ex.plan if st.node.op == "conv"]
    assert [st.meta.get("dx") for st in convs] == [None, "offsets", "offsets"]  # C1 reads data
    g = compile_file(str(NETS / "cs231n.net"), need_data=False, input_override=(16, 16, 3)).graph
    ex = Executor(g, seed=0, kernels="numpy")
    assert {st.meta.get("dx") for st in ex.plan if st.node.op == "conv" and not st.data_only} \
        == {"fwdconv"}


# --------------------------------------------------------------------------------------------
# The executor with and without its Scratch region, on every net

SMALL = {"alexnet": "67x67x3", "zfnet": "64x64x3", "vgg16": "32x32x3", "vgg19": "32x32x3",
         "googlenet": "96x96x3", "resnet18": "32x32x3", "resnet34": "32x32x3",
         "resnet50": "32x32x3", "deepface": "73x73x3", "unet": "188x188x1",
         "resnet20": "16x16x3", "cs231n": "16x16x1", "inception_small": "16x16x1"}
SETS = {"allcnn_c": {"S": 16}, "unet": {"W": 4}}
ALL_NETS = sorted(p.stem for p in NETS.glob("*.net"))


def _step(ex, x, labels):
    ex.reseed(0)   # the same dropout masks every time
    res = ex.forward(x, labels, training=True)
    grads = ex.backward()
    return (np.array(res.logits), float(res.loss),
            {(n, k): np.array(v) for n, t in grads.items() for k, v in t.items()})


def _compiled(name):
    shape = SMALL.get(name)
    dims = tuple(int(v) for v in shape.split("x")) if shape else None
    return compile_file(str(NETS / f"{name}.net"), need_data=False,
                        overrides=SETS.get(name, {}), input_override=dims).graph


def _batch(ex, g):
    from netdsl.core.graph import node
    from netdsl.compile.verify import losses
    head = max(losses(g), key=lambda h: float(h.attrs.get("weight", 1.0)))
    logits_shape = node(g, head.inputs[0][0]).out_shapes[head.inputs[0][1]]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *ex.input_shape)).astype(ex.dtype)
    return x, rng.integers(0, logits_shape[-1], size=(2, *logits_shape[:-1]))


@pytest.mark.slow   # the big FCs of AlexNet/VGG dominate: 2 steps per net
@pytest.mark.parametrize("name", ALL_NETS)
def test_scratch_matches_fresh_arrays_on_every_net(name):
    g = _compiled(name)
    # float64: the chunked and whole-matrix GEMMs then agree to ~1e-15, so anything above
    # 1e-9 is a wrong value, not a different summation order. The nets with 4096-wide FCs
    # (10^7–10^8 weights, no batch norm) run in float32 (a 1e-4 tolerance) to keep the suite
    # quick: a value from an overwritten scratch buffer is off by O(1) either way. Nets with
    # batch norm stay in float64: at this size the last BN normalises 2 values per channel,
    # which turns float32's order-of-summation differences (3e-7, and which BLAS kernels the
    # host has decides them) into 1e-3.
    from netdsl.core.graph import nodes
    big = any(r.op == "fc" and (r.n_params or 0) > 1_000_000 for r in nodes(g)) \
        and not any(r.op == "batchnorm" for r in nodes(g))
    tol = 1e-4 if big else 1e-9
    ex = Executor(g, dtype=np.float32 if big else np.float64, seed=0, kernels="numpy")
    x, labels = _batch(ex, g)
    assert ex.scratch is not None
    scratch = _step(ex, x, labels)        # the region grows call by call and is reused
    assert ex.scratch.nbytes > 0 or not any(st.node.op == "conv" for st in ex.plan)
    ex.scratch = None                     # every temporary fresh (the reference behaviour)
    fresh = _step(ex, x, labels)
    scale = max(1e-6, float(np.abs(fresh[0]).max()))
    np.testing.assert_allclose(scratch[0], fresh[0], rtol=0, atol=tol * scale)
    assert abs(scratch[1] - fresh[1]) <= tol * max(1.0, abs(fresh[1]))
    assert scratch[2].keys() == fresh[2].keys()
    for key in fresh[2]:
        ref = fresh[2][key]
        scale = max(1e-6, float(np.abs(ref).max()))
        np.testing.assert_allclose(scratch[2][key], ref, rtol=0, atol=tol * scale,
                                   err_msg=str(key))


@pytest.mark.parametrize("name", ["cs231n", "resnet20", "inception_small"])
def test_second_step_repeats_the_first_bit_for_bit(name):
    """Scratch reuse is clean: from the same state (weights are not updated here), the step
    that grows the region and the step that reuses it give identical numbers."""
    g = _compiled(name)
    ex = Executor(g, dtype=np.float32, seed=0, kernels="numpy")
    x, labels = _batch(ex, g)
    first = _step(ex, x, labels)
    size = ex.scratch.nbytes
    second = _step(ex, x, labels)
    assert ex.scratch.nbytes == size > 0        # grown in the first step only
    np.testing.assert_array_equal(first[0], second[0])
    assert first[1] == second[1]
    for key in first[2]:
        np.testing.assert_array_equal(first[2][key], second[2][key], err_msg=str(key))


def test_planned_peak_follows_the_thread_count(monkeypatch):
    """Each worker thread of the conv's chunk loop has its own column buffers: the planner
    counts them, and measured and planned peaks agree with 1 and with 2 threads."""
    from test_plan_memory import _train_peak
    from netdsl.runtime.memory import plan_memory
    g = _compiled("cs231n")
    peaks = {}
    for threads in (1, 2):
        monkeypatch.setattr(workspace, "_THREADS", threads)
        ex = Executor(g, seed=0, kernels="numpy")
        measured = _train_peak(ex, 16)
        plan = plan_memory(ex.plan, 16)
        assert abs(plan.peak - measured) <= 0.1 * measured, (threads, plan.peak, measured)
        peaks[threads] = plan.scratch
    assert peaks[2] > peaks[1]


@pytest.mark.parametrize("name", ["cs231n", "resnet20", "inception_small"])
def test_two_threads_give_the_one_thread_step(name, monkeypatch):
    """The conv's chunk loops (fwdconv), the offset-by-offset dX (ResNet-20's stride-2 convs),
    the row-split GEMMs of pointwise convs (Inception's 1×1), batch norm's and the ReLU's and
    max pooling's row splits on 2 threads: the same step as on one (float64; dW sums per-thread parts in another order, hence
    1e-11, not bitwise)."""
    g = compile_file(str(NETS / f"{name}.net"), need_data=False,
                     input_override=(16, 16, 3) if name == "inception_small" else (32, 32, 3),
                     overrides={"N": 1, "M": 1, "K": 1} if name == "cs231n" else {}).graph
    results = []
    for threads in (1, 2):
        monkeypatch.setattr(workspace, "_THREADS", threads)
        ex = Executor(g, dtype=np.float64, seed=0, kernels="numpy")
        x, labels = _batch(ex, g)
        x = np.concatenate([x] * 4)          # batch 8: the ReLU's maps pass the split size
        labels = np.concatenate([labels] * 4)
        results.append(_step(ex, x, labels))
    one, two = results
    np.testing.assert_allclose(two[0], one[0], rtol=1e-12, atol=1e-14)
    for key in one[2]:
        np.testing.assert_allclose(two[2][key], one[2][key], rtol=1e-11, atol=1e-14,
                                   err_msg=str(key))


def test_matmul_rows_splits_rows_or_columns_exactly(monkeypatch):
    """The worker-split GEMM against the plain one (float64), by rows (many) and by columns
    (a small batch, as an FC layer's); with BLAS uncontrollable it runs on one worker."""
    monkeypatch.setattr(workspace, "_THREADS", 2)
    rng = np.random.default_rng(0)
    for m, k, n in [(1024, 96, 64), (16, 600, 900)]:
        a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
        np.testing.assert_allclose(workspace.matmul_rows(a, b), a @ b, rtol=1e-13, atol=1e-12)
        np.testing.assert_allclose(workspace.matmul_rows(b.T, a.T), b.T @ a.T, rtol=1e-13,
                                   atol=1e-12)
    assert workspace.workers(8) == 2
    monkeypatch.setattr(workspace, "_BLAS", [])          # threadpoolctl missing
    assert workspace.workers(8) == 1
