"""The ``onednn`` provider: oneDNN 3.2 (libdnnl.so.3 from the onednn-cpu-gomp wheel) through
ctypes, no compiler needed.

:func:`load` opens the library once and registers the kernels; it returns False (and
:data:`LOAD_ERROR` says why) on machines where it cannot load: other CPUs, other OSes, the
wheel not installed. Importing this module never fails for those reasons.
"""
from __future__ import annotations

import ctypes

from ..registry import Kernel, register_kernel

LOAD_ERROR: str | None = None
_LOADED: bool | None = None


def load() -> bool:
    """Load libdnnl and register the oneDNN kernels; True when they are usable."""
    global _LOADED, LOAD_ERROR
    if _LOADED is not None:
        return _LOADED
    try:
        from .common import lib
        lib()
    except (OSError, RuntimeError, AttributeError) as e:
        LOAD_ERROR = str(e)
        _LOADED = False
        return False
    from . import conv, dense
    from .conv import conv_backward, conv_forward, conv_supports
    from .dense import fc_backward, fc_forward, fc_supports
    from .norm import bn_backward, bn_forward, bn_relu_backward, bn_relu_forward, bn_supports
    from .pool import (gap_backward, gap_forward, gap_supports, pool_backward, pool_forward,
                       pool_supports)
    register_kernel("gap", Kernel("onednn", gap_forward, gap_backward, gap_supports))
    register_kernel("conv", Kernel("onednn", conv_forward, conv_backward, conv_supports,
                                   fused=conv.fused_forms()))
    for name in ("pool", "maxpool", "avgpool"):
        register_kernel(name, Kernel("onednn", pool_forward, pool_backward, pool_supports))
    register_kernel("batchnorm", Kernel("onednn", bn_forward, bn_backward, bn_supports,
                                        fused={"relu": (bn_relu_forward, bn_relu_backward)}))
    register_kernel("fc", Kernel("onednn", fc_forward, fc_backward, fc_supports,
                                 fused=dense.fused_forms()))
    from .eltwise import make
    for name in ("relu", "tanh", "sigmoid", "relu6", "silu", "hswish", "hsigmoid"):
        register_kernel(name, Kernel("onednn", *make(name)))
    from .concat import ENABLED, concat_backward, concat_forward, concat_supports
    if ENABLED:
        register_kernel("concat", Kernel("onednn", concat_forward, concat_backward,
                                         concat_supports))
    from .binary import (add_backward, add_forward, add_relu_backward, add_relu_forward,
                         add_supports, mul_backward, mul_forward, mul_supports)
    register_kernel("mul", Kernel("onednn", mul_forward, mul_backward, mul_supports))
    register_kernel("add", Kernel("onednn", add_forward, add_backward, add_supports,
                                  fused={"relu": (add_relu_forward, add_relu_backward)}))
    from ....layers import lookup
    if lookup("lrn") is not None:  # the layer comes with the layer zoo
        from .lrn import lrn_backward, lrn_forward, lrn_supports
        register_kernel("lrn", Kernel("onednn", lrn_forward, lrn_backward, lrn_supports))
    _LOADED = True
    return True


def openmp_runtimes() -> list[str]:
    """Paths of the OpenMP runtimes mapped into this process (more than one oversubscribes)."""
    found = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rsplit(None, 1)[-1]
                name = path.rsplit("/", 1)[-1]
                if name.startswith(("libgomp", "libiomp", "libomp")):
                    found.add(path)
    except OSError:
        pass
    return sorted(found)


def set_omp_threads(n: int) -> None:
    """omp_set_num_threads(n) in the OpenMP runtime oneDNN uses (libgomp)."""
    if not load():
        return
    # libdnnl was loaded RTLD_GLOBAL and links libgomp.so.1: this resolves to that same copy.
    ctypes.CDLL("libgomp.so.1").omp_set_num_threads(ctypes.c_int(int(n)))
