"""Kernel providers: fast implementations of registry entries beside their ``xp`` reference.

Every layer's ``forward``/``backward`` in its :class:`~netdsl.layers.LayerSpec` is the
reference (NumPy, or CuPy through ``xp``) and is always present. A provider module (``onednn``
on the CPU; later ``cupy``/``cudnn`` on the GPU) may register a :class:`Kernel` for a layer:
the same ``forward(ctx, attrs, params, inputs) -> (out, cache)`` and
``backward(ctx, attrs, params, cache, dout) -> (dinputs, dparams)`` contract, plus a
``supports`` predicate, because a fast library rarely covers every argument combination.

The executor asks :func:`select` once per node when it builds its plan; the answer is the
functions to call and the provider that supplies them. Tests compare every registered kernel
against the reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

PROVIDERS = ("numpy", "onednn", "cupy", "cudnn")
"""Known provider names; ``numpy`` is the reference and always available."""


@dataclass(frozen=True)
class Kernel:
    """A provider's implementation of one registry entry."""

    provider: str
    forward: Callable      # (ctx, attrs, params, inputs) -> (out, cache)
    backward: Callable     # (ctx, attrs, params, cache, dout) -> (dinputs, dparams)
    supports: Callable = lambda attrs, in_shapes, dtype: True  # noqa: E731


_KERNELS: dict[tuple[str, str], Kernel] = {}


def register_kernel(layer: str, kernel: Kernel) -> Kernel:
    """Register ``kernel`` as ``kernel.provider``'s implementation of the layer ``layer``."""
    if kernel.provider not in PROVIDERS or kernel.provider == "numpy":
        raise ValueError(f"unknown or reserved provider {kernel.provider!r}")
    _KERNELS[(layer, kernel.provider)] = kernel
    return kernel


def kernels_for(layer: str) -> dict[str, Kernel]:
    """The registered non-reference kernels of a layer, by provider."""
    return {p: k for (name, p), k in _KERNELS.items() if name == layer}


def select(spec, attrs, in_shapes, dtype, provider: str = "numpy"):
    """(forward, backward, provider name) to run ``spec`` with ``attrs`` on ``in_shapes``.

    ``provider`` is the one asked for ('numpy' or a fast one); the reference is returned
    whenever that provider has no kernel for this layer or its ``supports`` says no.
    """
    kernel = _KERNELS.get((spec.name, provider))
    if kernel is not None and kernel.supports(attrs, in_shapes, dtype):
        return kernel.forward, kernel.backward, provider
    return spec.forward, spec.backward, "numpy"
