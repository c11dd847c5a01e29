"""A fused conv/fc + activation's backward writes the activation's gradient over the forward
output (Ctx.overwrite_output) everywhere but in the step whose output is the prediction, which
the executor returns and the caller holds through backward: whole nets on oneDNN, against the
NumPy reference provider, with the prediction compared before and after backward."""
import numpy as np
import pytest

from netdsl.compile.compiler import compile_text
from netdsl.runtime import kernels
from netdsl.runtime.executor import Executor

if not kernels.available("onednn"):
    pytest.skip("oneDNN (libdnnl.so.3) cannot load here", allow_module_level=True)

NETS = {   # the last FC's ReLU/sigmoid fuses into it: the prediction is a fused step's output
    "relu-head": ("INPUT(8x8x3) -> CONV(16, 3) -> RELU -> CONV(16, 3) -> RELU -> POOL "
                  "-> FC(32) -> RELU -> FC(4) -> RELU -> MSE", "mse"),
    "sigmoid-head": ("INPUT(8x8x3) -> CONV(16, 3) -> TANH -> POOL -> FC(4) -> SIGMOID -> MSE",
                     "mse"),
    "classes": ("INPUT(8x8x3) -> CONV(16, 3) -> RELU -> POOL -> FC(32) -> RELU -> FC -> LOSS",
                "classes"),
}


@pytest.mark.parametrize("net", sorted(NETS))
def test_prediction_survives_backward_and_gradients_match_numpy(net):
    text, kind = NETS[net]
    g = compile_text(text, num_classes=4).graph
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 8, 8, 3)).astype(np.float32)
    y = rng.random((6, 4)).astype(np.float32) if kind == "mse" else rng.integers(0, 4, 6)
    got = {}
    for provider in ("numpy", "onednn"):
        ex = Executor(g, seed=0, kernels=provider)
        assert any(st.provider == "onednn" for st in ex.plan) == (provider == "onednn")
        for _ in range(2):      # the second step runs on the carved arena
            res = ex.forward(x, y, training=True)
            before = np.array(res.logits, copy=True)
            grads = ex.backward()
            np.testing.assert_array_equal(res.logits, before)
        got[provider] = before, grads
    (ref, ref_grads), (out, grads) = got["numpy"], got["onednn"]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    for node, tensors in ref_grads.items():
        for name, want in tensors.items():
            np.testing.assert_allclose(grads[node][name], want, rtol=2e-3, atol=2e-5,
                                       err_msg=f"{node}/{name}")
