"""Softmax cross-entropy loss: logits (K,) and integer labels → one scalar for the batch."""
from __future__ import annotations

from ..errors import NetdslError, ShapeError
from .base import Arg, LayerSpec, register, shape_str

LOSS_STYLE = {"shape": "doubleoctagon", "style": "filled", "fillcolor": "#f5c2c7"}


def _xent_shape(attrs, in_shapes):
    shape = tuple(in_shapes[0])
    if len(shape) != 1:
        raise ShapeError(f"softmax_xent needs flat (K,) logits, got {shape_str(shape)}",
                         hint="put GAP or FC(units=classes) before the loss")
    if shape[0] < 2:
        raise ShapeError(f"softmax_xent needs at least 2 classes, got {shape[0]}")
    return ()


def _xent_forward(ctx, attrs, params, inputs):
    xp, logits = ctx.xp, inputs[0]
    labels = ctx.labels
    if labels is None:
        raise NetdslError("softmax_xent: no labels were given for the batch")
    n, k = logits.shape
    labels = xp.asarray(labels).astype(xp.int64, copy=False).reshape(-1)
    if labels.shape[0] != n:
        raise NetdslError(f"softmax_xent: {labels.shape[0]} labels for a batch of {n}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= k:
        raise NetdslError(f"softmax_xent: label {high if high >= k else low} is outside "
                          f"0..{k - 1} for {k} logits",
                          hint="the last FC must have as many units as the dataset has classes")
    # Subtracting the row max keeps exp() from overflowing; log-softmax stays exact.
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = xp.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    rows = xp.arange(n)
    log_p = shifted[rows, labels] - xp.log(total[:, 0])
    loss = -attrs["weight"] * log_p.mean(dtype=xp.float64)  # float64: the batch mean
    return xp.asarray(loss, dtype=logits.dtype), (exp / total, labels)


def _xent_backward(ctx, attrs, params, cache, dout):
    probs, labels = cache
    n = probs.shape[0]
    grad = probs.copy()
    grad[ctx.xp.arange(n), labels] -= 1
    grad *= dout * (attrs["weight"] / n)
    return [grad], {}


register(LayerSpec(
    name="softmax_xent", doc="Softmax cross-entropy: mean over the batch of −log p(label).",
    aliases=("loss", "softmax_loss", "softmaxwithloss", "cross_entropy"),
    args=(Arg("weight", "float", 1.0, doc="multiplies this loss (for auxiliary heads)",
              minimum=0),),
    infer_shape=_xent_shape, forward=_xent_forward, backward=_xent_backward, role="loss",
    label=("weight",), style=LOSS_STYLE, example={"attrs": {}, "in_shapes": [(4,)]}))
