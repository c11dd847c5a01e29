"""CuPy runs the same code as NumPy: forward, backward and a training step agree.

Skipped without CuPy and a CUDA device (CI has neither)."""
import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def test_cupy_and_numpy_agree_on_loss_and_gradients():
    cupy = pytest.importorskip("cupy")
    from netdsl.compiler import compile_text
    from netdsl.executor import Executor
    text = ("INPUT(8x8x3) -> CONV(8, 3) -> BN -> RELU -> concat { CONV(4, 1) | MAXPOOL(3, stride=1, pad=1) }"
            " -> residual { CONV(12, 3, stride=2) -> RELU } -> AVGPOOL(2) -> FC(5)")
    g = compile_text(text, input_shape=(8, 8, 3), num_classes=5).graph
    cpu = Executor(g, xp=np, dtype=np.float64, seed=0)
    gpu = Executor(g, xp=cupy, dtype=np.float64,
                   params={n: {k: cupy.asarray(v) for k, v in t.items()} for n, t in cpu.params.items()})
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 8, 8, 3)), rng.integers(0, 5, 4)
    rc = cpu.forward(x, y, training=True)
    gc = cpu.backward()
    rg = gpu.forward(cupy.asarray(x), cupy.asarray(y), training=True)
    gg = gpu.backward()
    np.testing.assert_allclose(float(rg.loss), float(rc.loss), rtol=1e-10)
    for node, tensors in gc.items():
        for name, grad in tensors.items():
            np.testing.assert_allclose(cupy.asnumpy(gg[node][name]), grad, rtol=1e-8, atol=1e-10)
