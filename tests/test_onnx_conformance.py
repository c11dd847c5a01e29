"""The `onnx` package's own operator conformance cases (``onnx.backend.test.case.node``; the
wheel ships the case generators, not the data) for every operator ``netdsl import`` maps: each
case either imports and gives the expected outputs (relative tolerance 1e-5) or is refused with
an error naming the ONNX operator and the reason, never a wrong number.

A case is adapted only as netdsl's file format requires, never in what it computes: the
first graph input is the data (N×C×H×W or N×F); other inputs (weights, shapes, axes) become
initializers holding the case's values; a 4-D output is read through Transpose(0,2,3,1) and
Flatten, which is netdsl's FLATTEN order, and compared with the expected output permuted alike.
docs/interchange.md records the counts."""
from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx.backend.test.case.node")

from netdsl.core.errors import NetdslError                 # noqa: E402
from netdsl.interchange.onnx_import import import_file      # noqa: E402
from netdsl.interchange.trained import load_trained         # noqa: E402

# What the importer maps (its HANDLERS, plus Constant, which it folds).
OPS = ["Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Constant", "Conv",
       "ConvTranspose", "Dropout", "Flatten", "Gemm", "GlobalAveragePool", "HardSigmoid",
       "HardSwish", "Identity", "LRN", "LeakyRelu", "MatMul", "MaxPool", "Mul", "ReduceMean",
       "Relu", "Reshape", "Sigmoid", "Slice", "Softmax", "Split", "Squeeze", "Sum", "Tanh",
       "Transpose", "Unsqueeze"]


def adapt(tc):
    """(model, data input, expected output) for a conformance case, adapted as the module
    docstring says."""
    model = copy.deepcopy(tc.model)
    g = model.graph
    inputs, outputs = tc.data_sets[0]
    given = [i.name for i in g.input][:len(inputs)]
    for name, value in zip(given[1:], inputs[1:]):
        g.initializer.append(onnx.numpy_helper.from_array(np.asarray(value), name))
    keep = [i for i in g.input if i.name not in given[1:]]
    del g.input[:]
    g.input.extend(keep)
    want = np.asarray(outputs[0])
    out = g.output[0]
    del g.output[:]
    if want.ndim == 4:
        h = onnx.helper
        g.node.extend([h.make_node("Transpose", [out.name], ["_nhwc"], name="_to_nhwc",
                                   perm=[0, 2, 3, 1]),
                       h.make_node("Flatten", ["_nhwc"], ["_flat"], name="_flatten")])
        g.output.append(h.make_tensor_value_info("_flat", out.type.tensor_type.elem_type,
                                                 [want.shape[0], int(want[0].size)]))
        want = want.transpose(0, 2, 3, 1).reshape(want.shape[0], -1)
    else:
        g.output.append(out)
    return model, (inputs[0] if inputs else None), want


def run_case(tc, tmp_path) -> tuple[str, str]:
    """("pass", "") or ("refused", message); an AssertionError for a wrong number."""
    model, x, want = adapt(tc)
    path = tmp_path / f"{tc.name}.onnx"
    onnx.save(model, str(path))
    try:
        notes = import_file(str(path), str(tmp_path / "case.net"), str(tmp_path / "case.npz"))[
            "notes"]
    except NetdslError as exc:
        return "refused", exc.message
    t = load_trained(str(tmp_path / "case.net"), str(tmp_path / "case.npz"))
    x = np.asarray(x)
    got = t.executor().forward(x.transpose(0, 2, 3, 1) if x.ndim == 4 else x).logits
    got, want = np.asarray(got, np.float64), want.astype(np.float64).reshape(len(got), -1)
    if any("final Softmax" in n for n in notes):   # dropped for the loss; predict applies it
        got = np.exp(got - got.max(axis=1, keepdims=True))
        got /= got.sum(axis=1, keepdims=True)
    assert got.shape == want.shape, (tc.name, got.shape, want.shape)
    if close(got, want):
        return "pass", ""
    # A few cases write their expected values rounded (to 4 digits): then onnx's reference
    # implementation is the expected value, and the case's data must agree with it as
    # closely as the case itself says.
    from onnx.reference import ReferenceEvaluator
    ref = np.asarray(ReferenceEvaluator(model).run(None, {model.graph.input[0].name: x})[0],
                     np.float64).reshape(want.shape)
    assert np.allclose(want, ref, rtol=tc.rtol, atol=tc.atol), tc.name
    assert close(got, ref), (tc.name, float(np.abs(got - ref).max()))
    return "pass", "against onnx.reference (the case's expected values are rounded)"


def close(got, want) -> bool:
    """Within 1e-5 relative (and 1e-6 of the largest value, for values near 0)."""
    scale = max(float(np.abs(want).max()), 1e-30)
    return bool(np.all(np.abs(got - want) <= 1e-5 * np.abs(want) + 1e-6 * scale))


@pytest.fixture(scope="module")
def cases():
    from onnx.backend.test.case.node import collect_testcases
    with np.errstate(all="ignore"):
        every = collect_testcases()
    by_op = {}
    for tc in every:
        if tc.model is None or "expanded" in tc.name or not tc.data_sets:
            continue   # the "_expanded" cases are the op's function body, other operators
        by_op.setdefault(tc.model.graph.node[0].op_type, []).append(tc)
    return by_op


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("op", OPS)
def test_onnx_node_cases(op, cases, tmp_path):
    counts = Counter()
    for tc in cases.get(op, []):
        status, message = run_case(tc, tmp_path)
        counts[status] += 1
        if status == "refused" and "(Flatten)" in message and "at least 2 classes" in message:
            continue   # the case's op makes one number per sample: a net needs 2 classes
        if status == "refused":
            assert f"({op})" in message, (tc.name, message)
    assert counts, f"no conformance case for {op}"
