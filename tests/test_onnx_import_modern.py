"""ONNX import of the mobile nets' operators (issue 15): Clip(0, 6), HardSwish, HardSigmoid,
x·Sigmoid(x), Mul by a per-channel gate (squeeze-and-excitation), Split and channel Slice, and
the Reshape–Transpose–Reshape channel shuffle, each checked against onnxruntime; what netdsl
cannot express is refused at its node."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from netdsl.compile.compiler import compile_text           # noqa: E402
from netdsl.layers import lookup                          # noqa: E402
from netdsl.runtime.executor import Executor               # noqa: E402
from netdsl.interchange.onnx_export import to_onnx             # noqa: E402

from test_onnx_export import randomise                        # noqa: E402
from test_onnx_import_robust import h, imported_matches, model, rand, refused   # noqa: E402

pytestmark = pytest.mark.skipif(not all(lookup(op) for op in
                                        ("silu", "relu6", "hswish", "mul", "slice", "shuffle")),
                                reason="the mobile-net layers are not registered")

NETS = [
    "INPUT(8x8x3) -> CONV(8, 3) -> RELU6 -> CONV(8, 1) -> HSWISH -> CONV(6, 1) -> HSIGMOID "
    "-> SILU -> GAP -> FC(5)",
    # squeeze-and-excitation with a 1×1×C map gate and with a flat gate
    "INPUT(8x8x3) -> CONV(16, 3) -> SILU -> mul { IDENTITY | GAP(keep=true) -> CONV(4, 1) "
    "-> SILU -> CONV(16, 1) -> SIGMOID } -> mul { IDENTITY | GAP -> FC(16) -> HSIGMOID } "
    "-> GAP -> FC(4)",
    # ShuffleNet v2's unit: split, a branch, concat, shuffle
    "INPUT(8x8x4) -> CONV(12, 1) -> s: SPLIT(2) -> concat { IDENTITY | @s.1 -> CONV(6, 3) "
    "-> RELU } -> SHUFFLE(3) -> SLICE(2, 10) -> FC(5)",
    # every output of a split read (port 2 and 1 by reference: @s.2, @s.1)
    "INPUT(8x8x4) -> CONV(12, 1) -> s: SPLIT(3) -> concat { @s.2 | @s.1 -> CONV(4, 3, pad=1) "
    "-> RELU | @s } -> SHUFFLE(3) -> FC(5)",
]


@pytest.mark.parametrize("text", NETS)
def test_exported_modern_nets_import(tmp_path, text):
    c = compile_text(text, mode="infer")
    imported_matches(to_onnx(c.graph, randomise(Executor(c.graph, seed=0).params)), tmp_path)


def test_split_of_unequal_parts_and_a_shuffle_of_three(tmp_path):
    nodes = [h.make_node("Split", ["x", "sizes"], ["a", "b", "c"], name="split", axis=1),
             h.make_node("Relu", ["b"], ["rb"], name="relu"),
             h.make_node("Concat", ["c", "rb", "a"], ["cat"], name="cat", axis=1),
             h.make_node("Reshape", ["cat", "grid"], ["g"], name="r1"),
             h.make_node("Transpose", ["g"], ["t"], name="tr", perm=[0, 2, 1, 3, 4]),
             h.make_node("Reshape", ["t", "back"], ["s"], name="r2"),
             h.make_node("Flatten", ["s"], ["f"], name="flat"),
             h.make_node("Gemm", ["f", "w"], ["y"], name="fc")]
    inits = {"sizes": np.array([1, 3, 2], np.int64), "grid": np.array([0, 3, 2, 4, 4], np.int64),
             "back": np.array([0, -1, 4, 4], np.int64), "w": rand(96, 5)}
    imported_matches(model(nodes, inits, in_shape=(1, 6, 4, 4)), tmp_path)


def test_what_has_no_layer_is_refused_at_its_node(tmp_path, capsys):
    clip = model([h.make_node("Clip", ["x", "lo", "hi"], ["c"], name="clip"),
                  h.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
                  h.make_node("Flatten", ["g"], ["y"], name="f")],
                 {"lo": np.float32(-1), "hi": np.float32(1)})
    refused(clip, tmp_path, capsys, "node 0 'clip' (Clip)", "clips to [-1.0, 1.0]")
    hs = model([h.make_node("HardSigmoid", ["x"], ["c"], name="hs", alpha=0.2),
                h.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
                h.make_node("Flatten", ["g"], ["y"], name="f")], {})
    refused(hs, tmp_path, capsys, "node 0 'hs' (HardSigmoid)", "alpha=0.2")
    scale = model([h.make_node("Mul", ["x", "k"], ["c"], name="scale"),
                   h.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
                   h.make_node("Flatten", ["g"], ["y"], name="f")], {"k": rand(1, 3, 1, 1)})
    refused(scale, tmp_path, capsys, "node 0 'scale' (Mul)", "multiplies by a constant")
    spatial = model([h.make_node("ReduceMean", ["x"], ["m"], name="mean", axes=[1]),
                     h.make_node("Mul", ["x", "m"], ["c"], name="attend"),
                     h.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
                     h.make_node("Flatten", ["g"], ["y"], name="f")], {})
    refused(spatial, tmp_path, capsys, "node 0 'mean' (ReduceMean)", "averages over axes [1]")


@pytest.mark.parametrize("pool, restore", [
    ([h.make_node("ReduceMean", ["x"], ["p"], axes=[2, 3], keepdims=0)],
     [h.make_node("Unsqueeze", ["s", "a23"], ["gate"])]),
    ([h.make_node("GlobalAveragePool", ["x"], ["g"]), h.make_node("Squeeze", ["g", "a23"], ["p"])],
     [h.make_node("Reshape", ["s", "c11"], ["gate"])]),
    ([h.make_node("GlobalAveragePool", ["x"], ["g"]), h.make_node("Flatten", ["g"], ["p"])],
     [h.make_node("Unsqueeze", ["s", "a23"], ["gate"])]),
])
def test_squeeze_and_excitation_with_fc_layers(tmp_path, pool, restore):
    # PyTorch's SE written with nn.Linear: pool, squeeze, FC, ReLU, FC, sigmoid, back to
    # N×C×1×1 (unsqueeze or view), times the map.
    nodes = [*pool, h.make_node("Gemm", ["p", "w1", "b1"], ["f1"], transB=1),
             h.make_node("Relu", ["f1"], ["r"]), h.make_node("Gemm", ["r", "w2", "b2"], ["f2"]),
             h.make_node("Sigmoid", ["f2"], ["s"]), *restore,
             h.make_node("Mul", ["x", "gate"], ["m"], name="scale"),
             h.make_node("GlobalAveragePool", ["m"], ["o"]), h.make_node("Flatten", ["o"], ["of"]),
             h.make_node("Gemm", ["of", "w3"], ["y"])]
    inits = {"w1": rand(2, 6), "b1": rand(2), "w2": rand(2, 6), "b2": rand(6),
             "w3": rand(6, 3), "a23": np.array([2, 3], np.int64),
             "c11": np.array([0, 6, 1, 1], np.int64)}
    imported_matches(model(nodes, inits, in_shape=(1, 6, 5, 5)), tmp_path)
