"""End-to-end: the CLI on the shipped nets, training runs, checkpoints and resuming."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import NETS, ROOT

pytestmark = pytest.mark.slow   # every test here starts `python -m netdsl` processes

PATTERNS = sorted((NETS / "patterns").glob("*.net"))


def netdsl(*args, timeout=300, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "netdsl", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout, env=env, **kw)


def test_five_cs231n_pattern_programs_are_shipped():
    bodies = sorted(" ".join(l for l in p.read_text().splitlines() if l and not l.startswith(("#", "param")))
                    for p in PATTERNS)
    assert bodies == sorted([
        "INPUT -> FC", "INPUT -> [FC -> RELU]*K -> FC", "INPUT -> CONV -> RELU -> FC",
        "INPUT -> [CONV -> RELU -> POOL]*2 -> FC -> RELU -> FC",
        "INPUT -> [[CONV -> RELU]*2 -> POOL]*3 -> [FC -> RELU]*2 -> FC"])


@pytest.mark.parametrize("path", PATTERNS, ids=lambda p: p.stem)
def test_pattern_program_trains_one_epoch_on_digits(path, tmp_path):
    r = netdsl("run", path, "--epochs", 1, "--out", tmp_path, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "final held-out last 359 accuracy:" in r.stdout
    acc = float(r.stdout.split("accuracy:")[1].split("%")[0])
    assert acc > 15.0, r.stdout      # one epoch (23 steps) already beats chance (10%)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epochs_done"] == 1 and len(metrics["history"]) == 1
    assert (tmp_path / "checkpoint.npz").exists()


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' binary not installed")
@pytest.mark.parametrize("path", sorted(NETS.rglob("*.net")), ids=lambda p: p.stem)
def test_draw_renders_every_shipped_net_to_svg(path, tmp_path):
    out = tmp_path / f"{path.stem}.svg"
    r = netdsl("draw", path, "-o", out)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "<svg" in text and "</svg>" in text
    assert "INPUT" in text


def test_draw_fold_shows_repeats_once(tmp_path):
    full, folded = tmp_path / "full.dot", tmp_path / "fold.dot"
    assert netdsl("draw", NETS / "vgg16.net", "-o", full).returncode == 0
    assert netdsl("draw", NETS / "vgg16.net", "-o", folded, "--fold").returncode == 0
    assert folded.read_text().count("CONV") < full.read_text().count("CONV")
    assert "× 3" in folded.read_text()


def test_check_reports_ok_and_counts():
    r = netdsl("check", NETS / "lenet5.net")
    assert r.returncode == 0 and "61,706 parameters" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["run", "nets/lenet5.net", "--data", "nope:x"], "unknown"),
    (["run", "nets/lenet5.net", "--data", "mnist:/nonexistent/dir"], "/nonexistent/dir"),
    (["summary", "nets/lenet5.net", "--input", "32x32x3x2"], "HxWxC"),
    (["summary", "nets/cs231n.net", "--set", "Q=3"], "Q"),
    (["summary", "nets/cs231n.net", "--set", "N"], "NAME=VALUE"),
    (["run", "nets/lenet5.net", "--lr", "-1"], "lr"),
    (["run", "nets/lenet5.net", "--device", "gpu"] if not shutil.which("nvidia-smi") else
     ["check", "missing.net"], "" ),
    (["check", "missing.net"], "missing.net"),
    (["draw", "nets/lenet5.net", "-o", "x.bmp"], ".bmp"),
    (["run", "nets/lenet5.net", "--resume", "nowhere.npz"], "nowhere.npz"),
])
def test_bad_cli_arguments_give_errors_not_tracebacks(args, needle, tmp_path):
    r = netdsl(*args, "--out", tmp_path) if args[0] == "run" else netdsl(*args)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout
    assert "error" in r.stderr and needle in r.stderr


def test_resume_continues_and_matches_an_uninterrupted_run(tmp_path):
    # A constant schedule: a cosine one depends on --epochs, so runs of 1 and 2 epochs differ.
    common = ["--set", "N=1", "--set", "M=1", "--set", "K=1", "--set", "schedule=constant",
              "--quiet", "--seed", 3]
    a, b = tmp_path / "a", tmp_path / "b"
    assert netdsl("run", NETS / "cs231n.net", "--epochs", 2, "--out", a, *common).returncode == 0
    assert netdsl("run", NETS / "cs231n.net", "--epochs", 1, "--out", b, *common).returncode == 0
    r = netdsl("run", NETS / "cs231n.net", "--epochs", 2, "--out", b, "--resume",
               b / "checkpoint.npz", *common)
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout
    ha = json.loads((a / "metrics.json").read_text())["history"]
    hb = json.loads((b / "metrics.json").read_text())["history"]
    assert len(hb) == 2
    assert hb[-1]["loss"] == pytest.approx(ha[-1]["loss"], rel=1e-5)
    assert hb[-1]["test_acc"] == pytest.approx(ha[-1]["test_acc"])
    wa, wb = np.load(a / "checkpoint.npz"), np.load(b / "checkpoint.npz")
    for key in wa.files:
        if key.startswith("param/"):
            np.testing.assert_allclose(wa[key], wb[key], rtol=1e-5, atol=1e-6)


def test_resume_with_a_different_net_is_refused(tmp_path):
    assert netdsl("run", NETS / "patterns" / "linear.net", "--epochs", 1, "--out", tmp_path,
                  "--quiet").returncode == 0
    r = netdsl("run", NETS / "patterns" / "one_conv.net", "--epochs", 1, "--out", tmp_path / "x",
               "--resume", tmp_path / "checkpoint.npz", "--quiet")
    assert r.returncode != 0 and "checkpoint" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "netdsl", "run", str(NETS / "cs231n.net"),
                             "--epochs", "50", "--out", str(tmp_path), "--quiet"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True,
                            # A shell's background jobs start with SIGINT ignored; a terminal's
                            # Ctrl-C reaches a foreground process with the default action.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (tmp_path / "checkpoint.npz").exists() and time.time() < deadline:
        time.sleep(0.2)                      # wait for the first epoch's checkpoint
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert "interrupted" in (out + err) and "checkpoint saved" in (out + err)
    meta = json.loads((tmp_path / "metrics.json").read_text())
    assert meta["interrupted"] is True


def test_run_with_gpu_absent_and_auto_device_uses_cpu(tmp_path):
    r = netdsl("run", NETS / "patterns" / "linear.net", "--epochs", 1, "--device", "auto",
               "--out", tmp_path, "--quiet")
    assert r.returncode == 0
    assert ("CPU" in r.stdout) or ("GPU" in r.stdout)


def test_npz_dataset_with_test_split_absent_uses_holdout(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    x = (rng.random((120, 6, 6)) * 0.2 + y[:, None, None] * 0.4).astype(np.float32)
    np.savez(tmp_path / "toy.npz", x=x, y=y)
    r = netdsl("run", NETS / "patterns" / "linear.net", "--data", f"npz:{tmp_path / 'toy.npz'}",
               "--holdout", 20, "--epochs", 5, "--out", tmp_path / "o", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "held-out last 20" in r.stdout
    assert float(r.stdout.split("accuracy:")[1].split("%")[0]) >= 90.0


def test_classifier_narrower_than_the_classes_is_refused_before_training(tmp_path):
    net = tmp_path / "narrow.net"
    net.write_text("# five units for ten digits\nINPUT -> FC(5)\n")
    r = netdsl("run", net, "--epochs", 1, "--out", tmp_path / "o", "--quiet")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"{net}:2:10" in r.stderr and "10 classes" in r.stderr
    assert not (tmp_path / "o" / "checkpoint.npz").exists()


def test_bench_runs_and_reports_json():
    """The benchmark itself runs (speed targets live in docs/performance.md, not here)."""
    r = netdsl("bench", "--steps", 2, "--batch", 8)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["batch"] == 8 and result["netdsl_ms"] > 0
    if "torch_ms" in result:
        assert result["ratio"] == pytest.approx(result["torch_ms"] / result["netdsl_ms"])
