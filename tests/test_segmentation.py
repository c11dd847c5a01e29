"""Learning on real data: per-pixel digit segmentation built from MNIST (skipped without it)."""
from pathlib import Path

import numpy as np
import pytest

from netdsl.runtime.executor import Executor

MNIST10K = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist10k"

SEGMENTER = """net seg_context
INPUT(12x12x1) -> local: [CONV(8) -> RELU] -> POOL2 -> CONV(16) -> RELU -> POOL2   # 3×3×16
  -> CONV(32, 3, pad=valid) -> RELU                                                # 1×1×32
  -> ctx: DECONV(8, 12, stride=1)                    # the digit's context back at 12×12
  -> concat { @ctx | @local } -> CONV(11, 1) -> SOFTMAX_XENT2D
"""


@pytest.mark.slow  # trains for 100 steps (about 6 s of CPU)
def test_per_pixel_digit_segmentation_learns_on_mnist():
    """Each pixel is labelled with its digit's class + 1 where the ink is, 0 elsewhere; after
    100 Adam steps the per-pixel accuracy beats predicting background everywhere."""
    if not MNIST10K.is_dir():
        pytest.skip(f"no MNIST at {MNIST10K}")
    from netdsl.compile.compiler import compile_text
    from netdsl.data.datasets import read_mnist
    from netdsl.train.optim import Adam
    x, y = read_mnist(MNIST10K).test
    # The centre 24×24 (MNIST's digits fit in 20×20) halved to 12×12: a fast test whose pools
    # divide evenly.
    x = x[:, 2:26, 2:26].reshape(-1, 12, 2, 12, 2, 1).mean(axis=(2, 4))
    seg = np.where(x[..., 0] > 0.4, y[:, None, None] + 1, 0)
    train, test = slice(0, 3000), slice(-500, None)
    ex = Executor(compile_text(SEGMENTER, num_classes=11).graph, dtype=np.float32, seed=0)
    opt, rng, losses = Adam(1e-2), np.random.default_rng(0), []
    for _ in range(100):
        idx = rng.integers(0, 3000, 32)
        losses.append(float(ex.forward(x[train][idx], seg[train][idx], training=True).loss))
        opt.step(ex.params, ex.backward())
    pred = ex.forward(x[test], training=False).logits.argmax(axis=-1)
    background = float((seg[test] == 0).mean())
    accuracy = float((pred == seg[test]).mean())
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    assert accuracy > background + 0.02, (accuracy, background)
