"""The layout decision of inference plans (netdsl/runtime/layouts.py, issue 14 item 1).

What oneDNN wants is read back from the primitive descriptors made with ``format any``
activations (oneDNN's own report, independent of netdsl); the decision rule is checked on
chains made up here (a chain of convolutions wanting another layout is reported, a single one
is not), and the premise of the NHWC-throughout decision on the benchmark nets: oneDNN
itself picks NHWC for every convolution past the first (natively and capped to AVX2).
"""
from __future__ import annotations


import pytest

from netdsl.runtime import kernels

from conftest import NETS

if not kernels.available("onednn"):
    pytest.skip("oneDNN (libdnnl.so.3) cannot load here", allow_module_level=True)

from test_onednn_impls import CASES, capped_to_avx2  # noqa: E402  (the same nets)


def _plan(name):
    from netdsl.compile.compiler import compile_file
    from netdsl.runtime.executor import Executor
    path, shape = CASES[name]
    g = compile_file(str(NETS / path), input_shape=shape, num_classes=10).graph
    return Executor(g, seed=0, kernels="onednn").for_inference().plan


def decide(name: str) -> dict:
    """The layout summary of one net's inference plan (batch 4), with the convs' names in
    plan order."""
    from netdsl.runtime.layouts import LAYOUT, choose_layouts
    plan = _plan(name)
    out = choose_layouts(plan, 4)
    out["order"] = [st.node.name for st in plan if LAYOUT in st.meta]
    return out


def _check(name, found):
    assert found["convs"] == len(found["order"]) > 0, name
    # oneDNN wants NHWC for every convolution but (at most) the first, which reads the image
    assert set(found["other_wanted"]) <= {found["order"][0]}, (name, found["other_wanted"])
    assert found["chains"] == [] and found["reorders"] == 0 and found["runs"] == "nhwc"


@pytest.mark.parametrize("name", list(CASES))
def test_onednn_wants_nhwc_past_the_first_conv(name):
    _check(name, decide(name))


def test_onednn_wants_nhwc_past_the_first_conv_capped_to_avx2():
    found = capped_to_avx2("test_onednn_layouts", "decide", CASES)
    for name in CASES:
        _check(name, found[name])


def test_a_chain_wanting_another_layout_is_found(monkeypatch):
    """conv → relu → conv → pool → conv → gap: with oneDNN (made up here) wanting another
    layout for all three, they form one chain; with the middle one wanting NHWC, none."""
    from netdsl.compile.compiler import compile_text
    from netdsl.runtime.executor import Executor
    from netdsl.runtime.kernels.onednn import conv_geometry as conv
    from netdsl.runtime.layouts import choose_layouts, describe
    text = ("net chain\nINPUT(8x8x16) -> CONV(16, 3) -> RELU -> CONV(16, 3) -> MAXPOOL(2)"
            " -> CONV(16, 3) -> GAP -> FC(3)\n")
    g = compile_text(text, num_classes=3).graph
    plan = Executor(g, seed=0, kernels="onednn").for_inference().plan
    names = [st.node.name for st in plan if st.node.op == "conv"]
    assert len(names) == 3

    def answers(*nhwc):   # what the made-up oneDNN says for the three convs, in plan order
        it = iter(nhwc)
        return lambda attrs, x_shape, filters, bias, act: (next(it),) * 2 + ("jit:fake",)
    monkeypatch.setattr(conv, "wanted_layouts", answers(False, False, False))
    s = choose_layouts(plan, 2)
    assert s["chains"] == [names] and s["other_wanted"] == names
    assert "chains wanting another layout" in describe(s)
    monkeypatch.setattr(conv, "wanted_layouts", answers(False, True, False))
    s = choose_layouts(plan, 2)
    assert s["chains"] == [] and s["other_wanted"] == [names[0], names[2]]
