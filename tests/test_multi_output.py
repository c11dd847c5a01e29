"""Layers with two outputs (the future max-pool-with-switches): ports through shape inference,
the verifier, the executor and autodiff. Uses a test-only layer, removed afterwards."""
import numpy as np
import pytest

from netdsl.core import graph as G
from netdsl.layers import base
from netdsl.layers import LayerSpec, bind_args, get
from netdsl.compile.verify import verify
from netdsl.compile.shapes import infer_shapes
from netdsl.runtime.executor import Executor
from netdsl.tools.gradcheck import numeric_grad


def _fwd(ctx, attrs, params, inputs):
    x = inputs[0]
    return (x * 2.0, x * x), x            # two outputs: 2x and x²


def _bwd(ctx, attrs, params, x, dout):
    d_double, d_square = dout              # None where a port got no gradient
    dx = ctx.xp.zeros_like(x)
    if d_double is not None:
        dx = dx + 2.0 * d_double
    if d_square is not None:
        dx = dx + 2.0 * x * d_square
    return [dx], {}


@pytest.fixture
def two_out():
    spec = LayerSpec(name="twoout_test", doc="test: 2x and x²", args=(),
                     infer_shape=lambda attrs, shapes: (shapes[0], shapes[0]),
                     forward=_fwd, backward=_bwd, outputs=2)
    base.register(spec)
    yield spec
    del base._REGISTRY["twoout_test"], base._ALIASES["twoout_test"]


def build(ports):
    g = G.new_graph("t")
    def put(name, op, inputs, **args):
        G.add_node(g, G.Node(name, op, bind_args(get(op), [], args), inputs=inputs))
    put("x", "input", [], shape=(3,))
    put("pre", "fc", [("x", 0)], units=3)      # weights whose gradient must pass through t
    put("t", "twoout_test", [("pre", 0)])
    if len(ports) == 1:
        put("fc", "fc", [("t", ports[0])], units=2)
    else:
        put("cat", "concat", [("t", p) for p in ports])
        put("fc", "fc", [("cat", 0)], units=2)
    put("loss", "softmax_xent", [("fc", 0)])
    infer_shapes(g)
    verify(g, "test")
    return g


@pytest.mark.parametrize("ports", [(0,), (1,), (0, 1), (1, 1)])
def test_two_output_layer_gradients(two_out, ports):
    g = build(ports)
    assert G.node(g, "t").out_shapes == ((3,), (3,))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3)), rng.integers(0, 2, 4)
    ex = Executor(g, dtype=np.float64, seed=1)

    def loss():
        return float(ex.forward(x, y, training=True, keep=False).loss)

    ex.forward(x, y, training=True)
    grads = ex.backward()
    for node in ("fc", "pre"):
        numeric = numeric_grad(loss, ex.params[node]["weight"])
        np.testing.assert_allclose(grads[node]["weight"], numeric, atol=1e-6, err_msg=node)


def test_reading_a_port_that_does_not_exist_fails_verification(two_out):
    g = build((0,))
    G.node(g, "fc").inputs = [("t", 2)]
    with pytest.raises(AssertionError, match="port 2"):
        verify(g, "test")
