"""Choosing the array module: CuPy on a GPU when asked for and present, NumPy otherwise."""
from __future__ import annotations

import numpy as np

from .errors import NetdslError


def gpu_available() -> bool:
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return False
        # A device can be counted while the kernel compiler or cuBLAS is missing: run a tiny
        # element-wise kernel and a matmul so that 'auto' falls back to the CPU instead.
        a = cupy.arange(4, dtype=cupy.float32).reshape(2, 2)
        float(((a * 2) @ a).sum())
        return True
    except Exception:  # ImportError, a CUDA runtime without a device, missing CUDA libraries
        return False


def get_xp(device: str = "auto"):
    """The array module for ``device`` ('auto', 'cpu' or 'gpu')."""
    if device == "cpu":
        return np
    if device in ("gpu", "auto"):
        if gpu_available():
            import cupy
            return cupy
        if device == "gpu":
            raise NetdslError("--device gpu was asked for, but no CUDA device is usable",
                              hint="install the GPU extra (pip install -e .[gpu]) on a machine "
                                   "with an NVIDIA GPU, or use --device cpu")
        return np
    raise NetdslError(f"unknown device '{device}'", hint="use auto, cpu or gpu")


def to_numpy(a):
    """A NumPy copy of an xp array (no-op for NumPy arrays)."""
    return a.get() if hasattr(a, "get") else np.asarray(a)
