"""`netdsl sweep`: the value grammar, per-instance costs against hand counts, the CLI run."""
import csv

import pytest

from netdsl.cli.app import main
from netdsl.core.errors import NetdslError
from netdsl.tools.sweep import instances, parse_sweep_sets

NET = "net s\nparam N = 1\nINPUT(8x8x1) -> [CONV(4, 3) -> RELU]*N -> POOL(2) -> FC(10)\n"
# Parameters by hand: first conv 3·3·1·4 + 4 = 40, each further conv 3·3·4·4 + 4 = 148,
# FC on a 4×4×4 map: 64·10 + 10 = 650.
HAND = {1: 40 + 650, 2: 40 + 148 + 650, 3: 40 + 2 * 148 + 650}


def test_parse_sets_and_product():
    axes = parse_sweep_sets(["N=1..3", "POOL=true,false"])
    assert axes == {"N": [1, 2, 3], "POOL": [True, False]}
    assert len(instances(axes)) == 6 and instances(axes)[1] == {"N": 1, "POOL": False}
    for bad in (["N=3..1"], ["N"], ["N="], ["N=1..1000"]):
        with pytest.raises(NetdslError):
            parse_sweep_sets(bad)


def test_cli_sweep_costs_and_trains(tmp_path, capsys):
    f = tmp_path / "s.net"
    f.write_text(NET)
    assert main(["sweep", str(f), "--set", "N=1..3", "--epochs", "1", "--data", "digits",
                 "--limit", "100", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out.splitlines()[0]
    rows = list(csv.DictReader(open(tmp_path / "o" / "sweep.csv")))
    assert [int(r["params"]) for r in rows] == [HAND[1], HAND[2], HAND[3]]
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    assert (tmp_path / "o" / "sweep.png").stat().st_size > 1000


def test_cli_sweep_reports_an_invalid_instance(tmp_path, capsys):
    f = tmp_path / "s.net"
    f.write_text(NET.replace("POOL(2)", "[POOL(2)]*N"))
    assert main(["sweep", str(f), "--set", "N=2..4", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert out.count("invalid:") == 1 and "s.net:3:" in out     # 8 → 4 → 2 → 1 → none at N=4


def test_an_instance_too_big_to_train_does_not_lose_the_others(tmp_path, capsys):
    """One instance needs terabytes: it is marked not trained (with the memory it needs) and
    the sweep trains and writes the others; before, the whole sweep aborted unwritten."""
    f = tmp_path / "w.net"
    f.write_text("net w\nparam W = 8\nINPUT(8x8x1) -> FC(W) -> FC(W) -> FC(10)\n")
    assert main(["sweep", str(f), "--set", "W=8,2000000", "--epochs", "1", "--data",
                 "digits", "--limit", "100", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "not trained: training it needs at least" in out
    rows = list(csv.DictReader(open(tmp_path / "o" / "sweep.csv")))
    assert rows[0]["valid"] == "True" and 0.0 <= float(rows[0]["accuracy"]) <= 1.0
    assert rows[1]["valid"] == "False" and "needs at least" in rows[1]["error"]


def test_an_out_under_a_file_is_refused_before_training(tmp_path, capsys):
    f = tmp_path / "s.net"
    f.write_text(NET)
    assert main(["sweep", str(f), "--set", "N=1..2", "--epochs", "1", "--out",
                 str(f / "sub")]) == 1                  # NotADirectoryError, exit 70, before
    assert "cannot be made a directory" in capsys.readouterr().err
