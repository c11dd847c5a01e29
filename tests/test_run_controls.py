"""Training controls (issue 18): keep = best + early_stop on a run that overfits, label
smoothing and gradient clipping against PyTorch, the lr schedule of a resume that adds epochs,
and exact resuming with every control on."""
import math

import numpy as np
import pytest

from netdsl.compile.compiler import compile_text
from netdsl.data.loader import Dataset
from netdsl.layers import Ctx, get
from netdsl.lang.train_config import TrainConfig
from netdsl.runtime.executor import Executor
from netdsl.train.checkpoint import load_checkpoint
from netdsl.train.controls import best_epoch, clip_gradients, early_stopped, held_out
from netdsl.train.loop import Trainer

NET = "INPUT(8) -> FC(64) -> RELU -> FC(64) -> RELU -> FC"


def noisy(n_train=30):
    """3 classes, weak signal, 30% of the training labels wrong: a 64-64 MLP memorises them."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, n_train + 90)
    x = (rng.standard_normal((len(y), 8)) + 0.6 * np.eye(3, 8)[y]).astype(np.float32)
    ytr = y[:n_train].copy()
    flip = rng.random(n_train) < 0.3
    ytr[flip] = rng.integers(0, 3, flip.sum())
    return Dataset("toy", x[:n_train], ytr, x[n_train:], y[n_train:], 3, (8,), "held-out")


def trainer(out_dir, lines=None, n_train=30, **settings):
    cfg = TrainConfig(**{"batch_size": 10, "optimizer": "adam", "lr": 0.01, **settings})
    g = compile_text(NET, num_classes=3).graph
    return Trainer(Executor(g, seed=cfg.seed), cfg, noisy(n_train),
                   out_dir=str(out_dir), show_progress=False,
                   log=(lines.append if lines is not None else lambda *a: None))


def stop_after(t, steps):
    real = t.optimizer.step

    def step(*args, **kw):
        real(*args, **kw)
        if t.step + 1 >= steps:
            t._stop.hit = True           # what Ctrl-C does
    t.optimizer.step = step


def test_keep_best_and_early_stop_on_a_run_that_overfits(tmp_path):
    lines = []
    t = trainer(tmp_path, lines, epochs=200, keep="best", early_stop=5)
    result = t.run()
    hist = t.history
    accs = [h["test_acc"] for h in hist]
    best = int(np.argmax(accs)) + 1                 # first epoch of the highest accuracy
    assert len(hist) < 200                          # stopped early ...
    assert hist[-1]["epoch"] == best + 5            # ... 5 epochs after the best one
    assert hist[-1]["train_acc"] > accs[best - 1] + 0.3   # it overfits: train >> held-out
    assert hist[-1]["test_loss"] > hist[best - 1]["test_loss"]
    # The weights the run ends with are the best epoch's: their accuracy, recomputed by
    # predict, is the best one, and best.npz holds that epoch (checkpoint.npz the last).
    x, y = t.data.x_test, t.data.y_test
    assert np.mean(t.ex.predict(x) == y) == accs[best - 1] == max(accs) == result["accuracy"]
    assert result["kept_epoch"] == best
    kept = load_checkpoint(str(tmp_path / "best.npz"))
    assert kept["epoch"] == best and load_checkpoint(str(tmp_path / "checkpoint.npz"))["epoch"] \
        == hist[-1]["epoch"]
    for node, tensors in t.ex.params.items():
        for name, value in tensors.items():
            np.testing.assert_array_equal(kept["params"][node][name], value)
    assert any(f"the best was epoch {best}" in line for line in lines)


def test_early_stop_on_the_held_out_loss(tmp_path):
    t = trainer(tmp_path, epochs=200, early_stop=3, monitor="loss")
    t.run()
    losses = [h["test_loss"] for h in t.history]
    assert t.history[-1]["epoch"] == int(np.argmin(losses)) + 1 + 3


@pytest.mark.parametrize("mid_epoch", [1, 0])   # 3 steps per epoch: 1 into one, or at its end
def test_every_control_resumes_exactly(tmp_path, mid_epoch):
    settings = dict(epochs=40, keep="both", early_stop=4, clip_grad_norm=0.5,
                    label_smoothing=0.1, warmup=2, schedule="cosine", optimizer="sgd", lr=0.1)
    straight = trainer(tmp_path / "a", **settings)
    straight.run()
    interrupt_at = 3 * (len(straight.history) // 2) + mid_epoch
    first = trainer(tmp_path / "b", **settings)
    stop_after(first, interrupt_at)
    with pytest.raises(KeyboardInterrupt):
        first.run()
    second = trainer(tmp_path / "b", **settings)
    second.resume(str(tmp_path / "b" / "checkpoint.npz"))
    second.run()
    assert len(second.history) == len(straight.history) < 40       # the same early stop
    for a, b in zip(straight.history, second.history):
        assert {k: v for k, v in a.items() if k not in ("seconds", "images_per_s",
                                                         "step_time_s")} == \
            pytest.approx({k: v for k, v in b.items() if k not in ("seconds", "images_per_s",
                                                                   "step_time_s")}, rel=1e-5)
    for node, tensors in straight.ex.params.items():
        for name, value in tensors.items():
            np.testing.assert_allclose(second.ex.params[node][name], value, rtol=1e-5,
                                       atol=1e-6)


def test_label_smoothing_matches_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((6, 5)), rng.integers(0, 5, 6)
    spec, attrs = get("softmax_xent"), {"weight": 1.0, "smoothing": 0.1}
    ctx = Ctx(xp=np, training=True, labels=labels, dtype=np.float64)
    loss, cache = spec.forward(ctx, attrs, {}, [logits.copy()])
    (grad,), _ = spec.backward(ctx, attrs, {}, cache, 1.0)
    t = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(t, torch.tensor(labels), label_smoothing=0.1)
    ref.backward()
    assert float(loss) == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_label_smoothing_reaches_the_training_loss(tmp_path):
    """The same first batch: the smoothed loss is the unsmoothed one plus e·(mean −log p − it)."""
    plain, smooth = (trainer(tmp_path / k, epochs=1, label_smoothing=e)
                     for k, e in (("a", 0.0), ("b", 0.2)))
    x, y = plain.data.x_train[:10], plain.data.y_train[:10]
    lp = float(plain.ex.forward(x, y, training=True).loss)
    ls = float(smooth.ex.forward(x, y, training=True).loss)
    z = plain.ex.forward(x, y, training=True).logits.astype(np.float64)
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    uniform = -logp.mean(1).mean()
    assert ls == pytest.approx(0.8 * lp + 0.2 * uniform, rel=1e-5)


def test_clip_gradients_matches_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    grads = {"fc1": {"weight": rng.standard_normal((4, 3)), "bias": rng.standard_normal(3)},
             "fc2": {"weight": rng.standard_normal((3, 2)), "bias": None}}
    tensors = [torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64))
               for t in grads.values() for g in t.values() if g is not None]
    for p, g in zip(tensors, [g for t in grads.values() for g in t.values() if g is not None]):
        p.grad = torch.tensor(g.copy())
    ref_norm = torch.nn.utils.clip_grad_norm_(tensors, 1.0).item()
    norm = clip_gradients(grads, 1.0)
    assert norm == pytest.approx(ref_norm, rel=1e-12) and norm > 1
    for p, g in zip(tensors, [g for t in grads.values() for g in t.values() if g is not None]):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-12)
    before = {k: v.copy() for k, v in grads["fc1"].items()}
    clip_gradients(grads, 100.0)                    # under the limit: untouched
    for k, v in before.items():
        np.testing.assert_array_equal(grads["fc1"][k], v)


# -- resume with more epochs: the schedule -------------------------------------------------

def lrs_of(t):
    """Record the lr of every optimizer step ``t`` takes."""
    seen, real = [], t.optimizer.step

    def step(params, grads, lr):
        seen.append(lr)
        real(params, grads, lr=lr)
    t.optimizer.step = step
    return seen


def cosine(lr, i, n):
    return lr * 0.5 * (1 + math.cos(math.pi * i / n))


@pytest.mark.parametrize("restart", [False, True])
def test_resume_with_more_epochs_never_raises_the_lr_unless_restarted(tmp_path, restart):
    # 16 examples at batch 8: 2 steps per epoch; 40 epochs = 80 steps of cosine from 0.05
    settings = dict(epochs=40, batch_size=8, optimizer="sgd", lr=0.05, schedule="cosine",
                    n_train=16)
    first = trainer(tmp_path, **settings)
    before = lrs_of(first)
    first.run()
    np.testing.assert_allclose(before, [cosine(0.05, i, 80) for i in range(80)], rtol=1e-12)

    lines = []
    more = trainer(tmp_path, lines, **dict(settings, epochs=50))
    after = lrs_of(more)
    more.resume(str(tmp_path / "checkpoint.npz"), schedule_restart=restart)
    more.run()
    assert len(after) == 20
    said = [line for line in lines if line.startswith("schedule:")]
    assert len(said) == 1 and "10 epoch(s) added after the planned 40" in said[0]
    if restart:   # a new cosine cycle over the 10 added epochs (20 steps)
        assert "--schedule-restart: a new cosine cycle" in said[0]
        np.testing.assert_allclose(after, [cosine(0.05, i, 20) for i in range(20)], rtol=1e-12)
    else:         # the final lr, held: the whole run's lr never increases
        assert "stays at its final" in said[0]
        np.testing.assert_allclose(after, [cosine(0.05, 79, 80)] * 20, rtol=1e-12)
        run = before + after
        assert all(b <= a for a, b in zip(run, run[1:]))


def test_a_restarted_schedule_is_kept_by_later_resumes(tmp_path):
    settings = dict(epochs=10, batch_size=8, optimizer="sgd", lr=0.05, schedule="cosine",
                    n_train=16)
    trainer(tmp_path / "a", **settings).run()
    straight = trainer(tmp_path / "a", **dict(settings, epochs=14))
    want = lrs_of(straight)
    straight.resume(str(tmp_path / "a" / "checkpoint.npz"), schedule_restart=True)
    straight.run()

    trainer(tmp_path / "b", **settings).run()
    part = trainer(tmp_path / "b", **dict(settings, epochs=14))
    got = lrs_of(part)
    part.resume(str(tmp_path / "b" / "checkpoint.npz"), schedule_restart=True)
    stop_after(part, 23)                                 # 3 steps into the new cycle
    with pytest.raises(KeyboardInterrupt):
        part.run()
    rest = trainer(tmp_path / "b", **dict(settings, epochs=14))
    got2 = lrs_of(rest)
    rest.resume(str(tmp_path / "b" / "checkpoint.npz"))   # no flag: the saved plan holds
    rest.run()
    assert got + got2 == want


def test_a_fresh_run_removes_another_runs_best_npz_at_its_first_save(tmp_path):
    trainer(tmp_path, epochs=2, keep="best").run()
    assert (tmp_path / "best.npz").exists()
    trainer(tmp_path, epochs=1).run()                   # keep = last, as with --overwrite
    assert not (tmp_path / "best.npz").exists()


def test_a_regression_head_keeps_and_stops_on_the_lowest_error():
    # A regression head's test_acc is its mean absolute error (metric "mae"): the best epoch
    # is the one with the smallest error, and early stopping counts from it.
    history = [{"epoch": e, "test_acc": mae, "metric": "mae"}
               for e, mae in enumerate([0.9, 0.4, 0.5, 0.6, 0.7], start=1)]
    assert best_epoch(history, "acc") == 2
    assert early_stopped(history, "acc", 3) and not early_stopped(history, "acc", 4)
    classes = [dict(r, metric=None) for r in history]
    for r in classes:
        del r["metric"]
    assert best_epoch(classes, "acc") == 1


def test_held_out_scores_a_regression_head_by_its_error():
    g = compile_text("INPUT(3) -> FC(1) -> MSE", name="reg").graph
    ex = Executor(g, seed=0)
    x = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    pred = ex.for_inference().forward(x).logits.reshape(-1)
    y = (pred + np.linspace(-1, 1, 10)).astype(np.float32).reshape(10, 1)
    got = held_out(ex, x, y, batch_size=4)
    # independent: the mean absolute error and the mean squared error written out here
    assert got["test_acc"] == pytest.approx(np.mean(np.abs(np.linspace(-1, 1, 10))), rel=1e-5)
    assert got["test_loss"] == pytest.approx(np.mean(np.linspace(-1, 1, 10) ** 2), rel=1e-4)
