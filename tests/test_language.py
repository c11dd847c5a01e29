"""The netdsl language: parsing and expansion of valid programs into graphs.

Expected op sequences, names and locations are written out by hand (or built with plain list
arithmetic that mirrors the program's meaning), never taken from the code under test.
"""
from __future__ import annotations

import pytest

from netdsl.core.errors import NetdslError, SourceFile
from netdsl.core.graph import Frame, nodes
from netdsl.layers import AUTO
from netdsl.lang import expand, parse, parse_value


def build(text: str, overrides=None, path: str = "test.net", name=None):
    return expand(parse(SourceFile(path, text)), overrides, name=name)


def ops(g) -> list[str]:
    return [n.op for n in nodes(g)]


def node(g, name):
    return g.nodes[name]["node"]


def inputs(g, name) -> list[str]:
    return [src for src, _port in node(g, name).inputs]


def error_of(text: str, overrides=None) -> NetdslError:
    with pytest.raises(NetdslError) as info:
        build(text, overrides)
    return info.value


LOSS = "softmax_xent"


# ---- the five pattern programs --------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("INPUT -> FC", ["input", "fc", LOSS]),
    ("param K = 2\nINPUT -> [FC -> RELU]*K -> FC",
     ["input", "fc", "relu", "fc", "relu", "fc", LOSS]),
    ("INPUT -> CONV -> RELU -> FC", ["input", "conv", "relu", "fc", LOSS]),
    ("INPUT -> [CONV -> RELU -> POOL]*2 -> FC -> RELU -> FC",
     ["input"] + ["conv", "relu", "pool"] * 2 + ["fc", "relu", "fc", LOSS]),
    ("INPUT -> [[CONV -> RELU]*2 -> POOL]*3 -> [FC -> RELU]*2 -> FC",
     ["input"] + (["conv", "relu"] * 2 + ["pool"]) * 3 + ["fc", "relu"] * 2 + ["fc", LOSS]),
])
def test_pattern_programs(text, expected):
    g = build(text)
    assert ops(g) == expected
    # A plain chain: every node reads exactly the node before it.
    order = [n.name for n in nodes(g)]
    for prev, cur in zip(order, order[1:]):
        assert inputs(g, cur) == [prev]


CS231N = """
param N = 2, M = 3, K = 2
param POOL = true
INPUT -> [[CONV -> RELU]*N -> POOL?]*M -> [FC -> RELU]*K -> FC
"""


@pytest.mark.parametrize("overrides", [
    {}, {"N": 0}, {"POOL": False}, {"N": 1, "M": 1, "K": 0}, {"N": 3, "M": 2, "POOL": False},
    {"N": 0, "POOL": False, "K": 1},
])
def test_cs231n_pattern_with_overrides(overrides):
    p = {"N": 2, "M": 3, "K": 2, "POOL": True, **overrides}
    stage = ["conv", "relu"] * p["N"] + (["pool"] if p["POOL"] else [])
    expected = ["input"] + stage * p["M"] + ["fc", "relu"] * p["K"] + ["fc", LOSS]
    g = build(CS231N, overrides)
    assert ops(g) == expected
    assert g.graph["params"] == p


def test_params_are_expressions_of_earlier_params_and_stored():
    g = build("param WIDTH = 16, HIDDEN = WIDTH * 4, MAX_WIDTH = 2 * HIDDEN\n"
              "param DEEP = true, RATE = 1e-1\nINPUT -> FC(HIDDEN // 3)")
    assert g.graph["params"] == {"WIDTH": 16, "HIDDEN": 64, "MAX_WIDTH": 128, "DEEP": True,
                                 "RATE": 0.1}
    assert node(g, "fc1").attrs["units"] == 21
    g = build("param WIDTH = 16, HIDDEN = WIDTH * 4\nINPUT -> FC(HIDDEN)", {"WIDTH": 8})
    assert g.graph["params"]["HIDDEN"] == 32
    assert node(g, "fc1").attrs["units"] == 32


def test_set_binds_a_parameter_that_is_only_referenced():
    g = build("INPUT -> [FC -> RELU]*K -> FC -> DROPOUT?", {"K": 1, "DROPOUT": True})
    assert ops(g) == ["input", "fc", "relu", "fc", "dropout", LOSS]
    assert g.graph["params"] == {"K": 1, "DROPOUT": True}


def test_unknown_set_parameter_is_refused_with_suggestion():
    err = error_of(CS231N, {"PUOL": False})
    assert "unknown parameter 'PUOL' in --set" in err.message
    assert err.hint == "did you mean 'POOL'?"


# ---- compact notation, case, arguments ------------------------------------------------------

def test_compact_notation_fills_compact_args_in_order():
    g = build("INPUT -> CONV3-64 -> CONV5-32(stride=2) -> POOL2 -> POOL3-2 -> MAXPOOL3 "
              "-> FC-4096 -> fc-10")
    conv1, conv2 = node(g, "conv1").attrs, node(g, "conv2").attrs
    assert (conv1["kernel"], conv1["filters"], conv1["stride"]) == ((3, 3), 64, (1, 1))
    assert (conv2["kernel"], conv2["filters"], conv2["stride"]) == ((5, 5), 32, (2, 2))
    assert node(g, "pool1").attrs["size"] == (2, 2)
    assert (node(g, "pool2").attrs["size"], node(g, "pool2").attrs["stride"]) == ((3, 3), (2, 2))
    assert node(g, "maxpool1").attrs["size"] == (3, 3)
    assert node(g, "fc1").attrs["units"] == 4096
    assert node(g, "fc2").attrs["units"] == 10


def test_compact_minus_inside_arguments_is_subtraction():
    g = build("param n = 5\nINPUT -> CONV(n-1, n-2) -> FC(n-1)")
    assert node(g, "conv1").attrs["filters"] == 4
    assert node(g, "conv1").attrs["kernel"] == (3, 3)
    assert node(g, "fc1").attrs["units"] == 4


def test_compact_and_explicit_argument_conflict():
    err = error_of("INPUT -> CONV3-64(filters=32) -> FC")
    assert "filters" in err.message and (err.loc.line, err.loc.col) == (1, 10)


def test_layer_and_block_names_are_case_insensitive():
    g = build("block Twice(c) { conv(c) -> Relu -> CONV(c) }\n"
              "iNpUt -> Conv -> relu -> Bn -> TWICE(8) -> twice(4) -> Fc -> Loss")
    assert ops(g) == ["input", "conv", "relu", "batchnorm", "conv", "relu", "conv",
                      "conv", "relu", "conv", "fc", LOSS]
    # Unlabelled instances are named after the block as it was defined.
    assert node(g, "Twice1/conv2").attrs["filters"] == 8
    assert node(g, "Twice2/conv1").attrs["filters"] == 4


def test_positional_and_keyword_arguments():
    g = build("INPUT(28x28x1) -> CONV(6, 5, stride=2, pad=valid, bias=false) "
              "-> MAXPOOL(3, stride=1, pad=1) -> DROPOUT(rate=0.25) -> FC(10, init=glorot)")
    assert node(g, "input1").attrs["shape"] == (28, 28, 1)
    conv = node(g, "conv1").attrs
    assert (conv["filters"], conv["kernel"], conv["stride"], conv["pad"], conv["bias"]) == \
        (6, (5, 5), (2, 2), "valid", False)
    pool = node(g, "maxpool1").attrs
    assert (pool["size"], pool["stride"], pool["pad"]) == ((3, 3), (1, 1), (1, 1))
    assert node(g, "dropout1").attrs["rate"] == 0.25
    assert node(g, "fc1").attrs["init"] == "glorot"


def test_bare_layers_keep_auto_defaults():
    g = build("INPUT -> CONV -> FC")
    assert node(g, "input1").attrs["shape"] is AUTO
    assert node(g, "conv1").attrs["filters"] is AUTO
    assert node(g, "fc1").attrs["units"] is AUTO


# ---- joins, references, blocks --------------------------------------------------------------

@pytest.mark.parametrize("join", ["concat", "add"])
def test_join_of_the_same_tensor_keeps_two_ordered_inputs(join):
    g = build(f"INPUT -> a: CONV -> b: RELU -> {join} {{ @a | @a }} -> {join} {{ @b | @a }} -> FC")
    first, second = f"{join}1", f"{join}2"
    assert node(g, first).inputs == [("a", 0), ("a", 0)]
    assert inputs(g, second) == ["b", "a"]


def test_join_branches_start_from_the_join_input():
    g = build("INPUT -> CONV -> x: concat { RELU | TANH -> SIGMOID | @y } -> FC\n"
              "INPUT(4x4x1) -> y: CONV")
    assert inputs(g, "relu1") == ["conv1"]
    assert inputs(g, "tanh1") == ["conv1"]
    assert inputs(g, "x") == ["relu1", "sigmoid1", "y"]


INCEPTION = """
block inception(n1, r3, n3, r5, n5, pp) {
  concat {
      CONV(n1, 1) -> RELU
    | CONV(r3, 1) -> RELU -> CONV(n3, 3) -> RELU
    | CONV(r5, 1) -> RELU -> CONV(n5, 5) -> RELU
    | MAXPOOL(3, stride=1, pad=1) -> CONV(pp, 1) -> RELU
  }
}
INPUT -> inc3a: inception(64, 96, 128, 16, 32, 32)
      -> inception(128, 128, 192, 32, 96, 64) -> FC
"""


def test_inception_block_used_twice_gets_distinct_scoped_names():
    g = build(INCEPTION)
    for prefix in ("inc3a/", "inception1/"):
        assert inputs(g, prefix + "concat1") == [prefix + "relu1", prefix + "relu3",
                                                 prefix + "relu5", prefix + "relu6"]
    assert inputs(g, "inc3a/conv1") == ["input1"]
    assert inputs(g, "inc3a/maxpool1") == ["input1"]
    assert inputs(g, "inception1/conv1") == ["inc3a/concat1"]
    assert [node(g, f"inc3a/conv{k}").attrs["filters"] for k in range(1, 7)] == \
        [64, 96, 128, 16, 32, 32]
    assert [node(g, f"inception1/conv{k}").attrs["filters"] for k in range(1, 7)] == \
        [128, 128, 192, 32, 96, 64]
    assert node(g, "inc3a/conv3").scope == (Frame("block", "inc3a", 0, 1, "inception"),)
    assert node(g, "inception1/concat1").scope == \
        (Frame("block", "inception1", 0, 1, "inception"),)
    assert inputs(g, "fc1") == ["inception1/concat1"]


def test_residual_auto_and_explicit_shortcut():
    g = build("block basic(c, stride=1) {\n"
              "  residual { CONV(c, 3, stride=stride, bias=false) -> BN -> RELU\n"
              "             -> CONV(c, 3, bias=false) -> BN } -> RELU\n}\n"
              "INPUT -> CONV(16) -> basic(16) -> basic(32, 2)\n"
              "  -> residual { CONV(32) -> RELU | CONV(32, 1) } -> FC")
    add = node(g, "basic1/add1")
    assert add.op == "add" and add.meta == {"residual": "auto"}
    assert add.inputs == [("basic1/batchnorm2", 0), ("conv1", 0)]
    assert node(g, "basic2/conv1").attrs["stride"] == (2, 2)
    assert node(g, "basic2/add1").inputs == [("basic2/batchnorm2", 0), ("basic1/relu2", 0)]
    explicit = node(g, "add1")
    assert explicit.meta.get("residual") != "auto"
    assert explicit.inputs == [("relu1", 0), ("conv3", 0)]
    assert inputs(g, "conv2") == ["basic2/relu2"]


def test_unet_skip_and_second_head_with_forward_reference():
    text = """
INPUT(32x32x3)
  -> enc1: [CONV(16) -> RELU]*2 -> POOL
  -> enc2: [CONV(32) -> RELU]*2
  -> dec: concat { @enc2 | CONV(32) } -> d2: CONV(16)
  -> concat { @up | @d2 } -> GAP -> FC
@enc1 -> MAXPOOL2 -> up: CONV(16) -> GAP -> FC -> LOSS(0.3)
"""
    g = build(text)
    assert inputs(g, "dec") == ["relu4", "conv5"]          # the skip from enc2 (relu4)
    assert inputs(g, "conv5") == ["relu4"]
    assert inputs(g, "d2") == ["dec"]
    assert inputs(g, "concat1") == ["up", "d2"]             # forward reference to `up`
    assert inputs(g, "maxpool1") == ["relu2"]               # enc1 is the output of its group
    heads = [n for n in nodes(g) if n.op == LOSS]
    assert sorted((n.attrs["weight"], n.meta.get("implicit", False)) for n in heads) == \
        [(0.3, False), (1.0, True)]
    assert inputs(g, "loss") == ["fc1"]


def test_labels_inside_repeats_get_suffixes_and_scoped_references():
    g = build("INPUT -> [enc: CONV -> x: concat { @enc | RELU }]*2 -> FC\n@enc_1 -> FC")
    assert inputs(g, "x_1") == ["enc_1", "relu1"]
    assert inputs(g, "x_2") == ["enc_2", "relu2"]    # @enc resolves in its own iteration
    assert inputs(g, "fc2") == ["enc_1"]              # a node's full name works from outside
    g = build("INPUT -> [enc: CONV]*1 -> FC")         # no suffix when the count is 1
    assert "enc" in g


def test_label_on_repeated_element_names_iterations_and_the_whole():
    g = build("INPUT -> e: CONV*3 -> FC\n@e -> FC")
    assert [n.name for n in nodes(g)][:4] == ["input1", "e_1", "e_2", "e_3"]
    assert inputs(g, "fc2") == ["e_3"]


def test_reference_to_block_instance_and_to_node_inside_it():
    g = build("block b(c) { CONV(c) -> RELU }\nINPUT -> s1: b(4) -> FC\n"
              "@s1 -> FC -> LOSS\n@s1/conv1 -> FC -> LOSS")
    assert inputs(g, "fc2") == ["s1/relu1"]
    assert inputs(g, "fc3") == ["s1/conv1"]


def test_block_parameters_shadow_program_parameters_and_defaults():
    g = build("param c = 99, S = 2\nblock b(c, stride=S, k=c+1) { CONV(c, k, stride=stride) }\n"
              "INPUT -> b(4) -> b(5, stride=1) -> FC(c)")
    assert (node(g, "b1/conv1").attrs["filters"], node(g, "b1/conv1").attrs["kernel"],
            node(g, "b1/conv1").attrs["stride"]) == (4, (5, 5), (2, 2))
    assert node(g, "b2/conv1").attrs["stride"] == (1, 1)
    assert node(g, "fc1").attrs["units"] == 99


def test_optional_forms():
    text = ("param POOL = false, BN = true, DEEP = true\n"
            "block tail(drop=true) { RELU -> DROPOUT?(drop) }\n"
            "INPUT -> CONV -> POOL? -> BN? -> [CONV -> RELU]?(DEEP) -> tail -> tail(false) -> FC")
    assert ops(build(text)) == ["input", "conv", "batchnorm", "conv", "relu", "relu", "dropout",
                                "relu", "fc", LOSS]
    assert ops(build(text, {"DEEP": False, "POOL": True})) == \
        ["input", "conv", "pool", "batchnorm", "relu", "dropout", "relu", "fc", LOSS]


def test_postfixes_apply_in_written_order():
    assert ops(build("param F = true\nINPUT -> [CONV -> RELU]*2?(F) -> FC")) == \
        ["input", "conv", "relu", "conv", "relu", "fc", LOSS]
    assert ops(build("INPUT -> [CONV]*2*3 -> FC")) == ["input"] + ["conv"] * 6 + ["fc", LOSS]
    assert ops(build("INPUT -> [CONV]*0 -> FC*(1 + 1)")) == ["input", "fc", "fc", LOSS]


# ---- locations, scopes, implicit loss -------------------------------------------------------

def test_node_locations_point_at_their_elements():
    text = ("param N = 2\n"
            "INPUT(8x8x1)\n"
            "  -> [CONV3-4 -> RELU]*N\n"
            "  -> FC(10)\n")
    g = build(text)
    loc = {n.name: (n.loc.line, n.loc.col, n.loc.length) for n in nodes(g)}
    assert loc["input1"] == (2, 1, 12)
    assert loc["conv1"] == loc["conv2"] == (3, 7, 7)
    assert loc["relu2"] == (3, 18, 4)
    assert loc["fc1"] == (4, 6, 6)
    assert loc["loss"] == (4, 6, 6)             # the implicit loss points at the last element
    assert node(g, "fc1").loc.path == "test.net"


def test_scope_frames_for_repeats_and_blocks():
    text = "block b(c) { [CONV(c)]*2 }\nINPUT -> [b(4) -> RELU]*2 -> FC"
    g = build(text)
    outer = "repeat@2:10"
    inner = "repeat@1:14"
    assert node(g, "b2/conv1").scope == (
        Frame("repeat", outer, 2, 2), Frame("block", "b2", 0, 1, "b"), Frame("repeat", inner, 1, 2))
    assert node(g, "relu1").scope == (Frame("repeat", outer, 1, 2),)
    assert node(g, "fc1").scope == ()


def test_implicit_loss_only_on_first_chain_and_not_after_a_loss():
    g = build("INPUT -> FC")
    loss = node(g, "loss")
    assert loss.op == LOSS and loss.meta == {"implicit": True} and inputs(g, "loss") == ["fc1"]
    g = build("INPUT -> FC -> LOSS(2.0)")
    assert [n.name for n in nodes(g) if n.op == LOSS] == ["softmax_xent1"]
    g = build("a: INPUT -> FC\n@a -> FC(3)")
    assert [inputs(g, n.name) for n in nodes(g) if n.op == LOSS] == [["fc1"]]


# ---- train section, comments, layout, names -------------------------------------------------

def test_train_section_values_and_locations():
    text = ('INPUT -> FC\nparam LR = 0.05\n'
            'train { optimizer = sgd  lr = LR * 2  momentum = 0.9, epochs = 10; batch_size = 64\n'
            '        schedule = cosine  data = "mnist:../data"  augment = crop+flip\n'
            '        nesterov = true }')
    train = build(text).graph["train"]
    values = {k: v for k, (v, _loc) in train.items()}
    assert values == {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "epochs": 10,
                      "batch_size": 64, "schedule": "cosine", "data": "mnist:../data",
                      "augment": "crop+flip", "nesterov": True}
    assert isinstance(values["epochs"], int)
    lr_loc = train["lr"][1]
    assert (lr_loc.line, lr_loc.col) == (3, 26)


def test_comments_semicolons_and_multiline_chains():
    text = """# a comment
net  demo   # the name
param N = 8 // 2   # // is integer division everywhere: N = 4
INPUT   # the input
  -> CONV(N // 3)      # inside parentheses // divides too
  -> RELU;  INPUT(4x4x1) -> x: FC; @x
     -> FC
"""
    g = build(text)
    assert g.graph["name"] == "demo"
    assert g.graph["params"] == {"N": 4}
    assert node(g, "conv1").attrs["filters"] == 1
    assert ops(g) == ["input", "conv", "relu", "input", "fc", "fc", LOSS]
    assert inputs(g, "loss") == ["relu1"] and inputs(g, "fc1") == ["x"]


def test_network_name_precedence():
    assert build("net lenet\nINPUT -> FC", name="x").graph["name"] == "lenet"
    assert build("INPUT -> FC", name="given").graph["name"] == "given"
    assert build("INPUT -> FC", path="nets/vgg16.net").graph["name"] == "vgg16"
    g = build("INPUT -> FC")
    assert g.graph["source"].path == "test.net"


def test_parse_keeps_structure():
    program = parse(SourceFile("p.net", "net a\nparam N = 2\nINPUT -> FC*N\ntrain { lr = 1 }"))
    kinds = [type(s).__name__ for s in program.statements]
    assert kinds == ["NetName", "ParamStmt", "ChainStmt", "TrainStmt"]


@pytest.mark.parametrize("text, value", [
    ("3", 3), ("-2", -2), ("1e-3", 0.001), ("0.5", 0.5), (".5", 0.5), ("true", True),
    ("False", False), ("12x12x3", (12, 12, 3)), ("32X32", (32, 32)), ("sgd", "sgd"),
    ("crop+flip", "crop+flip"), ("mnist:../data", "mnist:../data"),
])
def test_parse_value(text, value):
    got = parse_value(text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text", [
    "", "->", "INPUT ->", "INPUT -> [", "INPUT -> ]", "INPUT -> FC(", "INPUT -> FC)", "@",
    "INPUT -> FC\ntrain {", "INPUT -> FC ?? x", "param = 3", "block { }", "INPUT -> FC $",
    "INPUT -> FC(1,,2)", 'INPUT -> FC("a', "net", "INPUT -> concat { | }", "INPUT -> x:",
])
def test_bad_input_never_leaks_a_lark_exception(text):
    with pytest.raises(NetdslError) as info:
        build(text)
    assert "Unexpected" not in info.value.message and "Token(" not in info.value.render()


def test_runaway_repeats_are_refused():
    err = error_of("INPUT -> [[[RELU]*1000]*1000]*1000 -> FC")
    assert "more than 100,000 layers" in err.message and err.loc.line == 1


# ---- limits: runaway repeats, huge numbers, deep nesting (review findings) ---------------------

def test_repeat_count_above_the_node_cap_is_refused_at_the_count():
    # Used to loop forever: *0 adds no nodes, so the node cap never fired.
    err = error_of("INPUT -> [RELU*0]*99999999999999 -> FC")
    assert "repeat count 99999999999999 is more than the limit of 100,000" in err.message
    assert (err.loc.line, err.loc.col) == (1, 19)


def test_empty_repeat_iterations_count_against_a_limit():
    err = error_of("INPUT -> [[RELU*0]*99999]*99999 -> FC")
    assert "run more than 500,000 times" in err.message and err.loc.line == 1


def test_block_calls_doubling_through_forty_blocks_are_refused(monkeypatch):
    import importlib
    monkeypatch.setattr(importlib.import_module("netdsl.lang.elements"), "MAX_STEPS", 1000)
    text = "".join(f"block b{i}() {{ b{i + 1} -> b{i + 1} }}\n" for i in range(40))
    err = error_of(text + "block b40() { RELU*0 }\nINPUT(8x8x1) -> b0 -> FC")
    assert "run more than 1,000 times" in err.message and err.loc is not None


BIG = "9" * 5000      # more digits than Python will convert (4,300)
LONG = "9" * 400      # fewer, but larger than the largest float


@pytest.mark.parametrize("text, message, col", [
    (f"INPUT -> FC({BIG})", "number too large: 99999999…999 (5000 digits)", 13),
    (f"INPUT({BIG}x1x1) -> FC", "dimension too large", 7),
    (f"INPUT -> [FC]*{BIG}", "number too large", 15),
    (f"INPUT -> FC-{BIG}", "number too large", 10),
    (f"INPUT -> FC({LONG} / 1)", "number too large: 99999999…999 (400 digits)", 13),
    (f"INPUT -> FC({LONG} * 1.0)", "number too large", 13),
    (f"INPUT -> FC({'9' * 300} * {'9' * 300})", "the result is too large", 13),
    ("INPUT -> FC(1e300 * 1e300)", "the result is too large", 13),
    ("INPUT -> FC(1 / 1e-310)", "the result is too large", 13),
    ("INPUT -> FC(1e400)", "number too large: 1e400", 13),
    ("INPUT -> POOL(1e400) -> FC", "number too large: 1e400", 15),
    ("INPUT -> [FC]*(1e400)", "number too large: 1e400", 16),
    ("INPUT -> FC(1e400-1e400)", "number too large: 1e400", 13),
    ("INPUT -> DROPOUT(1e400-1e400) -> FC", "number too large: 1e400", 18),
    ("INPUT -> FC -> LOSS(1e400)", "number too large: 1e400", 21),
    ("INPUT -> [FC]*(1e300)", "repeat count 1e+300 (301 digits) is more than the limit", 16),
    ("INPUT -> FC\ntrain { lr = 1e300 * 1e300 }", "the result is too large", 14),
], ids=lambda v: v[:40] if isinstance(v, str) else None)
def test_huge_and_non_finite_numbers_are_located_errors(text, message, col):
    err = error_of(text)
    assert message in err.message, err.render()
    assert err.loc is not None and err.loc.col == col, err.render()
    err.render()   # long numbers are shortened, so rendering never hits int's digit limit


@pytest.mark.parametrize("text", [
    "inf", "-inf", "Infinity", "nan", "NaN", "1e400", "-1e400", BIG, "-" + BIG, LONG,
    f"3x{BIG}",
], ids=lambda v: v[:12])
def test_parse_value_refuses_numbers_it_cannot_hold(text):
    with pytest.raises(NetdslError) as info:
        parse_value(text)
    assert "--set value" in info.value.message


def test_non_finite_override_values_are_refused():
    err = error_of("param N = 1\nINPUT -> [FC]*N", {"N": float("inf")})
    assert "--set N=inf" in err.message


@pytest.mark.parametrize("text", [
    "INPUT(8x8x1) -> " + "[" * 100 + "FC" + "]" * 100,
    "INPUT(8x8x1) -> FC(" + "+".join(["1"] * 1000) + ")",
    "INPUT(8x8x1) -> FC(" + "-" * 1000 + "1)",
    "INPUT(8x8x1) -> " + "concat { FC | " * 100 + "FC" + " }" * 100,
], ids=["brackets", "sum", "unary", "joins"])
def test_deep_nesting_is_a_located_error(text):
    err = error_of(text)
    assert err.message == "the program is nested too deeply here" and err.loc.line == 1


def test_moderate_nesting_still_works():
    g = build("INPUT(8x8x1) -> " + "[" * 50 + "FC" + "]" * 50)
    assert ops(g) == ["input", "fc", LOSS]
    g = build("param N = " + "+".join(["1"] * 150) + "\nINPUT -> [FC]*N")
    assert g.graph["params"]["N"] == 150


@pytest.mark.parametrize("text", [
    "".join(f"block b{i}() {{ b{i + 1} }}\n" for i in range(3000))
    + "block b3000() { RELU }\nINPUT(8x8x1) -> b0 -> FC",
    "INPUT(8x8x1) -> RELU" + "*1" * 3000 + " -> FC",
], ids=["blocks", "postfixes"])
def test_too_deep_expansion_is_a_located_error(text):
    err = error_of(text)
    assert "nested too deeply to expand" in err.message and err.loc is not None


# ---- --set: undeclared names in defaults, layer-default knobs -----------------------------------

def test_set_name_used_only_in_a_default_is_bound_before_defaults():
    g = build("param M = N + 1\nINPUT -> [FC]*M", {"N": 2})
    assert g.graph["params"]["M"] == 3 and g.graph["params"]["N"] == 2
    assert ops(g) == ["input", "fc", "fc", "fc", LOSS]


@pytest.mark.parametrize("knob", ["WIDTH", "HIDDEN", "MAX_WIDTH"])
def test_set_always_accepts_the_layer_default_knobs(knob):
    g = build("INPUT -> CONV -> FC", {knob: 32})
    assert g.graph["params"][knob] == 32


def test_layer_default_knobs_reach_the_width_rule():
    shapes = pytest.importorskip("netdsl.compile.shapes")
    g = build("INPUT(8x8x3) -> CONV -> POOL -> CONV -> FC -> FC",
              {"WIDTH": 8, "MAX_WIDTH": 12, "HIDDEN": 7})
    shapes.resolve_auto(g, num_classes=10)
    assert [node(g, n).attrs.get("filters") for n in ("conv1", "conv2")] == [8, 12]
    assert node(g, "fc1").attrs["units"] == 7


# ---- end-of-file caret, block keywords ------------------------------------------------

@pytest.mark.parametrize("text, line, col", [
    ('param S = "abcdefghij",', 1, 24),
    ('param S = "ab\\"cd",  # a "comment"\n\n', 1, 20),
    ('# "x" comment\nINPUT -> FC("a", 2) ->  # more\n', 2, 23),
])
def test_end_of_file_caret_counts_strings_and_comments(text, line, col):
    err = error_of(text)
    assert (err.loc.line, err.loc.col) == (line, col), err.render()


def test_block_keywords_match_parameter_names_exactly():
    g = build("block a(x, X) { FC(x) -> FC(X) }\nINPUT(8x8x1) -> a(x=3, X=4) -> FC")
    assert [node(g, n).attrs["units"] for n in ("a1/fc1", "a1/fc2")] == [3, 4]
    err = error_of("INPUT -> CONV(stride=1, STRIDE=2)")    # layer arguments: any case
    assert "given twice" in err.message


def test_block_default_using_a_later_parameter_is_refused_without_self_suggestion():
    err = error_of("block a(k=c, c=1) { FC(k) }\nINPUT(8x8x1) -> a -> FC")
    assert "the default of 'k' uses 'c', a later parameter of block 'a'" in err.message
    assert "did you mean 'c'" not in err.render()
    assert (err.loc.line, err.loc.col) == (1, 11)
    g = build("block a(k=c, c=1) { FC(k) }\nINPUT(8x8x1) -> a(c=5) -> FC")
    assert node(g, "a1/fc1").attrs["units"] == 5


def test_unbound_hint_never_suggests_the_name_itself():
    from netdsl.lang.values import unbound_error
    assert "did you mean" not in (unbound_error("c", None, {"c": 1, "k": 2}).hint or "")


def test_train_kinds_come_from_the_train_config():
    import importlib
    from netdsl.lang import train_config as config
    expand_module = importlib.import_module("netdsl.lang.expand")   # the module, not the function
    assert expand_module._TRAIN_KINDS is config.SETTING_TYPES
