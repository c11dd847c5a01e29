"""Choosing the array module: CuPy on a GPU when asked for and present, NumPy otherwise."""
from __future__ import annotations

import numpy as np

from .errors import NetdslError


def gpu_available() -> bool:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, or a CUDA runtime without a device
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
