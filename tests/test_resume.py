"""Resuming is exact: an interrupted-and-resumed run ends with the same weights as an
uninterrupted one, with dropout, augmentation and batch norm, mid-epoch included."""
import numpy as np
import pytest

from netdsl.compile.compiler import compile_text
from netdsl.core.errors import NetdslError
from netdsl.runtime.executor import Executor
from netdsl.lang.train_config import TrainConfig
from netdsl.data.loader import Dataset
from netdsl.train.loop import Trainer, batch_bounds

NET = "INPUT(6x6x1) -> CONV(4, 3) -> BN -> RELU -> DROPOUT(0.3) -> POOL -> FC(12) -> DROPOUT(0.5) -> FC"


def dataset():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    x = (rng.standard_normal((60, 6, 6, 1)) + y[:, None, None, None]).astype(np.float32)
    return Dataset("toy", x[:50], y[:50], x[50:], y[50:], 3, (6, 6, 1), "held-out last 10")


def trainer(out_dir, epochs=3):
    cfg = TrainConfig(epochs=epochs, batch_size=8, lr=0.05, augment="affine+crop", seed=4,
                      schedule="cosine")
    g = compile_text(NET, num_classes=3).graph
    return Trainer(Executor(g, seed=cfg.seed), cfg, dataset(), out_dir=str(out_dir),
                   show_progress=False, log=lambda *a: None)


def stop_after(t, steps):
    real = t.optimizer.step

    def step(*args, **kw):
        real(*args, **kw)
        if t.step + 1 >= steps:          # t.step counts steps before this one finished
            t._stop.hit = True           # what Ctrl-C does
    t.optimizer.step = step


@pytest.mark.parametrize("interrupt_at", [7, 10, 20])   # 7 batches/epoch: boundary and mid-epoch
def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, interrupt_at):
    straight = trainer(tmp_path / "a")
    straight.run()

    first = trainer(tmp_path / "b")
    stop_after(first, interrupt_at)
    with pytest.raises(KeyboardInterrupt):
        first.run()
    assert first.step == interrupt_at                    # stopped between steps, not inside one

    second = trainer(tmp_path / "b")
    second.resume(str(tmp_path / "b" / "checkpoint.npz"))
    assert (second.epoch, second.batch) == divmod(interrupt_at, 7)
    result = second.run()
    assert second.step == straight.step == 21
    for node, tensors in straight.ex.params.items():
        for name, value in tensors.items():
            np.testing.assert_allclose(second.ex.params[node][name], value, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{node}/{name}")
    assert result["accuracy"] == straight.history[-1]["test_acc"]


def test_a_last_batch_of_one_is_merged_into_the_previous():
    assert batch_bounds(17, 8) == [(0, 8), (8, 17)]
    assert batch_bounds(18, 8) == [(0, 8), (8, 16), (16, 18)]
    assert batch_bounds(1, 8) == [(0, 1)]
    assert batch_bounds(16, 8) == [(0, 8), (8, 16)]


@pytest.mark.parametrize("setting", [{"seed": -1}, {"lr": float("inf")}, {"momentum": float("nan")},
                                     {"weight_decay": float("inf")}])
def test_bad_numeric_settings_are_refused(setting):
    with pytest.raises(NetdslError, match=list(setting)[0]):
        TrainConfig(**setting)


@pytest.mark.parametrize("field,value", [("meta", None), ("step", "x"), ("metrics", 3)])
def test_damaged_checkpoint_header_is_a_netdsl_error(tmp_path, monkeypatch, field, value):
    trainer(tmp_path / "a", epochs=1).run()
    import netdsl.train.loop as loop
    real = loop.load_checkpoint

    def damaged(path):
        ck = real(path)
        ck[field] = value
        return ck
    monkeypatch.setattr(loop, "load_checkpoint", damaged)
    with pytest.raises(NetdslError, match="damaged"):
        trainer(tmp_path / "a").resume(str(tmp_path / "a" / "checkpoint.npz"))
