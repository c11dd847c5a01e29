"""Prepacked convolution weights (netdsl/runtime/kernels/onednn/packs.py): packed once per
weight version at inference (never per batch), once per training step, and never stale:
results are checked against the NumPy provider on the same weights after every kind of
weight change. Run with NETDSL_ONEDNN_PACK's ``always`` so that every host packs."""
from __future__ import annotations

import numpy as np
import pytest

from netdsl.runtime import kernels

if not kernels.available("onednn"):
    pytest.skip("oneDNN (libdnnl.so.3) cannot load here", allow_module_level=True)

from netdsl.compile.compiler import compile_text  # noqa: E402
from netdsl.runtime.executor import Executor  # noqa: E402
from netdsl.runtime.kernels.onednn import common, conv, packs  # noqa: E402

NET = """
INPUT(12x12x3) -> CONV(8, 3) -> RELU -> MAXPOOL(2) -> CONV(16, 3, pad=1)
  -> residual { CONV(16, 3, pad=1) -> RELU -> CONV(16, 1) } -> RELU -> FC
"""


@pytest.fixture(autouse=True)
def always_pack(monkeypatch):
    """Packs on every host: by default (``auto``) an AVX-512 host reads netdsl's own layout
    and packs nothing; the primitives made under either setting are forgotten."""
    monkeypatch.setattr(conv, "PACK", "always")
    common.clear_cache()
    yield
    common.clear_cache()


@pytest.fixture
def fills(monkeypatch):
    """The keys of every pack (re)filled, in order."""
    got = []
    get = packs.Packs.get

    def spy(self, weight, key, nbytes, fill, refresh):
        return get(self, weight, key, nbytes, lambda buf: (got.append(key), fill(buf)), refresh)
    monkeypatch.setattr(packs.Packs, "get", spy)
    return got


def _nets():
    g = compile_text(NET, num_classes=5).graph
    ex = Executor(g, seed=0, kernels="onednn")
    convs = sum(st.node.op == "conv" for st in ex.plan)
    return ex, convs


def _reference(ex, x):
    """The NumPy provider's logits on the same (current) weights: the independent answer."""
    ref = Executor(ex.model.graph, params=ex.params, passes=(), kernels="numpy")
    return ref.forward(x, training=False).logits


def _batch(seed, n=4):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 12, 12, 3)).astype(np.float32), rng.integers(0, 5, n)


def test_inference_packs_once_not_per_batch(fills):
    ex, convs = _nets()
    inf = ex.for_inference()
    for seed in range(3):
        x, _ = _batch(seed)
        out = inf.forward(x, training=False).logits
        np.testing.assert_allclose(out, _reference(inf, x), rtol=1e-4, atol=1e-4)
        first = len(fills) if seed == 0 else first
    assert len(fills) == first          # the first batch packed; the next two did not
    # one blocked copy per conv (a folded one's folded weights and bias too: conv_fold.py)
    assert sum(k[0] == "conv_fwd" for k in fills) == convs


def test_training_packs_once_per_step_and_inference_sees_the_update(fills):
    ex, convs = _nets()
    x, y = _batch(0)
    inf = ex.for_inference()              # no batch norm: it shares the training weights
    before = inf.forward(x, training=False).logits.copy()
    del fills[:]
    steps = []
    for step in range(2):
        first = len(fills)
        ex.forward(x, y, training=True)
        ex.backward()
        steps.append(fills[first:])
        for node, grads in ex.grads.items():      # an optimizer step, in place
            for name, g in grads.items():
                ex.params[node][name] -= 0.5 * g
    # each step's forward repacks every conv once (a folded one, conv_fold.py, refolds its
    # weights, once a step, before)
    for got in steps:
        assert sum(k[0] == "conv_fwd" for k in got) == convs
        folds = [k for k in got if k[0] == "fold"]
        assert len(folds) == len(set(folds))
    assert all(k[0] in ("conv_fwd", "fold", "fold_bias") for k in fills)
    after = inf.forward(x, training=False).logits
    assert not np.allclose(after, before, atol=1e-3)
    np.testing.assert_allclose(after, _reference(inf, x), rtol=1e-4, atol=1e-4)


def test_weights_overwritten_in_place_are_repacked():
    """A checkpoint loaded into the arrays (no backward, no weights_changed): the sample
    guard notices and the next batch reads the new weights."""
    ex, _ = _nets()
    inf = ex.for_inference()
    x, _ = _batch(1)
    inf.forward(x, training=False)
    rng = np.random.default_rng(7)
    for tensors in inf.params.values():
        for a in tensors.values():
            a[...] = rng.standard_normal(a.shape).astype(a.dtype) * 0.2
    out = inf.forward(x, training=False).logits
    np.testing.assert_allclose(out, _reference(inf, x), rtol=1e-4, atol=1e-4)


def test_a_pack_dies_with_its_weights():
    ex, _ = _nets()
    inf = ex.for_inference()
    inf.forward(_batch(2)[0], training=False)
    held = len(packs.PACKS)
    del ex, inf
    import gc
    gc.collect()
    assert len(packs.PACKS) < held


def test_training_packs_large_weights_on_every_host(fills, monkeypatch):
    """``auto`` in training: weights of PACK_TRAIN_BYTES or more are packed on every host
    (AVX-512 too, where brgconv would read netdsl's layout, slower once the weights outgrow
    L2), once per step; outputs and gradients match the NumPy provider's."""
    monkeypatch.setattr(conv, "PACK", "auto")
    monkeypatch.setattr(conv, "PACK_TRAIN_BYTES", 16 * 16 * 9 * 4)   # the 16→16 3×3 only
    common.clear_cache()
    ex, _ = _nets()
    x, y = _batch(3)
    ref = Executor(ex.model.graph, params=ex.params, passes=(), kernels="numpy")
    for step in range(2):
        got = ex.forward(x, y, training=True).logits.copy()
        ex.backward()
        want = ref.forward(x, y, training=True).logits
        ref.backward()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        for node, grads in ref.grads.items():
            for name, g in grads.items():
                np.testing.assert_allclose(ex.grads[node][name], g, rtol=1e-3, atol=1e-4)
        for node, grads in ex.grads.items():          # an optimizer step, in place
            for name, g in grads.items():
                ex.params[node][name] -= 0.5 * g
    big = [k for k in fills if k[0] == "conv_fwd" and dict(k[4])["kh"] == 3
           and dict(k[4])["c"] == 16]
    assert len(big) == 2                              # repacked once per step
