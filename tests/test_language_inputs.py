"""--input, input ranks, checking without the dataset, sizes that do not divide (through the
CLI), and bounded compile time on very long files (no timing assertion: times are in
docs/performance.md)."""
from __future__ import annotations

import pytest

from netdsl.cli.app import main
from netdsl.compile.compiler import compile_text
from netdsl.core.graph import nodes

ALEX = """# AlexNet's first stages (Krizhevsky et al. 2012, as the course notes give them)
INPUT(224x224x3) -> CONV(96, 11, stride=4, pad=0) -> RELU -> MAXPOOL(3, stride=2)
  -> CONV(256, 5, pad=2) -> MAXPOOL(3, stride=2) -> FC(10)
"""


def run_cli(tmp_path, capsys, text, *args, command="summary"):
    path = tmp_path / "net.net"
    path.write_text(text)
    rc = main([command, str(path), *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_size_that_does_not_divide_through_the_cli(tmp_path, capsys):
    rc, out, err = run_cli(tmp_path, capsys, ALEX)
    assert rc == 1 and "Traceback" not in err
    assert "net.net:2:21: error:" in err and "(224 − 11 + 2·0)/4 + 1 = 54.25" in err
    assert "227×227×3" in err and "hint:" in err and "^" in err
    rc, out, err = run_cli(tmp_path, capsys, ALEX, "--input", "227x227x3")
    assert rc == 0 and "note: --input 227x227x3 replaces the file's INPUT(224x224x3)" in err
    # conv1 55×55×96: 11·11·3·96 + 96 weights; (227 − 11)/4 + 1 = 55 by hand.
    assert "55×55×96" in out and "34,944" in out


def test_input_override_and_one_channel_maps(tmp_path, capsys):
    text = "INPUT(8x8x3) -> CONV(4) -> FC(10)\n"
    rc, out, err = run_cli(tmp_path, capsys, text, "--input", "28x28")
    assert rc == 0 and "28×28×1" in out and "note:" in err
    g = compile_text("INPUT(28x28) -> CONV(4) -> FC(10)").graph
    assert nodes(g)[0].out_shape == (28, 28, 1)


def test_flat_input(tmp_path, capsys):
    g = compile_text("INPUT(784) -> FC(32) -> RELU -> FC(10)").graph
    fc = [n for n in nodes(g) if n.op == "fc"][0]
    assert nodes(g)[0].out_shape == (784,) and fc.n_params == 784 * 32 + 32
    rc, out, err = run_cli(tmp_path, capsys, "INPUT(784) -> CONV(4) -> FC(10)\n",
                           command="check")
    assert rc == 1 and "net.net:1:15: error:" in err and "Traceback" not in err


@pytest.mark.parametrize("text, flag, where", [
    ("INPUT(2x3x4x5) -> FC(10)\n", (), "net.net:1:1: error: INPUT(...) has 4 dimensions"),
    ("INPUT -> FC(10)\n", ("--input", "2x3x4x5"), "--input expects HxWxC"),
])
def test_other_ranks_are_located_errors(tmp_path, capsys, text, flag, where):
    rc, out, err = run_cli(tmp_path, capsys, text, *flag, command="check")
    assert rc == 1 and where in err and "Traceback" not in err


def test_check_summary_draw_do_not_read_the_dataset(tmp_path, capsys):
    # The data spec names a directory that does not exist: reading it would be an error.
    text = "INPUT(28x28x1) -> CONV(4) -> FC\ntrain { data = \"mnist:/no/such/dir\" }\n"
    for command in ("check", "summary"):
        rc, out, err = run_cli(tmp_path, capsys, text, command=command)
        assert rc == 0, err
        assert "assuming 10 classes" in err
    rc, out, err = run_cli(tmp_path, capsys, text, "-o", str(tmp_path / "n.dot"),
                           command="draw")
    assert rc == 0, err
    # A bare INPUT still needs the dataset's shape: that error names the directory.
    rc, out, err = run_cli(tmp_path, capsys, text.replace("INPUT(28x28x1)", "INPUT"),
                           command="check")
    assert rc == 1 and "/no/such/dir" in err


@pytest.mark.slow
def test_many_parameters_and_long_chains_compile():
    """20,000 declarations and a 60,000-layer chain (the issue's sizes) compile; times in
    docs/performance.md (they were minutes when declarations and chains were quadratic)."""
    params = "\n".join(f"param P{i} = {i} // 2" for i in range(20_000))
    g = compile_text(params + "\nINPUT(8x8x1) -> FC(P19999) -> FC(10)\n").graph
    assert g.graph["params"]["P19999"] == 9999
    assert [n.n_params for n in nodes(g) if n.op == "fc"][0] == 64 * 9999 + 9999
    chain = "INPUT(8x8x1) -> FC(4)\n" + "  -> RELU\n" * 60_000 + "  -> FC(10)\n"
    g = compile_text(chain).graph
    assert sum(n.op == "relu" for n in nodes(g)) == 60_000
