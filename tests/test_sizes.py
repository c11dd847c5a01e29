"""`netdsl sizes`: exact input sides, checked against a hand-written walk of AlexNet's geometry."""
import pytest

from netdsl.cli.app import main
from netdsl.compile.compiler import build_graph
from netdsl.core.errors import SourceFile
from netdsl.tools.sizes import nearest, valid_sizes

ALEXNET = """net alexnet
INPUT(227x227x3) -> CONV(96, 11, stride=4, pad=0) -> RELU -> POOL(3, stride=2)
 -> CONV(256, 5, pad=2) -> RELU -> POOL(3, stride=2)
 -> CONV(384, 3, pad=1) -> RELU -> CONV(256, 3, pad=1) -> RELU -> POOL(3, stride=2)
 -> FC(4096) -> RELU -> FC(1000)
"""
# (kernel, stride, pad) of each windowed layer, typed from the program above, not from netdsl.
GEOMETRY = [(11, 4, 0), (3, 2, 0), (5, 1, 2), (3, 2, 0), (3, 1, 1), (3, 1, 1), (3, 2, 0)]


def _exact_by_hand(side):
    for k, s, p in GEOMETRY:
        span = side - k + 2 * p
        if span < 0 or span % s:
            return False
        side = span // s + 1
    return True


def test_alexnet_sizes_match_a_hand_walk(tmp_path):
    g = build_graph_from(ALEXNET)
    checks, complete = valid_sizes(g, 32, 300, 3, 1000)
    assert complete
    assert [c.size for c in checks if c.valid] == [s for s in range(32, 301) if _exact_by_hand(s)]
    assert 227 in [c.size for c in checks if c.valid]
    assert nearest(checks, 224)[0] == 227
    bad = next(c for c in checks if c.size == 224)
    assert not bad.valid and "54.25" in bad.reason


def build_graph_from(text):
    from netdsl.lang import parse
    from netdsl.lang.expand import expand
    return expand(parse(SourceFile("alex.net", text)), {}, name="alexnet")


def test_concat_mismatch_is_invalid():
    text = """net two
INPUT(32x32x3) -> concat { CONV(8, 3, pad=0) | CONV(8, 5, pad=0) } -> FC(10)
"""
    checks, _ = valid_sizes(build_graph_from(text), 16, 20, 3)
    assert not any(c.valid for c in checks)


def test_cli_sizes_near(tmp_path, capsys):
    f = tmp_path / "alex.net"
    f.write_text(ALEXNET)
    assert main(["sizes", str(f), "--near", "224", "--range", "200:260"]) == 0
    out = capsys.readouterr().out
    assert "nearest exact sides to 224: 227, 259" in out


@pytest.mark.parametrize("bad", ["5:x", "10:5", "0:3"])
def test_cli_sizes_bad_range(tmp_path, capsys, bad):
    f = tmp_path / "alex.net"
    f.write_text(ALEXNET)
    assert main(["sizes", str(f), "--range", bad]) == 1
    assert "--range" in capsys.readouterr().err


def test_shipped_alexnet_answers_227(capsys):
    assert main(["sizes", "nets/alexnet.net", "--near", "224"]) == 0
    out = capsys.readouterr().out
    # Caffe's AlexNet geometry with groups: the exact sides are those of the hand walk above.
    assert f"{sum(map(_exact_by_hand, range(32, 513)))} exact input side(s)" in out
    assert "nearest exact sides to 224: 227, 195, 259" in out


def test_a_deep_net_is_checked_within_the_budget(tmp_path, capsys, monkeypatch):
    """`sizes --range 1:8192` on a 20,000-layer chain ran ~2 h: the sides nearest --near are
    checked first, as many as the work budget allows, and the output says it was cut short."""
    import netdsl.tools.sizes as S
    monkeypatch.setattr(S, "WORK_BUDGET", 2_000)        # the same rule, a small net
    f = tmp_path / "deep.net"
    f.write_text("INPUT(32x32x3) -> CONV(4, 3, pad=0, stride=2) -> " + " -> ".join(
        ["FC(8)"] * 95) + "\n")
    assert main(["sizes", str(f), "--range", "1:8192", "--near", "100"]) == 0
    captured = capsys.readouterr()
    assert "checked 20 of the 8192 sides (90..109, nearest 100 first)" in captured.err
    assert "nearest exact sides to 100: 99, 101, 97" in captured.out


def test_a_flat_input_is_a_user_error(tmp_path, capsys):
    f = tmp_path / "flat.net"
    f.write_text("INPUT(16) -> FC(8) -> FC(2)\n")
    assert main(["sizes", str(f)]) == 1          # an IndexError (exit 70) before
    assert "the input is flat (16 values)" in capsys.readouterr().err
