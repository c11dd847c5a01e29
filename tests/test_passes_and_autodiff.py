"""Compiler passes (idempotent; outputs and gradients unchanged) and whole-network autodiff."""
import numpy as np
import pytest

from netdsl.core import graph as G
from netdsl.compile.compiler import build_graph
from netdsl.core.errors import SourceFile
from netdsl.runtime.executor import Executor
from netdsl.compile.passes import PIPELINE
from netdsl.compile.verify import verify
from netdsl.compile.shapes import infer_shapes, resolve_auto

BRANCHY = """
param ROUND = floor   # 6×6 stride 2 → 3×3 (3.5 floored), then a 2×2 pool → 1×1
INPUT(6x6x2) -> CONV(4, 3) -> BN -> RELU
  -> c: concat { CONV(3, 1) | CONV(2, 3) -> TANH | identity }
  -> residual { CONV(9, 3) -> RELU -> CONV(9, 3) }
  -> residual { CONV(6, 3, stride=2) -> BN }
  -> MAXPOOL(2) -> FC(5)
@c -> GAP -> FC(5) -> LOSS(0.3)
"""
DEAD = BRANCHY + "\n@c -> CONV(4, 1) -> SIGMOID\n"
WITH_DROPOUT = "INPUT(5x5x2) -> CONV(3, 3) -> RELU -> DROPOUT(0.5) -> FC(8) -> DROPOUT(0.3) -> FC(4)"


def shaped(text):
    g = build_graph(SourceFile("t.net", text))
    resolve_auto(g, num_classes=5)
    infer_shapes(g)
    verify(g, "test")
    return g


def batch(g, n=4, classes=5, seed=1):
    rng = np.random.default_rng(seed)
    shape = G.node(g, [r.name for r in G.nodes(g) if r.op == "input"][0]).out_shape
    return rng.standard_normal((n, *shape)), rng.integers(0, classes, n)


def run(g, params, x, y, training):
    # passes=(): run each graph exactly as given (the executor's own pipeline is not under test)
    ex = Executor(g, dtype=np.float64, seed=3, passes=(),
                  params={k: {p: v.copy() for p, v in t.items()} for k, t in params.items() if k in g})
    res = ex.forward(x, y, training=training, keep=True)
    grads = ex.backward()
    return res, grads


@pytest.mark.parametrize("text,mode", [(DEAD, "train"), (BRANCHY, "train"), (WITH_DROPOUT, "infer")])
@pytest.mark.parametrize("p", PIPELINE, ids=lambda p: p.name)
def test_pass_is_idempotent_and_preserves_outputs_and_gradients(text, mode, p):
    if mode not in p.modes:
        pytest.skip(f"{p.name} is not valid in {mode} mode")
    g = shaped(text)
    before = G.copy_graph(g)
    changed = p.run(g)
    verify(g, p.name)
    assert p.run(g) is False, "a second run must change nothing"
    x, y = batch(before, classes=4 if text is WITH_DROPOUT else 5)
    ref = Executor(before, dtype=np.float64, seed=3, passes=())
    training = mode == "train"
    r0, g0 = run(before, ref.params, x, y, training)
    r1, g1 = run(g, ref.params, x, y, training)
    np.testing.assert_allclose(r1.logits, r0.logits, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(float(r1.loss), float(r0.loss), rtol=1e-12)
    for node, tensors in g1.items():
        for name, grad in tensors.items():
            np.testing.assert_allclose(grad, g0[node][name], rtol=1e-10, atol=1e-12)
    if changed:
        assert g.number_of_nodes() < before.number_of_nodes()


def test_dead_branch_is_removed_with_a_warning():
    g = shaped(DEAD)
    n = g.number_of_nodes()
    [dead] = [p for p in PIPELINE if p.name == "eliminate_dead_nodes"]
    assert dead.run(g)
    assert g.number_of_nodes() == n - 2
    assert any("does not lead to any loss" in m for m, _ in g.graph["warnings"])
    assert not any(r.op == "sigmoid" for r in G.nodes(g))


def test_residual_projection_inserted_only_when_shape_changes():
    g = shaped(BRANCHY)
    projections = [r for r in G.nodes(g) if r.meta.get("projection")]
    # first residual keeps 6×6×9 → no projection; second halves and changes 9 → 6 channels
    assert [r.op for r in projections] == ["conv", "batchnorm"]
    conv = projections[0]
    assert conv.attrs["kernel"] == (1, 1) and conv.attrs["stride"] == (2, 2)
    assert conv.attrs["bias"] is False and conv.out_shape == (3, 3, 6)


def test_whole_network_gradient_check_concat_residual_two_heads():
    """Central differences of the summed (weighted) loss against backprop, every parameter
    tensor of a net with a concat, two residual adds (one projected), BN and an aux head."""
    g = shaped(BRANCHY)
    x, y = batch(g, n=3)
    ex = Executor(g, dtype=np.float64, seed=5)
    ex.forward(x, y, training=True, keep=True)
    grads = ex.backward()
    rng = np.random.default_rng(0)

    def loss():
        return float(ex.forward(x, y, training=True, keep=False).loss)

    checked = 0
    for node, name in ex.trainable():
        p = ex.params[node][name]
        flat = p.reshape(-1)
        for i in rng.choice(flat.size, size=min(6, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + 1e-6
            up = loss()
            flat[i] = old - 1e-6
            down = loss()
            flat[i] = old
            numeric = (up - down) / 2e-6
            analytic = grads[node][name].reshape(-1)[i]
            assert abs(numeric - analytic) <= 1e-5 * max(1.0, abs(numeric) + abs(analytic)), \
                f"{node}/{name}[{i}]: numeric {numeric} vs backprop {analytic}"
            checked += 1
    assert checked > 60


def test_fan_out_gradients_accumulate():
    """add{@a | @a} doubles the gradient that reaches a."""
    g1 = shaped("INPUT(4x4x1) -> a: CONV(2, 3) -> add { @a | @a } -> FC(3)")
    g2 = shaped("INPUT(4x4x1) -> a: CONV(2, 3) -> FC(3)")
    x, y = batch(g1, classes=3)
    ex1 = Executor(g1, dtype=np.float64, seed=0)
    params = {k: {p: v.copy() for p, v in t.items()} for k, t in ex1.params.items()}
    params["fc1"]["weight"] = params["fc1"]["weight"] * 2   # same function as add(a, a) @ W
    ex2 = Executor(g2, dtype=np.float64, params=params)
    ex1.forward(x, y, training=True)
    d1 = ex1.backward()
    ex2.forward(x, y, training=True)
    d2 = ex2.backward()
    np.testing.assert_allclose(d1["a"]["weight"], d2["a"]["weight"], rtol=1e-10)
