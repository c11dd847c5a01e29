"""Training controls beside the loop: the held-out evaluation (accuracy and loss in one pass),
gradient clipping by global norm, label smoothing, and the best-epoch / early-stopping rules.

Why the best epoch and early stopping keep no state of their own: both are functions of the
run's history (one record per finished epoch, kept in the checkpoint), so a resumed run stops
and keeps exactly where one run straight through would.
"""
from __future__ import annotations

import math

import numpy as np

from ..core.backend import to_numpy
from ..core.errors import NetdslError
from .metrics import batch_score, head_kind


def held_out(ex, x, y, batch_size: int = 256) -> dict:
    """``{"test_acc", "test_loss"}`` of the main head on (x, y), by the inference pipeline (as
    ``Executor.predict``) in one pass. The loss is the main head's loss without label
    smoothing (the plain cross-entropy for softmax_xent), averaged over examples. For
    regression and multi-label heads "test_acc" is their metric (train/metrics.py)."""
    if len(x) == 0:
        return {"test_acc": float("nan"), "test_loss": float("nan")}
    kind = head_kind(ex.model.graph)
    inf = ex.for_inference()
    set_label_smoothing(inf, 0.0)   # the inference graph may have copied the training attrs
    hits, loss_sum = 0, 0.0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        res = inf.forward(xb, yb, training=False)
        loss_sum += float(res.loss) * len(xb)
        if kind != "classes":
            hits += batch_score(inf.xp, kind, res.logits, yb)
            continue
        # correct labels per example (one label each, or one per pixel): Executor.predict's mean
        same = to_numpy(ex.xp.argmax(res.logits, axis=1)) == yb
        hits += int(same.sum()) / (same.size // len(xb))
    return {"test_acc": hits / len(x), "test_loss": loss_sum / len(x)}


def set_label_smoothing(ex, eps: float) -> int:
    """Give every softmax_xent head of ``ex`` targets smoothed by ``eps``; the number of heads
    set. A positive ``eps`` on a net without one is a NetdslError (it would do nothing)."""
    heads = [st for st in ex.plan if st.spec.role == "loss"]
    xent = [st for st in heads if st.spec.name == "softmax_xent"]
    if eps and not xent:
        raise NetdslError(f"label_smoothing = {eps:g} needs a softmax_xent loss; this network's "
                          f"loss is {', '.join(sorted({st.spec.name for st in heads})) or 'none'}",
                          hint="remove label_smoothing, or end the net with a softmax_xent loss")
    for st in xent:
        st.node.attrs["smoothing"] = float(eps)
    return len(xent)


def clip_gradients(grads: dict, max_norm: float, xp=np) -> float:
    """Scale ``grads`` in place so that their global L2 norm is at most ``max_norm``
    (``torch.nn.utils.clip_grad_norm_``: factor ``max_norm / (norm + 1e-6)`` when it is < 1);
    returns the norm before clipping. One device sync per call."""
    arrays = [g for t in grads.values() for g in t.values() if g is not None]
    total = sum(float(xp.sum(g.astype(xp.float64) ** 2)) for g in arrays)
    norm = math.sqrt(total)
    factor = max_norm / (norm + 1e-6)
    if factor < 1:
        for g in arrays:
            g *= g.dtype.type(factor)
    return norm


def metric_of(row: dict, monitor: str) -> float:
    """The held-out value ``monitor`` (acc | loss) of a history row, as a score to maximise
    (NaN when the row lacks it). A regression head's "acc" is its mean absolute error: lower
    is better."""
    if monitor == "loss":
        return -row.get("test_loss", float("nan"))
    sign = -1.0 if row.get("metric") == "mae" else 1.0
    return sign * row.get("test_acc", float("nan"))


def best_epoch(history: list, monitor: str) -> int | None:
    """The first epoch (1-based) with the best held-out ``monitor``, or None (no finite one)."""
    best, at = -math.inf, None
    for row in history:
        score = metric_of(row, monitor)
        if math.isfinite(score) and score > best:
            best, at = score, row["epoch"]
    return at


def early_stopped(history: list, monitor: str, patience: int) -> bool:
    """True when ``patience`` (> 0) epochs in a row have not improved the best held-out
    ``monitor`` (Keras' EarlyStopping with min_delta = 0)."""
    if patience <= 0 or not history:
        return False
    at = best_epoch(history, monitor)
    last = history[-1]["epoch"]
    return (last - at if at is not None else last) >= patience
