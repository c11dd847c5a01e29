"""Issue 15, language: a block reads its input's shape (IN.h, IN.w, IN.c), comparisons and
boolean operators in expressions, `?(condition)`, the conditional `residual?(cond) { ... }`,
and the covering window rule (the default) against `ROUND = exact`.

Expected counts and shapes are worked out by hand in the comments, not taken from the code.
"""
from __future__ import annotations

import pytest

from netdsl.compile.compiler import compile_text
from netdsl.core.errors import NetdslError
from netdsl.core.graph import nodes


def compiled(text: str, **kwargs):
    return compile_text(text, num_classes=kwargs.pop("num_classes", 10), **kwargs).graph


def ops(g) -> list[str]:
    return [r.op for r in nodes(g)]


def error_of(text: str, **kwargs) -> NetdslError:
    with pytest.raises(NetdslError) as info:
        compiled(text, **kwargs)
    assert info.value.loc is not None, info.value.render()
    return info.value


# ---- IN: the shape of a block's input --------------------------------------------------------

def test_depthwise_conv_reads_its_input_channels():
    # 12 channels in: a depthwise 3×3 has 12·9 weights + 12 biases = 120 parameters.
    g = compiled("block dw() { CONV(IN.c, 3, groups=IN.c) }\n"
                 "INPUT(8x8x3) -> CONV(12) -> dw -> GAP -> FC(10)")
    dw = next(r for r in nodes(g) if r.name == "dw1/conv1")
    assert dw.attrs["groups"] == 12 and dw.out_shape == (8, 8, 12) and dw.n_params == 120


def test_a_default_may_read_the_input_and_a_size_may_be_h_or_w():
    # k defaults to 2·IN.c = 10; POOL(IN.h) on a 6×4... map: a 6×6 window → 1×1.
    g = compiled("block b(k=IN.c * 2) { CONV(k, 1) -> AVGPOOL(IN.h) }\n"
                 "INPUT(6x6x5) -> b -> FC(3)")
    assert next(r for r in nodes(g) if r.name == "b1/conv1").out_shape == (6, 6, 10)
    assert next(r for r in nodes(g) if r.op == "avgpool").out_shape == (1, 1, 10)


def test_in_follows_each_call_and_nested_blocks_see_their_own_input():
    # widen doubles whatever it gets: 4 → 8 → 16; inner reads the output of CONV(3) (3).
    g = compiled("block inner() { CONV(IN.c + 1, 1) }\n"
                 "block widen() { CONV(3, 1) -> inner -> CONV(IN.c * 2, 1) }\n"
                 "INPUT(4x4x4) -> widen -> widen -> FC(2)")
    shapes = {r.name: r.out_shape for r in nodes(g)}
    assert shapes["widen1/inner1/conv1"] == (4, 4, 4)
    assert shapes["widen1/conv2"] == (4, 4, 8) and shapes["widen2/conv2"] == (4, 4, 16)


def test_in_uses_the_input_given_outside_the_file():
    # A bare INPUT takes its shape from --input (here 10×10×7): IN.c is 7.
    g = compiled("block dw() { CONV(IN.c, 3, groups=IN.c) }\nINPUT -> dw -> FC(2)",
                 input_override=(10, 10, 7))
    assert next(r for r in nodes(g) if r.op == "conv").attrs["filters"] == 7


def test_in_of_a_flat_input_has_only_channels():
    g = compiled("block half() { FC(IN.c // 2) }\nINPUT(20) -> half -> FC(2)")
    assert next(r for r in nodes(g) if r.name == "half1/fc1").out_shape == (10,)
    err = error_of("block b() { FC(IN.h) }\nINPUT(20) -> b -> FC(2)")
    assert "not an H×W×C map" in err.message and (err.loc.line, err.loc.col) == (1, 16)


def test_in_outside_a_block_and_unknown_sizes_are_located_errors():
    err = error_of("INPUT(8x8x3) -> CONV(IN.c) -> FC")
    assert "outside a block" in err.message and (err.loc.line, err.loc.col) == (1, 22)
    err = error_of("block b() { CONV(IN.chan) }\nINPUT(8x8x3) -> b -> FC")
    assert "not a size of the block's input" in err.message
    assert (err.loc.line, err.loc.col) == (1, 21)


# ---- comparisons, booleans, ?(condition) ----------------------------------------------------

@pytest.mark.parametrize("cond, kept", [
    ("N > 1", True), ("N >= 3", False), ("N == 2 and not FAST", True), ("N != 2 or FAST", False),
    ("N < 2 or N <= 2", True), ("not (N == 2)", False), ("MODE == \"big\"", True)])
def test_optional_takes_a_condition(cond, kept):
    g = compiled(f'param N = 2, FAST = false, MODE = "big"\n'
                 f"INPUT(4x4x1) -> CONV(2)?({cond}) -> FC(2)")
    assert ("conv" in ops(g)) is kept


def test_conditions_in_parameters_and_repeat_counts():
    # FLAG = (3 > 2 and true) = true; a repeat count may be a parenthesised expression.
    g = compiled("param D = 3, FLAG = D > 2 and true\n"
                 "INPUT(4x4x1) -> [CONV(2) -> RELU]*(D - 1)?(FLAG) -> FC(2)")
    assert ops(g).count("conv") == 2


@pytest.mark.parametrize("text, message, col", [
    ("param A = 2\nINPUT(4x4x1) -> CONV?(A + 1) -> FC", "must be true or false, got 3", 23),
    ("param A = 2\nINPUT(4x4x1) -> CONV?(A and true) -> FC", "'and' needs true or false", 23),
    ("param A = 2\nINPUT(4x4x1) -> CONV?(A < \"x\") -> FC", "'<' needs numbers", 27),
    ("INPUT(4x4x1) -> CONV?(B > 1) -> FC", "unbound parameter 'B'", 23)])
def test_bad_conditions_are_located(text, message, col):
    err = error_of(text)
    assert message in err.message and err.loc.col == col, err.render()


# ---- residual?(cond) ------------------------------------------------------------------------

INVERTED = ("block ir(c, s=1) {\n"
            "  residual?(s == 1 and IN.c == c) {\n"
            "    CONV(IN.c * 2, 1) -> CONV(IN.c * 2, 3, stride=s, groups=IN.c * 2) -> CONV(c, 1)\n"
            "  }\n"
            "}\n")


def test_conditional_residual_adds_only_when_the_condition_holds():
    g = compiled(INVERTED + "INPUT(8x8x4) -> ir(4) -> ir(6) -> ir(6, s=2) -> FC(2)")
    adds = [r.name for r in nodes(g) if r.op == "add"]
    assert adds == ["ir1/add1"]                    # ir2 widens 4 → 6, ir3 strides: no add
    assert not any(r.meta.get("projection") for r in nodes(g))
    # ir1: 1×1 4→8 (32+8) + depthwise 3×3 on 8 (72+8) + 1×1 8→4 (32+4) = 156 parameters.
    assert sum(r.n_params for r in nodes(g) if r.name.startswith("ir1/")) == 156


def test_conditional_residual_never_projects():
    err = error_of("block r(c) {\n  residual?(true) { CONV(c) }\n}\nINPUT(8x8x3) -> r(4) -> FC")
    assert "never projected" in (err.detail or "") and (err.loc.line, err.loc.col) == (2, 3)
    assert "8×8×3" in err.message and "8×8×4" in err.message
    # Plain residual keeps its projection (ResNet option B).
    g = compiled("INPUT(8x8x3) -> residual { CONV(4) } -> FC(2)")
    assert any(r.meta.get("projection") for r in nodes(g))


def test_conditional_residual_takes_one_branch():
    err = error_of("INPUT(8x8x3) -> residual?(true) { CONV(3) | CONV(3) } -> FC")
    assert "takes one branch" in err.message


# ---- the covering window rule ---------------------------------------------------------------

def test_resnet_stem_drops_only_padding_and_passes():
    # (224 − 7 + 6)/2 + 1 = 112.5: the 112th window ends at padded pixel 111·2 + 7 = 229 ≥
    # 3 + 224 = 227, so every real pixel is read: 112×112.
    g = compiled("INPUT(224x224x3) -> CONV(64, 7, stride=2, pad=3) -> MAXPOOL(3, stride=2, "
                 "pad=1) -> FC(10)")
    assert [r.out_shape for r in nodes(g) if r.op in ("conv", "maxpool")] == [(112, 112, 64),
                                                                           (56, 56, 64)]


@pytest.mark.parametrize("text, dropped", [
    # AlexNet: windows end at 53·4 + 11 = 223 < 224: 1 pixel dropped.
    ("INPUT(224x224x3) -> CONV(96, 11, stride=4, pad=0) -> FC", 1),
    # 3×3/2 pool on 112 without padding: 54·2 + 3 = 111 < 112.
    ("INPUT(112x112x3) -> MAXPOOL(3, stride=2) -> FC", 1),
    # 1×1/2 on 9: windows at 0,2,4,6,8: every pixel is a start; a 1×1/3 on 8: 0,3,6 end at 7 < 8.
    ("INPUT(8x8x3) -> CONV(2, 1, stride=3, pad=0) -> FC", 1)])
def test_real_pixels_dropped_is_an_error(text, dropped):
    err = error_of(text)
    assert f"drops the last {dropped} input pixel" in err.message


def test_round_exact_restores_the_old_rule():
    text = "INPUT(224x224x3) -> CONV(64, 7, stride=2, pad=3) -> FC(10)"
    for variant in ("param ROUND = exact\n" + text,
                    text.replace("pad=3)", "pad=3, round=exact)")):
        err = error_of(variant)
        assert "does not fit the 224-wide input exactly" in err.message
    assert error_of(text, overrides={"ROUND": "exact"})


def test_the_blocks_example_of_the_language_doc_compiles_as_its_text_says():
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[1] / "docs" / "language.md").read_text()
    section = doc.split("**Reading the input's shape: `IN`.**")[1].split("Each call is an")[0]
    g = compiled(section.split("```")[1])
    shapes = {r.name: r.out_shape for r in nodes(g)}
    assert shapes["transition1/conv1"] == (32, 32, 16)        # 32 channels halved ...
    assert shapes["transition1/avgpool1"] == (16, 16, 16)     # ... then pooled
    assert shapes["dw1/conv1"] == (32, 32, 32)
    assert [r.name for r in nodes(g) if r.op == "add"] == ["ir1/add1", "ir3/add1"]


def test_a_shape_error_before_blocks_that_read_in_is_reported_once():
    # conv1 drops a pixel ((8 − 3)/2 + 1 = 3.5); all 50 dw calls depend on it.
    err = error_of("block dw() { CONV(IN.c, 3, groups=IN.c) -> RELU }\n"
                   "INPUT(8x8x3) -> CONV(4, 3, stride=2, pad=0) -> dw*50 -> FC")
    assert err.others == [] and err.message.startswith("conv1: conv k=3 stride 2 drops")
    assert (err.loc.line, err.loc.col) == (2, 17) and "called at" not in (err.detail or "")


def test_in_through_a_forward_reference_is_a_located_error():
    err = error_of("block dw() { CONV(IN.c, 3, groups=IN.c) }\n"
                   "INPUT(8x8x3) -> a: CONV(4) -> concat { @a | @b } -> dw -> FC\n"
                   "@a -> b: CONV(2) -> FC -> LOSS")
    assert "depends on a reference that is not expanded yet" in err.message
    assert (err.loc.line, err.loc.col) == (2, 53) and "@b" in err.detail


def test_in_after_a_projected_residual_and_across_many_calls():
    # The plain residual projects 3 → 8 channels; the 40 dw calls each read IN.c = 8.
    g = compiled("block dw() { CONV(IN.c, 3, groups=IN.c) -> RELU }\n"
                 "INPUT(8x8x3) -> residual { CONV(8) } -> dw*40 -> FC(2)")
    convs = [r for r in nodes(g) if r.op == "conv" and r.name.startswith("dw")]
    assert len(convs) == 40 and all(r.attrs["groups"] == 8 for r in convs)


def test_in_reading_a_width_that_the_rest_of_the_network_changes_is_an_error():
    # While `b` is expanded the bare FC looks hidden (512 units); the finished network makes it
    # the classifier (10 units, through b's weightless dropout): IN read a wrong width.
    err = error_of("block b() { DROPOUT(0.1)?(IN.c > 2) }\nINPUT(8x8x3) -> FC -> b")
    assert "IN read its units as 512" in err.message and "gives it 10" in err.message
    assert (err.loc.line, err.loc.col) == (2, 17)
    # Written out, the width is the same at both times.
    assert compiled("block b() { DROPOUT(0.1)?(IN.c > 2) }\nINPUT(8x8x3) -> FC(10) -> b")
