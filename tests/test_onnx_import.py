"""ONNX import: export → import → export gives the same graph (ops, attributes, weights),
the imported net computes what onnxruntime computes, and a model made by PyTorch imports."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from netdsl.cli.app import main                       # noqa: E402
from netdsl.compile.compiler import compile_text          # noqa: E402
from netdsl.runtime.executor import Executor              # noqa: E402
from netdsl.interchange.onnx_export import to_onnx            # noqa: E402
from netdsl.interchange.onnx_import import import_file        # noqa: E402
from netdsl.interchange.trained import load_trained           # noqa: E402

from test_onnx_export import MIXED, POOL_ROUNDING, randomise     # noqa: E402


def signature(model) -> tuple[str, list]:
    """A hash of the graph the output depends on, independent of node and tensor names and
    of the order nodes are listed in: each tensor is hashed from its producer's op, attributes
    and input hashes (initializers by shape and bytes). Also the sorted (op, attrs) list."""
    g = model.graph
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
    producer = {out: n for n in g.node for out in n.output}
    memo, ops = {}, []

    def sig(name):
        if name in memo:
            return memo[name]
        if name in inits:
            a = np.ascontiguousarray(inits[name])
            s = hashlib.sha1(repr((a.dtype.str, a.shape)).encode() + a.tobytes()).hexdigest()
        elif name not in producer:
            s = "input"
        else:
            n = producer[name]
            attrs = sorted((a.name, repr(onnx.helper.get_attribute_value(a)))
                           for a in n.attribute)
            ops.append((n.op_type, attrs))
            s = hashlib.sha1(repr((n.op_type, attrs, [sig(i) for i in n.input])).encode()
                             ).hexdigest()
        memo[name] = s
        return s

    return sig(g.output[0].name), sorted(ops)


def round_trip(g, params, tmp_path):
    """Export, import, export again; returns both models and the imported Trained."""
    first = to_onnx(g, params)
    path = tmp_path / "first.onnx"
    onnx.save(first, str(path))
    import_file(str(path), str(tmp_path / "imported.net"), str(tmp_path / "imported.npz"))
    t = load_trained(str(tmp_path / "imported.net"), str(tmp_path / "imported.npz"))
    return first, to_onnx(t.graph, t.params), t


def check_same(first, second, t):
    sig1, ops1 = signature(first)
    sig2, ops2 = signature(second)
    assert ops1 == ops2
    assert sig1 == sig2
    # And the imported net computes what onnxruntime computes from the first file.
    shape = [d.dim_value for d in first.graph.input[0].type.tensor_type.shape.dim[1:]]
    x = np.random.default_rng(5).standard_normal((2, *shape)).astype(np.float32)
    sess = ort.InferenceSession(first.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = sess.run(["logits"], {"input": x})[0]
    ours = t.executor().forward(x.transpose(0, 2, 3, 1)).logits
    assert np.abs(theirs - ours).max() <= 1e-5 * np.abs(theirs).max()


@pytest.mark.parametrize("net, input_shape", [
    ("lenet5", None), ("inception_small", (28, 28, 1)), ("resnet18", None)])
def test_zoo_round_trip(nets_dir, tmp_path, net, input_shape):
    t = load_trained(str(nets_dir / f"{net}.net"), input_shape=input_shape)
    check_same(*round_trip(t.graph, randomise(t.params), tmp_path))


def test_layer_options_round_trip(tmp_path):
    # Explicit FLATTEN of a map (Transpose + Flatten), FC on a map (permuted rows), BN on
    # vectors, concat of vector branches, 3-way add, pools with ceil and padding.
    c = compile_text(MIXED, mode="infer")
    params = randomise(Executor(c.graph, seed=2).params, seed=3)
    check_same(*round_trip(c.graph, params, tmp_path))
    c2 = compile_text("INPUT(6x6x2) -> CONV(4, 3, bias=false) -> BN(eps=1e-3, momentum=0.01) "
                      "-> MAXPOOL(2) -> FC(5) -> RELU -> FC", mode="infer")
    params = randomise(Executor(c2.graph, seed=0).params)
    check_same(*round_trip(c2.graph, params, tmp_path))


@pytest.mark.parametrize("text", POOL_ROUNDING)
def test_pool_rounding_round_trip(text, tmp_path):
    c = compile_text(text, mode="infer")
    check_same(*round_trip(c.graph, randomise(Executor(c.graph, seed=1).params), tmp_path))


def test_joins_of_several_forks_round_trip(tmp_path):
    # A join whose branches start at different layers is written with references
    # (concat { @p | @q | @r }) and the statements feeding it follow the main one.
    text = """
concat { @a -> GAP | @a -> RELU -> CONV(4) -> RELU -> GAP | @x -> GAP } -> FC(6) -> RELU -> FC
x: INPUT(8x8x2) -> a: CONV(4)
"""
    c = compile_text(text, mode="infer")
    params = randomise(Executor(c.graph, seed=0).params)
    first, second, t = round_trip(c.graph, params, tmp_path)
    check_same(first, second, t)
    written = (tmp_path / "imported.net").read_text()
    assert "concat { @" in written and written.count("\n@") >= 2


def test_imported_text_is_readable(nets_dir, tmp_path):
    t = load_trained(str(nets_dir / "inception_small.net"), input_shape=(28, 28, 1))
    _, _, imported = round_trip(t.graph, t.params, tmp_path)
    text = (tmp_path / "imported.net").read_text()
    # Inception branches are written inline as a concat after their common input.
    assert text.count("concat {") == 2 and "@" not in text
    assert "INPUT(28x28x1)" in text and text.count("->") > 20


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_pytorch_model_imports(tmp_path):
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.a = nn.Conv2d(8, 4, 1)
            self.b = nn.Conv2d(8, 4, 3, padding=2, dilation=2, groups=4)
            self.pool, self.avg = nn.MaxPool2d(3, 2, ceil_mode=True), nn.AvgPool2d(3, 2, 1)
            self.fc1, self.drop, self.fc2 = nn.Linear(8 * 4 * 4, 16), nn.Dropout(), \
                nn.Linear(16, 5)

        def forward(self, x):
            x = torch.relu(self.bn(self.c1(x)))
            x = torch.cat([self.a(x), torch.sigmoid(self.b(x))], 1)
            x = torch.flatten(self.avg(self.pool(x)), 1)
            return torch.softmax(self.fc2(self.drop(torch.tanh(self.fc1(x)))), 1)

    torch.manual_seed(0)
    m = Net()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 1.5)
    m.eval()
    path = tmp_path / "torch.onnx"
    try:
        torch.onnx.export(m, torch.zeros(1, 3, 15, 15), str(path), dynamo=False,
                          input_names=["x"], output_names=["p"])
    except Exception as exc:   # an exporter that needs packages this machine lacks
        pytest.skip(f"torch.onnx.export failed: {exc}")
    net = tmp_path / "torch.net"
    assert main(["import", str(path), "-o", str(net)]) == 0
    t = load_trained(str(net), str(tmp_path / "torch.npz"))
    x = np.random.default_rng(0).random((3, 3, 15, 15), dtype=np.float32)
    with torch.no_grad():
        expected = m(torch.from_numpy(x)).numpy()
    logits = t.executor().forward(x.transpose(0, 2, 3, 1)).logits.astype(np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(p / p.sum(axis=1, keepdims=True), expected, atol=1e-5)


def _model(nodes, inits, out_rank=4, in_shape=(1, 3, 8, 8), out="y"):
    h = onnx.helper
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                               list(in_shape))],
                         [h.make_tensor_value_info(out, onnx.TensorProto.FLOAT,
                                                   ["n", "c", "h", "w"][:out_rank])],
                         initializer=[onnx.numpy_helper.from_array(v, k)
                                      for k, v in inits.items()])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def test_import_errors(tmp_path, capsys):
    h = onnx.helper
    w = np.zeros((4, 3, 3, 3), np.float32)
    cases = [
        (_model([h.make_node("Conv", ["x", "w"], ["c"], name="conv0"),
                 h.make_node("Cos", ["c"], ["y"], name="act")], {"w": w}),
         "node 1 'act' (Cos): has no netdsl layer"),
        (_model([h.make_node("Conv", ["x", "w"], ["y"], name="c", pads=[0, 0, 1, 1])],
                {"w": w}), "pads [0, 0, 1, 1] are not the same on both sides"),
        (_model([h.make_node("Conv", ["x", "w"], ["c"], name="c"),
                 h.make_node("Flatten", ["c"], ["f"], name="f"),
                 h.make_node("Relu", ["f"], ["r"], name="r"),
                 h.make_node("Concat", ["r", "r"], ["y"], name="cat", axis=1)], {"w": w}, 2),
         "netdsl flattens in another order"),
        (_model([h.make_node("Concat", ["x", "k"], ["y"], name="cat", axis=1)],
                {"k": np.zeros((1, 1, 8, 8), np.float32)}),
         "node 0 'cat' (Concat): reads 'k', which netdsl cannot represent"),
        # what onnx.checker accepts and import crashed on (exit 70): an output a Constant
        # makes, weights stored as strings
        (_model([h.make_node("Constant", [], ["y"], name="k",
                             value=onnx.numpy_helper.from_array(np.ones((1, 4), np.float32)))],
                {}, 2), "does not depend on its input"),
        (_model([h.make_node("Flatten", ["x"], ["f"], name="f"),
                 h.make_node("Gemm", ["f", "s"], ["y"], name="fc")], {"s": np.array(
                     [["w"] * 4] * 192, dtype=object)}, 2), "not numbers"),
    ]
    odd_type = _model([h.make_node("Conv", ["x", "w"], ["y"], name="c")], {"w": w})
    odd_type.graph.initializer[0].data_type = 65          # found by the fuzzer (KeyError: 65)
    cases.append((odd_type, "initializer 'w' is damaged: data type 65 is no ONNX type"))
    for model, message in cases:
        path = tmp_path / "bad.onnx"
        onnx.save(model, str(path))
        assert main(["import", str(path), "-o", str(tmp_path / "bad.net")]) == 1
        err = capsys.readouterr().err
        assert message in err, err
        assert not (tmp_path / "bad.net").exists()
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert main(["import", str(tmp_path / "junk.onnx"), "-o", str(tmp_path / "j.net")]) == 1
    assert "is not a valid ONNX model" in capsys.readouterr().err
