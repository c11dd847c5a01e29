"""ONNX import of what exporters write (issue 15): Identity/Constant folding of initializers,
a one-input Concat, BN in training mode refused, Gemm/MatMul+Add bias broadcasting by ONNX's
rules, Reshape only when it keeps the batch axis, SAME padding where it is symmetric,
ReduceMean/Squeeze/Unsqueeze around global pooling, and errors told at the ONNX node. Every
imported model is checked against onnxruntime; every refusal names the node and the reason."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from netdsl.cli.app import main                       # noqa: E402
from netdsl.interchange.trained import load_trained       # noqa: E402

h = onnx.helper
RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def model(nodes, inits, in_shape=(1, 3, 8, 8), out_dims=("n", "k")):
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", 1, list(in_shape))],
                         [h.make_tensor_value_info("y", 1, list(out_dims))],
                         initializer=[onnx.numpy_helper.from_array(v, k)
                                      for k, v in inits.items()])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def imported_matches(m, tmp_path) -> None:
    """Import ``m`` with `netdsl import` and compare netdsl's logits with onnxruntime's."""
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    assert main(["import", str(path), "-o", str(tmp_path / "m.net")]) == 0
    t = load_trained(str(tmp_path / "m.net"), str(tmp_path / "m.npz"))
    shape = [d.dim_value or 2 for d in m.graph.input[0].type.tensor_type.shape.dim]
    x = rand(*shape)
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, {m.graph.input[0].name: x})[0]
    got = t.executor().forward(x.transpose(0, 2, 3, 1) if x.ndim == 4 else x).logits
    assert got.shape == want.shape
    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)


def refused(m, tmp_path, capsys, *messages) -> None:
    path = tmp_path / "bad.onnx"
    onnx.save(m, str(path))
    assert main(["import", str(path), "-o", str(tmp_path / "bad.net")]) == 1
    err = capsys.readouterr().err
    for message in messages:
        assert message in err, err
    assert ".net" not in err and not (tmp_path / "bad.net").exists()


def fc_head(src, features, units=4):
    """Flatten + Gemm nodes and weight for a map ``src`` of ``features`` numbers."""
    return ([h.make_node("Flatten", [src], ["flat"], name="flatten"),
             h.make_node("Gemm", ["flat", "head_w"], ["y"], name="head")],
            {"head_w": rand(features, units)})


def test_identity_of_initializer_and_constants_fold(tmp_path):
    # The exporter's merged BN biases: Identity of an initializer; a Constant weight; a
    # Shape→Gather→Unsqueeze→Concat target for a flattening Reshape.
    nodes = [h.make_node("Identity", ["b0"], ["b"], name="Identity_0"),
             h.make_node("Constant", [], ["w"], name="k",
                         value=onnx.numpy_helper.from_array(rand(4, 3, 3, 3))),
             h.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             h.make_node("Shape", ["c"], ["s"], name="shape"),
             h.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
             h.make_node("Unsqueeze", ["n", "ax0"], ["n1"], name="unsq"),
             h.make_node("Concat", ["n1", "minus1"], ["target"], name="cat", axis=0),
             h.make_node("Reshape", ["c", "target"], ["flat"], name="reshape"),
             h.make_node("Gemm", ["flat", "fw"], ["y"], name="fc")]
    imported_matches(model(nodes, {"b0": rand(4), "zero": np.array(0, np.int64),
                                   "ax0": np.array([0], np.int64),
                                   "minus1": np.array([-1], np.int64), "fw": rand(256, 5)}),
                     tmp_path)


def test_one_input_concat(tmp_path):
    head, w = fc_head("cat", 3 * 64)
    imported_matches(model([h.make_node("Concat", ["x"], ["cat"], name="cat", axis=1), *head],
                           w), tmp_path)


def test_batchnorm_in_training_mode_is_refused(tmp_path, capsys):
    bn = {k: rand(3) for k in ("g", "b", "m")} | {"v": np.ones(3, np.float32)}
    head, w = fc_head("bn", 3 * 64)
    m = model([h.make_node("BatchNormalization", ["x", "g", "b", "m", "v"],
                           ["bn", "rm", "rv"], name="bn0", training_mode=1), *head], bn | w)
    refused(m, tmp_path, capsys, "node 0 'bn0' (BatchNormalization)", "training_mode=1")


@pytest.mark.parametrize("bias, attrs", [
    (rand(5), {}), (rand(1, 5), {"alpha": 0.5, "beta": 2.0}), (rand(1, 1), {}),
    (np.array(0.3, np.float32), {"transB": 1}),
    (np.tile(rand(1, 5), (2, 1)), {}),           # one row per sample, all equal
    (np.full((2, 1), 0.7, np.float32), {})])
def test_gemm_bias_broadcasts_by_onnx_rules(tmp_path, bias, attrs):
    w = rand(5, 6) if attrs.get("transB") else rand(6, 5)
    m = model([h.make_node("Gemm", ["x", "w", "c"], ["y"], name="fc", **attrs)],
              {"w": w, "c": bias}, in_shape=(2, 6))
    imported_matches(m, tmp_path)


def test_gemm_bias_per_sample_is_refused(tmp_path, capsys):
    # (M, 1) with M the batch: a bias per sample, which one FC bias cannot be.
    m = model([h.make_node("Gemm", ["x", "w", "c"], ["y"], name="fc")],
              {"w": rand(6, 5), "c": np.array([[1.0], [2.0]], np.float32)}, in_shape=(2, 6))
    refused(m, tmp_path, capsys, "node 0 'fc' (Gemm)", "differs between the rows")
    # (M, 1) with M equal to the units too: once added per column, silently
    m = model([h.make_node("Gemm", ["x", "w", "c"], ["y"], name="fc")],
              {"w": rand(6, 5), "c": rand(5, 1)}, in_shape=(5, 6))
    refused(m, tmp_path, capsys, "node 0 'fc' (Gemm)", "differs between the rows")


def test_matmul_add_bias(tmp_path, capsys):
    nodes = [h.make_node("MatMul", ["x", "w"], ["p"], name="mm"),
             h.make_node("Add", ["p", "b"], ["y"], name="bias")]
    imported_matches(model(nodes, {"w": rand(6, 5), "b": rand(1, 5)}, in_shape=(2, 6)),
                     tmp_path)
    shared = nodes[:1] + [h.make_node("Add", ["b", "p"], ["q"], name="bias"),
                          h.make_node("Add", ["q", "p"], ["y"], name="sum")]
    refused(model(shared, {"w": rand(6, 5), "b": rand(5)}, in_shape=(2, 6)), tmp_path, capsys,
            "node 1 'bias' (Add)", "other nodes also read")
    four_d = [h.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    refused(model(four_d, {"w": rand(8, 5)}, out_dims=("n", "c", "h", "w")), tmp_path, capsys,
            "node 0 'mm' (MatMul)", "multiplies a 4-D tensor")


@pytest.mark.parametrize("target", [[1, -1], [0, -1], [-1, 192], [1, 192]])
def test_flattening_reshapes(tmp_path, target):
    head = [h.make_node("Reshape", ["x", "t"], ["flat"], name="r"),
            h.make_node("Gemm", ["flat", "w"], ["y"], name="fc")]
    imported_matches(model(head, {"t": np.array(target, np.int64), "w": rand(192, 4)}),
                     tmp_path)


def test_reshapes_that_are_no_flatten_are_refused(tmp_path, capsys):
    m = model([h.make_node("Reshape", ["x", "t"], ["y"], name="r")],
              {"t": np.array([-1, 2], np.int64)}, in_shape=(1, 8))
    refused(m, tmp_path, capsys, "node 0 'r' (Reshape)", "mixes samples")
    m = model([h.make_node("Reshape", ["x", "t"], ["r"], name="r"),
               h.make_node("Flatten", ["r"], ["y"], name="f")],
              {"t": np.array([1, 6, 4, 8], np.int64)})
    refused(m, tmp_path, capsys, "node 0 'r' (Reshape)", "netdsl imports only reshapes")


@pytest.mark.parametrize("op, size, auto", [
    ("Conv", 7, "SAME_UPPER"), ("Conv", 9, "SAME_LOWER"), ("MaxPool", 8, "SAME_UPPER"),
    ("MaxPool", 7, "SAME_LOWER"), ("AveragePool", 9, "SAME_UPPER")])
def test_same_padding_with_stride_2(tmp_path, op, size, auto):
    extra = {"w": rand(4, 3, 3, 3)} if op == "Conv" else {}
    ins = ["x", "w"] if op == "Conv" else ["x"]
    attrs = {"kernel_shape": [3, 3]} if op != "Conv" else {}
    out = -(-size // 2)
    head, w = fc_head("p", (4 if op == "Conv" else 3) * out * out)
    imported_matches(model([h.make_node(op, ins, ["p"], name="w0", auto_pad=auto,
                                        strides=[2, 2], **attrs), *head], extra | w,
                           in_shape=(1, 3, size, size)), tmp_path)


def test_uneven_same_padding_is_refused(tmp_path, capsys):
    head, w = fc_head("p", 4 * 16)
    m = model([h.make_node("Conv", ["x", "k"], ["p"], name="c", auto_pad="SAME_UPPER",
                           strides=[2, 2]), *head], {"k": rand(4, 3, 3, 3)} | w)
    refused(m, tmp_path, capsys, "node 0 'c' (Conv)",
            "auto_pad=SAME_UPPER on this input size works out as pads [0, 0, 1, 1]")


@pytest.mark.parametrize("nodes", [
    [h.make_node("ReduceMean", ["x"], ["g"], axes=[2, 3], keepdims=1),
     h.make_node("Squeeze", ["g", "a23"], ["s"])],
    [h.make_node("ReduceMean", ["x"], ["s"], axes=[-1, -2], keepdims=0)],
    [h.make_node("GlobalAveragePool", ["x"], ["g"]), h.make_node("Flatten", ["g"], ["f"]),
     h.make_node("Unsqueeze", ["f", "a23"], ["u"]), h.make_node("Reshape", ["u", "t"], ["s"])],
])
def test_global_pooling_sequences(tmp_path, nodes):
    m = model([*nodes, h.make_node("Gemm", ["s", "w"], ["y"], name="fc")],
              {"a23": np.array([2, 3], np.int64), "t": np.array([0, -1], np.int64),
               "w": rand(3, 4)})
    imported_matches(m, tmp_path)


def test_generated_net_errors_are_told_at_the_onnx_node(tmp_path, capsys):
    # ONNX accepts padding larger than half a pooling window; netdsl's MAXPOOL does not.
    head, w = fc_head("p", 3 * 11 * 11)
    m = model([h.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[2, 2],
                           pads=[2, 2, 2, 2]), *head], w)
    refused(m, tmp_path, capsys, "node 0 'pool' (MaxPool): its netdsl layer MAXPOOL is invalid",
            "more than half the window")
