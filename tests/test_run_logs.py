"""Run output (issue 18): log.csv and TensorBoard event files equal to metrics.json, also after
an interrupted and resumed run (no row repeated or lost); `netdsl lr-find` on LeNet-5."""
import csv
import json

import numpy as np
import pytest

from conftest import NETS
from netdsl.cli.app import main
from netdsl.train.logs import COLUMNS, RunLog
from test_run_controls import stop_after, trainer

TIMING = ("seconds", "images_per_s", "step_time_s")


def tensorboard_scalars(logdir, tag):
    """(step, value) pairs of ``tag`` read by TensorBoard's own reader."""
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(logdir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow   # ~6 s: LeNet-5, two epochs on the digits
def test_lenet5_run_writes_tensorboard_events_with_the_metrics_losses(tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    out = tmp_path / "run"
    assert main(["run", str(NETS / "lenet5.net"), "--epochs", "2", "--out", str(out),
                 "--log", "tensorboard", "--quiet", "--no-plots"]) == 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    for tag, key in (("train/loss", "loss"), ("held_out/acc", "test_acc"),
                     ("held_out/loss", "test_loss"), ("lr", "lr")):
        got = tensorboard_scalars(out / "tb", tag)
        assert [s for s, _ in got] == [1, 2]
        np.testing.assert_allclose([v for _, v in got], [h[key] for h in history], rtol=1e-6)
    assert len(tensorboard_scalars(out / "tb", "time/step_s")) == 2


@pytest.mark.parametrize("kind", ["csv", "tensorboard"])
def test_a_resumed_runs_log_neither_repeats_nor_loses_rows(tmp_path, kind):
    if kind == "tensorboard":
        pytest.importorskip("tensorboardX")
    settings = dict(epochs=6)
    straight = trainer(tmp_path / "a", **settings)
    straight.run_log = RunLog(tmp_path / "a", kind)
    straight.run()
    first = trainer(tmp_path / "b", **settings)
    first.run_log = RunLog(tmp_path / "b", kind)
    stop_after(first, 10)                        # 3 steps per epoch: 1 into epoch 4
    with pytest.raises(KeyboardInterrupt):
        first.run()
    if kind == "tensorboard":   # as if killed after the log but before a checkpoint: a row
        first.run_log.write(first.history + [dict(first.history[-1], epoch=4)])   # too many
        first.run_log.close()
    second = trainer(tmp_path / "b", **settings)
    second.run_log = RunLog(tmp_path / "b", kind)
    second.resume(str(tmp_path / "b" / "checkpoint.npz"))
    second.run()
    if kind == "csv":
        a, b = read_csv(tmp_path / "a" / "log.csv"), read_csv(tmp_path / "b" / "log.csv")
        assert [r["epoch"] for r in b] == [str(e) for e in range(1, 7)]
        assert list(b[0]) == list(COLUMNS)
        for ra, rb, h in zip(a, b, straight.history):
            assert {k: v for k, v in ra.items() if k not in TIMING} == \
                {k: v for k, v in rb.items() if k not in TIMING}
            assert float(rb["loss"]) == h["loss"] and float(rb["test_acc"]) == h["test_acc"]
    else:
        got = tensorboard_scalars(tmp_path / "b" / "tb", "train/loss")
        assert [s for s, _ in got] == list(range(1, 7))
        np.testing.assert_allclose([v for _, v in got], [h["loss"] for h in straight.history],
                                   rtol=1e-5)


def test_tensorboard_without_tensorboardx_is_refused_before_training(tmp_path, monkeypatch,
                                                                      capsys):
    import sys
    monkeypatch.setitem(sys.modules, "tensorboardX", None)   # import fails
    assert main(["run", str(NETS / "lenet5.net"), "--epochs", "1", "--out", str(tmp_path),
                 "--log", "tensorboard", "--quiet"]) == 1
    assert "needs the tensorboardX package" in capsys.readouterr().err
    assert not (tmp_path / "checkpoint.npz").exists()


def test_lr_find_on_lenet5_suggests_the_files_lr_within_a_factor_3(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "lr.png"
    assert main(["lr-find", str(NETS / "lenet5.net"), "-o", str(plot), "--format",
                 "json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["file_lr"] == 0.05
    assert 0.05 / 3 <= r["suggested"] <= 0.05 * 3, r["suggested"]
    lrs = np.asarray(r["lr"])   # the exponential ramp from 1e-6
    np.testing.assert_allclose(lrs, 1e-6 * (1e6) ** (np.arange(len(lrs)) / 99), rtol=1e-12)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and r["plot"] == str(plot)


def test_the_whole_run_progress_text():
    from netdsl.train.progress import EpochBar, RunProgress, clock
    run = RunProgress(10, 100)
    assert run.text() == "run 10/100 steps, ETA ?"          # no step of this process yet
    bar = EpochBar(2, 5, 40, disable=True, run=run)
    bar.update(20, 0.5, 0.75)
    assert run.done == 11 and "loss=0.5000 acc=75.00% | run 11/100 steps, ETA " in bar.postfix()
    run.held_out = 0.975
    assert run.text().endswith(", held-out 97.50%")
    assert RunProgress(0, 10, "loss").text() == "run 0/10 steps, ETA ?"
    assert (clock(59.6), clock(61), clock(3725)) == ("1:00", "1:01", "1:02:05")


def test_the_control_flags_reach_the_checkpoint(tmp_path, capsys):
    from netdsl.train.checkpoint import load_header
    out = tmp_path / "run"
    assert main(["run", str(NETS / "patterns" / "linear.net"), "--epochs", "1", "--out",
                 str(out), "--quiet", "--no-plots", "--keep", "both", "--early-stop", "7",
                 "--monitor", "loss", "--clip-grad-norm", "2.5", "--label-smoothing", "0.1",
                 "--warmup", "1"]) == 0
    cfg = load_header(str(out / "checkpoint.npz"))["meta"]["config"]
    assert {k: cfg[k] for k in ("keep", "early_stop", "monitor", "clip_grad_norm",
                                "label_smoothing", "warmup")} == \
        {"keep": "both", "early_stop": 7, "monitor": "loss", "clip_grad_norm": 2.5,
         "label_smoothing": 0.1, "warmup": 1}
    assert (out / "best.npz").exists() and (out / "log.csv").exists()   # csv: the default
    assert "best epoch" in capsys.readouterr().out
