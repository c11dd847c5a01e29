"""Language features the classic-net zoo needs (issue 6) and the `//` trap (issue 5):
blocks that take tensors, ports of multi-output layers, parameters inside dimensions and
compact names, `//` as integer division everywhere.

Expected shapes and wirings are written out by hand from the programs' meaning.
"""
from __future__ import annotations

import pytest

from netdsl.core.errors import NetdslError, SourceFile
from netdsl.core.graph import nodes
from netdsl.lang import expand, parse
from netdsl.layers import LayerSpec, base


def build(text: str, overrides=None):
    return expand(parse(SourceFile("test.net", text)), overrides)


def node(g, name):
    return g.nodes[name]["node"]


def error_of(text: str, overrides=None) -> NetdslError:
    with pytest.raises(NetdslError) as info:
        build(text, overrides)
    assert info.value.loc is not None, info.value.render()
    return info.value


# ---- blocks that take tensors -----------------------------------------------------------------

UNET_DECODER = """
block down(c) { [CONV(c) -> RELU]*2 }
block up(c, @skip) { CONV(c, 1) -> concat { @skip | CONV(c) } -> RELU }
INPUT(32x32x1)
  -> enc1: down(8) -> POOL -> enc2: down(16) -> POOL -> enc3: down(32) -> POOL
  -> enc4: down(64) -> POOL -> down(128)
  -> up(64, @enc4) -> up(32, @enc3) -> up(16, skip=@enc2) -> last: up(8, @enc1) -> CONV(2, 1)
"""


def test_one_decoder_block_called_four_times_joins_each_encoder_tensor():
    g = build(UNET_DECODER)
    # Each instance's concat reads the tensor passed to it (a labelled block call's output is
    # its last node), then its own conv.
    expected = {"up1": "enc4", "up2": "enc3", "up3": "enc2", "last": "enc1"}
    for instance, skip in expected.items():
        cat = node(g, f"{instance}/concat1")
        assert [src for src, _ in cat.inputs] == [f"{skip}/relu2", f"{instance}/conv2"], instance
    assert node(g, "up1/conv1").inputs == [("down1/relu2", 0)]


def test_tensor_argument_may_point_forward_and_carry_a_port():
    g = build("block j(@a) { concat { @a | RELU } }\nin: INPUT(4x4x1) -> j(@later) -> FC\n"
              "@in -> later: RELU")
    assert [s for s, _ in node(g, "j1/concat1").inputs] == ["later", "j1/relu1"]


@pytest.mark.parametrize("text, message, col", [
    ("block j(@a) { RELU }\nINPUT(4x4x1) -> j(3)", "'@a' takes a tensor, got 3", 19),
    ("block j(c) { RELU }\nx: INPUT(4x4x1) -> j(@x)", "parameter 'c' takes a value", 22),
    ("block j(@a) { RELU }\nINPUT(4x4x1) -> j", "needs argument 'a'", 17),
    ("block j(@a) { RELU }\nINPUT(4x4x1) -> j(@nowhere)", "undefined reference '@nowhere'", 19),
    ("x: INPUT(4x4x1) -> CONV(@x)", "conv takes no tensor argument '@x'", 25),
])
def test_tensor_argument_errors(text, message, col):
    err = error_of(text)
    assert message in err.render()
    assert err.loc.col == col, err.render()


def test_tensor_parameter_shows_in_signature():
    err = error_of("block j(c, @a) { RELU }\nx: INPUT(4x4x1) -> j(1, @x, 2)")
    assert "j(c, @a)" in err.render()


# ---- ports --------------------------------------------------------------------------------------

@pytest.fixture
def two_out():
    """A test-only two-output layer with output names (like max pool with switches)."""
    spec = LayerSpec(name="twoout_lang", doc="test: two outputs", args=(),
                     infer_shape=lambda attrs, shapes: (shapes[0], shapes[0]),
                     forward=None, backward=None, outputs=2)
    object.__setattr__(spec, "output_names", ("out", "switches"))  # field may not exist yet
    base.register(spec)
    yield spec
    del base._REGISTRY["twoout_lang"], base._ALIASES["twoout_lang"]


def test_ports_by_name_and_index(two_out):
    g = build("INPUT(4x4x1) -> p1: TWOOUT_LANG -> RELU\n"
              "concat { @p1.switches | @p1.1 | @p1 | @p1.out } -> FC -> LOSS")
    cat = next(n for n in nodes(g) if n.op == "concat")
    assert cat.inputs == [("p1", 1), ("p1", 1), ("p1", 0), ("p1", 0)]


def test_port_through_a_tensor_argument(two_out):
    g = build("block un(@sw) { concat { @sw | RELU } }\n"
              "INPUT(4x4x1) -> p: TWOOUT_LANG -> un(@p.switches) -> FC")
    assert node(g, "un1/concat1").inputs[0] == ("p", 1)


@pytest.mark.parametrize("ref, message", [
    ("@p.switchs", "did you mean 'switches'?"),
    ("@p.2", "has no output 2"),
    ("@r.1", "has only one output"),
])
def test_port_errors(two_out, ref, message):
    err = error_of(f"INPUT(4x4x1) -> p: TWOOUT_LANG -> r: RELU\n{ref} -> FC -> LOSS")
    assert message in err.render()
    assert (err.loc.line, err.loc.col) == (2, 1)


# ---- parameters inside dimensions and compact names ---------------------------------------------

@pytest.mark.parametrize("text, shape", [
    ("param S = 12\nINPUT(S x S x 3) -> FC", (12, 12, 3)),
    ("param S = 12\nINPUT(S X (S + 2) x 1) -> FC", (12, 14, 1)),
    ("param SHAPE = 32x32x3\nINPUT(SHAPE) -> FC", (32, 32, 3)),
    ("param HW = 8x6\nINPUT(HW x 2) -> FC", (8, 6, 2)),
])
def test_parameters_inside_dimensions(text, shape):
    g = build(text)
    assert node(g, "input1").attrs["shape"] == shape


def test_dimension_parameter_from_set():
    g = build("param SHAPE = 32x32x3\nINPUT(SHAPE) -> FC", {"SHAPE": (9, 9, 1)})
    assert node(g, "input1").attrs["shape"] == (9, 9, 1)


def test_x_is_still_a_name_where_a_name_belongs():
    g = build("param x = 3, xs = 2\nINPUT(4x4x1) -> CONV(x * xs)")
    assert node(g, "conv1").attrs["filters"] == 6


def test_compact_names_read_parameters():
    g = build("param n = 10\nblock b(c) { CONV3-c -> POOL2-c }\n"
              "INPUT(8x8x1) -> b(16) -> FC-n")
    conv = node(g, "b1/conv1").attrs
    assert (conv["filters"], conv["kernel"]) == (16, (3, 3))
    assert node(g, "b1/pool1").attrs["stride"] == (16, 16)
    assert node(g, "fc1").attrs["units"] == 10


def test_compact_name_with_unbound_parameter():
    err = error_of("INPUT(8x8x1) -> CONV3-c")
    assert "unbound parameter 'c'" in err.message and err.loc.col == 17


@pytest.mark.parametrize("text, message", [
    ("param S = 0\nINPUT(S x S x 3)", "a dimension must be a positive whole number, got 0"),
    ("INPUT(S x 2 x 3)", "unbound parameter 'S'"),
])
def test_dimension_errors(text, message):
    assert message in error_of(text).render()


# ---- `//` is integer division everywhere ---------------------------------------------------------

def test_floor_division_at_statement_level():
    assert build("param N = 8 // 2, M = 7 // 2\nINPUT(4x4x1) -> FC(N)").graph["params"] == \
        {"N": 4, "M": 3}


@pytest.mark.parametrize("text, line, col", [
    ("INPUT(4x4x1) -> FC // the classifier", 1, 20),
    ("// a header\nINPUT(4x4x1) -> FC", 1, 1),
    ("param N = 4 // four stages\nINPUT(4x4x1) -> FC(N)", 1, 16),
])
def test_old_style_comment_is_a_located_error(text, line, col):
    err = error_of(text)
    assert "'//' is integer division, not a comment" in err.message
    assert "comments start with #" in err.hint
    assert (err.loc.line, err.loc.col) == (line, col), err.render()


# ---- did-you-mean never proposes the inverse -------------------------------------------------

@pytest.mark.parametrize("word, inverse", [("UNPOOL", "pool"), ("DECONV", "conv"),
                                           ("MAXUNPOOL", "maxpool"), ("deconvolution", "conv")])
def test_unknown_inverse_is_not_offered_its_opposite(word, inverse):
    err = error_of(f"INPUT(8x8x1) -> {word} -> FC")
    suggested = err.hint.split("'")[1] if err.hint.startswith("did you mean") else None
    assert suggested is None or inverse not in suggested, err.hint
    assert "pool" not in (suggested or "") and "conv" != suggested


@pytest.fixture
def inverse_layers():
    """Test-only stand-ins for the layers helper's transposed conv and max-unpooling."""
    specs = [LayerSpec(name="upconv_t", doc="Transposed convolution (\"deconvolution\").",
                       args=(), infer_shape=None, forward=None, backward=None),
             LayerSpec(name="maxunpool_t", doc="Max unpooling: values back at the switches.",
                       args=(), infer_shape=None, forward=None, backward=None)]
    for spec in specs:
        base.register(spec)
    yield
    for spec in specs:
        del base._REGISTRY[spec.name], base._ALIASES[spec.name]


# DECONV and UNPOOL are layers now (the zoo's); their 2-D spellings are still unknown words.
@pytest.mark.parametrize("word, expected", [("DECONV2D", "deconvolution"), ("UNPOOL2D", "unpool")])
def test_unknown_inverse_is_offered_the_layer_whose_doc_or_name_matches(inverse_layers, word,
                                                                       expected):
    err = error_of(f"INPUT(8x8x1) -> {word} -> FC")
    suggested = err.hint.split("'")[1]
    spec = base.lookup(suggested)
    assert expected in (spec.name + " " + " ".join(spec.aliases) + " " + spec.doc).lower()


# ---- all independent errors at once --------------------------------------------------------------

def test_independent_errors_are_reported_together_first_one_unchanged():
    text = ("INPUT(8x8x1) -> CNOV -> RELU -> CONV(N) -> FC\n"
            "@x -> [CONV]*K -> FC(M) -> LOSS(0.3)\n"
            "x: INPUT(4x4x1) -> FC")
    err = error_of(text)
    rendered = err.render()
    assert rendered.splitlines()[:4] == [
        "test.net:1:17: error: unknown layer or block 'CNOV'",
        "    INPUT(8x8x1) -> CNOV -> RELU -> CONV(N) -> FC",
        "                    ^~~~",
        "  hint: did you mean 'conv'?"]
    where = [(e.loc.line, e.loc.col, e.message) for e in [err] + err.others]
    assert where == [(1, 17, "unknown layer or block 'CNOV'"),
                     (1, 38, "unbound parameter 'N'"),
                     (2, 14, "unbound parameter 'K'"),
                     (2, 22, "unbound parameter 'M'")]
    assert rendered.endswith("\n4 errors")


def test_a_single_error_renders_as_before():
    err = error_of("INPUT(8x8x1) -> CNOV -> FC")
    assert not err.others and len(err.render().splitlines()) == 4


def test_layers_command_lists_output_names(two_out, capsys):
    from netdsl.cli.app import main
    assert main(["layers"]) == 0
    text = capsys.readouterr().out
    block = text[text.index("twoout_lang"):].split("\n")[:4]
    assert "    outputs: 0 out, 1 switches" in block


def test_failed_parameter_is_reported_once_with_the_other_errors():
    # A's default fails; B and the chain use A (not reported again); Z and CNOV are independent.
    err = error_of("param A = X + 1, B = A * 2\n"
                   "INPUT(8x8x1) -> CONV(A) -> [RELU]*B -> FC(Z) -> CNOV")
    where = [(e.loc.line, e.loc.col, e.message) for e in [err] + err.others]
    assert where == [(1, 11, "unbound parameter 'X'"), (2, 43, "unbound parameter 'Z'"),
                     (2, 49, "unknown layer or block 'CNOV'")]
