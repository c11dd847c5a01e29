"""Labels are checked on the host: once for a dataset (Trainer), or per step only when they are
NumPy (the loss; Executor.check_labels before an upload). A device check would wait for the GPU."""
import numpy as np
import pytest

from netdsl.compile.compiler import compile_text
from netdsl.core.errors import NetdslError
from netdsl.runtime.executor import Executor
from netdsl.lang.train_config import TrainConfig
from netdsl.data.loader import Dataset
from netdsl.train.loop import Trainer

NET = "INPUT(4x4x1) -> CONV(2, 3) -> RELU -> FC"


def executor(classes=3):
    return Executor(compile_text(NET, num_classes=classes).graph, seed=0)


def toy(y_train, y_test):
    x = np.random.default_rng(0).standard_normal((len(y_train) + len(y_test), 4, 4, 1))
    x = x.astype(np.float32)
    return Dataset("toy", x[:len(y_train)], np.asarray(y_train), x[len(y_train):],
                   np.asarray(y_test), 3, (4, 4, 1), "held-out")


@pytest.mark.parametrize("y_train,y_test,bad", [
    ([0, 1, 2, 3, 1, 0], [0, 1], "label 3 is outside 0..2"),      # FC has 3 units
    ([0, 1, 2, 1, 1, 0], [2, -1], "label -1 is outside 0..2"),     # the evaluation split too
])
def test_trainer_checks_the_dataset_labels_once_before_any_step(y_train, y_test, bad):
    ex = executor()
    before = {n: {k: v.copy() for k, v in t.items()} for n, t in ex.params.items()}
    with pytest.raises(NetdslError, match=bad):
        Trainer(ex, TrainConfig(epochs=1, batch_size=2), toy(y_train, y_test), out_dir=None,
                show_progress=False, log=lambda *a: None)
    for n, t in before.items():   # refused before training: no step changed a weight
        for k, v in t.items():
            np.testing.assert_array_equal(ex.params[n][k], v)


def test_trainer_accepts_labels_in_range_and_trains():
    t = Trainer(executor(), TrainConfig(epochs=1, batch_size=2), toy([0, 1, 2, 1, 2, 0], [2, 0]),
                out_dir=None, show_progress=False, log=lambda *a: None)
    row = t.train_epoch()
    assert t.step == 3 and np.isfinite(row["loss"])


def test_executor_check_labels_uses_every_softmax_head_width():
    ex = executor(classes=4)
    ex.check_labels(np.array([0, 3]))
    with pytest.raises(NetdslError, match="label 4 is outside 0..3 for 4 logits"):
        ex.check_labels(np.array([4, 0]))
    ex.check_labels(np.zeros(0, dtype=np.int64))   # an empty batch has nothing to check


def test_loss_still_checks_numpy_labels_in_forward():
    ex = executor()
    x = np.zeros((2, 4, 4, 1), np.float32)
    with pytest.raises(NetdslError, match="label 5 is outside 0..2"):
        ex.forward(x, np.array([0, 5]), training=True)
