"""`netdsl bench FILE --ablate`: each pass, plan decision and provider switched off in turn.

The node counts the ablation reports are checked against each pass run alone, straight from
netdsl.compile.passes on the uncompiled-by-passes graph, counted here by comparing node sets and
attributes (not with the ablation's own counting). No timing is asserted.
"""
import json

import numpy as np
import pytest

from netdsl.core import graph as G
from netdsl.runtime import kernels
from netdsl.cli.app import main
from netdsl.compile.compiler import build_graph
from netdsl.core.errors import SourceFile
from netdsl.compile.model import BoundModel
from netdsl.compile.passes import PASSES, PIPELINES
from netdsl.compile.shapes import infer_shapes, resolve_auto

# Every training pass has work here: a dead branch (CONV → GAP read by no loss: no
# activation, which fuse_activations alone would fuse), an identity branch, two ReLUs after a
# BN and a conv, a ReLU before a max pool.
TRAIN_NET = """INPUT(8x8x3) -> CONV(4, 3) -> BN -> RELU
  -> c: concat { CONV(3, 1) -> RELU | identity }
  -> RELU -> MAXPOOL(2) -> GAP -> FC(5)
@c -> CONV(4, 1) -> GAP
"""
# Every inference pass but dead-node elimination has work here (a dead branch would be pruned by
# remove_aux_heads too when run alone): dropout, an auxiliary head, BN after a conv.
INFER_NET = """INPUT(8x8x3) -> CONV(4, 3) -> BN -> RELU
  -> c: concat { CONV(3, 1) -> RELU | identity }
  -> DROPOUT(0.3) -> GAP -> FC(5)
@c -> GAP -> FC(5) -> LOSS(0.3)
"""


@pytest.fixture(autouse=True)
def _no_pause(monkeypatch):
    """The pause between turns protects timings; these tests assert none."""
    import netdsl.tools.bench_ablate
    monkeypatch.setattr(netdsl.tools.bench_ablate, "PAUSE", 0.0)


def _bound(text: str) -> BoundModel:
    g = build_graph(SourceFile("tiny.net", text))
    resolve_auto(g, num_classes=5)
    infer_shapes(g)
    return BoundModel.init(g, seed=0)


def _alone(text: str, name: str) -> int:
    """Nodes removed plus nodes whose attributes or meta change when ``name`` runs alone."""
    m = _bound(text)
    before = {r.name: (dict(r.attrs), dict(r.meta)) for r in G.nodes(m.graph)}
    p = PASSES[name]
    p.run(m if p.weights else m.graph)
    after = {r.name: (dict(r.attrs), dict(r.meta)) for r in G.nodes(m.graph)}
    return len(before.keys() - after.keys()) + sum(
        before[n] != after[n] for n in before.keys() & after.keys())


def _ablate(capsys, path, *extra):
    assert main(["bench", str(path), "--ablate", "--steps", "1", "--rounds", "1", "--batch", "2",
                 "--threads", "1", "--format", "json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("mode,text", [("train", TRAIN_NET), ("infer", INFER_NET)])
def test_each_pass_reports_the_nodes_it_changes_alone(tmp_path, capsys, mode, text):
    path = tmp_path / "tiny.net"
    path.write_text(text)
    r = _ablate(capsys, path, "--mode", mode, "--kernels", "numpy")
    rows = {v["name"]: v for v in r["variants"]}
    assert [v["name"] for v in r["variants"] if v["kind"] == "pass"] == list(PIPELINES[mode])
    for name in PIPELINES[mode]:
        expected = _alone(text, name)
        assert rows[name]["changed"] == expected, name
        # a pass with work is timed against the full pipeline; one without says why not
        assert ("ms" in rows[name]) == (expected > 0), name
    assert rows["full"]["ms"] > 0 and rows["full"]["peak_mb"] > 0
    assert rows["full_again"]["ms"] > 0    # the control: the full pipeline a second time
    assert rows["full"]["planned_peak_mb"] > 0
    if mode == "train":
        # plan decisions: the 3×3 conv is the only NumPy im2col conv (the 1×1 reads its input
        # as is) and the only layer reading just the data
        assert rows["recompute"]["changed"] == 1 and rows["data_only"]["changed"] == 1
        assert rows["fuse_activations"]["changed"] == 4   # 2 ReLUs gone, 2 producers fuse
    else:
        assert "recompute" not in rows     # no backward: the plan decisions do not apply
        assert rows["fold_batchnorm"]["changed"] == 2     # BN gone, conv rewritten
        assert rows["remove_aux_heads"]["removed"] == 3   # GAP, FC, LOSS of the aux head
    if kernels.available("onednn"):
        assert rows["onednn"]["changed"] > 0 and rows["onednn"]["ms"] > 0


def test_nothing_to_do_is_said_not_timed(capsys):
    """LeNet-5 has no dropout, no ReLU, no auxiliary head: those rows say so and are not run."""
    from conftest import NETS
    assert main(["bench", str(NETS / "lenet5.net"), "--ablate", "--mode", "infer", "--steps", "1",
                 "--rounds", "1", "--batch", "2", "--threads", "1", "--kernels", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "no dropout in this net" in out and "no auxiliary head in this net" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("- remove_inference_dropout"))
    assert line.split()[2:4] == ["0", "-"]   # changed nothing, not timed
    assert next(ln for ln in out.splitlines() if ln.startswith("full pipeline"))


def test_ablate_refuses_the_torch_comparison(capsys):
    from conftest import NETS
    assert main(["bench", str(NETS / "lenet5.net"), "--ablate", "--compare", "torch"]) == 1
    assert "--ablate" in capsys.readouterr().err


def test_interleaved_rounds_give_each_variant_its_ratio(tmp_path, capsys):
    """Every timed variant has one time per round and a ratio spread around its median."""
    path = tmp_path / "tiny.net"
    path.write_text(TRAIN_NET)
    r = _ablate(capsys, path, "--rounds", "2", "--steps", "2", "--kernels", "numpy")
    for v in r["variants"]:
        if "ms" in v:
            assert len(v["ms_rounds"]) == 2
            s = v["ratio_rounds"]
            assert s["min"] <= s["median"] <= s["max"]
            assert v["ms"] == pytest.approx(float(np.median(v["ms_rounds"])))
