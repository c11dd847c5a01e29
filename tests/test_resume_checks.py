"""Exact resume, refusals included: another architecture refused with a diff, changed training
settings and data warned and recorded, hand-edited and fuzzed checkpoints refused cleanly (never
an internal error). Helpers (a tiny net and dataset, the CLI runners) come from
test_run_safety."""
import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import NETS, ROOT
from netdsl.compile.compiler import compile_text
from netdsl.core.errors import NetdslError
from netdsl.train.fingerprint import diff_fingerprints, graph_fingerprint
from test_run_safety import _NO_DATA, netdsl, trainer


# -- resume with another architecture: refused with a diff -----------------------------------

BASE = "INPUT(6x6x1) -> CONV(4, 3) -> RELU -> CONV(8, 3) -> RELU -> FC"


@pytest.mark.parametrize("changed,expected", [
    ("INPUT(6x6x1) -> CONV(4, 3) -> RELU -> CONV(6, 3) -> RELU -> FC", "conv2: filters 8 → 6"),
    ("INPUT(6x6x1) -> CONV(4, 3) -> RELU -> CONV(8, 3) -> TANH -> FC", "relu2 → tanh1"),
    ("INPUT(6x6x1) -> CONV(4, 3, bias=false) -> RELU -> CONV(8, 3) -> RELU -> FC",
     "conv1: bias true → false"),
    ("INPUT(6x6x1) -> CONV(4, 3) -> RELU -> FC", "removed conv2 (conv)"),
])
def test_resume_with_another_architecture_is_refused_with_a_diff(tmp_path, changed, expected):
    trainer(tmp_path, net=BASE, epochs=1).run()
    with pytest.raises(NetdslError) as err:
        trainer(tmp_path, net=changed).resume(str(tmp_path / "checkpoint.npz"))
    assert "different network" in err.value.message
    assert expected in err.value.detail, err.value.detail


def test_fingerprint_is_stable_and_sees_set_values():
    g1 = compile_text("param N = 2\nINPUT(6x6x1) -> [FC(8) -> RELU]*N -> FC", num_classes=3)
    g2 = compile_text("param N = 2\nINPUT(6x6x1) -> [FC(8) -> RELU]*N -> FC", num_classes=3)
    g3 = compile_text("param N = 2\nINPUT(6x6x1) -> [FC(8) -> RELU]*N -> FC", num_classes=3,
                      overrides={"N": 3})
    f1, f2, f3 = (graph_fingerprint(c.graph) for c in (g1, g2, g3))
    assert f1["hash"] == f2["hash"] != f3["hash"]
    diff = diff_fingerprints(f1, f3)
    assert "--set N: 2 → 3" in diff and any(line.startswith("added ") for line in diff)
    assert json.loads(json.dumps(f1)) == f1                      # stored as JSON unchanged


def _chain(pairs: int, wide_at: int = -1) -> dict:
    """A synthetic fingerprint of INPUT -> [FC(4) -> RELU]*pairs, one FC(8) at ``wide_at``."""
    nodes = [{"name": "input1", "op": "input", "attrs": {"shape": "4x4x1"}, "inputs": []}]
    for i in range(1, pairs + 1):
        units = "8" if i == wide_at else "4"
        nodes.append({"name": f"fc{i}", "op": "fc", "attrs": {"units": units},
                      "inputs": [nodes[-1]["name"]]})
        nodes.append({"name": f"relu{i}", "op": "relu", "attrs": {},
                      "inputs": [nodes[-1]["name"]]})
    return {"hash": str(wide_at), "nodes": nodes, "params": {}}


@pytest.mark.parametrize("pairs", [400, 3000])   # difflib, then the linear resync path
def test_diff_of_a_long_repetitive_chain_finds_distant_edits(pairs):
    old, new = _chain(pairs), _chain(pairs, wide_at=pairs - 200)
    new["nodes"].insert(201, {"name": "tanh1", "op": "tanh", "attrs": {},
                              "inputs": ["relu100"]})    # between relu100 and fc101
    new["nodes"][202]["inputs"] = ["tanh1"]
    assert diff_fingerprints(old, new) == ["added tanh1 (tanh)",
                                           "fc101: inputs relu100 → tanh1",
                                           f"fc{pairs - 200}: units 4 → 8"]


def test_other_batch_size_or_seed_on_resume_warns_and_is_recorded(tmp_path):
    trainer(tmp_path, epochs=1).run()
    t = trainer(tmp_path, epochs=2, batch_size=10, seed=7)
    t.resume(str(tmp_path / "checkpoint.npz"))
    t.run()
    assert any("batch_size" in w for w in t.warnings) and any("seed" in w for w in t.warnings)
    changes = json.loads((tmp_path / "metrics.json").read_text())["changes"]
    assert {(c["setting"], c["from"], c["to"], c["epoch"]) for c in changes} == \
        {("batch_size", 8, 10, 1), ("seed", 4, 7, 1)}


def test_other_data_files_under_the_same_spec_warn_and_are_recorded(tmp_path):
    trainer(tmp_path, epochs=1).run()
    t = trainer(tmp_path, epochs=2, n=70)
    t.resume(str(tmp_path / "checkpoint.npz"))
    t.run()
    assert any("data_examples" in w for w in t.warnings)
    changes = json.loads((tmp_path / "metrics.json").read_text())["changes"]
    assert [(c["setting"], c["from"]["train"], c["to"]["train"]) for c in changes] == \
        [("data_examples", 50, 60)]


# -- hand-edited checkpoints --------------------------------------------------------------

def _edit(path, edit_header=None, edit_arrays=None):
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    header = json.loads(str(arrays["__netdsl__"]))
    if edit_header:
        edit_header(header)
    if edit_arrays:
        edit_arrays(arrays)
    arrays["__netdsl__"] = np.array(json.dumps(header))
    np.savez(path, **arrays)


def _set(*keys_value):
    *keys, value = keys_value

    def edit(h):
        for k in keys[:-1]:
            h = h[k]
        h[keys[-1]] = value
    return edit


def _first_param(dtype):
    def edit(arrays):
        key = next(k for k in arrays if k.startswith("param/"))
        arrays[key] = arrays[key].astype(dtype)
    return edit


@pytest.mark.parametrize("edit_header,edit_arrays", [
    (_set("epoch", -1), None), (_set("step", "7"), None), (_set("epoch", 10 ** 30), None),
    (_set("step", 1.5), None), (_set("metrics", [1, 2]), None), (_set("meta", "x"), None),
    (lambda h: h.pop("metrics"), None), (_set("metrics", "history", []), None),
    (_set("metrics", "history", [{"epoch": "one"}]), None),
    (_set("metrics", "history", {"a": 1}), None),
    (_set("meta", "batch_in_epoch", -3), None), (_set("meta", "batch_in_epoch", 10 ** 9), None),
    (_set("meta", "epoch_sums", {"seen": -1}), None),
    (_set("meta", "epoch_sums", [1]), None),
    (_set("meta", "graph", {"nodes": 3}), None), (_set("meta", "config", 5), None),
    (_set("meta", "changes", 7), None), (_set("meta", "graph", "nodes", 0, "inputs", [3]), None),
    (_set("meta", "epoch_sums", "seen", 10 ** 400), None),
    (_set("meta", "batch_in_epoch", 2), None), (_set("meta", "epoch_sums", "seen", 5), None),
    (_set("optimizer_scalars", "optimizer", 3), None), (_set("version", "1"), None),
    (None, _first_param(np.int32)), (None, _first_param(np.complex64)),
    (None, _first_param("U3")),
])
def test_hand_edited_checkpoint_headers_are_netdsl_errors(tmp_path, edit_header, edit_arrays):
    trainer(tmp_path, epochs=1).run()
    path = tmp_path / "checkpoint.npz"
    _edit(path, edit_header, edit_arrays)
    with pytest.raises(NetdslError) as err:
        trainer(tmp_path, epochs=2).resume(str(path))
    assert "checkpoint" in err.value.message


def test_a_checkpoint_from_before_fingerprints_and_sums_still_resumes(tmp_path):
    trainer(tmp_path, epochs=1).run()
    path = tmp_path / "checkpoint.npz"
    _edit(path, lambda h: [h["meta"].pop(k) for k in ("epoch_sums", "graph", "changes")])
    t = trainer(tmp_path, epochs=2)
    t.resume(str(path))
    t.run()
    assert t.epoch == 2 and [row["epoch"] for row in t.history] == [1, 2]


@pytest.mark.slow   # starts netdsl subprocesses
def test_resume_of_another_network_is_refused_before_data_is_loaded(tmp_path):
    mlp = NETS / "patterns" / "mlp.net"
    first = netdsl("run", mlp, "--set", "K=2", "--set", "HIDDEN=16", "--epochs", 1,
                   "--out", tmp_path, "--quiet")
    assert first.returncode == 0, first.stderr
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", _NO_DATA, "run", str(mlp), "--set", "K=1",
                        "--set", "HIDDEN=16", "--epochs", "2", "--out", str(tmp_path), "--resume",
                        str(tmp_path / "checkpoint.npz"), "--quiet"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "DATA LOADED" not in r.stderr and "different network" in r.stderr
    assert "--set K: 2 → 1" in r.stderr and "removed " in r.stderr


# -- a seeded fuzzer over checkpoint headers and arrays -------------------------------------

_ODD_VALUES = [None, -1, 0, 10 ** 30, 1.5, float("nan"), "x", "", True, [], {}, [1, "a"],
               {"seen": 3}]


def _paths(node, prefix=()):
    """Every (container path, key) in a JSON tree."""
    items = node.items() if isinstance(node, dict) else \
        enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield prefix, key
        yield from _paths(value, prefix + (key,))


def _mutate(rng, header: dict, arrays: dict) -> str:
    if rng.random() < 0.25:                       # an array: other dtype, shape, or gone
        key = rng.choice(sorted(k for k in arrays if k != "__netdsl__"))
        how = rng.integers(3)
        if how == 0:
            arrays[key] = arrays[key].astype(rng.choice(["int8", "float16", "<U3"]))
        elif how == 1:
            arrays[key] = np.zeros(arrays[key].size + 1, arrays[key].dtype)
        else:
            del arrays[key]
        return f"array {key} #{how}"
    paths = list(_paths(header))
    prefix, key = paths[rng.integers(len(paths))]
    parent = header
    for step in prefix:
        parent = parent[step]
    if isinstance(parent, dict) and rng.random() < 0.2:
        del parent[key]
        return f"del {prefix + (key,)}"
    parent[key] = copy.deepcopy(_ODD_VALUES[rng.integers(len(_ODD_VALUES))])
    return f"{prefix + (key,)} = {parent[key]!r}"


def test_fuzzed_checkpoints_resume_or_are_refused_never_crash(tmp_path):
    base = tmp_path / "base"
    first = trainer(base, epochs=2)
    real = first.optimizer.step

    def step(*args, **kw):               # stop mid-epoch 2, so the header has epoch sums
        real(*args, **kw)
        if first.step == 10:
            first._stop.hit = True
    first.optimizer.step = step
    with pytest.raises(KeyboardInterrupt):
        first.run()
    with np.load(base / "checkpoint.npz") as f:
        pristine = {k: f[k] for k in f.files}
    rng = np.random.default_rng(20261129)
    refused = 0
    for case in range(60):
        arrays = dict(pristine)
        header = json.loads(str(arrays["__netdsl__"]))
        what = [_mutate(rng, header, arrays) for _ in range(rng.integers(1, 3))]
        arrays["__netdsl__"] = np.array(json.dumps(header))
        path = tmp_path / f"case{case}" / "checkpoint.npz"
        path.parent.mkdir()
        np.savez(path, **arrays)
        t = trainer(path.parent, epochs=3)
        try:
            t.resume(str(path))
            t.run()                        # what resumed must also train to the end
            assert t.epoch == 3, what
        except NetdslError:
            refused += 1
        except Exception as exc:           # pragma: no cover - the failure being hunted
            pytest.fail(f"case {case} {what}: {type(exc).__name__}: {exc}")
    assert 0 < refused < 60                # both outcomes were exercised
