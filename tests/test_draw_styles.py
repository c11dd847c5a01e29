"""draw's two styles: the graph (folded block runs, branches in file order, LR, INPUT's shape
once) and the volumes (feature maps as 3-D boxes, as the LeNet-5 and AlexNet papers draw)."""
from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from conftest import NETS
from netdsl.cli.app import main
from netdsl.compile.compiler import compile_file
from netdsl.compile.draw import to_dot
from netdsl.compile.draw_volumes import to_volumes_svg
from netdsl.core.graph import nodes

SVG = "{http://www.w3.org/2000/svg}"
ALL_NETS = sorted(NETS.rglob("*.net"))


def _boxes(svg: str) -> list:
    root = ET.fromstring(svg)
    return [g for g in root.iter(f"{SVG}g") if g.get("class") == "volume"]


@pytest.mark.parametrize("path", ALL_NETS, ids=lambda p: p.stem)
def test_every_shipped_net_draws_in_both_styles(path):
    g = compile_file(str(path)).graph
    boxes = _boxes(to_volumes_svg(g))          # parses as XML
    by_name = {n.name: n for n in nodes(g)}
    # every box shows the shape its node computes; every layer with a window or a width of
    # its own (conv, pool, FC) is a box
    for box in boxes:
        shape = by_name[box.get("data-node")].out_shape
        assert box.get("data-shape") in ("", "×".join(map(str, shape)))
    # ... and every layer with a window or a width of its own (conv, pool, FC) or a join is one
    ops = ("conv", "fc", "maxpool", "avgpool", "pool", "concat", "add", "deconv", "local")
    for op in ops:
        assert sum(b.get("data-op") == op for b in boxes) == \
            sum(n.op == op for n in nodes(g)), op
    for fold in (False, True):
        source = to_dot(g, fold=fold, rankdir="LR").source
        assert "rankdir=LR" in source and source.count("->") >= 1


@pytest.mark.parametrize("net, paper", [
    # LeNet-5, Figure 2 of LeCun et al. 1998: INPUT 32×32, C1 6@28×28, S2 6@14×14,
    # C3 16@10×10, S4 16@5×5, C5 120, F6 84, output 10
    ("lenet5", ["32×32×1", "28×28×6", "14×14×6", "10×10×16", "5×5×16", "1×1×120", "84", "10"]),
    # AlexNet (Krizhevsky et al. 2012, Figure 2 and section 3.5), with the pools as boxes
    ("alexnet", ["227×227×3", "55×55×96", "27×27×96", "27×27×256", "13×13×256", "13×13×384",
                 "13×13×384", "13×13×256", "6×6×256", "4096", "4096", "1000"]),
])
def test_one_box_per_feature_map_of_the_papers(net, paper):
    g = compile_file(str(NETS / f"{net}.net")).graph
    assert [b.get("data-shape") for b in _boxes(to_volumes_svg(g))] == paper


def test_residual_shortcuts_and_concat_branches_in_volumes():
    g = compile_file(str(NETS / "resnet18.net")).graph
    svg = to_volumes_svg(g)
    boxes = _boxes(svg)
    assert sum(b.get("data-shape") == "" for b in boxes) == 8          # one ⊕ per block
    assert svg.count("shortcut CONV") == 3                             # projections
    g = compile_file(str(NETS / "inception_small.net")).graph
    shapes = [b.get("data-shape") for b in _boxes(to_volumes_svg(g))]
    assert shapes.count("8×8×64") == 1 and "8×8×16" in shapes          # concat of 4 branches


def test_graph_folds_consecutive_equal_block_calls():
    g = compile_file(str(NETS / "resnet18.net")).graph
    folded = to_dot(g, fold=True).source
    assert "basic(64) ×2" in folded
    assert "basic2/conv1" not in folded and "basic3/conv1" in folded    # basic(128, 2) differs
    assert "basic4/conv1" in folded                                    # basic(128) follows it
    assert "basic(64) ×2" not in to_dot(g).source


def test_input_shape_is_written_once():
    source = to_dot(compile_file(str(NETS / "lenet5.net")).graph).source
    label = next(line for line in source.splitlines() if "input1<" in line)
    assert label.count("32×32×1") == 1


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' binary not installed")
@pytest.mark.parametrize("rankdir", ["TB", "LR"])
def test_branches_are_drawn_in_file_order(rankdir):
    g = compile_file(str(NETS / "inception_small.net")).graph
    dot = to_dot(g, rankdir=rankdir)
    plain = subprocess.run(["dot", "-Tplain"], input=dot.source, capture_output=True,
                           text=True, check=True).stdout
    ids = {n.name: f"n{i}" for i, n in enumerate(nodes(g))}
    pos = {m[1]: (float(m[2]), float(m[3]))
           for m in re.finditer(r"^node (\S+) (\S+) (\S+)", plain, re.M)}
    heads = ["inc1/conv1", "inc1/conv2", "inc1/conv4", "inc1/maxpool1"]   # as written
    along = [pos[ids[h]][0] if rankdir == "TB" else -pos[ids[h]][1] for h in heads]
    assert along == sorted(along), along


def test_draw_cli_volumes_style(tmp_path, capsys):
    out = tmp_path / "lenet.svg"
    assert main(["draw", str(NETS / "lenet5.net"), "--style", "volumes", "-o", str(out)]) == 0
    assert len(_boxes(out.read_text())) == 8
    assert main(["draw", str(NETS / "lenet5.net"), "--style", "volumes", "-o",
                 str(tmp_path / "x.png")]) == 1
    assert "writes SVG" in capsys.readouterr().err
    assert main(["draw", str(NETS / "resnet18.net"), "--fold", "--rankdir", "LR", "-o",
                 str(tmp_path / "r.dot")]) == 0
    assert "basic(64) ×2" in (tmp_path / "r.dot").read_text()


@pytest.mark.parametrize("net", ["lenet5", "alexnet", "vgg16", "resnet18"])
def test_the_zoo_volume_pictures_are_what_draw_writes_now(net):
    from conftest import ROOT
    shown = (ROOT / "docs" / "zoo" / f"{net}_volumes.svg").read_text(encoding="utf-8")
    assert shown == to_volumes_svg(compile_file(str(NETS / f"{net}.net")).graph), \
        f"regenerate: netdsl draw nets/{net}.net --style volumes -o docs/zoo/{net}_volumes.svg"
    assert f"zoo/{net}_volumes.svg" in (ROOT / "docs" / "zoo.md").read_text(encoding="utf-8")
