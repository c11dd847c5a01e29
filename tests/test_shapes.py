"""Stage 3–4: defaults of bare layers and shape inference errors."""
import pytest

from netdsl.core import graph as G
from netdsl.compile.compiler import build_graph, compile_text
from netdsl.core.errors import NetdslError, SourceFile
from netdsl.compile.shapes import infer_shapes, resolve_auto


def widths(text, **kw):
    g = compile_text(text, input_shape=(32, 32, 3), num_classes=7, **kw).graph
    return [(r.op, r.attrs.get("filters", r.attrs.get("units"))) for r in G.nodes(g)
            if r.op in ("conv", "fc")]


def test_vgg_width_rule_doubles_after_each_pool_and_caps():
    text = "param WIDTH = 128\nINPUT -> [CONV -> POOL]*4 -> CONV -> FC"
    assert widths(text) == [("conv", 128), ("conv", 256), ("conv", 512), ("conv", 512),
                            ("conv", 512), ("fc", 7)]


def test_max_width_and_hidden_parameters():
    text = "param WIDTH = 8, MAX_WIDTH = 16, HIDDEN = 33\nINPUT -> [CONV -> POOL]*3 -> FC -> RELU -> FC"
    assert widths(text) == [("conv", 8), ("conv", 16), ("conv", 16), ("fc", 33), ("fc", 7)]


def test_classifier_fc_found_through_activations_and_dropout():
    # The FC before the loss gets the classes even behind layers without a width of their own.
    assert widths("INPUT -> FC -> RELU -> FC -> DROPOUT -> SIGMOID")[-1] == ("fc", 7)


def test_aux_head_fc_gets_classes_too():
    text = "INPUT -> c: CONV -> GAP -> FC\n@c -> GAP -> FC -> FC -> LOSS(0.3)"
    assert [w for op, w in widths(text) if op == "fc"] == [7, 512, 7]


def test_explicit_widths_are_kept():
    assert widths("INPUT -> CONV(5) -> FC(11) -> FC") == [("conv", 5), ("fc", 11), ("fc", 7)]


def test_input_without_shape_and_no_data_is_a_located_error():
    g = build_graph(SourceFile("x.net", "INPUT -> FC"))
    with pytest.raises(NetdslError) as err:
        resolve_auto(g, input_shape=None)
    assert "INPUT has no shape" in err.value.message and err.value.loc.line == 1


def test_width_parameter_must_be_positive():
    g = build_graph(SourceFile("x.net", "param WIDTH = 0\nINPUT -> CONV -> FC"))
    with pytest.raises(NetdslError, match="WIDTH"):
        resolve_auto(g, input_shape=(8, 8, 1))


def test_fc_flattens_and_counts_params():
    g = compile_text("INPUT(4x5x3) -> FC(6)", num_classes=2).graph
    [fc] = [r for r in G.nodes(g) if r.op == "fc"]
    assert fc.in_shapes == ((4, 5, 3),) and fc.out_shape == (6,)
    assert fc.n_params == 4 * 5 * 3 * 6 + 6 and fc.macs == 4 * 5 * 3 * 6


def test_pool_ceil_mode_and_stride_default():
    g = compile_text("INPUT(7x7x1) -> POOL(2, round=floor) -> MAXPOOL(3, stride=2, ceil=true) "
                     "-> FC", num_classes=2).graph
    pools = [r for r in G.nodes(g) if r.op in ("pool", "maxpool")]
    assert pools[0].attrs["stride"] == (2, 2) and pools[0].out_shape == (3, 3, 1)   # floor(5/2)+1
    assert pools[1].out_shape == (1, 1, 1)                 # ceil((3-3)/2)+1 = 1


@pytest.mark.parametrize("text, expected", [
    # Hand arithmetic: (7 − 2)/2 + 1 = 3.5 → floor 3, ceil 4; (8 − 3 + 2)/2 + 1 = 4.5 → 4.
    ("INPUT(7x7x1) -> POOL(2, round=floor) -> FC", (3, 3, 1)),
    ("INPUT(7x7x1) -> POOL(2, round=ceil) -> FC", (4, 4, 1)),
    ("param ROUND = ceil\nINPUT(7x7x1) -> POOL(2) -> FC", (4, 4, 1)),
    ("param ROUND = floor\nINPUT(7x7x1) -> POOL(2) -> FC", (3, 3, 1)),
    ("param ROUND = floor\nINPUT(8x8x1) -> CONV(2, 3, stride=2) -> FC", (4, 4, 2)),
    ("param ROUND = ceil\nINPUT(8x8x1) -> CONV(2, 3, stride=2) -> FC", (4, 4, 2)),  # convs floor
    ("INPUT(8x8x1) -> POOL(2) -> FC", (4, 4, 1)),                  # divides: exact is fine
])
def test_rounding_per_layer_and_per_file(text, expected):
    g = compile_text(text, num_classes=2).graph
    assert [r for r in G.nodes(g) if r.op in ("pool", "conv")][0].out_shape == expected


def test_size_that_does_not_divide_is_an_error_with_the_arithmetic():
    # AlexNet's first layer at 224 (the course notes' example): (224 − 11)/4 + 1 = 54.25, and
    # 227 is the nearest input above with which every layer below fits.
    text = ("INPUT(224x224x3) -> CONV(96, 11, stride=4, pad=0) -> MAXPOOL(3, stride=2)\n"
            "  -> CONV(256, 5, pad=2) -> MAXPOOL(3, stride=2) -> FC(10)")
    with pytest.raises(NetdslError) as info:
        compile_text(text, num_classes=10)
    err = info.value
    assert (err.loc.line, err.loc.col) == (1, 21)
    # Under the default covering rule the error says how much real input is lost: the last
    # window covers pixels 212..222 (53·4 + 11 = 223), so 1 of the 224 is never read.
    assert err.detail.startswith("(224 − 11 + 2·0)/4 + 1 = 54.25")
    assert "drops the last 1 input pixel" in err.message
    assert "227×227×3" in err.hint and "round=floor" in err.hint
    assert compile_text(text.replace("224x224", "227x227"), num_classes=10)  # fits


def test_bad_file_rounding_is_refused_at_its_declaration():
    with pytest.raises(NetdslError, match="ROUND must be one of cover, exact, floor, ceil") as info:
        compile_text("param ROUND = down\nINPUT(8x8x1) -> FC", num_classes=2)
    assert (info.value.loc.line, info.value.loc.col) == (1, 7)


def test_ceil_and_a_different_round_disagree():
    with pytest.raises(NetdslError, match="ceil=true and round=floor disagree"):
        compile_text("INPUT(7x7x1) -> POOL(2, ceil=true, round=floor) -> FC", num_classes=2)


def test_add_shape_mismatch_points_at_the_join():
    text = "INPUT(8x8x4) -> a: CONV(4)\n  -> add { CONV(8) | @a } -> FC"
    with pytest.raises(NetdslError) as err:
        compile_text(text, num_classes=2)
    assert err.value.loc.line == 2 and "8×8×8" in err.value.message and "8×8×4" in err.value.message
    assert "residual" in (err.value.hint or "")
