"""Tests of the summary table/JSON and the graphviz diagram on hand-built, shape-filled graphs.

The graphs are built node by node with every inferred field (shapes, params, MACs, activations)
filled in here by hand arithmetic, so the expected totals do not come from netdsl's own shape
rules. Layer specs come from a small test registry (same op names and roles as the real one)
so that these tests pin down how summary/draw read a spec, not what the real specs say; one
test at the end runs against the real registry when it is importable.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import sys
import types

import pytest


def _import_layers():
    """netdsl.layers, or a stand-in package holding only base.py while the layers are unwritten."""
    try:
        return importlib.import_module("netdsl.layers"), True
    except ImportError:
        for key in [k for k in sys.modules if k.startswith("netdsl.layers")]:
            del sys.modules[key]
        import netdsl
        pkg = types.ModuleType("netdsl.layers")
        pkg.__path__ = [os.path.join(os.path.dirname(netdsl.__file__), "layers")]
        sys.modules["netdsl.layers"] = pkg
        netdsl.layers = pkg
        base = importlib.import_module("netdsl.layers.base")
        for name in ("AUTO", "REQUIRED", "Arg", "LayerSpec", "ParamSpec", "get", "lookup",
                     "numel", "shape_str", "register"):
            setattr(pkg, name, getattr(base, name))
        return pkg, False


layers, REAL_LAYERS = _import_layers()

from netdsl.compile import draw as draw_mod  # noqa: E402
from netdsl.compile.draw import draw, fold_map, op_label, to_dot  # noqa: E402
from netdsl.core.errors import NetdslError  # noqa: E402
from netdsl.core.graph import Frame, Node, add_node, new_graph  # noqa: E402
from netdsl.layers.base import LayerSpec, ParamSpec  # noqa: E402
from netdsl.compile.summary import count_with_units, format_table, human_bytes, summarize  # noqa: E402


def _spec(name, role="layer", label=(), style=None, outputs=1):
    return LayerSpec(name=name, doc=name, args=(), infer_shape=None, forward=None, backward=None,
                     label=label, style=style or {}, role=role, outputs=outputs)


TEST_SPECS = {s.name: s for s in [
    _spec("input", role="source", label=("shape",), style={"shape": "invhouse"}),
    _spec("conv", label=("filters", "kernel", "stride"), style={"fillcolor": "#cfe2ff"}),
    _spec("relu"),
    _spec("batchnorm"),
    _spec("pool", label=("kernel", "stride", "mode"), outputs=2),
    _spec("fc", label=("units",)),
    _spec("concat", role="join"),
    _spec("add", role="join"),
    _spec("softmax_xent", role="loss", label=("weight",)),
]}


@pytest.fixture(autouse=True)
def test_registry(monkeypatch):
    """summary and draw look specs up through ``netdsl.layers.get``; point it at TEST_SPECS."""
    def get(op):
        if op not in TEST_SPECS:
            raise NetdslError(f"unknown layer '{op}'")
        return TEST_SPECS[op]
    monkeypatch.setattr(layers, "get", get)


# ---------------------------------------------------------------------------------------------
# Hand-built graphs. Every number below is plain arithmetic on the layer's definition.

def numel(shape):
    out = 1
    for d in shape:
        out *= d
    return out


def put(g, name, op, inputs=(), out=(), *, attrs=None, params=0, buffers=0, macs=0,
        scope=(), outs=None):
    """Add a node whose inferred fields are given by hand. ``buffers``: non-trainable elements."""
    out_shapes = outs if outs is not None else (tuple(out),)
    specs = {}
    if params:
        specs["w"] = ParamSpec((params,), "he")
    if buffers:
        specs["running"] = ParamSpec((buffers,), "zeros", trainable=False)
    node = Node(name=name, op=op, attrs=dict(attrs or {}),
                inputs=[i if isinstance(i, tuple) else (i, 0) for i in inputs], scope=tuple(scope),
                in_shapes=(), out_shapes=out_shapes, param_specs=specs, n_params=params,
                macs=macs, activations=sum(numel(s) for s in out_shapes))
    return add_node(g, node)


def chain_graph():
    """input 32×32×3 → conv 64 3×3 /2 → batchnorm → relu → pool 2 → fc 10 → softmax_xent."""
    g = new_graph("chain")
    put(g, "data", "input", out=(32, 32, 3), attrs={"shape": (32, 32, 3)})
    # conv: weights k·k·cin·f plus f biases; one MAC per weight per output pixel.
    put(g, "conv1", "conv", ["data"], (16, 16, 64),
        attrs={"filters": 64, "kernel": (3, 3), "stride": (2, 2)},
        params=3 * 3 * 3 * 64 + 64, macs=16 * 16 * 64 * (3 * 3 * 3))
    # batchnorm: gamma and beta are trained, running mean and variance are buffers.
    put(g, "bn1", "batchnorm", ["conv1"], (16, 16, 64), params=2 * 64, buffers=2 * 64)
    put(g, "relu1", "relu", ["bn1"], (16, 16, 64))
    put(g, "pool1", "pool", ["relu1"], outs=((8, 8, 64),),
        attrs={"kernel": (2, 2), "stride": (2, 2), "mode": "max"})
    put(g, "fc1", "fc", ["pool1"], (10,), attrs={"units": 10},
        params=8 * 8 * 64 * 10 + 10, macs=8 * 8 * 64 * 10)
    put(g, "loss", "softmax_xent", ["fc1"], (), attrs={"weight": 1.0})
    return g


CHAIN_PARAMS = (3 * 3 * 3 * 64 + 64) + 128 + (8 * 8 * 64 * 10 + 10)
CHAIN_MACS = 16 * 16 * 64 * 27 + 8 * 8 * 64 * 10
# Every layer's output (input, conv, bn, relu, pool, fc); the loss is not a layer row.
CHAIN_ACTIVATIONS = 32 * 32 * 3 + 16 * 16 * 64 * 3 + 8 * 8 * 64 + 10


def repeat_graph(count=3):
    """input → [conv → relu] × count → fc → loss, each iteration in its own repeat frame."""
    g = new_graph("rep")
    put(g, "data", "input", out=(8, 8, 4))
    prev = "data"
    for i in range(count):
        frame = (Frame("repeat", "r1", index=i + 1, count=count),)   # 1-based, as expand makes
        put(g, f"conv{i}", "conv", [prev], (8, 8, 4), attrs={"filters": 4, "kernel": (3, 3)},
            scope=frame, params=3 * 3 * 4 * 4 + 4)
        put(g, f"relu{i}", "relu", [f"conv{i}"], (8, 8, 4), scope=frame)
        prev = f"relu{i}"
    put(g, "fc", "fc", [prev], (10,))
    put(g, "loss", "softmax_xent", ["fc"], ())
    return g


def node_ids(dot):
    """The ids of node statements in a DOT source (edges and attribute lines excluded)."""
    return set(re.findall(r"^\s*(n\d+) \[", dot.source, flags=re.M))


def edges(dot):
    return re.findall(r"^\s*(n\d+) -> (n\d+)", dot.source, flags=re.M)


def block_of(source, label):
    """The text of the cluster whose label is ``label``, through its matching brace."""
    at = source.index(f"label={label}" if label.startswith('"') else f'label="{label}"')
    start = source.rindex("subgraph cluster_", 0, at)
    depth = 0
    for i in range(source.index("{", start), len(source)):
        depth += {"{": 1, "}": -1}.get(source[i], 0)
        if depth == 0:
            return source[start:i + 1]
    raise AssertionError("unbalanced braces")


# ---------------------------------------------------------------------------------------------
# Summary

def test_summary_rows_and_totals_of_a_chain():
    s = summarize(chain_graph())
    assert s["network"] == "chain" and s["input_shape"] == "32×32×3" and s["batch"] == 1
    assert [r["name"] for r in s["layers"]] == ["data", "conv1", "bn1", "relu1", "pool1", "fc1"]
    conv = s["layers"][1]
    assert conv == {"name": "conv1", "op": "conv", "output_shape": "16×16×64", "params": 1792,
                    "activations": 16384, "activation_bytes": 65536, "macs": 442368,
                    "inputs": ["data"], "source": None}
    assert s["layers"][-1]["output_shape"] == "10"
    t = s["totals"]
    assert t["params"] == t["trainable_params"] == CHAIN_PARAMS == 42890
    assert t["non_trainable"] == 128                 # bn running stats, not in params
    assert t["activations"] == CHAIN_ACTIVATIONS     # relu's own output counted too
    assert t["activation_bytes"] == CHAIN_ACTIVATIONS * 4
    assert t["macs"] == CHAIN_MACS == 483328
    assert s["heads"] == [{"name": "loss", "weight": 1.0, "input": "fc1"}]
    assert "multiply-accumulates" in s["mac_convention"]
    assert "every layer" in s["activation_convention"]
    json.dumps(s)  # JSON-serialisable as it stands


def test_summary_scales_with_batch_and_dtype_but_params_do_not():
    s = summarize(chain_graph(), batch=8, dtype_bytes=2)
    t = s["totals"]
    assert t["params"] == CHAIN_PARAMS
    assert t["activations"] == 8 * CHAIN_ACTIVATIONS
    assert t["activation_bytes"] == 2 * 8 * CHAIN_ACTIVATIONS
    assert t["macs"] == 8 * CHAIN_MACS
    conv = s["layers"][1]
    assert conv["macs"] == 8 * 442368 and conv["params"] == 1792
    assert conv["activations"] == 8 * 16384 and conv["activation_bytes"] == 2 * 8 * 16384


def test_summary_keeps_duplicate_inputs_and_locations():
    from netdsl.core.errors import Location, SourceFile
    g = new_graph("cat")
    put(g, "x", "input", out=(4, 4, 2))
    put(g, "a", "conv", ["x"], (4, 4, 3))
    cat = put(g, "cat", "concat", ["a", "a"], (4, 4, 6))
    cat.loc = Location(SourceFile("nets/cat.net", "x\ny\n"), 2, 5)
    row = summarize(g)["layers"][-1]
    assert row["inputs"] == ["a", "a"] and row["source"] == "nets/cat.net:2:5"


def test_summary_rejects_bad_options_and_missing_shapes():
    with pytest.raises(NetdslError):
        summarize(chain_graph(), batch=0)
    with pytest.raises(NetdslError):
        summarize(chain_graph(), dtype_bytes=0)
    g = new_graph()
    add_node(g, Node("x", "input", {}))   # no shape inference
    with pytest.raises(NetdslError, match="shape"):
        summarize(g)


def test_number_formats():
    assert count_with_units(138_357_544) == "138,357,544 (138.4 M)"
    assert count_with_units(15_470_264_320, 2) == "15,470,264,320 (15.47 G)"
    assert count_with_units(120) == "120"
    assert human_bytes(512) == "512 B" and human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 2**20) == "3.0 MiB"


def test_format_table_aligns_columns_and_states_totals():
    g = chain_graph()
    text = format_table(summarize(g))
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("name"))
    for col in ("op", "output", "params", "activations", "act bytes", "MACs"):
        assert col in header
    conv_line = next(line for line in lines if line.startswith("conv1"))
    fc_line = next(line for line in lines if line.startswith("fc1"))
    # Numbers right-aligned: the MACs column ends at the same place on every row.
    assert conv_line.endswith("442,368") and fc_line.endswith("40,960")
    assert len(conv_line) == len(fc_line) == len(header)
    assert "16×16×64" in conv_line and "64.0 KiB" in conv_line
    relu_line = next(line for line in lines if line.startswith("relu1"))
    assert "16,384" in relu_line and "(" not in relu_line   # counted like every other layer
    assert "42,890 (42.9 K)" in text and "483,328 (483.33 K)" in text
    assert "multiply-accumulates of conv and fc layers" in text
    assert any(set(line) == {"-"} for line in lines)


def test_format_table_shortens_long_names():
    g = new_graph()
    put(g, "x", "input", out=(2,))
    long = "inception_block_number_seven/branch_three/conv_reduce"
    put(g, long, "fc", ["x"], (2,))
    text = format_table(summarize(g))
    row = next(line for line in text.splitlines() if line.startswith("incep"))
    assert long not in text and "…" in row and row.split()[0].endswith("conv_reduce")


# ---------------------------------------------------------------------------------------------
# Diagram

def test_op_labels_show_key_args_and_hide_unit_stride():
    g = chain_graph()
    conv = g.nodes["conv1"]["node"]
    assert op_label(conv, TEST_SPECS["conv"]) == "CONV 64 3×3 /2"
    conv.attrs["stride"] = (1, 1)
    assert op_label(conv, TEST_SPECS["conv"]) == "CONV 64 3×3"
    assert op_label(g.nodes["pool1"]["node"], TEST_SPECS["pool"]) == "POOL 2×2 /2 max"


def test_to_dot_chain_labels_title_and_edges():
    dot = to_dot(chain_graph())
    src = dot.source
    assert "rankdir=TB" in src
    assert "CONV 64 3×3 /2" in src and "16×16×64" in src and "conv1" in src
    assert "#cfe2ff" in src                                   # spec.style applied
    assert "42,890 (42.9 K)" in src and "chain" in src       # title with totals
    # The loss head is an ellipse showing its weight.
    loss_stmt = next(line for line in src.splitlines() if "SOFTMAX_XENT" in line)
    assert "ellipse" in loss_stmt and "weight 1" in loss_stmt
    assert "SOFTMAX_XENT 1" not in loss_stmt                 # weight not repeated as an arg
    assert len(node_ids(dot)) == 7 and len(edges(dot)) == 6


def test_concat_with_duplicate_input_draws_two_edges():
    g = new_graph("cat")
    put(g, "x", "input", out=(4, 4, 2))
    put(g, "a", "conv", ["x"], (4, 4, 3))
    put(g, "cat", "concat", ["a", "a"], (4, 4, 6))
    dot = to_dot(g)
    assert edges(dot).count(("n1", "n2")) == 2
    cat_stmt = next(line for line in dot.source.splitlines() if line.strip().startswith("n2 ["))
    assert "invtrapezium" in cat_stmt


def test_residual_add_is_a_plus_circle():
    g = new_graph("res")
    put(g, "x", "input", out=(4, 4, 2))
    put(g, "c", "conv", ["x"], (4, 4, 2))
    put(g, "sum", "add", ["x", "c"], (4, 4, 2))
    dot = to_dot(g)
    add_stmt = next(line for line in dot.source.splitlines() if line.strip().startswith("n2 ["))
    assert "shape=circle" in add_stmt and 'label="+"' in add_stmt and "sum" in add_stmt
    assert sorted(edges(dot)) == [("n0", "n1"), ("n0", "n2"), ("n1", "n2")]


def test_multi_output_node_shows_ports():
    g = new_graph("ports")
    put(g, "x", "input", out=(4, 4, 2))
    put(g, "p", "pool", ["x"], outs=((2, 2, 2), (2, 2, 2)))
    put(g, "u", "fc", [("p", 1)], (3,))
    src = to_dot(g).source
    assert 'port="o1"' in src and "tailport=o1" in src


def test_blocks_become_nested_clusters_and_are_not_folded():
    g = new_graph("blocks")
    put(g, "x", "input", out=(4, 4, 2))
    prev = "x"
    for inst in ("res1", "res2"):   # the same block used twice, outside any repeat
        outer = Frame("block", inst, block="res")
        put(g, f"{inst}/c", "conv", [prev], (4, 4, 2), scope=(outer,))
        put(g, f"{inst}/inner/c", "conv", [f"{inst}/c"], (4, 4, 2),
            scope=(outer, Frame("block", f"{inst}/inner", block="pair")))
        put(g, f"{inst}/sum", "add", [prev, f"{inst}/inner/c"], (4, 4, 2), scope=(outer,))
        prev = f"{inst}/sum"
    for fold in (False, True):
        dot = to_dot(g, fold=fold)
        src = dot.source
        assert len(node_ids(dot)) == 7
        outer = block_of(src, "res1 (res)")
        assert "res1/inner (pair)" in outer and "res2" not in outer   # nesting
        assert "res1/c" in outer and "res1/inner/c" in block_of(src, "res1/inner (pair)")


def test_repeat_clusters_unfolded():
    dot = to_dot(repeat_graph(3))
    assert len(node_ids(dot)) == 9
    assert "repeat 3/3" in dot.source and "× 3" not in dot.source


def test_fold_draws_a_repeat_once():
    g = repeat_graph(3)
    assert fold_map(g)["relu2"] == "relu0" and fold_map(g)["conv1"] == "conv0"
    dot = to_dot(g, fold=True)
    src = dot.source
    assert len(node_ids(dot)) == 5            # data, conv0, relu0, fc, loss
    assert "× 3" in block_of(src, "× 3") and "conv0" in block_of(src, "× 3")
    ids = {name: f"n{i}" for i, name in enumerate(
        ["data", "conv0", "relu0", "conv1", "relu1", "conv2", "relu2", "fc", "loss"])}
    e = edges(dot)
    assert e.count((ids["data"], ids["conv0"])) == 1          # entry from outside kept
    assert e.count((ids["relu0"], ids["conv0"])) == 1          # loop back, drawn once
    assert e.count((ids["relu0"], ids["fc"])) == 1             # exit from the last iteration
    assert len(e) == 5
    back = next(line for line in src.splitlines() if f"{ids['relu0']} -> {ids['conv0']}" in line)
    assert "constraint=false" in back


def test_nested_repeats_fold_recursively():
    g = new_graph("nest")
    put(g, "x", "input", out=(2, 2, 1))
    prev = "x"
    for i in range(2):
        for j in range(3):
            scope = (Frame("repeat", "outer", i + 1, 2), Frame("repeat", "inner", j + 1, 3))
            put(g, f"c{i}{j}", "conv", [prev], (2, 2, 1), scope=scope)
            prev = f"c{i}{j}"
    assert {fold_map(g)[f"c{i}{j}"] for i in range(2) for j in range(3)} == {"c00"}
    dot = to_dot(g, fold=True)
    assert len(node_ids(dot)) == 2
    assert "× 3" in block_of(dot.source, "× 2")


# ---------------------------------------------------------------------------------------------
# Writing files

@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' program not installed")
def test_draw_svg_writes_exactly_the_requested_file(tmp_path):
    out = tmp_path / "chain.svg"
    message = draw(chain_graph(), str(out))
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<?xml") or "<svg" in text
    assert "CONV 64 3×3 /2" in text
    assert not (tmp_path / "chain.svg.svg").exists() and str(out) in message


def test_draw_dot_source(tmp_path):
    out = tmp_path / "chain.dot"
    draw(chain_graph(), str(out), fold=True)
    assert out.read_text(encoding="utf-8").startswith("digraph")


def test_draw_without_dot_program_writes_source_and_says_how(tmp_path, monkeypatch):
    monkeypatch.setattr(draw_mod.shutil, "which", lambda name: None)
    message = draw(chain_graph(), str(tmp_path / "net.svg"))
    assert (tmp_path / "net.dot").read_text(encoding="utf-8").startswith("digraph")
    assert not (tmp_path / "net.svg").exists()
    assert "apt-get install graphviz" in message and "dot -Tsvg" in message
    assert "net.dot -o" in message


def test_draw_when_rendering_reports_missing_executable(tmp_path, monkeypatch):
    # `which` finds a dot that then cannot be started (removed in between, or not executable).
    monkeypatch.setattr(draw_mod.shutil, "which", lambda name: str(tmp_path / "no-such-dot"))
    message = draw(chain_graph(), str(tmp_path / "net.png"))
    assert (tmp_path / "net.dot").exists() and "dot -Tpng" in message


def test_draw_rejects_unknown_extension(tmp_path):
    with pytest.raises(NetdslError) as err:
        draw(chain_graph(), str(tmp_path / "net.jpg"))
    assert ".svg" in err.value.render() and ".dot" in err.value.render()


# ---------------------------------------------------------------------------------------------
# Against the real registry (the layers are written separately; skipped until they import)

@pytest.mark.skipif(not REAL_LAYERS, reason="netdsl.layers not importable yet")
def test_real_registry_specs_work_with_summary_and_draw(monkeypatch):
    monkeypatch.undo()   # drop the test registry
    real = importlib.import_module("netdsl.layers")
    g = chain_graph()
    for n in list(g.nodes):
        rec = g.nodes[n]["node"]
        rec.op = real.get(rec.op).name
    s = summarize(g)
    assert s["totals"]["activations"] == CHAIN_ACTIVATIONS
    assert [h["name"] for h in s["heads"]] == ["loss"]
    src = to_dot(g).source
    assert "CONV" in src and "3×3" in src and "64" in src and "/2" in src


@pytest.mark.skipif(not REAL_LAYERS, reason="netdsl.layers not importable yet")
def test_real_vgg16_totals_match_the_published_counts(monkeypatch):
    """VGG-16 (configuration D) built by hand, shapes from the real layers: 138,357,544
    parameters and 15.47 G MACs are the counts published for it (e.g. by torchvision)."""
    monkeypatch.undo()
    shapes = pytest.importorskip("netdsl.compile.shapes")
    real = importlib.import_module("netdsl.layers")
    g = new_graph("vgg16")

    def layer(name, op, inputs, **kw):
        spec = real.get(op)
        add_node(g, Node(name, spec.name, real.bind_args(spec, [], kw), [(i, 0) for i in inputs]))
        return name

    prev = layer("data", "input", [], shape=(224, 224, 3))
    for stage, (convs, width) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)]):
        for r in range(convs):
            prev = layer(f"conv{stage}_{r}", "conv", [prev], filters=width, kernel=3)
            prev = layer(f"relu{stage}_{r}", "relu", [prev])
        prev = layer(f"pool{stage}", "maxpool", [prev], size=2, stride=2)
    for k, units in enumerate([4096, 4096, 1000]):
        prev = layer(f"fc{k}", "fc", [prev], units=units)
        if k < 2:
            prev = layer(f"relu_fc{k}", "relu", [prev])
    layer("loss", "softmax_xent", [prev])
    shapes.infer_shapes(g)
    text = format_table(summarize(g))
    assert "138,357,544 (138.4 M)" in text and "15,470,264,320 (15.47 G)" in text


def test_draw_stops_a_graphviz_that_hangs(tmp_path, monkeypatch):
    # A stand-in `dot` that never finishes: draw must stop it and say what to do instead.
    fake = tmp_path / "dot"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setattr(draw_mod.shutil, "which", lambda name: str(fake))
    monkeypatch.setenv("NETDSL_DOT_TIMEOUT", "0.5")
    with pytest.raises(NetdslError) as err:
        draw(chain_graph(), str(tmp_path / "net.svg"))
    assert "longer than 0.5 s" in err.value.message and "--fold" in err.value.hint
    assert not (tmp_path / "net.svg").exists()


def test_draw_reports_a_graphviz_failure_with_its_message(tmp_path, monkeypatch):
    fake = tmp_path / "dot"
    fake.write_text("#!/bin/sh\necho 'syntax error in line 1' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(draw_mod.shutil, "which", lambda name: str(fake))
    with pytest.raises(NetdslError) as err:
        draw(chain_graph(), str(tmp_path / "net.svg"))
    assert "failed to render" in err.value.message and "syntax error" in err.value.detail
