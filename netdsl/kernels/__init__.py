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

import sys
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


CHOICES = ("auto", "numpy", "onednn")
"""What ``--kernels`` accepts."""
_NOTED: set = set()


def available(provider: str) -> bool:
    """Whether ``provider``'s kernels can run here: numpy always; onednn when libdnnl loads."""
    if provider == "numpy":
        return True
    if provider == "onednn":
        from . import onednn
        return onednn.load()
    return False


def resolve(provider: str, xp=None, dtype=None, note=True) -> str:
    """The provider to use for a request ('auto', 'numpy' or 'onednn') on ``xp``/``dtype``.

    'auto' is onednn where it loads (NumPy arrays, float32), else numpy with a one-time note
    on stderr saying why. Asking for onednn where it cannot load is a NetdslError.
    """
    import numpy as np

    from ..errors import NetdslError
    if provider not in CHOICES:
        raise NetdslError(f"unknown kernel provider '{provider}'",
                          hint="use " + ", ".join(CHOICES))
    if provider == "numpy":
        return "numpy"
    on_cpu = xp is None or xp is np
    if provider == "onednn" and not on_cpu:
        raise NetdslError("--kernels onednn runs on the CPU only",
                          hint="use --device cpu, or --kernels auto/numpy on the GPU")
    if on_cpu and available("onednn"):
        return "onednn"
    if provider == "onednn":
        from . import onednn
        raise NetdslError("--kernels onednn was asked for, but oneDNN cannot load here",
                          detail=onednn.LOAD_ERROR,
                          hint="pip install onednn-cpu-gomp==2023.2.0, or use --kernels numpy")
    if on_cpu and note and "auto" not in _NOTED:
        from . import onednn
        _NOTED.add("auto")
        print(f"note: oneDNN kernels unavailable ({onednn.LOAD_ERROR}); using NumPy",
              file=sys.stderr)
    return "numpy"


def set_threads(n: int | None) -> None:
    """One thread count for BLAS (threadpoolctl), OpenMP and oneDNN (omp_set_num_threads).

    ``None`` leaves every library at its default. The limit is process-wide and stays set.
    """
    if n is None:
        return
    global _LIMITS
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it BLAS keeps its own thread count
        print("note: threadpoolctl is not installed; --threads does not limit BLAS",
              file=sys.stderr)
    else:
        _LIMITS = threadpool_limits(limits=int(n))  # the limit lasts while this object lives
    from . import onednn
    onednn.set_omp_threads(int(n))
    from .. import workspace
    workspace.set_threads(int(n))    # the NumPy kernels' own split work (conv chunks)


_LIMITS = None
