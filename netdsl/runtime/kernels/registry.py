"""The kernel registry: which provider implements which layer, and the choice per node.

Apart from the package's ``__init__`` (which loads providers and sets threads) so that a
provider registering its kernels imports only this module, never the package that loads it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
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
    # Fused forms: activation name -> (forward, backward) computing layer + activation in one
    # call (e.g. conv + bias + ReLU as oneDNN post-ops); same contract, gradient w.r.t. the
    # activation's output. See select_fused.
    fused: dict | None = field(default=None, compare=False)  # a dict: kept out of hash/eq


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


def select_fused(spec, attrs, in_shapes, dtype, provider: str, act: str):
    """(forward, backward, provider) computing ``spec`` followed by the activation ``act`` in
    one kernel, or None when the provider has no such fused kernel here (the caller then runs
    the layer's kernel and the activation separately)."""
    kernel = _KERNELS.get((spec.name, provider))
    if kernel is None or not kernel.fused or act not in kernel.fused:
        return None
    if not kernel.supports(attrs, in_shapes, dtype):
        return None
    forward, backward = kernel.fused[act]
    return forward, backward, provider
