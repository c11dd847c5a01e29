"""Hand-edited checkpoint meta records through every command that reads a checkpoint:
each field (and the nested ones readers size things from) replaced by values of every other
JSON type and some extremes. Each case must end as success or a clean user error (exit 0 or
1): never exit 70, never a traceback. ~1,250 cases in ~25 s."""
from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest

from netdsl.cli.app import main
from netdsl.train.checkpoint import load_checkpoint, save_checkpoint

from conftest import NETS, ROOT

LENET = str(NETS / "lenet5.net")
IMAGE = str(ROOT / "docs" / "examples" / "digit3.png")
BAD_VALUES = [None, 7, -1, 1e308, "x", [], {}, [1, 2], {"a": 1}, True, "∞" * 3]
NESTED = ["preprocess.native_shape", "preprocess.mean", "preprocess.std",
          "preprocess.input_shape", "config.lr", "config.batch_size", "data.train",
          "graph.nodes", "epoch_sums.seen"]


def _commands(ckpt, out):
    return [["predict", LENET, "--weights", ckpt, IMAGE],
            ["eval", LENET, "--weights", ckpt, "--data", "digits"],
            ["export", LENET, "--weights", ckpt, "-o", str(out / "x.onnx")],
            ["run", LENET, "--resume", ckpt, "--epochs", "1", "--out", str(out / "run"),
             "--quiet"],
            ["convert", LENET, "--fc-to-conv", "--weights", ckpt, "-o", str(out / "c.net")],
            ["show", LENET, "--weights", ckpt, "--filters", "--out", str(out / "f.png")]]


@pytest.mark.slow   # ~1,250 in-process commands
def test_hand_edited_meta_records_are_user_errors(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("matplotlib")
    run = tmp_path / "trained"
    assert main(["run", LENET, "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    ck = load_checkpoint(str(run / "checkpoint.npz"))
    out = tmp_path / "out"
    out.mkdir()
    ckpt = str(out / "edited.npz")
    cases, failures = 0, []
    for key in list(ck["meta"]) + NESTED:
        for bad in BAD_VALUES:
            meta = json.loads(json.dumps(ck["meta"]))
            outer, _, inner = key.partition(".")
            if inner:
                if not isinstance(meta.get(outer), dict):
                    continue
                meta[outer][inner] = bad
            else:
                meta[key] = bad
            save_checkpoint(ckpt, params=ck["params"], optimizer_state=ck["optimizer_state"],
                            epoch=ck["epoch"], step=ck["step"], metrics=ck["metrics"],
                            meta=meta)
            for argv in _commands(ckpt, out):
                shutil.rmtree(out / "run", ignore_errors=True)
                err = io.StringIO()
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                    status = main(argv)
                cases += 1
                if status not in (0, 1) or "Traceback" in err.getvalue():
                    failures.append((key, bad, argv[0], status, err.getvalue()[-200:]))
    assert cases >= 1000
    assert failures == [], failures[:5]
