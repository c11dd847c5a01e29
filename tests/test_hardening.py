"""Bad input at every boundary ends as a located or clearly worded user error (exit 1), never as
an internal error (exit 70): CLI numbers, huge counts, two INPUTs, damaged data files, train
settings checked against the data by `check` as well as `run`."""
from __future__ import annotations

import contextlib
import gzip
import io
import os
import pickle
import struct
import zipfile

import networkx as nx
import numpy as np
import pytest

from netdsl.cli.app import main
from netdsl.compile.compiler import compile_text
from netdsl.core.errors import NetdslError
from netdsl.compile.verify import VerifyError, verify
from netdsl.compile.summary import count_with_units, format_table, human_bytes, human_count, summarize
from netdsl.data.loader import data_facts, load_dataset

BIG = 10 ** 300


def cli(*argv) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, out.getvalue() + err.getvalue()


# ---------------------------------------------------------------------------------------------
# Numbers

def test_counts_past_float_range_format_exactly():
    assert human_count(BIG) == "1.0e+300"                    # 10^300 written by hand
    assert human_count(3 * 10**15 + 1) == "3.0e+15"
    assert count_with_units(999_999) == "999,999 (1000.0 K)"
    assert human_bytes(BIG * 4) == "4.0e+300 B"
    assert human_bytes(2**50 - 1) == "1024.0 TiB"            # just under the switch


def test_summary_and_drawing_of_astronomical_counts(tmp_path):
    c = compile_text(f"INPUT(28x28x1) -> FC({BIG}) -> FC({BIG}) -> FC", input_shape=(28, 28, 1),
                     num_classes=10)
    s = summarize(c.graph, batch=10**9)
    # fc2 alone has BIG·BIG weights + BIG biases (Python ints: exact, no int64 wrap).
    assert s["totals"]["params"] == 784 * BIG + BIG + BIG * BIG + BIG + BIG * 10 + 10
    assert "e+600" in format_table(s)
    path = tmp_path / "big.net"
    path.write_text(f"INPUT(28x28x1) -> FC({BIG}) -> FC({BIG}) -> FC\n")
    assert cli("draw", path, "-o", tmp_path / "big.dot")[0] == 0
    assert "e+600" in (tmp_path / "big.dot").read_text()


@pytest.mark.parametrize("argv, flag", [
    (["bench", "--batch", "0"], "--batch 0"),
    (["bench", "--threads", "0"], "--threads 0"),
    (["bench", "--steps", "-3"], "--steps -3"),
    (["bench", "--batch", "100000000"], "--batch 100000000"),
    (["run", "NET", "--epochs", "-1"], "--epochs -1"),
    (["run", "NET", "--batch-size", "0"], "--batch-size 0"),
    (["run", "NET", "--holdout", "0"], "holdout = 0 keeps no examples"),
    (["run", "NET", "--holdout", "-7"], "--holdout -7"),
    (["run", "NET", "--seed", "-1"], "--seed -1"),
    (["summary", "NET", "--batch", "0"], "--batch 0"),
])
def test_whole_number_flags_are_range_checked(argv, flag, nets_dir):
    argv = [str(nets_dir / "lenet5.net") if a == "NET" else a for a in argv]
    status, output = cli(*argv)
    assert status == 1 and flag in output and "internal error" not in output


# ---------------------------------------------------------------------------------------------
# One INPUT

def test_two_inputs_are_a_located_error_at_the_second(tmp_path):
    path = tmp_path / "two.net"
    path.write_text("INPUT(8x8x1) -> FC\n\nINPUT(8x8x1) -> FC\n")
    status, output = cli("check", path)
    assert status == 1
    assert f"{path}:3:1: error: a network has exactly one INPUT" in output
    assert f"the first INPUT is at {path}:1:1" in output


def test_verifier_requires_exactly_one_input():
    g = compile_text("INPUT(8x8x1) -> FC", input_shape=(8, 8, 1), num_classes=10).graph
    verify(g, "test")                               # the compiled graph passes
    from netdsl.core.graph import Node, add_node, node
    twin = node(g, next(n for n in g.nodes if node(g, n).op == "input"))
    add_node(g, Node("input_b", "input", dict(twin.attrs), out_shapes=twin.out_shapes))
    with pytest.raises(VerifyError, match="exactly one INPUT, found 2"):
        verify(g, "test")
    assert nx.is_directed_acyclic_graph(g)


# ---------------------------------------------------------------------------------------------
# Data files

def _idx(magic, dims, body=b""):
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + body


def _mnist(tmp_path, images, labels, gz=False):
    for stem, data in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)):
        (tmp_path / (stem + (".gz" if gz else ""))).write_bytes(gzip.compress(data) if gz else data)
    return f"mnist:{tmp_path}"


@pytest.mark.parametrize("dims", [(2**32 - 1, 2**32 - 1, 2**32 - 1), (10, 28, 0), (10, 9000, 28),
                                  (2**32 - 1, 28, 28)])
def test_absurd_idx_headers_are_refused_before_reading(tmp_path, dims):
    spec = _mnist(tmp_path, _idx(0x803, dims, b"\0" * 64), _idx(0x801, (4,), b"\0" * 4))
    with pytest.raises(NetdslError) as err:
        data_facts(spec)       # the header alone is enough
    assert "train-images-idx3-ubyte" in err.value.message


def test_gzip_bomb_is_read_only_to_the_promised_size(tmp_path, monkeypatch):
    from netdsl.data import idx
    pixels = np.zeros((4, 8, 8), np.uint8).tobytes()
    spec = _mnist(tmp_path, _idx(0x803, (4, 8, 8), pixels + b"\0" * 5_000_000),
                  _idx(0x801, (4,), bytes(4)), gz=True)
    limits = []
    real = idx._read_at_most
    monkeypatch.setattr(idx, "_read_at_most", lambda p, n: limits.append(n) or real(p, n))
    with pytest.raises(NetdslError, match="longer than its header says"):
        load_dataset(spec, holdout=1)
    assert max(limits) == 16 + 4 * 8 * 8 + 1      # header + 256 promised bytes + 1 to tell


def test_idx_type_byte_is_named(tmp_path):
    spec = _mnist(tmp_path, _idx(0x0D03, (1, 2, 2), b"\0" * 16), _idx(0x801, (1,), b"\0"))
    with pytest.raises(NetdslError) as err:
        load_dataset(spec)
    assert "float32" in err.value.detail


@pytest.mark.parametrize("y, words", [
    (np.arange(20) * 1_000_000, "label 1000000"),
    (np.full(20, 2**63 - 1, np.uint64), "at most 100,000 classes"),
    (-np.arange(20), "negative"),
    (np.arange(19), "count mismatch"),
])
def test_npz_labels_out_of_bounds(tmp_path, y, words):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((20, 8, 8)), y=y)
    with pytest.raises(NetdslError) as err:
        load_dataset(f"npz:{path}")
    assert words in err.value.message


def test_npz_fractional_labels_are_regression_targets(tmp_path):
    """Not whole numbers: one float target per example (a classifier head then refuses them
    when `run` starts, tests/test_run_targets.py)."""
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((20, 8, 8)), y=np.arange(20) + 0.5)
    data = load_dataset(f"npz:{path}")
    assert data.num_classes == 1 and data.y_train.shape == (16, 1)
    assert data.y_train.dtype == np.float32 and data.y_train[3, 0] == 3.5


def test_npz_header_that_lies_about_its_shape(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((20, 8, 8), np.uint8), y=np.arange(20) % 10)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["x.npy"] = members["x.npy"].replace(b"(20, 8, 8)", b"(99999999, 8, 8)".ljust(10))
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    with pytest.raises(NetdslError, match="damaged: its header says 99999999×8×8 uint8"):
        load_dataset(f"npz:{path}")


def _cifar(tmp_path, batch):
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    return f"cifar10:{tmp_path}"


@pytest.mark.parametrize("batch, words", [
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [[1], [2, 3]]}, "bad pickle"),
    ({b"data": [[1, 2], [3]], b"labels": [1, 2]}, "bad pickle"),
    ({b"labels": [1]}, "expected a dict with 'data' and 'labels'"),
    ({b"data": np.zeros((2, 3071), np.uint8), b"labels": [1, 2]}, "N×3072 uint8"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]}, "count mismatch"),
])
def test_malformed_cifar_pickles(tmp_path, batch, words):
    with pytest.raises(NetdslError) as err:
        load_dataset(_cifar(tmp_path, batch))
    assert words in err.value.message


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_pickle_may_not_name_arbitrary_code(tmp_path):
    with pytest.raises(NetdslError, match="refusing to load (posix|os).system"):
        load_dataset(_cifar(tmp_path, {b"data": _RunsCode(), b"labels": []}))


# ---------------------------------------------------------------------------------------------
# Train settings against the data, by `check`

def _net(tmp_path, train: str, layers: str = "INPUT(8x8x1) -> FC") -> str:
    path = tmp_path / "t.net"
    path.write_text(f"train {{\n  {train}\n}}\n{layers}\n")
    return str(path)


def test_check_reports_a_zero_batch_size_at_its_line(tmp_path):
    path = _net(tmp_path, "batch_size = 0")
    status, output = cli("check", path)
    assert status == 1 and f"{path}:2:3: error: train setting batch_size must be at least 1" in output


def test_check_reports_holdout_larger_than_the_data(tmp_path):
    path = _net(tmp_path, "holdout = 5000")
    status, output = cli("check", path)
    # digits has 1797 examples (scikit-learn's load_digits documentation)
    assert status == 1 and f"{path}:2:3: error: holdout = 5000 is not possible" in output
    assert "between 1 and 1,796" in output
    status, output = cli("check", path, "--set", "holdout=100")      # the CLI's value wins
    assert status == 0, output


def test_check_warns_about_flipping_digits(tmp_path):
    path = _net(tmp_path, "augment = crop+flip")
    status, output = cli("check", path)
    assert status == 0 and f"{path}:2:3: warning: augment = crop+flip mirrors images" in output


def test_check_reports_a_classifier_narrower_than_the_classes(tmp_path):
    path = _net(tmp_path, "lr = 0.1", "INPUT(8x8x1) -> FC(4)")
    status, output = cli("check", path)
    assert status == 1 and "gives 4 outputs to the loss" in output and "10 classes" in output


def test_unknown_optimizer_and_bad_lr_are_located(tmp_path):
    for setting, words in (("optimizer = adamw", "optimizer = 'adamw' is not one of"),
                           ("lr = -0.1", "lr must be positive")):
        path = _net(tmp_path, setting)
        status, output = cli("check", path)
        assert status == 1 and f"{path}:2:3: error: train setting {words}" in output


def test_summary_cli_of_astronomical_layers_is_a_user_error(tmp_path):
    """The memory planner cannot build placeholder weights past NumPy's index range: the
    summary prints without a memory plan and says why, not NumPy's ValueError (exit 70). Found
    by the program fuzzer."""
    path = tmp_path / "big.net"
    path.write_text(f"INPUT(28x28x1) -> FC({BIG}) -> FC\n")
    status, output = cli("summary", path)
    assert status == 0 and "internal error" not in output
    assert "not planned" in output and "fc1" in output


def test_an_error_on_a_huge_line_shows_a_window_of_it(tmp_path, capsys):
    """A generated one-line chain of 100,004 layers: the error shows the part of the line
    around the column (the caret under the right character), not 700 KB of it twice."""
    path = tmp_path / "long.net"
    path.write_text("INPUT(16) -> " + " -> ".join(["FC(16)"] * 100_004) + "\n")
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "more than 100,000 layers" in err and len(err) < 2000
    line, caret = err.splitlines()[1:3]
    col = int(err.split(":")[2])
    shown = path.read_text().splitlines()[0][col - 1:col + 5]
    assert line[caret.index("^"):caret.index("^") + 6] == shown


@pytest.mark.parametrize("command", [["bench", "--steps", "1", "--rounds", "1"],
                                     ["export", "-o", "OUT/x.onnx"],
                                     ["run", "--epochs", "1", "--out", "OUT/run", "--quiet"]])
def test_a_net_check_accepts_but_no_machine_holds_is_refused_by_size(tmp_path, capsys, command):
    """INPUT 2³¹×2³¹: `check` and `summary` describe it; every command that would allocate it
    says how much memory it needs (an internal error from NumPy before)."""
    net = tmp_path / "huge.net"
    net.write_text("INPUT(2147483648x2147483648x1) -> CONV(4, 3) -> FC\n")
    argv = [command[0], str(net)] + [a.replace("OUT", str(tmp_path)) for a in command[1:]]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "needs at least" in err and "EiB of memory" in err and "Traceback" not in err
