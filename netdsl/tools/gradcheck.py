"""Finite-difference gradient checks, for single layers and (via :func:`numeric_grad`) whole nets.

Everything runs in float64 on NumPy: central differences with eps = 1e-6 then agree with a
correct analytic gradient to about 1e-9 relative, so a 1e-5 tolerance separates bugs from noise.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..layers import AUTO, Ctx, bind_args, get, numel

BATCH = 3
TOLERANCE = 1e-5


def numeric_grad(f: Callable[[], float], x, eps: float = 1e-6):
    """d f / d x by central differences, perturbing every element of ``x`` in place.

    ``f`` takes no arguments and reads ``x`` (and whatever else) itself, so the same helper
    serves a layer input, a parameter or a whole network's weights. ``x`` is restored.
    """
    grad = np.zeros(x.shape, dtype=np.float64)
    for index in np.ndindex(*x.shape):
        old = float(x[index])
        x[index] = old + eps
        up = float(f())
        x[index] = old - eps
        down = float(f())
        x[index] = old
        grad[index] = (up - down) / (2 * eps)
    return grad


def relative_error(analytic, numeric) -> float:
    """‖a − n‖ / max(1e-8, ‖a‖ + ‖n‖): robust when most entries are (near) zero."""
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numeric, dtype=np.float64)
    if a.shape != n.shape:
        raise ValueError(f"gradient shape {a.shape} differs from expected {n.shape}")
    return float(np.linalg.norm(a - n) / max(1e-8, np.linalg.norm(a) + np.linalg.norm(n)))


def distinct_values(rng: np.random.Generator, shape, scale: float = 2.0) -> np.ndarray:
    """Values in (−scale, scale), all different and none at 0 (no max-pool ties, no ReLU kinks)."""
    size = numel(shape)
    step = 2 * scale / max(size, 1)
    # The 0.37 offset keeps every value at least a third of a step away from zero.
    values = -scale + (np.arange(size) + 0.37) * step
    return rng.permutation(values).reshape(shape)


def bound_attrs(spec, attrs: dict | None = None) -> dict:
    """The spec's example attrs overlaid with ``attrs``, validated, AUTO values filled in."""
    given = dict(spec.example.get("attrs", {}))
    given.update(attrs or {})
    bound = bind_args(spec, [], given)
    if spec.resolve is not None:
        bound = spec.resolve(bound, None)
    for arg in spec.args:  # whatever is still AUTO gets a small test value
        if bound[arg.name] is AUTO:
            bound[arg.name] = {"int": 4, "pair": (1, 1), "dims": (4, 4, 3)}.get(arg.kind)
    return bound


def _test_params(rng, specs: dict) -> dict:
    """Non-trivial float64 values: scales not all ones, shifts not all zeros, variances > 0."""
    params = {}
    for name, ps in specs.items():
        if not ps.trainable and ps.init == "ones":
            params[name] = rng.uniform(0.5, 1.5, ps.shape)
        elif ps.init == "ones":
            params[name] = 1.0 + 0.3 * rng.normal(size=ps.shape)
        else:
            params[name] = 0.5 * rng.normal(size=ps.shape)
    return params


def layer_inputs(spec, attrs: dict, shapes, rng: np.random.Generator, batch: int = BATCH) -> list:
    """Valid float64 inputs for a layer test: the spec's ``make_inputs`` when random values are
    not valid (switch indices), else :func:`distinct_values` (no ties, no kinks at 0)."""
    if spec.make_inputs is not None:
        return list(spec.make_inputs(rng, attrs, shapes, batch))
    return [distinct_values(rng, (batch,) + tuple(s)) for s in shapes]


def layer_labels(spec, shapes, rng: np.random.Generator, batch: int = BATCH):
    """Labels for a loss: one class index per position of the logits but the class axis
    ((N,) for (K,) logits, (N, H, W) for H×W×K), or the spec's ``make_labels`` (float
    targets of a regression or multi-label loss); None for a layer that is no loss."""
    if spec.role != "loss":
        return None
    if spec.make_labels is not None:
        return spec.make_labels(rng, shapes, batch)
    return rng.integers(0, shapes[0][-1], size=(batch,) + tuple(shapes[0][:-1]))


def check_layer(spec_name: str, attrs: dict | None = None, in_shapes=None, seed: int = 0,
                training: bool = True) -> dict[str, float]:
    """Compare a layer's backward with finite differences of L = Σ out·R (R fixed, random).

    ``attrs`` overlay the spec's example attrs; ``in_shapes`` default to the example's. Returns
    the relative error per tensor: ``input0``, ``input1``, … and each trainable parameter name.
    Dropout-style layers get a freshly seeded ``ctx.rng`` on every call, so the mask is fixed.
    """
    spec = get(spec_name)
    bound = bound_attrs(spec, attrs)
    shapes = [tuple(s) for s in (in_shapes if in_shapes is not None
                                 else spec.example.get("in_shapes", []))]
    if spec.role == "source":
        return {}  # nothing flows into a source: no gradient to check
    out_shape = spec.infer_shape(bound, shapes)
    rng = np.random.default_rng(seed)
    inputs = layer_inputs(spec, bound, shapes, rng)
    params = _test_params(rng, spec.params(bound, shapes))
    labels = layer_labels(spec, shapes, rng)
    outs = out_shape if spec.outputs > 1 else (out_shape,)
    weights = [rng.normal(size=(() if len(s) == 0 else (BATCH,) + tuple(s))) for s in outs]

    def ctx():
        return Ctx(xp=np, training=training, rng=np.random.default_rng(seed + 1),
                   labels=labels, dtype=np.float64)

    def as_tuple(out):
        return out if spec.outputs > 1 else (out,)

    def objective() -> float:
        out, _ = spec.forward(ctx(), bound, params, inputs)
        return float(sum(np.sum(o * r) for o, r in zip(as_tuple(out), weights)))

    out, cache = spec.forward(ctx(), bound, params, inputs)
    # Integer outputs (switches) are piecewise constant in the inputs: no gradient (None).
    dout = tuple(w if np.issubdtype(o.dtype, np.floating) else None
                 for w, o in zip(weights, as_tuple(out)))
    dout = dout if spec.outputs > 1 else dout[0]
    dinputs, dparams = spec.backward(ctx(), bound, params, cache, dout)
    errors = {}
    for i, x in enumerate(inputs):
        if not np.issubdtype(x.dtype, np.floating):
            continue  # indices (switches) are not differentiable
        analytic = np.zeros(x.shape) if dinputs[i] is None else dinputs[i]
        errors[f"input{i}"] = relative_error(analytic, numeric_grad(objective, x))
    for name, ps in spec.params(bound, shapes).items():
        if ps.trainable:
            errors[name] = relative_error(dparams[name], numeric_grad(objective, params[name]))
    return errors
