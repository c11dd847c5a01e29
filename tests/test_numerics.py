"""Accurate reductions (layers/reduce.py) and located numerics (netdsl/runtime/numerics.py)."""
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from netdsl.compile.compiler import compile_text
from netdsl.runtime.executor import Executor
from netdsl.layers.reduce import channel_sums, sum_rows
from netdsl.runtime.numerics import LossWatch, locate_nonfinite, run_step

EPS32 = float(np.finfo(np.float32).eps)


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("m", [1, 2, 3, 7, 8, 9, 127, 1000, 1025, 65536, 65537])
def test_sum_rows_is_pairwise_accurate(m, overwrite):
    rng = np.random.default_rng(m)
    x = (rng.standard_normal((m, 6)) + 3).astype(np.float32)   # a mean: errors accumulate
    ref = x.astype(np.float64).sum(axis=0)
    kept = x.copy()
    got = sum_rows(np, x.copy() if overwrite else x, overwrite=overwrite)
    np.testing.assert_array_equal(x, kept)
    assert got.shape == (6,) and got.dtype == np.float32
    # Pairwise bound: ⌈log₂ m⌉ + 1 roundings of at most ε/2 each, relative to Σ|x|.
    bound = (np.ceil(np.log2(max(m, 2))) + 1) * EPS32 / 2 * np.abs(x).astype(np.float64).sum(0)
    assert np.all(np.abs(got - ref) <= bound)
    if m == 65536:   # what it replaces: NumPy's row-by-row sum breaks that bound here
        assert np.any(np.abs(x.sum(axis=0) - ref) > bound)


def test_sum_rows_3d_and_channel_sums():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 77, 5)).astype(np.float32)
    np.testing.assert_allclose(sum_rows(np, x), x.astype(np.float64).sum(axis=1), rtol=0,
                               atol=1e-5)
    y = rng.standard_normal((4, 6, 7, 3))
    np.testing.assert_allclose(channel_sums(np, y), y.sum(axis=(0, 1, 2)), rtol=1e-13)


def test_sum_rows_gpu_branch_axes():
    """The non-NumPy branch (one float64-accumulating reduction, for cupy) reduces the right
    axis; exercised here through a stand-in module that is not named numpy."""
    import types
    fake = types.SimpleNamespace(__name__="cupy_stand_in", float64=np.float64)
    rng = np.random.default_rng(1)
    for shape, axis in [((1000, 6), 0), ((3, 77, 5), 1)]:
        x = (rng.standard_normal(shape) + 3).astype(np.float32)
        got = sum_rows(fake, x)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, x.astype(np.float64).sum(axis=axis), rtol=1e-7)


def test_run_step_equals_executor():
    """run_step (the walker behind located numerics and the float32 test's reference) computes
    what the executor computes, through fan-out, concat, a residual join and dropout."""
    text = ("param ROUND = floor\nINPUT(8x8x3) -> CONV(8, 3) -> BN -> RELU -> concat { CONV(4, 1) | MAXPOOL(3, "
            "stride=1, pad=1) } -> residual { CONV(12, 3, stride=2) -> RELU } -> DROPOUT "
            "-> GAP -> FC(5)")
    g = compile_text(text, input_shape=(8, 8, 3), num_classes=5).graph
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 8, 8, 3)), rng.integers(0, 5, 4)
    ex = Executor(g, dtype=np.float64, seed=3)
    ex.reseed(7)
    ex.forward(x, y, training=True)
    want = ex.backward()
    ex.reseed(7)
    got = run_step(ex, x, y)
    assert want.keys() == got.keys()
    for n in want:
        for k in want[n]:
            np.testing.assert_allclose(got[n][k], want[n][k], rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# Located numerics

FORWARD_NET = """net blow
INPUT(4x4x1)
  -> FC-8 -> RELU
  -> FC-8
  -> RELU -> FC-3
"""


def _line_col(text, needle, occurrence=1):
    """1-based (line, column) of the n-th occurrence of ``needle`` in ``text``."""
    at = -1
    for _ in range(occurrence):
        at = text.index(needle, at + 1)
    line = text.count("\n", 0, at) + 1
    return line, at - (text.rfind("\n", 0, at) + 1) + 1


def test_forward_overflow_names_the_layer_and_its_line():
    g = compile_text(FORWARD_NET, input_shape=(4, 4, 1), num_classes=3).graph
    ex = Executor(g, seed=0)
    ex.params["fc1"]["weight"][...] = 1          # relu1 outputs 16 everywhere
    ex.params["fc2"]["weight"][...] = 1e38       # 8 · 16 · 1e38 overflows float32
    before = {n: {k: v.copy() for k, v in t.items()} for n, t in ex.params.items()}
    x, y = np.ones((2, 4, 4, 1), np.float32), np.array([0, 1])
    with np.errstate(all="ignore"):
        loss = float(ex.forward(x, y, training=True).loss)
    assert not np.isfinite(loss)
    err = locate_nonfinite(ex, x, y, step=6, loss=loss)
    assert "fc2 (fc + relu)" in err.message and "forward" in err.message and "step 7" in err.message
    assert (err.loc.line, err.loc.col) == _line_col(FORWARD_NET, "FC-8", 2)
    assert "largest |input| = 16" in err.detail and err.hint
    shown = err.render()
    assert shown.splitlines()[0].startswith(f"<text>.net:{err.loc.line}:{err.loc.col}: error:")
    assert "^~~~" in shown
    for n, t in before.items():                  # the diagnosis changed no parameter
        for k, v in t.items():
            np.testing.assert_array_equal(ex.params[n][k], v)


def test_backward_overflow_names_the_layer():
    text = """net back
INPUT(4x4x1) -> FC-8 -> RELU
  -> FC-3
  -> LOSS(1000)
"""
    g = compile_text(text, input_shape=(4, 4, 1), num_classes=3).graph
    ex = Executor(g, seed=0)
    ex.params["fc1"]["weight"][...] = -1         # relu1 outputs 0: the forward stays finite
    w = ex.params["fc2"]["weight"]
    w[...] = -1e36
    w[:, 0] = 1e36                               # dx = 1000 · 2e36 · (p₀ − 1) overflows
    x, y = np.ones((1, 4, 4, 1), np.float32), np.array([0])
    loss = float(ex.forward(x, y, training=True).loss)
    assert np.isclose(loss, 1000 * np.log(3), rtol=1e-5)   # finite: 1000 · ln 3
    err = locate_nonfinite(ex, x, y, step=0, loss=float("nan"))
    assert "fc2 (fc)" in err.message and "backward" in err.message
    assert (err.loc.line, err.loc.col) == _line_col(text, "FC-3")


def test_nonfinite_parameter_names_the_last_such_layer():
    g = compile_text(FORWARD_NET, input_shape=(4, 4, 1), num_classes=3).graph
    ex = Executor(g, seed=0)
    ex.params["fc1"]["weight"][0, 0] = np.nan
    ex.params["fc3"]["bias"][1] = np.inf
    err = locate_nonfinite(ex, np.ones((2, 4, 4, 1)), np.array([0, 1]), step=2, loss=np.nan)
    assert "'bias' of fc3 (fc) inf" in err.message and "previous update" in err.message
    assert "2 non-finite" in err.detail
    assert (err.loc.line, err.loc.col) == _line_col(FORWARD_NET, "FC-3")


def test_nonfinite_data_names_the_input():
    text = "net data\nINPUT(4x4x2) -> CONV(4, 3) -> RELU -> FC-3\n"
    g = compile_text(text, input_shape=(4, 4, 2), num_classes=3).graph
    x = np.ones((3, 4, 4, 2), np.float32)
    x[1, 2, 3, 0] = np.nan
    err = locate_nonfinite(Executor(g, seed=0), x, np.array([0, 1, 2]), step=0, loss=np.nan)
    assert "(input)" in err.message and "its input holds nan" in err.message
    assert "dataset" in err.hint
    assert (err.loc.line, err.loc.col) == _line_col(text, "INPUT")


def test_diagnosis_restores_bn_buffers():
    text = "net bn\nINPUT(4x4x2) -> CONV(4, 3) -> BN -> RELU\n  -> FC-8 -> FC-3\n"
    g = compile_text(text, input_shape=(4, 4, 2), num_classes=3).graph
    ex = Executor(g, seed=0)
    ex.params["fc1"]["weight"][...] = 1e38       # overflows after BN has run
    x = np.random.default_rng(0).standard_normal((3, 4, 4, 2)).astype(np.float32)
    bn = ex.params["batchnorm1"]
    before = {k: bn[k].copy() for k in ("running_mean", "running_var")}
    err = locate_nonfinite(ex, x, np.array([0, 1, 2]), step=0, loss=np.inf)
    assert "fc1 (fc)" in err.message
    assert (err.loc.line, err.loc.col) == _line_col(text, "FC-8")
    for k, v in before.items():
        np.testing.assert_array_equal(bn[k], v)


@pytest.mark.parametrize("losses,warn_at", [
    ([2.3, 1.0, 0.5, 40.0, 60.0, 200.0, 1e9], 5),   # 60 ≥ 100 × 0.5 and above the first loss
    ([2.3, 2.0, 150.0], None),                      # 75× its minimum: not yet
    ([0.001, 0.0005, 0.002, 0.0009], None),         # 4×: noise near zero
    ([0.01, 0.005, 0.6], 3),                        # a resumed run diverging
    ([2.3, float("nan"), 2.0, 250.0], 4),           # NaN is located elsewhere, not counted
])
def test_loss_watch_warns_once(losses, warn_at):
    lines = []
    watch = LossWatch(lines.append)
    steps = []
    for step, loss in enumerate(losses, 1):
        before = len(lines)
        watch.update(loss, step)
        if len(lines) > before:
            steps.append(step)
    assert steps == ([warn_at] if warn_at else [])
    if warn_at:
        assert f"step {warn_at}" in lines[0] and "lower the learning rate" in lines[0]


def test_run_with_huge_lr_reports_located_error(tmp_path):
    net = tmp_path / "diverge.net"
    net.write_text("net diverge\nINPUT -> FC-32 -> RELU\n  -> FC-32 -> RELU\n  -> FC\n"
                   "train {\n  lr = 1e4\n  epochs = 1\n}\n")
    out = subprocess.run([sys.executable, "-m", "netdsl", "run", str(net), "--out",
                          str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT)
    both = out.stdout + out.stderr
    assert out.returncode == 1, both
    assert "Traceback" not in both
    assert f"{net}:" in out.stderr and ": error: the loss became" in out.stderr
    assert "first layer whose output is not finite" in out.stderr or \
        "previous update made parameter" in out.stderr
    assert both.count("warning: the loss grew") == 1


@pytest.mark.gpu
def test_sum_rows_and_located_numerics_on_cupy():
    cupy = pytest.importorskip("cupy")
    x = (np.random.default_rng(0).standard_normal((1025, 6)) + 3).astype(np.float32)
    ref = x.astype(np.float64).sum(axis=0)
    for overwrite in (False, True):
        got = cupy.asnumpy(sum_rows(cupy, cupy.asarray(x), overwrite=overwrite))
        np.testing.assert_allclose(got, ref, rtol=1e-6)
    g = compile_text(FORWARD_NET, input_shape=(4, 4, 1), num_classes=3).graph
    ex = Executor(g, xp=cupy, seed=0)
    ex.params["fc1"]["weight"][...] = 1
    ex.params["fc2"]["weight"][...] = 1e38
    err = locate_nonfinite(ex, cupy.ones((2, 4, 4, 1), dtype=cupy.float32), cupy.asarray([0, 1]),
                           step=0, loss=float("nan"))
    assert "fc2 (fc + relu)" in err.message


def test_loss_overflow_on_finite_logits_names_the_loss():
    g = compile_text("net spread\nINPUT(4x4x1) -> FC-3\n", input_shape=(4, 4, 1),
                     num_classes=3).graph
    ex = Executor(g, seed=0)
    ex.params["fc1"]["bias"][...] = 0
    w = ex.params["fc1"]["weight"]
    w[...] = 0
    w[:, 0], w[:, 1] = 2e37, -2e37               # logits ±3.2e38: finite, their gap is not
    x, y = np.ones((1, 4, 4, 1), np.float32), np.array([1])
    with np.errstate(all="ignore"):
        loss = float(ex.forward(x, y, training=True).loss)
    assert loss == np.inf
    err = locate_nonfinite(ex, x, y, step=0, loss=loss)
    assert "(softmax_xent)" in err.message and "spread" in err.hint
