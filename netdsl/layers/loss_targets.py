"""Losses against float targets, for regression and multi-label heads: mse, l1, smooth_l1 and
bce (binary cross-entropy with logits); and ``output``, the end of an inference-only net.

Each takes flat (K,) predictions (K ≥ 1: a one-unit head is valid) and reads its targets from
``ctx.labels``: an (N, K) float array, or (N,) when K = 1. Each is the mean over the N·K values
(PyTorch's reduction='mean'), times ``weight``. The targets are checked against the head once
per dataset (:func:`target_problem`, called by the executor's label check), not per step.
"""
from __future__ import annotations

import numpy as np

from ..core.errors import NetdslError, ShapeError
from .base import Arg, LayerSpec, register, shape_str
from .footprint import Footprint, in_bytes
from .loss import LOSS_STYLE

TARGET_LOSSES = ("mse", "l1", "smooth_l1", "bce")
"""The losses whose labels are float targets of shape (N, K) (bce: 0/1 per label)."""


def _flat_shape(op: str):
    def infer(attrs, in_shapes):
        shape = tuple(in_shapes[0])
        if len(shape) != 1:
            raise ShapeError(f"{op} needs flat (K,) predictions, got {shape_str(shape)}",
                             hint="put GAP or FC(k) before the loss (k = the targets per "
                                  "example)")
        if attrs.get("beta", 1.0) <= 0:
            raise ShapeError(f"{op}: beta must be positive, got {attrs['beta']:g}",
                             hint="smooth_l1 with beta → 0 is the L1 loss: write L1")
        return ()
    return infer


def target_problem(op: str, y: np.ndarray, k: int) -> str | None:
    """Why the host targets ``y`` do not fit a ``op`` head of ``k`` outputs, or None."""
    y = np.asarray(y)
    if y.ndim == 1 and k == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[1] != k:
        return (f"{op}: the head has {k} output{'s' if k != 1 else ''} but the targets have "
                f"shape {'×'.join(map(str, y.shape))} (want N×{k})")
    if y.dtype.kind not in "iubf":
        return f"{op}: targets must be numbers, found {y.dtype}"
    if y.size and not np.all(np.isfinite(y)):
        return f"{op}: the targets contain NaN or infinite values"
    if op == "bce" and y.size and not np.all((y == 0) | (y == 1)):
        return f"{op}: multi-label targets must be 0 or 1, found {y[(y != 0) & (y != 1)][0]}"
    return None


def _targets(ctx, op: str, pred):
    """ctx.labels as an (N, K) array of the predictions' dtype."""
    if ctx.labels is None:
        raise NetdslError(f"{op}: no targets were given for the batch")
    n, k = pred.shape
    t = ctx.xp.asarray(ctx.labels)
    if t.size != n * k:
        raise NetdslError(f"{op}: targets of shape {tuple(t.shape)} for predictions of shape "
                          f"{(n, k)}", hint="the last FC must have one unit per target")
    return t.reshape(n, k).astype(pred.dtype, copy=False)


def _dot(xp, a, b) -> float:
    """Σ a·b over every element, with no array made (one BLAS dot in float64 results)."""
    return float(xp.dot(a.reshape(-1), b.reshape(-1)))


def _scale(attrs, shape) -> float:
    return attrs["weight"] / (shape[0] * shape[1])


def _scalar(ctx, value, like):
    return ctx.xp.asarray(value, dtype=like.dtype)


# --------------------------------------------------------------------------------------------
# mse, l1, smooth_l1: functions of d = prediction − target

def _mse_forward(ctx, attrs, params, inputs):
    p = inputs[0]
    d = p - _targets(ctx, "mse", p)
    return _scalar(ctx, _dot(ctx.xp, d, d) * _scale(attrs, p.shape), p), d


def _mse_backward(ctx, attrs, params, d, dout):
    return [d * (2 * _scale(attrs, d.shape) * dout)], {}


def _l1_forward(ctx, attrs, params, inputs):
    p = inputs[0]
    d = p - _targets(ctx, "l1", p)
    return _scalar(ctx, float(ctx.xp.abs(d).sum(dtype=ctx.xp.float64)) * _scale(attrs, p.shape),
                   p), d


def _l1_backward(ctx, attrs, params, d, dout):
    g = ctx.xp.sign(d)
    g *= _scale(attrs, d.shape) * dout
    return [g], {}


def _smooth_forward(ctx, attrs, params, inputs):
    # Per element: ½d²/β where |d| < β, else |d| − ½β; both are q·(|d| − ½q)/β, q = min(|d|, β).
    xp, p, beta = ctx.xp, inputs[0], attrs["beta"]
    d = p - _targets(ctx, "smooth_l1", p)
    a = xp.abs(d)
    q = xp.minimum(a, beta)
    q *= 0.5                                # in place: ½q, so that no third array is made
    a -= q
    return _scalar(ctx, 2 * _dot(xp, q, a) / beta * _scale(attrs, p.shape), p), d


def _smooth_backward(ctx, attrs, params, d, dout):
    g = d * (1 / attrs["beta"])
    ctx.xp.clip(g, -1, 1, out=g)
    g *= _scale(attrs, d.shape) * dout
    return [g], {}


# --------------------------------------------------------------------------------------------
# bce: binary cross-entropy with logits, one independent sigmoid per output

def _bce_forward(ctx, attrs, params, inputs):
    # max(x, 0) − x·t + log(1 + e^−|x|): never overflows (PyTorch's formulation).
    xp, x = ctx.xp, inputs[0]
    t = _targets(ctx, "bce", x)
    a = xp.abs(x)
    a *= -1
    xp.exp(a, out=a)
    xp.log1p(a, out=a)
    total = float(a.sum(dtype=xp.float64))
    del a                                   # gone before the second temporary (footprint)
    total += float(xp.maximum(x, 0).sum(dtype=xp.float64)) - _dot(xp, x, t)
    return _scalar(ctx, total * _scale(attrs, x.shape), x), (x, t)


def _bce_backward(ctx, attrs, params, cache, dout):
    x, t = cache
    g = x * x.dtype.type(0.5)               # σ(x) = (1 + tanh(x/2))/2, in the gradient
    ctx.xp.tanh(g, out=g)
    g += 1
    g *= 0.5
    g -= t
    g *= _scale(attrs, x.shape) * dout
    return [g], {}


def _diff_footprint(tmp: int):
    def footprint(st, n, it, training, scratch=True):
        """The difference d = p − t is the cache; ``tmp`` more full arrays in forward
        (l1: |d|; smooth_l1: |d| and min(|d|, β)); backward: the gradient alone."""
        x = in_bytes(st, n, it)
        return Footprint(out=it, cache=x, fwd_tmp=tmp * x, dx=(x,))
    return footprint


def _bce_footprint(st, n, it, training, scratch=True):
    """The cache keeps the logits (and the targets); forward makes one full temporary at a
    time; backward the gradient alone."""
    x = in_bytes(st, n, it)
    return Footprint(out=it, keep_in=(0,), fwd_tmp=x, dx=(x,))


def _float_targets(rng, in_shapes, batch):
    return rng.standard_normal((batch,) + tuple(in_shapes[0])).astype(np.float32)


def _binary_targets(rng, in_shapes, batch):
    return rng.integers(0, 2, (batch,) + tuple(in_shapes[0])).astype(np.float32)


_WEIGHT = Arg("weight", "float", 1.0, doc="multiplies this loss", minimum=0)
_EXAMPLES = ({"attrs": {"weight": 0.5}, "in_shapes": [(1,)]},)


def _loss(name, doc, aliases, forward, backward, footprint, *, args=(), labels=_float_targets):
    register(LayerSpec(
        name=name, doc=doc, aliases=aliases, args=args + (_WEIGHT,),
        infer_shape=_flat_shape(name), forward=forward, backward=backward, role="loss",
        label=("weight",), style=LOSS_STYLE, example={"attrs": {}, "in_shapes": [(3,)]},
        examples=_EXAMPLES, footprint=footprint, make_labels=labels))


_loss("mse", "Mean squared error against float targets (regression): mean of (p − t)².",
      ("mse_loss", "l2", "l2_loss", "euclidean"), _mse_forward, _mse_backward,
      _diff_footprint(0))
_loss("l1", "Mean absolute error against float targets: mean of |p − t|.",
      ("l1_loss", "mae"), _l1_forward, _l1_backward, _diff_footprint(1))
_loss("smooth_l1", "Smooth L1 (Huber-like, PyTorch's): ½(p − t)²/β where |p − t| < β, "
      "else |p − t| − ½β.", ("smoothl1", "huber"), _smooth_forward, _smooth_backward,
      _diff_footprint(2),
      args=(Arg("beta", "float", 1.0, doc="where the square turns linear", minimum=0),))
_loss("bce", "Binary cross-entropy with logits, one sigmoid per output (binary or "
      "multi-label; 0/1 targets).", ("bce_logits", "sigmoid_xent", "binary_xent",
                                     "bcewithlogits"),
      _bce_forward, _bce_backward, _bce_footprint, labels=_binary_targets)


# --------------------------------------------------------------------------------------------
# output: the end of an inference-only net

def _output_shape(attrs, in_shapes):
    if len(tuple(in_shapes[0])) == 0:
        raise ShapeError("output marks the net's prediction; it got the scalar loss")
    return ()


def _output_forward(ctx, attrs, params, inputs):
    # No loss: a zero, so that a forward with labels (numerics tools) still sums.
    return ctx.xp.zeros((), dtype=inputs[0].dtype), inputs[0].shape


def _output_backward(ctx, attrs, params, shape, dout):
    return [ctx.xp.zeros(shape, dtype=dout.dtype)], {}


def _output_footprint(st, n, it, training, scratch=True):
    """A scalar; backward a zero gradient of the input's size."""
    return Footprint(out=it, dx=(in_bytes(st, n, it),))


register(LayerSpec(
    name="output", doc="Ends an inference-only net without a loss: its input is the prediction "
    "(export, predict); `run` refuses it.", aliases=("no_loss", "noloss"), args=(),
    infer_shape=_output_shape, forward=_output_forward, backward=_output_backward,
    role="loss", style=LOSS_STYLE, example={"attrs": {}, "in_shapes": [(3,)]},
    examples=({"attrs": {}, "in_shapes": [(2, 2, 3)]},), footprint=_output_footprint,
    make_labels=lambda rng, in_shapes, batch: None))
