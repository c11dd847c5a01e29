"""compile/passes.py max_pool_first: ReLU → max pooling runs as max pooling → ReLU in
training. The generic harness (test_pass_harness.py) checks it in float64 on every net; here,
float32 on both kernel providers, outputs and gradients are bitwise those of the net as
written (max commutes with ReLU, and a tie it moves carries a zero gradient), and the plan
keeps less memory."""
import numpy as np
import pytest

from netdsl.compile.compiler import compile_text
from netdsl.core import graph as G
from netdsl.runtime import kernels
from netdsl.runtime.executor import Executor
from netdsl.runtime.memory import plan_memory

NET = """
INPUT(12x12x3) -> CONV(8, 3, pad=1) -> RELU -> MAXPOOL(2) -> CONV(8, 3, pad=1) -> RELU
  -> MAXPOOL(3, stride=1, pad=1) -> CONV(4, 1) -> RELU -> AVGPOOL(2) -> FC(16) -> RELU -> FC
  -> LOSS
"""
PROVIDERS = ["numpy"] + (["onednn"] if kernels.available("onednn") else [])


def _executors(provider):
    g = compile_text(NET, num_classes=5).graph
    passes = ("eliminate_dead_nodes", "remove_identities", "fuse_activations")
    return (Executor(g, seed=0, kernels=provider, passes=passes),
            Executor(g, seed=0, kernels=provider))


def test_the_pass_moves_relus_after_max_pools_only():
    _, ex = _executors("numpy")
    order = [r.op for r in G.nodes(ex.model.graph)]
    assert order.count("relu") == 2                # the two before a max pool, now after it
    for r in G.nodes(ex.model.graph):
        if r.op == "relu":
            assert G.node(ex.model.graph, r.inputs[0][0]).op == "maxpool"
    # the ReLU before the average pool stays, fused into its conv
    assert any(r.meta.get("act") == "relu" and r.op == "conv" for r in G.nodes(ex.model.graph))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_outputs_and_gradients_bitwise_as_written(provider):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 12, 12, 3)).astype(np.float32)
    x[0] = 0.0      # windows of ties: every ReLU input of the first image is its bias
    y = rng.integers(0, 5, 6)
    written, moved = _executors(provider)
    for step in range(2):
        r0, r1 = written.forward(x, y, training=True), moved.forward(x, y, training=True)
        np.testing.assert_array_equal(r1.logits, r0.logits)
        g0, g1 = written.backward(), moved.backward()
        assert g0.keys() == g1.keys()
        for node, tensors in g0.items():
            for k, grad in tensors.items():
                np.testing.assert_array_equal(g1[node][k], grad, err_msg=f"{node}.{k}")
        for ex, grads in ((written, g0), (moved, g1)):       # the same update on both
            for node, tensors in grads.items():
                for k, grad in tensors.items():
                    ex.params[node][k] -= 0.1 * grad


def test_training_plan_keeps_less():
    written, moved = _executors("numpy")
    assert plan_memory(moved.plan, 64, training=True).peak < \
        plan_memory(written.plan, 64, training=True).peak
