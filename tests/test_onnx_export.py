"""ONNX export checked by an independent runtime: onnxruntime must give the logits netdsl's
own inference gives (float32, ≤ 1e-5 relative to the largest logit)."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from netdsl.core import graph as G                      # noqa: E402
from netdsl.cli.app import main                        # noqa: E402
from netdsl.compile.compiler import compile_text           # noqa: E402
from netdsl.core.errors import NetdslError              # noqa: E402
from netdsl.runtime.executor import Executor               # noqa: E402
from netdsl.interchange.onnx_export import EXPORTERS, to_onnx  # noqa: E402
from netdsl.interchange.trained import load_trained            # noqa: E402

RTOL = 1e-5


def randomise(params: dict, seed: int = 0) -> dict:
    """Keep the (He/LeCun) random weights, and make every bias, BN scale/shift and running
    statistic non-trivial, so that a mistake in any of them shows in the logits."""
    rng = np.random.default_rng(seed)
    for tensors in params.values():
        for key, value in tensors.items():
            if key in ("running_var", "gamma"):
                value[...] = rng.uniform(0.5, 1.5, value.shape)
            elif key in ("bias", "beta", "running_mean"):
                value[...] = rng.normal(0, 0.1, value.shape)
    return params


def ort_logits(model, x_nhwc: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))})[0]


def assert_same_logits(g, params, batch: int = 2, seed: int = 1):
    model = to_onnx(g, params)
    shape = next(r for r in G.nodes(g) if r.op == "input").out_shape
    x = np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)
    ours = Executor(g, params=params).forward(x).logits
    theirs = ort_logits(model, x)
    assert theirs.shape == ours.shape
    err = np.abs(theirs - ours).max() / np.abs(ours).max()
    assert err <= RTOL, f"relative difference {err:.2e}"
    return model


@pytest.mark.parametrize("net, input_shape", [
    ("lenet5", None), ("inception_small", (28, 28, 1)), ("resnet18", None)])
def test_zoo_nets_match_onnxruntime(nets_dir, net, input_shape):
    t = load_trained(str(nets_dir / f"{net}.net"), input_shape=input_shape)
    model = assert_same_logits(t.graph, randomise(t.params))
    ops = [n.op_type for n in model.graph.node]
    assert "Dropout" not in ops and "Softmax" not in ops
    if net == "inception_small":   # the auxiliary head (FC 64 → FC) is not exported
        assert ops.count("Gemm") == 1


@pytest.mark.slow
def test_vgg16_matches_onnxruntime(nets_dir):
    t = load_trained(str(nets_dir / "vgg16.net"))
    model = assert_same_logits(t.graph, randomise(t.params), batch=1)
    # 13 convs and 3 FCs; the two dropouts are gone.
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 13 and ops.count("Gemm") == 3 and "Identity" not in ops


MIXED = """
INPUT(13x11x4)
 -> a: CONV(8, 3, groups=2, dilation=2, stride=2, pad=2) -> BN -> RELU
 -> c: MAXPOOL(3, stride=1, ceil=true)
 -> add { @c | @c -> CONV(8, 3) | @c -> RELU }
 -> AVGPOOL(3, stride=2, pad=1, ceil=true) -> SIGMOID -> b: FLATTEN
 -> concat { @b -> FC(7) -> TANH | @b -> BN -> FC(5) } -> DROPOUT(0.3) -> FC
@a -> GAP -> FC -> LOSS(0.3)
"""


def test_layer_options_match_onnxruntime():
    # Grouped dilated strided conv; max pool whose ceil rounding lets the last window overhang;
    # average pool with padding and overhang (divisor: the padded window, clipped); explicit
    # FLATTEN of a 3×3 map (netdsl's H·W·C order must survive); BN on vectors; concat of
    # vectors; a 3-way add; an auxiliary head that must not be exported.
    c = compile_text(MIXED, mode="infer")
    params = randomise(Executor(c.graph, seed=3).params, seed=4)
    model = assert_same_logits(c.graph, params, batch=3)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Sum") == 1 and ops.count("Gemm") == 3 and "GlobalAveragePool" not in ops


POOL_ROUNDING = [
    # The last window would start in the right padding: netdsl (like Caffe and PyTorch)
    # drops it, ONNX's ceil_mode does not, so this must be written in floor mode.
    "INPUT(5x5x2) -> MAXPOOL(2, stride=2, pad=1, ceil=true) -> FC",
    "INPUT(5x5x2) -> AVGPOOL(2, stride=2, pad=1, ceil=true) -> FC",
    # A last window overhanging the input: ceil_mode.
    "INPUT(6x6x2) -> CONV(4, 3) -> MAXPOOL(3, stride=2, ceil=true) -> FC",
    "INPUT(7x6x2) -> AVGPOOL(3, stride=2, pad=1, ceil=true) -> FC",
    # One axis of each kind (5: rule, 6: overhang): extra end padding of −inf.
    "INPUT(5x6x2) -> MAXPOOL(3, stride=3, pad=1, ceil=true) -> FC",
]


@pytest.mark.parametrize("text", POOL_ROUNDING)
def test_pool_rounding_matches_onnxruntime(text):
    c = compile_text(text, mode="infer")
    assert_same_logits(c.graph, randomise(Executor(c.graph, seed=0).params), batch=3)


def test_pool_rounding_onnx_cannot_express_is_an_error():
    c = compile_text("INPUT(5x6x2) -> AVGPOOL(3, stride=3, pad=1, ceil=true) -> FC",
                     mode="infer")
    with pytest.raises(NetdslError) as info:
        to_onnx(c.graph, Executor(c.graph).params)
    assert "ONNX cannot express" in info.value.message and info.value.loc.col == 17


def test_fc_on_a_map_permutes_its_rows():
    # FC reading a 3×3×4 map directly: ONNX flattens C·H·W, netdsl H·W·C.
    c = compile_text("INPUT(6x6x2) -> CONV(4, 3) -> MAXPOOL(2) -> FC(5) -> RELU -> FC",
                     mode="infer")
    params = randomise(Executor(c.graph, seed=0).params)
    assert_same_logits(c.graph, params, batch=4)


def test_fused_activation_is_exported():
    # The compiler's inference pipeline may fuse a ReLU into its conv (meta["act"]); the file
    # must still apply it.
    c = compile_text("INPUT(6x6x2) -> CONV(4, 3) -> RELU -> FC", mode="infer")
    params = randomise(Executor(c.graph, seed=0).params)
    reference = to_onnx(c.graph, params)
    G.node(c.graph, "conv1").meta["act"] = "relu"
    G.remove_node(c.graph, "relu1", replacement=("conv1", 0))
    fused = to_onnx(c.graph, params)
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 2)).astype(np.float32)
    np.testing.assert_array_equal(ort_logits(fused, x), ort_logits(reference, x))
    assert [n.op_type for n in fused.graph.node].count("Relu") == 1


def test_layer_without_onnx_operator_is_a_located_error(monkeypatch):
    monkeypatch.delitem(EXPORTERS, "tanh")
    c = compile_text("INPUT(8x8x1) -> CONV(4) -> TANH -> FC", mode="infer")
    with pytest.raises(NetdslError) as info:
        to_onnx(c.graph, Executor(c.graph).params)
    err = info.value
    assert "tanh1 (TANH) has no ONNX operator" in err.message
    assert err.loc is not None and (err.loc.line, err.loc.col) == (1, 28)
    assert "conv" in err.hint


def test_export_command_writes_a_checked_model(tmp_path, nets_dir, capsys):
    out = tmp_path / "lenet5.onnx"
    assert main(["export", str(nets_dir / "lenet5.net"), "-o", str(out)]) == 0
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    inp = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in inp[1:]] == [1, 32, 32]
    assert "lenet5.onnx" in capsys.readouterr().out
    assert main(["export", str(nets_dir / "lenet5.net"), "-o", str(out), "--check"]) == 0
    assert "netdsl and onnxruntime agree" in capsys.readouterr().out


@pytest.mark.parametrize("opset", [13, onnx.defs.onnx_opset_version()])
def test_other_opsets_match_onnxruntime(opset):
    c = compile_text(MIXED, mode="infer")
    params = randomise(Executor(c.graph, seed=3).params, seed=4)
    model = to_onnx(c.graph, params, opset=opset)
    assert model.opset_import[0].version == opset
    shape = (2, 13, 11, 4)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    try:
        theirs = ort_logits(model, x)
    except Exception as exc:   # an onnx newer than the installed onnxruntime reads
        if opset > 13 and "opset" in str(exc).lower():
            pytest.skip(f"onnxruntime does not read opset {opset}: {exc}")
        raise
    ours = Executor(c.graph, params=params).forward(x).logits
    assert np.abs(theirs - ours).max() <= RTOL * np.abs(ours).max()


def test_optimized_export_folds_batchnorm(nets_dir, tmp_path, capsys):
    # --optimize exports the compiler's inference pipeline: no BN nodes, the same logits.
    out = tmp_path / "r.onnx"
    assert main(["export", str(nets_dir / "inception_small.net"), "--input", "28x28x1",
                 "--optimize", "--check", "-o", str(out)]) == 0
    assert "netdsl and onnxruntime agree" in capsys.readouterr().out
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 1 + 2 * 6   # no aux conv
    t = load_trained(str(nets_dir / "inception_small.net"), input_shape=(28, 28, 1))
    x = np.random.default_rng(2).standard_normal((2, 28, 28, 1)).astype(np.float32)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    theirs = sess.run(["logits"], {"input": x.transpose(0, 3, 1, 2).copy()})[0]
    ours = t.executor().forward(x).logits       # the unfolded net
    assert np.abs(theirs - ours).max() <= 1e-5 * np.abs(ours).max()


def test_export_command_errors(tmp_path, nets_dir, capsys):
    assert main(["export", str(nets_dir / "lenet5.net"), "--weights",
                 str(tmp_path / "missing.npz"), "-o", str(tmp_path / "x.onnx")]) == 1
    assert "does not exist" in capsys.readouterr().err
    # A checkpoint for another network: the first mismatching tensor is named.
    t = load_trained(str(nets_dir / "lenet5.net"))
    from netdsl.train.checkpoint import save_checkpoint
    ck = tmp_path / "lenet.npz"
    save_checkpoint(str(ck), params=t.params, optimizer_state={}, epoch=0, step=0, metrics={},
                    meta={})
    assert main(["export", str(nets_dir / "resnet18.net"), "--weights", str(ck),
                 "-o", str(tmp_path / "r.onnx")]) == 1
    assert "no weights for conv1/weight" in capsys.readouterr().err
    assert main(["export", str(nets_dir / "lenet5.net"), "--opset", "9",
                 "-o", str(tmp_path / "x.onnx")]) == 1
    assert "--opset 9 is not possible" in capsys.readouterr().err
