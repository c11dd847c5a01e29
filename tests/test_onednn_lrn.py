"""LRN on the oneDNN provider (netdsl/runtime/kernels/onednn/lrn.py and lrn_numpy.py).

oneDNN 3.2 has no jit LRN backward below AVX-512: capped to AVX2 its backward is ``ref:any``
in every layout (0.3–0.9 s for an AlexNet LRN at batch 32), and channel counts that are not a
multiple of its vector width get a ``ref:any`` forward too. The provider runs those passes in
NumPy instead. Checked here:

* no LRN of the nets that have one (AlexNet, ZFNet, GoogLeNet) runs a ``ref`` pass, on this
  host's ISA and capped with ONEDNN_MAX_CPU_ISA=AVX2 (a subprocess: the cap must be set before
  libdnnl loads), read back from the primitive descriptors' implementation names;
* every combination of passes (oneDNN/oneDNN, oneDNN forward + NumPy backward, NumPy/NumPy)
  against the registry's kernel run in float64 and against torch.nn.LocalResponseNorm in
  float64, on channel counts at the window's and the vector width's edges (C = 1, 2, 13, 20,
  96), odd windows 3, 5, 7, both α conventions, vectors;
* the chunking and the thread split (chunk edges inside the data, the last chunk partial);
* the planner's rule for the NumPy backward against tracemalloc.
"""
from __future__ import annotations


import numpy as np
import pytest

from netdsl.runtime import kernels

from conftest import NETS

if not kernels.available("onednn"):
    pytest.skip("oneDNN (libdnnl.so.3) cannot load here", allow_module_level=True)

from netdsl.core import workspace  # noqa: E402
from netdsl.layers import Ctx, get  # noqa: E402
from netdsl.runtime.kernels.onednn import lrn, lrn_numpy  # noqa: E402
from netdsl.tools.gradcheck import bound_attrs  # noqa: E402

LRN_NETS = ("alexnet", "zfnet", "googlenet")


CASES = [   # attrs, input shape (one example)
    ({"size": 5, "alpha": 1e-2, "beta": 0.75, "k": 2.0}, (5, 6, 13)),
    ({"size": 5, "alpha": 0.5, "beta": 0.6, "k": 1.0, "alpha_over_n": False}, (3, 3, 20)),
    ({"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0}, (3, 4, 96)),
    ({"size": 5, "alpha": 0.3, "beta": 0.75, "k": 1.0}, (4, 3, 2)),
    ({"size": 3, "alpha": 0.9, "beta": 1.3, "k": 0.7}, (2, 3, 1)),
    ({"size": 7, "alpha": 0.4, "beta": 0.5, "k": 1.5}, (3, 2, 16)),
    ({"size": 5, "alpha": 0.2, "beta": 0.75, "k": 1.0}, (11,)),
]

MODES = {   # (FORWARD, BACKWARD)
    "auto": ("auto", "auto"),
    "onednn-fwd+numpy-bwd": ("onednn", "numpy"),
    "numpy": ("numpy", "numpy"),
}


def impls(name: str) -> dict:
    """``{mode: {lrn node: {pass: implementation}}}`` of one net at its own input, batch 2:
    descriptors only, from the compiled graph (no executor: AlexNet's weights are 240 MB)."""
    from netdsl.compile.compiler import compile_file
    from netdsl.core import graph as G
    from netdsl.runtime.kernels.onednn.impls import lrn_impls
    nodes = G.nodes(compile_file(str(NETS / f"{name}.net"), num_classes=10).graph)
    kernel = kernels.kernels_for("lrn")["onednn"]
    assert all(kernel.supports(r.attrs, r.in_shapes, np.float32) for r in nodes if r.op == "lrn")
    return {"train": lrn_impls(nodes, 2, True), "infer": lrn_impls(nodes, 2, False)}


def _check(name, found):
    from netdsl.runtime.kernels.onednn.impls import slow
    assert found["train"] and found["infer"], f"{name}: no LRN"
    bad = [(mode, node, step, impl) for mode, layers in found.items()
           for node, passes in layers.items() for step, impl in passes.items() if slow(impl)]
    assert not bad, f"{name}: {bad}"


@pytest.mark.parametrize("name", LRN_NETS)
def test_no_ref_lrn_on_this_host(name):
    _check(name, impls(name))


def test_no_ref_lrn_capped_to_avx2():
    from test_onednn_impls import capped_to_avx2, no_avx512_names
    found = capped_to_avx2("test_onednn_lrn", "impls", LRN_NETS)
    for name in LRN_NETS:
        _check(name, found[name])
    no_avx512_names(found)


def _modes(monkeypatch, mode):
    fwd, bwd = MODES[mode]
    monkeypatch.setattr(lrn, "FORWARD", fwd)
    monkeypatch.setattr(lrn, "BACKWARD", bwd)


def _provider(attrs, x, dy, training=True):
    ctx = Ctx(xp=np, training=training)
    out, cache = lrn.lrn_forward(ctx, attrs, {}, [x.astype(np.float32)])
    (dx,), _ = lrn.lrn_backward(ctx, attrs, {}, cache, dy.astype(np.float32))
    assert out.dtype == dx.dtype == np.float32
    return out, dx


def _close(what, got, want, tol=1e-5):
    err = np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-12)
    assert err <= tol, f"{what}: max relative error {err:.2e} > {tol}"


@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]['size']}-{c[1]}")
def test_matches_float64_reference(case, mode, training, monkeypatch):
    _modes(monkeypatch, mode)
    attrs, shape = bound_attrs(get("lrn"), case[0]), (3,) + case[1]
    rng = np.random.default_rng(5)
    x = rng.normal(size=shape) * 3      # large enough that the normalisation matters
    dy = rng.normal(size=shape)
    spec = get("lrn")
    ctx = Ctx(xp=np, training=True)
    want, cache = spec.forward(ctx, attrs, {}, [x])
    (want_dx,), _ = spec.backward(ctx, attrs, {}, cache, dy)
    out, dx = _provider(attrs, x, dy, training)
    _close("output", out, want)
    _close("d input", dx, want_dx)
    names = lrn.impl_names(attrs, shape, training)
    if mode == "numpy":
        assert set(names.values()) == {lrn_numpy.IMPL}
    elif mode == "onednn-fwd+numpy-bwd" and training:
        assert names["backward"] == lrn_numpy.IMPL


@pytest.mark.parametrize("mode", list(MODES))
def test_matches_torch_local_response_norm(mode, monkeypatch):
    torch = pytest.importorskip("torch")
    _modes(monkeypatch, mode)
    rng = np.random.default_rng(9)
    for attrs, shape in CASES[:3]:   # torch divides α by n: netdsl's alpha_over_n=true
        a = bound_attrs(get("lrn"), dict(attrs, alpha_over_n=True))
        x, dy = rng.normal(size=(2,) + shape) * 3, rng.normal(size=(2,) + shape)
        xt = torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float64, requires_grad=True)
        yt = torch.nn.LocalResponseNorm(a["size"], a["alpha"], a["beta"], a["k"])(xt)
        yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2)))
        out, dx = _provider(a, x, dy)
        _close("output", out, yt.detach().numpy().transpose(0, 2, 3, 1))
        _close("d input", dx, xt.grad.numpy().transpose(0, 2, 3, 1))


def test_chunk_edges_and_thread_split(monkeypatch):
    """Chunks of 3 pixels (the last one partial) split over two workers give the reference's
    values: no chunk or channel edge is summed twice or lost."""
    monkeypatch.setattr(lrn_numpy, "CHUNK", 40)      # 40 // 13 = 3 pixels per chunk
    monkeypatch.setattr(lrn_numpy, "SPLIT_BYTES", 0)
    saved = workspace.threads()
    workspace.set_threads(2)
    try:
        attrs = bound_attrs(get("lrn"), {"size": 5, "alpha": 0.5, "beta": 0.75, "k": 1.0})
        rng = np.random.default_rng(3)
        x, dy = rng.normal(size=(2, 4, 5, 13)), rng.normal(size=(2, 4, 5, 13))
        geo = lrn_numpy._geometry(x.shape)
        assert geo[2] == 3 and geo[0] % 3 != 0          # 40 pixels: 13 full chunks + 1
        spec = get("lrn")
        ctx = Ctx(xp=np, training=True)
        want, cache = spec.forward(ctx, attrs, {}, [x])
        (want_dx,), _ = spec.backward(ctx, attrs, {}, cache, dy)
        y = lrn_numpy.lrn_forward_numpy(x.astype(np.float32), 5, 0.1, 0.75, 1.0)
        dx = lrn_numpy.lrn_backward_numpy(x.astype(np.float32), y, dy.astype(np.float32),
                                          5, 0.1, 0.75, 1.0)
    finally:
        workspace.set_threads(saved)
    _close("output", y, want)
    _close("d input", dx, want_dx)


def test_planner_rule_of_the_numpy_backward(monkeypatch):
    """The oneDNN forward + NumPy backward (what AVX2 runs), on any host: each LRN call
    allocates what the planner's rule says (tracemalloc, as test_plan_memory_onednn.py)."""
    from test_plan_memory_onednn import _executor, _per_call_peaks, _step
    from netdsl.runtime.memory import footprint, plan_memory
    _modes(monkeypatch, "onednn-fwd+numpy-bwd")
    ex = _executor("lrn", "train")
    step = _step(ex, "train", 8)
    step()
    plan_memory(ex.plan, 8, training=True)
    found = _per_call_peaks(ex, step)
    checked = 0
    for i, st in enumerate(ex.plan):
        if st.node.op != "lrn":
            continue
        fp = footprint(st, 8, 4, True)
        assert fp.bwd_tmp > 0 and fp.cache == 0 and fp.keep_out
        for key, want in ((("F", i), fp.out + fp.cache + fp.fwd_tmp),
                          (("B", i), sum(fp.dx) + fp.bwd_tmp)):
            assert abs(found[key] - want) <= 0.01 * want + 8192, (st.node.name, key, found[key])
            checked += 1
    assert checked == 4
