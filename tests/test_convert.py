"""`netdsl convert --fc-to-conv`: same outputs at the original size, a grid of windows beyond."""
import numpy as np
import pytest

from netdsl.cli.app import main
from netdsl.compile.compiler import compile_file, compile_text
from netdsl.tools.convert import convert_weights, fc_to_conv
from netdsl.core.errors import NetdslError
from netdsl.runtime.executor import Executor
from netdsl.train.checkpoint import load_checkpoint, save_checkpoint

NET = """net small
INPUT(10x10x1) -> CONV(4, 3, pad=valid) -> RELU -> POOL(2) -> FC(16) -> RELU -> FC(10)
"""


def _logits(ex, x):
    return np.asarray(ex.forward(x).logits, dtype=np.float64)


def test_converted_net_matches_and_slides():
    g = compile_text(NET, num_classes=10).graph
    ex = Executor(g, seed=3, passes="O0")
    text, kernels = fc_to_conv(g)
    assert kernels == {"fc1": (4, 4, 4, 16), "fc2": (1, 1, 16, 10)}
    params = convert_weights({n: dict(t) for n, t in ex.params.items()}, kernels)
    conv = Executor(compile_text(text, num_classes=10).graph, params=params, passes="O0")
    x = np.random.default_rng(0).standard_normal((3, 10, 10, 1)).astype(np.float32)
    np.testing.assert_allclose(_logits(conv, x), _logits(ex, x), rtol=1e-5, atol=1e-5)

    # At 14×14 the converted net answers a 3×3 grid; cell (i, j) is the original net on the
    # 10×10 crop at (2i, 2j) (the total stride before the first FC is 2).
    big_text, _ = fc_to_conv(g, (14, 14, 1))
    big = Executor(compile_text(big_text, num_classes=10).graph, params=params, passes="O0")
    xb = np.random.default_rng(1).standard_normal((2, 14, 14, 1)).astype(np.float32)
    grid = _logits(big, xb).reshape(2, 3, 3, 10)
    for i in range(3):
        for j in range(3):
            crop = np.ascontiguousarray(xb[:, 2 * i:2 * i + 10, 2 * j:2 * j + 10])
            np.testing.assert_allclose(grid[:, i, j], _logits(ex, crop), rtol=1e-4, atol=1e-5)


def test_vgg16_at_384_answers_a_6x6_grid(tmp_path):
    out = tmp_path / "v.net"
    assert main(["convert", "nets/vgg16.net", "--fc-to-conv", "--slide", "384x384x3",
                 "-o", str(out)]) == 0
    g = compile_file(str(out), num_classes=1000).graph
    fc3 = next(r for r in g.nodes if r == "fc3")
    assert tuple(g.nodes[fc3]["node"].out_shapes[0]) == (6, 6, 1000)


def test_cli_converts_weights(tmp_path):
    net = tmp_path / "small.net"
    net.write_text(NET)
    ex = Executor(compile_text(NET, num_classes=10).graph, seed=1, passes="O0")
    ck = tmp_path / "ck.npz"
    save_checkpoint(str(ck), params={n: {k: np.asarray(v) for k, v in t.items()}
                                     for n, t in ex.params.items()},
                    optimizer_state={}, epoch=1, step=1, metrics={}, meta={})
    assert main(["convert", str(net), "--fc-to-conv", "--weights", str(ck),
                 "-o", str(tmp_path / "c.net")]) == 0
    saved = load_checkpoint(str(tmp_path / "c.npz"))["params"]
    np.testing.assert_array_equal(saved["fc1"]["weight"].reshape(64, 16), ex.params["fc1"]["weight"])


def test_branching_network_is_refused():
    g = compile_file("nets/inception_small.net", num_classes=10).graph
    with pytest.raises(NetdslError, match="chains"):
        fc_to_conv(g)
