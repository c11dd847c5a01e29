"""ONNX export of the modern layers (silu, relu6, hswish, hsigmoid, the mul gate, gap with
keep=true, split ports, slice, shuffle) checked by onnxruntime, an independent runtime: its
logits must be netdsl's own (float32, ≤ 1e-5 relative). Heads: a regression loss and OUTPUT
are not exported; the file ends at the prediction."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from netdsl.core import graph as G                          # noqa: E402
from netdsl.compile.compiler import compile_text            # noqa: E402
from netdsl.compile.model import BoundModel                 # noqa: E402
from netdsl.interchange.onnx_export import to_onnx          # noqa: E402
from netdsl.runtime.executor import Executor                # noqa: E402

MODERN = """
INPUT(9x7x6) -> CONV(12, 3, pad=1) -> SILU ->
mul { IDENTITY | GAP(keep=true) -> CONV(3, 1) -> RELU6 -> CONV(12, 1) -> HSIGMOID } ->
mul { GAP -> FC(12) -> SIGMOID | IDENTITY } ->
s: SPLIT(3) -> concat { HSWISH | @s.2 -> SHUFFLE(2) | @s.1 -> SLICE(1, 3) } -> SHUFFLE(5) ->
mul { GAP -> FC(10) -> SIGMOID | GAP -> FC(10) } -> SHUFFLE(2) -> SILU -> FC(4) -> {head}
"""


def _logits(g, params, opset):
    model = to_onnx(g, params, opset=opset)
    shape = next(r for r in G.nodes(g) if r.op == "input").out_shape
    x = 2 * np.random.default_rng(1).standard_normal((3, *shape)).astype(np.float32)
    ours = Executor(g, params=params, passes="O0").forward(x).logits
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = sess.run(["logits"], {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]
    return model, np.asarray(ours), theirs


@pytest.mark.parametrize("head", ["LOSS", "MSE", "BCE", "OUTPUT"])
@pytest.mark.parametrize("opset", [13, 17])
def test_modern_layers_match_onnxruntime(head, opset):
    g = compile_text(MODERN.replace("{head}", head), num_classes=4).graph
    params = BoundModel.init(g, seed=3).params
    for tensors in params.values():     # non-zero biases, so that a dropped one shows
        for key, value in tensors.items():
            if key == "bias":
                value[...] = np.random.default_rng(0).normal(0, 0.3, value.shape)
    model, ours, theirs = _logits(g, params, opset)
    assert theirs.shape == ours.shape == (3, 4)
    err = np.abs(theirs - ours).max() / np.abs(ours).max()
    assert err <= 1e-5, f"relative difference {err:.2e}"
    ops = {n.op_type for n in model.graph.node}
    assert {"Split", "Slice", "Clip", "HardSigmoid", "Mul", "Transpose"} <= ops
    assert ("HardSwish" in ops) == (opset >= 14) and "Unsqueeze" in ops
