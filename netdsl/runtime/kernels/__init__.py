"""Kernel providers: fast implementations of registry entries beside their ``xp`` reference.

Every layer's ``forward``/``backward`` in its :class:`~netdsl.layers.LayerSpec` is the
reference (NumPy, or CuPy through ``xp``) and is always present. A provider module
(``onednn`` on the CPU; later ``cupy``/``cudnn`` on the GPU) may register a :class:`Kernel`
(``registry.py``) for a layer: the same ``forward(ctx, attrs, params, inputs) -> (out, cache)`` and
``backward(ctx, attrs, params, cache, dout) -> (dinputs, dparams)`` contract, plus a
``supports`` predicate, because a fast library rarely covers every argument combination.

The executor asks :func:`select` once per node when it builds its plan; the answer is the
functions to call and the provider that supplies them. Tests compare every registered kernel
against the reference.
"""
from __future__ import annotations

import sys

from .registry import (PROVIDERS, Kernel, kernels_for, register_kernel, select,  # noqa: F401
                       select_fused)

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

    from ...core.errors import NetdslError
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


def weights_changed() -> None:
    """Tell the providers that weights may have changed in place (the optimizer is about to
    step, parameters were replaced): oneDNN's prepacked copies are refreshed at next use."""
    from .onednn.packs import weights_changed as changed
    changed()


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
    from ...core import workspace
    workspace.set_threads(int(n))    # the NumPy kernels' own split work (conv chunks)


_LIMITS = None
