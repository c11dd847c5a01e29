"""Acceptance for regression and multi-label heads: `netdsl run` trains a one-output regression
net (MSE) and a multi-label net (BCE) on small generated npz data, the loss decreases, and
`predict`/`eval` print values and per-label probabilities rather than classes; a net ending in
OUTPUT is refused by `run` with a located error, and float targets under a softmax head too."""
from __future__ import annotations

import json

import numpy as np
import pytest

from netdsl.cli.app import main


def _data(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (240, 4, 4, 1)).astype(np.float32)
    flat = x.reshape(len(x), -1)
    y_reg = (flat @ rng.standard_normal(16)).astype(np.float32) + 0.01   # not whole numbers
    y_ml = ((flat - 0.5) @ rng.standard_normal((16, 3)) > 0).astype(np.int64)
    np.savez(tmp_path / "reg.npz", x=x, y=y_reg)
    np.savez(tmp_path / "ml.npz", x=x, y=y_ml)
    np.savez(tmp_path / "bin.npz", x=x, y=y_ml[:, 0])     # 0/1 ints: one binary label
    np.save(tmp_path / "batch.npy", x[:2])
    return y_reg


def _net(tmp_path, name, data, head, lr):
    path = tmp_path / f"{name}.net"
    path.write_text(f'train {{ data = "npz:{tmp_path / data}" epochs = 4 lr = {lr} '
                    f'batch_size = 24 }}\nINPUT -> FC(16) -> RELU -> {head}\n')
    return str(path)


@pytest.mark.parametrize("name, data, head, lr, metric", [
    ("reg", "reg.npz", "FC(1) -> MSE", 0.01, "mae"),
    ("ml", "ml.npz", "FC(3) -> BCE", 0.1, "exact_match"),
    ("bin", "bin.npz", "FC(1) -> BCE", 0.1, "exact_match")])
def test_run_trains_and_predicts_values(tmp_path, capsys, name, data, head, lr, metric):
    y = _data(tmp_path)
    net, out = _net(tmp_path, name, data, head, lr), tmp_path / "run"
    assert main(["run", net, "--out", str(out), "--quiet", "--no-plots"]) == 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    losses = [row["loss"] for row in history]
    assert losses[-1] < 0.6 * losses[0], losses
    assert all(row["metric"] == metric for row in history)
    capsys.readouterr()
    assert main(["predict", net, "--weights", str(out / "checkpoint.npz"),
                 str(tmp_path / "batch.npy"), "--format", "json"]) == 0
    results = json.loads(capsys.readouterr().out)
    if name == "reg":   # values near the targets (after 4 epochs: within 1), not classes
        got = [r["values"][0] for r in results]
        assert np.allclose(got, y[:2], atol=1.0) and "top" not in results[0]
    else:
        probs = np.array([r["probabilities"] for r in results])
        assert probs.shape == (2, 3 if name == "ml" else 1) and np.all((probs > 0) & (probs < 1))
    assert main(["eval", net, "--weights", str(out / "checkpoint.npz"), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metric"] == metric and report["examples"] == 48
    if name == "reg":   # the same MAE as the run's last evaluation
        assert report["mae"] == pytest.approx(history[-1]["test_acc"], rel=1e-4)


def test_run_refuses_an_inference_only_net(tmp_path, capsys):
    net = tmp_path / "inf.net"
    net.write_text("INPUT(4x4x1) -> FC(3) -> OUTPUT\n")
    assert main(["run", str(net), "--out", str(tmp_path / "r"), "--quiet", "--no-plots"]) != 0
    err = capsys.readouterr().err
    assert "inf.net:1:26: error:" in err and "without a loss" in err


def test_float_targets_under_a_softmax_head_are_refused(tmp_path, capsys):
    _data(tmp_path)
    net = _net(tmp_path, "bad", "ml.npz", "FC(3)", 0.1)
    assert main(["run", net, "--out", str(tmp_path / "r"), "--quiet", "--no-plots"]) != 0
    assert "float or N×k targets" in capsys.readouterr().err
