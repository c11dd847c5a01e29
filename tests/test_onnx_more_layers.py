"""ONNX export and import of the layers beyond the core set (LRN, leaky ReLU, transposed conv,
crop, softmax, average pooling without padding in the divisor): onnxruntime gives netdsl's
logits, and export → import → export gives the same graph. Each case runs only when the
registry has its layers."""
from __future__ import annotations

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from netdsl.compile.compiler import compile_text            # noqa: E402
from netdsl.core.errors import NetdslError               # noqa: E402
from netdsl.runtime.executor import Executor                # noqa: E402
from netdsl.layers import lookup                    # noqa: E402
from netdsl.interchange.onnx_export import to_onnx              # noqa: E402

from test_onnx_export import assert_same_logits, randomise   # noqa: E402
from test_onnx_import import check_same, round_trip          # noqa: E402

CASES = [
    (("lrn", "leakyrelu"), "INPUT(12x12x3) -> CONV(8, 3) -> LRN(5, alpha=1e-3, beta=0.75, k=2) "
                           "-> LEAKYRELU(0.1) -> MAXPOOL(2) -> FC"),
    (("lrn",), "INPUT(6x6x7) -> LRN(3, alpha=0.01, beta=0.5, k=1, alpha_over_n=false) -> FC"),
    (("deconv",), "INPUT(5x5x4) -> DECONV(6, 3, stride=2, pad=1, output_padding=1, groups=2) "
                  "-> RELU -> FC"),
    (("deconv",), "INPUT(4x5x3) -> DECONV(4, 3, stride=1, dilation=2, bias=false) -> FC"),
    (("crop",), "INPUT(9x9x2) -> CONV(4, 3) -> CROP(size=5x4) -> FC"),
    (("crop",), "INPUT(9x9x2) -> crop { CONV(4, 3) | CONV(4, 3, stride=2) } -> FC"),
    (("softmax",), "INPUT(6x6x2) -> CONV(4, 3) -> SOFTMAX -> FC"),
    (("avgpool",), "INPUT(7x6x2) -> AVGPOOL(3, stride=2, pad=1, ceil=true, "
                   "count_include_pad=false) -> FC"),
]


def _available(ops, text) -> bool:
    if not all(lookup(op) for op in ops):
        return False
    if "count_include_pad" in text:
        return any(a.name == "count_include_pad" for a in lookup("avgpool").args)
    return True


@pytest.mark.parametrize("ops, text", CASES)
def test_matches_onnxruntime_and_round_trips(ops, text, tmp_path):
    if not _available(ops, text):
        pytest.skip(f"layers {ops} are not registered")
    c = compile_text(text, mode="infer")
    params = randomise(Executor(c.graph, seed=4).params, seed=5)
    assert_same_logits(c.graph, params, batch=3)
    check_same(*round_trip(c.graph, params, tmp_path))


def test_even_lrn_window_is_an_error():
    if not lookup("lrn"):
        pytest.skip("no lrn layer")
    c = compile_text("INPUT(6x6x8) -> LRN(4) -> FC", mode="infer")
    with pytest.raises(NetdslError) as info:
        to_onnx(c.graph, Executor(c.graph).params)
    assert "even size 4" in info.value.message and info.value.loc is not None


def test_layer_without_onnx_operator_names_the_nearest():
    if not lookup("local"):
        pytest.skip("no local layer")
    c = compile_text("INPUT(6x6x2) -> LOCAL(4, 3) -> FC", mode="infer")
    with pytest.raises(NetdslError) as info:
        to_onnx(c.graph, Executor(c.graph).params)
    assert "(LOCAL) has no ONNX operator" in info.value.message
    assert "CONV" in info.value.hint
