"""Zoo nets learning on real data, fast: a cut-down All-CNN-C on sklearn's digits, and
segnet_mini on per-pixel digit labels built from MNIST (sklearn's digits when MNIST is absent).

The bars are the data's own: accuracy above chance (10%) and per-pixel accuracy above the
all-background rate, with the loss falling. Both go through the compiler and the Executor.
"""
import numpy as np
import pytest

from conftest import MNIST_DIR, NETS
from netdsl.compile.compiler import compile_file
from netdsl.runtime.executor import Executor
from netdsl.train.optim import Adam

pytestmark = pytest.mark.slow   # trains (10–40 s each on the shared machine)


def _digits():
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    return (d.images / 16.0).astype(np.float32)[..., None], d.target


def _train(ex, x, y, steps, batch, lr, seed=0):
    opt, rng, losses = Adam(lr), np.random.default_rng(seed), []
    for _ in range(steps):
        idx = rng.integers(0, len(x), batch)
        losses.append(float(ex.forward(x[idx], y[idx], training=True).loss))
        opt.step(ex.params, ex.backward())
    return losses


def test_allcnn_c_cut_down_learns_digits():
    """All-CNN-C as written (strided convs, 1×1 conv to the classes, global average) at widths
    8/16 on 12×12 digits (8×8 with a 2-pixel border, three channels): 12 → 6 → 3 → 1, without
    its dropout (the paper trains 350 epochs; this test has 100 steps)."""
    images, labels = _digits()
    x = np.repeat(np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0))), 3, axis=-1)
    g = compile_file(str(NETS / "allcnn_c.net"), need_data=False,
                     overrides={"S": 12, "A": 8, "B": 16, "D_IN": 0.0, "D": 0.0}).graph
    ex = Executor(g, dtype=np.float32, seed=0)
    losses = _train(ex, x[:1400], labels[:1400], steps=100, batch=32, lr=3e-3)
    accuracy = float((ex.predict(x[1400:]) == labels[1400:]).mean())
    assert np.mean(losses[-15:]) < 0.75 * np.mean(losses[:5]), (losses[:5], losses[-15:])
    assert accuracy > 0.3, accuracy                       # chance is 0.1


def _segmentation_data():
    """Images and per-pixel labels: digit class + 1 where the ink is (> 0.4), 0 elsewhere."""
    if MNIST_DIR.is_dir():
        from netdsl.data.datasets import read_mnist
        x, y = read_mnist(MNIST_DIR).test
        # The centre 24×24 (MNIST's digits fit in 20×20) halved to 12×12: fast, and the pools
        # (12 → 6 → 3) see the whole digit.
        x = x[:3000, 2:26, 2:26].reshape(-1, 12, 2, 12, 2, 1).mean(axis=(2, 4))
        y, shape = y[:3000], (12, 12, 1)
    else:
        x, y = _digits()
        shape = (8, 8, 1)          # segnet_mini's two 2×2 pools divide 8 too
    seg = np.where(x[..., 0] > 0.4, y[:, None, None] + 1, 0)
    return x.astype(np.float32), seg, shape


def test_segnet_mini_learns_per_pixel_digits():
    x, seg, shape = _segmentation_data()
    g = compile_file(str(NETS / "segnet_mini.net"), need_data=False, num_classes=11,
                     input_override=shape).graph
    ex = Executor(g, dtype=np.float32, seed=0)
    n_test = len(x) // 6
    train, test = slice(0, len(x) - n_test), slice(len(x) - n_test, None)
    losses = _train(ex, x[train], seg[train], steps=100, batch=32, lr=1e-2)
    pred = ex.forward(x[test], training=False).logits.argmax(axis=-1)
    background = float((seg[test] == 0).mean())
    accuracy = float((pred == seg[test]).mean())
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5]), (losses[:5], losses[-10:])
    assert accuracy > background + 0.015, (accuracy, background)
