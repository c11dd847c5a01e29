"""What `run` reports besides the loss, by the kind of the net's main head.

* ``classes`` (softmax_xent, svm_loss, softmax_xent2d): accuracy, the fraction of examples
  whose highest logit is their label.
* ``labels`` (bce, multi-label or binary): exact-match accuracy, the fraction of examples whose
  every output is on the right side of 0 (probability 0.5) — the strict measure: a net right on
  9 of 10 labels of an example scores 0 for it.
* ``values`` (mse, l1, smooth_l1: regression): the mean absolute error over every output,
  lower is better.

The epoch records keep the numbers in ``train_acc``/``test_acc`` and name them in ``metric``
(written only for the latter two kinds, so classifier records are as before).
"""
from __future__ import annotations

import numpy as np

from ..core.backend import to_numpy
from ..compile.verify import main_head

_KINDS = {"mse": "values", "l1": "values", "smooth_l1": "values", "bce": "labels",
          "output": "none"}
METRIC_NAMES = {"classes": "accuracy", "labels": "exact_match", "values": "mae"}


def head_kind(g) -> str:
    """classes | labels | values | none (an inference-only net) for graph ``g``'s main head."""
    return _KINDS.get(main_head(g).op, "classes")


def batch_score(xp, kind: str, logits, y) -> float:
    """Summed over the batch: correct examples (classes, labels) or the per-example mean
    absolute error (values); divided by the examples seen, it is the epoch's metric."""
    if kind == "values":
        err = xp.abs(logits - xp.asarray(y).reshape(logits.shape).astype(logits.dtype))
        return float(to_numpy(err.mean(axis=1, dtype=xp.float64).sum()))
    if kind == "labels":
        want = xp.asarray(y).reshape(logits.shape) > 0.5
        return float(to_numpy(((logits > 0) == want).all(axis=1).sum()))
    return float(to_numpy((xp.argmax(logits, axis=1) == y).sum()))


def evaluate(ex, x, y, batch_size: int = 256) -> float:
    """The main head's metric on (x, y), computed by the inference pipeline."""
    if len(x) == 0:
        return float("nan")
    kind = head_kind(ex.model.graph)
    if kind == "classes":
        return float(np.mean(ex.predict(x, batch_size) == y))
    inf = ex.for_inference()
    total = sum(batch_score(inf.xp, kind, inf.forward(x[i:i + batch_size]).logits,
                            y[i:i + batch_size]) for i in range(0, len(x), batch_size))
    return total / len(x)


def describe(kind: str, value: float) -> str:
    """'acc 97.50%', 'exact-match 81.00%' or 'MAE 0.1234' for a log line."""
    if kind == "values":
        return f"MAE {value:.4g}"
    return f"{'exact-match' if kind == 'labels' else 'acc'} {100 * value:.2f}%"
