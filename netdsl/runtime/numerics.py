"""Located numerics: which layer first made a training step non-finite, and loss blow-ups.

Why a second walk instead of checks in the executor: checking every tensor of every step for
NaN/Inf costs a full read of all activations and gradients. The trainer instead looks only at
the loss (a number it reads anyway) and, when that is NaN or Inf, :func:`locate_nonfinite`
re-runs the same batch (same weights, same dropout stream) once more, layer by layer over the
executor's plan, checking each layer's outputs in forward order and then each gradient in
backward order. Normal steps pay nothing. :class:`LossWatch` warns once when a still-finite
loss grows by two orders of magnitude.
"""
from __future__ import annotations

import math

import numpy as np

from ..core.errors import NetdslError
from ..layers import Ctx
from .plan import add_input_grads, run_backward, run_forward


def run_step(ex, x, labels, *, on_forward=None, on_backward=None, replace=None) -> dict:
    """One training forward and backward of ``ex``'s network on ``(x, labels)``, walking
    ``ex.plan`` with the plan's own step runners, as :class:`~netdsl.runtime.executor.Executor` does.

    ``on_forward(step, outputs, inputs)`` runs after each step's forward and
    ``on_backward(step, dinputs, dparams)`` after each step's backward (in reverse order);
    ``outputs`` and ``dinputs`` are lists. A step with a fused activation (``step.act``) is
    checked after it. ``replace`` maps plan indices to a :class:`~netdsl.runtime.plan.Step` run instead
    of the plan's (tests use it). Batch-norm running statistics are updated, as in any training
    forward. Returns ``{node: {param: grad}}``.
    """
    xp, plan = ex.xp, ex.plan
    steps = [(replace or {}).get(i, st) for i, st in enumerate(plan)]
    ctx = Ctx(xp=xp, training=True, rng=ex.xp_rng, labels=xp.asarray(labels), dtype=ex.dtype)
    values, caches = [None] * len(plan), [None] * len(plan)
    for i, st in enumerate(steps):
        if st.spec.role == "source":
            ins = [xp.asarray(x, dtype=ex.dtype)]
        else:
            ins = [values[j] if plan[j].spec.outputs == 1 else values[j][p] for j, p in st.inputs]
        values[i], caches[i] = run_forward(st, ctx, ex.params.get(st.node.name, {}), ins)
        if on_forward:
            on_forward(st, [values[i]] if st.spec.outputs == 1 else list(values[i]), ins)
    bctx = Ctx(xp=xp, training=True, rng=ex.xp_rng, dtype=ex.dtype)
    data_ctx = Ctx(xp=xp, training=True, rng=ex.xp_rng, dtype=ex.dtype, input_grad=False)
    douts = [None] * len(plan)
    for i in ex.heads:
        douts[i] = xp.asarray(1.0, dtype=ex.dtype)
    grads = {}
    for i in range(len(plan) - 1, -1, -1):
        st = steps[i]
        if douts[i] is None or st.spec.role == "source":
            continue
        dins, dparams = run_backward(st, data_ctx if st.data_only else bctx,
                                     ex.params.get(st.node.name, {}), [caches[i], douts[i]])
        caches[i] = douts[i] = None
        if on_backward:
            on_backward(st, dins, dparams or {})
        if dparams:
            grads[st.node.name] = dparams
        add_input_grads(plan, douts, st, dins)
    return grads


def _name(st) -> str:
    """'conv3 (conv)', or 'bn2 (batchnorm + relu)' for a step with a fused activation."""
    act = st.act or st.node.meta.get("act")   # a provider's fused kernel applies it itself
    return f"{st.node.name} ({st.node.op}{' + ' + act if act else ''})"


class _Found(Exception):
    def __init__(self, step, message, detail):
        super().__init__(message)
        self.step, self.message, self.detail = step, message, detail


def _finite(xp, a) -> bool:
    return a is None or bool(xp.isfinite(a).all())


def _kind(xp, arrays) -> str:
    """'nan', 'inf' or 'nan and inf': what the first non-finite array holds."""
    for a in arrays:
        if a is not None and not _finite(xp, a):
            has_nan, has_inf = bool(xp.isnan(a).any()), bool(xp.isinf(a).any())
            return "nan and inf" if has_nan and has_inf else ("nan" if has_nan else "inf")
    return "a non-finite value"


def _largest(xp, arrays) -> str:
    finite = [float(xp.abs(a).max()) for a in arrays if a is not None and a.size and _finite(xp, a)]
    return f"{max(finite):.3g}" if finite else "?"


_HINTS = {
    "source": "the data itself holds NaN or Inf: check the dataset file",
    "softmax_xent": "the logits are finite but their spread overflows float32: lower the "
                    "learning rate (--lr) or add batch norm",
}
_DEFAULT_HINT = ("lower the learning rate (--lr), add batch norm before this layer, or use a "
                 "smaller initialisation; the weights or activations grew past float range")


def locate_nonfinite(ex, x, labels, *, step: int, loss: float) -> NetdslError:
    """The error to raise when step ``step`` (0-based, as passed to ``ex.reseed``) gave the
    non-finite ``loss``: it names the first layer whose output (forward) or gradient (backward,
    in reverse order) was not finite, located at that layer in the .net file.

    Re-runs the batch once; batch-norm running statistics are restored afterwards.
    """
    xp = ex.xp
    first = f"the loss became {loss} at step {step + 1}"
    # A parameter already non-finite: the previous update applied an overflowed gradient.
    # NaN then spreads to every layer before the culprit (backward runs in reverse), so the
    # last such layer in the plan is where the backward pass first went non-finite.
    bad = [(st, name, value) for st in ex.plan
           for name, value in ex.params.get(st.node.name, {}).items() if not _finite(xp, value)]
    if bad:
        st, name, value = bad[-1]
        return NetdslError(
            f"{first}: the previous update made parameter '{name}' of {_name(st)} "
            f"{_kind(xp, [value])}", st.node.loc,
            detail=f"its gradient overflowed at step {step}, the last of {len(bad)} non-finite "
                   "parameter(s) in network order, where the backward pass went non-finite",
            hint=_DEFAULT_HINT)
    # The re-run updates batch-norm running statistics (buffers): keep them to restore after.
    saved = {(st.node.name, k): ex.params[st.node.name][k].copy() for st in ex.plan
             for k, ps in (st.node.param_specs or {}).items() if not ps.trainable}

    def forward(st, outs, ins):
        if not all(_finite(xp, o) for o in outs):
            what = "its input" if st.spec.role == "source" else "its output"
            raise _Found(st, f"{_name(st)} is the first layer whose output "
                             f"is not finite in the forward pass: {what} holds {_kind(xp, outs)}",
                         f"its inputs were finite, largest |input| = {_largest(xp, ins)}"
                         if st.spec.role != "source" else None)

    def backward(st, dins, dparams):
        for name, g in dparams.items():
            if not _finite(xp, g):
                raise _Found(st, f"the forward pass was finite; {_name(st)} is "
                                 f"the first layer, going backward, whose gradient is not finite:"
                                 f" d{name} holds {_kind(xp, [g])}", None)
        if not all(_finite(xp, d) for d in dins):
            raise _Found(st, f"the forward pass was finite; {_name(st)} is the"
                             f" first layer, going backward, whose input gradient is not finite:"
                             f" it holds {_kind(xp, dins)}", None)

    ex.reseed(step)           # the same dropout masks as the failed step
    try:
        with np.errstate(all="ignore"):   # the overflow is expected here; we report it
            run_step(ex, x, labels, on_forward=forward, on_backward=backward)
    except _Found as found:
        node = found.step.node
        hint = _HINTS.get(found.step.spec.role, _HINTS.get(node.op, _DEFAULT_HINT))
        return NetdslError(f"{first}: {found.message}", node.loc, detail=found.detail, hint=hint)
    finally:
        for (n, k), v in saved.items():
            ex.params[n][k][...] = v
    return NetdslError(f"{first}, but re-running the batch gave only finite values",
                       hint="the overflow depends on more than this batch and these weights; "
                            "lower the learning rate (--lr)")


class LossWatch:
    """Warns once (through ``log``) when a finite loss reaches ``factor`` × its running minimum
    and exceeds the first loss seen: training is diverging before it overflows."""

    def __init__(self, log, factor: float = 100.0):
        self.log, self.factor = log, factor
        self.first = self.least = None
        self.warned = False

    def update(self, loss: float, step: int) -> None:
        """Record the loss of step ``step`` (1-based); two comparisons on a normal step."""
        if not math.isfinite(loss):
            return
        if self.first is None:
            self.first = self.least = loss
            return
        if (not self.warned and self.least > 0 and loss >= self.factor * self.least
                and loss > self.first):
            self.warned = True
            self.log(f"warning: the loss grew to {loss:.4g} at step {step}, "
                     f"{loss / self.least:.3g}× its minimum so far ({self.least:.4g}); training "
                     "is diverging: lower the learning rate (--lr)")
        self.least = min(self.least, loss)

