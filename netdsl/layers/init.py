"""Parameter initialisers: turn a :class:`ParamSpec` into an array.

Random numbers always come from a NumPy Generator (then move to ``xp``) so that a seed gives
the same network on CPU and GPU.
"""
from __future__ import annotations

import math

import numpy as np

from ..core.errors import NetdslError
from .base import ParamSpec

INITIALISERS = ("zeros", "ones", "he", "glorot", "lecun")


def init_values(rng: np.random.Generator, spec: ParamSpec) -> np.ndarray:
    """Float64 NumPy values for ``spec`` drawn from ``rng``.

    he = N(0, √(2/fan_in)) (ReLU nets), glorot = U(±√(6/(fan_in+fan_out))),
    lecun = N(0, √(1/fan_in)).
    """
    shape = tuple(spec.shape)
    fan_in = max(1, int(spec.fan_in))
    fan_out = max(1, int(spec.fan_out))
    if spec.init == "zeros":
        return np.zeros(shape)
    if spec.init == "ones":
        return np.ones(shape)
    if spec.init == "he":
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
    if spec.init == "glorot":
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, shape)
    if spec.init == "lecun":
        return rng.normal(0.0, math.sqrt(1.0 / fan_in), shape)
    raise NetdslError(f"unknown initialiser '{spec.init}'",
                      hint=f"use one of {', '.join(INITIALISERS)}")


def init_param(xp, rng: np.random.Generator, spec: ParamSpec, dtype=None):
    """An ``xp`` array of ``dtype`` (float32 when None) initialised as ``spec`` says."""
    dtype = np.float32 if dtype is None else dtype
    return xp.asarray(init_values(rng, spec).astype(dtype))
