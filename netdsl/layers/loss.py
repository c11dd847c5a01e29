"""Losses: logits and integer labels (in ``ctx.labels``) → one scalar for the batch.

softmax_xent (flat (K,) logits), softmax_xent2d (H×W×K logits, one label per position: dense
prediction / segmentation) and svm_loss (the multi-class hinge loss of cs231n).
"""
from __future__ import annotations

import math
import numpy as np

from ..core.errors import NetdslError, ShapeError
from .base import Arg, LayerSpec, register, shape_str
from .footprint import Footprint, batch_bytes, in_bytes

LOSS_STYLE = {"shape": "doubleoctagon", "style": "filled", "fillcolor": "#f5c2c7"}


def _flat_scores_shape(op: str, what: str):
    """The shape rule of a loss over flat (K,) class scores, K ≥ 2: a scalar."""
    def infer(attrs, in_shapes):
        shape = tuple(in_shapes[0])
        if len(shape) != 1:
            raise ShapeError(f"{op} needs flat (K,) {what}, got {shape_str(shape)}",
                             hint="put GAP or FC(units=classes) before the loss")
        if shape[0] < 2:
            raise ShapeError(f"{op} needs at least 2 classes, got {shape[0]}")
        return ()
    return infer


def check_label_range(labels, k: int) -> None:
    """A NetdslError when a host (NumPy) label is outside 0..k-1.

    Only host labels are checked: reading min/max of a CuPy array waits for the GPU, every
    step. Device labels were checked on the host instead, once for the dataset (Trainer) or
    before the upload (Executor.forward, for NumPy labels given on a GPU)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= k:
        raise NetdslError(f"softmax_xent: label {high if high >= k else low} is outside "
                          f"0..{k - 1} for {k} logits",
                          hint="the last FC must have as many units as the dataset has classes")


def _xent_forward(ctx, attrs, params, inputs):
    xp, logits = ctx.xp, inputs[0]
    labels = ctx.labels
    if labels is None:
        raise NetdslError("softmax_xent: no labels were given for the batch")
    n, k = logits.shape
    labels = xp.asarray(labels).astype(xp.int64, copy=False).reshape(-1)
    if labels.shape[0] != n:
        raise NetdslError(f"softmax_xent: {labels.shape[0]} labels for a batch of {n}")
    if isinstance(labels, np.ndarray):   # device labels: see check_label_range
        check_label_range(labels, k)
    # Subtracting the row max keeps exp() from overflowing; log-softmax stays exact. One full
    # array, the probabilities (the cache): shift, exp and division in place in it.
    probs = logits - logits.max(axis=1, keepdims=True)
    picked = probs[xp.arange(n), labels]
    # Label smoothing (set by the trainer, not the file): targets (1 - e) one-hot + e / K.
    eps = attrs.get("smoothing", 0.0)
    if eps:
        picked = (1 - eps) * picked + eps * probs.mean(axis=1)
    xp.exp(probs, out=probs)
    total = probs.sum(axis=1, keepdims=True)
    log_p = picked - xp.log(total[:, 0])
    loss = -attrs["weight"] * log_p.mean(dtype=xp.float64)  # float64: the batch mean
    probs /= total
    return xp.asarray(loss, dtype=logits.dtype), (probs, labels)


def _xent_backward(ctx, attrs, params, cache, dout):
    probs, labels = cache
    n = probs.shape[0]
    grad = probs.copy()
    eps = attrs.get("smoothing", 0.0)
    grad[ctx.xp.arange(n), labels] -= 1 - eps
    if eps:
        grad -= eps / grad.shape[1]
    grad *= dout * (attrs["weight"] / n)
    return [grad], {}


def _xent_footprint(st, n, it, training, scratch=True):
    """softmax_xent and softmax_xent2d (the same kernel on flat logits or H×W×K maps): the
    probabilities are the cache (made in place); per position: the row max, the label rows
    (int64), the picked logit, the sum, its log and log p."""
    *where, k = st.node.in_shapes[0]               # (H, W, K), or (K,) for softmax_xent
    p = batch_bytes(n, tuple(where), 1)             # positions
    x = p * k * it
    return Footprint(out=it, cache=x, fwd_tmp=max(8 * p + p * it, 4 * p * it),
                     dx=(x,), bwd_tmp=8 * p + p * it)   # the copy; rows, the picked entries


def _svm_footprint(st, n, it, training, scratch=True):
    """Margins (one full temporary, in place) and the bool mask of active ones (the cache);
    per row: the row numbers (int64) and the true-class scores."""
    x = in_bytes(st, n, it)
    active = x // it
    return Footprint(out=it, cache=active, fwd_tmp=8 * n + x + max(n * it - active, 0),
                     dx=(x,), bwd_tmp=16 * n)       # backward: row numbers, active counts


register(LayerSpec(
    name="softmax_xent", doc="Softmax cross-entropy: mean over the batch of −log p(label).",
    aliases=("loss", "softmax_loss", "softmaxwithloss", "cross_entropy"),
    args=(Arg("weight", "float", 1.0, doc="multiplies this loss (for auxiliary heads)",
              minimum=0),),
    infer_shape=_flat_scores_shape("softmax_xent", "logits"), forward=_xent_forward, backward=_xent_backward, role="loss",
    label=("weight",), style=LOSS_STYLE, example={"attrs": {}, "in_shapes": [(4,)]},
    footprint=_xent_footprint))


# --------------------------------------------------------------------------------------------
# Shared label handling

def _labels(ctx, op: str, want_shape, k: int):
    """ctx.labels as int64 of ``want_shape`` (batch first), every value in 0..k−1."""
    xp = ctx.xp
    if ctx.labels is None:
        raise NetdslError(f"{op}: no labels were given for the batch")
    labels = xp.asarray(ctx.labels).astype(xp.int64, copy=False)
    if labels.size != math.prod(want_shape):
        raise NetdslError(f"{op}: labels of shape {tuple(labels.shape)} for logits needing "
                          f"{tuple(want_shape)}",
                          hint="a per-position loss needs one label per pixel (N×H×W)"
                          if len(want_shape) > 1 else None)
    labels = labels.reshape(want_shape)
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= k:
        raise NetdslError(f"{op}: label {high if high >= k else low} is outside 0..{k - 1} "
                          f"for {k} logits",
                          hint="the last layer must have as many outputs as the data has classes")
    return labels


# --------------------------------------------------------------------------------------------
# softmax_xent2d: per-position softmax cross-entropy

def _xent2d_shape(attrs, in_shapes):
    shape = tuple(in_shapes[0])
    if len(shape) != 3:
        raise ShapeError(f"softmax_xent2d needs H×W×K logits, got {shape_str(shape)}",
                         hint="use softmax_xent for flat (K,) logits; a 1×1 conv with K "
                              "filters gives per-position logits")
    if shape[2] < 2:
        raise ShapeError(f"softmax_xent2d needs at least 2 classes, got {shape[2]}")
    return ()


def _xent2d_forward(ctx, attrs, params, inputs):
    xp, logits = ctx.xp, inputs[0]
    n, h, w, k = logits.shape
    labels = _labels(ctx, "softmax_xent2d", (n, h, w), k).reshape(-1)
    flat = logits.reshape(-1, k)
    # One full array, the probabilities (the cache): shifted logits, exp and the division all
    # in place in it (_xent_footprint counts it and the per-position vectors).
    probs = flat - flat.max(axis=1, keepdims=True)
    picked = probs[xp.arange(flat.shape[0]), labels]
    xp.exp(probs, out=probs)
    total = probs.sum(axis=1, keepdims=True)
    log_p = picked - xp.log(total[:, 0])
    del picked
    loss = -attrs["weight"] * log_p.mean()  # mean over N·H·W positions
    probs /= total
    return xp.asarray(loss, dtype=logits.dtype), (probs, labels, logits.shape)


def _xent2d_backward(ctx, attrs, params, cache, dout):
    probs, labels, shape = cache
    grad = probs.copy()
    grad[ctx.xp.arange(grad.shape[0]), labels] -= 1
    grad *= dout * (attrs["weight"] / grad.shape[0])
    return [grad.reshape(shape)], {}


register(LayerSpec(
    name="softmax_xent2d", doc="Per-position softmax cross-entropy: H×W×K logits, N×H×W labels, "
    "mean over every position.", aliases=("pixel_xent", "softmax_xent_2d", "pixel_softmax_xent"),
    args=(Arg("weight", "float", 1.0, doc="multiplies this loss", minimum=0),),
    infer_shape=_xent2d_shape, forward=_xent2d_forward, backward=_xent2d_backward, role="loss",
    label=("weight",), style=LOSS_STYLE, example={"attrs": {}, "in_shapes": [(3, 2, 4)]},
    examples=({"attrs": {"weight": 0.5}, "in_shapes": [(1, 5, 2)]},),
    footprint=_xent_footprint))


# --------------------------------------------------------------------------------------------
# svm_loss: multi-class hinge

def _svm_forward(ctx, attrs, params, inputs):
    xp, scores = ctx.xp, inputs[0]
    n, k = scores.shape
    labels = _labels(ctx, "svm_loss", (n,), k)
    rows = xp.arange(n)
    margins = scores - scores[rows, labels][:, None]   # the one full temporary: in place
    margins += attrs["margin"]
    margins[rows, labels] = 0  # the true class is not compared with itself
    active = margins > 0
    margins *= active
    loss = attrs["weight"] * margins.sum() / n
    return xp.asarray(loss, dtype=scores.dtype), (active, labels)


def _svm_backward(ctx, attrs, params, cache, dout):
    active, labels = cache
    n = active.shape[0]
    grad = active.astype(dout.dtype if hasattr(dout, "dtype") else float)
    # Each active margin adds +1 to its class and −1 to the true class.
    grad[ctx.xp.arange(n), labels] = -active.sum(axis=1)
    grad *= dout * (attrs["weight"] / n)
    return [grad], {}


register(LayerSpec(
    name="svm_loss", doc="Multi-class SVM (hinge) loss: mean over the batch of "
    "Σ_{j≠y} max(0, s_j − s_y + margin).", aliases=("hinge", "multiclass_hinge", "svm"),
    args=(Arg("margin", "float", 1.0, doc="required lead of the true class", minimum=0),
          Arg("weight", "float", 1.0, doc="multiplies this loss", minimum=0)),
    infer_shape=_flat_scores_shape("svm_loss", "scores"), forward=_svm_forward, backward=_svm_backward, role="loss",
    label=("margin",), style=LOSS_STYLE, example={"attrs": {}, "in_shapes": [(5,)]},
    examples=({"attrs": {"margin": 0.5, "weight": 2.0}, "in_shapes": [(7,)]},),
    footprint=_svm_footprint))
