"""What every oneDNN kernel shares: the loaded library, the primitive cache, layouts."""
from __future__ import annotations

import numpy as np

from .capi import Lib, Primitive

_LIB: Lib | None = None
_CACHE: dict = {}


def lib() -> Lib:
    """The process-wide library handle (loaded by :func:`netdsl.runtime.kernels.onednn.load`)."""
    global _LIB
    if _LIB is None:
        _LIB = Lib()
    return _LIB


def cached(key, build):
    """The value cached under ``key``, built by ``build()`` on first use.

    Why: creating a primitive costs 2–17 ms, executing one ~20 µs; a smaller last batch is
    another key, so it gets its own primitives instead of recreating the full batch's.
    """
    value = _CACHE.get(key)
    if value is None:
        value = _CACHE[key] = build()
    return value


def clear_cache() -> None:
    """Forget every cached primitive (tests; the process normally keeps them)."""
    _CACHE.clear()


def primitive(pd, args) -> Primitive:
    return Primitive(lib(), pd, tuple(args))


def nhwc(n, h, w, c):
    """Memory descriptor of a contiguous NHWC batch (oneDNN's logical order is N, C, H, W).

    Given as strides rather than a format tag: it is the same layout as the `nhwc` tag, which
    keeps oneDNN on its direct (brgconv/jit) kernels; `nchw` falls back to a slow gemm path.
    """
    return lib().md_strides((n, c, h, w), (h * w * c, 1, w * c, c))


def plain(shape):
    """Memory descriptor of a contiguous row-major float32 array of ``shape``."""
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return lib().md_strides(tuple(shape), tuple(reversed(strides)))


def f32(a) -> np.ndarray:
    """``a`` as a C-contiguous float32 array (no copy when it already is one)."""
    return np.ascontiguousarray(a, dtype=np.float32)


def is_f32(dtype) -> bool:
    return np.dtype(dtype) == np.float32


def slow_impl(name: str) -> bool:
    """Whether a oneDNN implementation name is a slow fallback: im2col + GEMM (``gemm``) or
    the reference loops (``ref``), rather than a direct brgconv/jit kernel."""
    return "gemm" in name or "ref" in name


# --- serial kernels ---------------------------------------------------------------------------
# oneDNN fixes a primitive's thread count when its descriptor is created. On a loaded machine
# every OpenMP fork/join or barrier can cost a scheduler time slice: one 4 MB batch-norm
# forward (several barriers) measured 50 ms on 2 threads against 0.3–0.7 ms on one, and small
# convolutions showed the same (docs/performance.md). So, like PyTorch's grain size, kernels
# with little work (under SMALL FLOPs; element-wise ones under SMALL_ELEMENTS), and LRN
# always, are created and run on one thread. SMALL was 2^26 (~1 ms on one core), chosen under
# load; on a quiet machine every conv above 2^21 FLOPs (~15 µs) runs faster threaded: LeNet-5's
# training step 2.9 → 2.0 ms (AVX2 cap 4.05 → 2.7), inception_small's 8.0 → 6.5 ms; with a
# competing process on one of the two cores LeNet-5's went 3.9 → 8.0 ms instead (as PyTorch's,
# which threads every conv): on a shared machine, --threads 1 (docs/performance.md, "Training
# steps: bias gradient, in-place activation gradients, folded C1"). Batch norm was serial
# too until 2026-12-07: quiet, threaded it made ResNet-20's training step 72 → 59 ms (AVX2
# cap 118 → 100), and on AVX-512 its forward now runs oneDNN's barrier-free kernel, which does
# not collapse under load (norm.py; docs/performance.md).
# NETDSL_ONEDNN_SERIAL (comma list of kinds, or "none") and NETDSL_ONEDNN_SMALL (work units:
# FLOPs for conv/fc, elements for the others; 0 disables) override the defaults.
import os  # noqa: E402

SERIAL = frozenset(k for k in os.environ.get("NETDSL_ONEDNN_SERIAL", "lrn").split(",")
                   if k and k != "none")
SMALL = float(os.environ.get("NETDSL_ONEDNN_SMALL", 2**21))
# Element-wise kernels (one pass, one parallel region, no barrier inside) are measured in
# elements, ~1 ns each on one core: 2^26 of them would be ~60 ms, so they have their own
# threshold. Above 2^17 elements (512 KB of float32) two threads ran ReLU/add+ReLU forward and
# backward ~1.8× faster than one, on this shared machine under load too (issue 14:
# the 1M-element maps of ResNet-20 at batch 64: 0.89 → 0.48 ms). NETDSL_ONEDNN_SMALL_ELEMENTS
# overrides it (0: always threaded).
SMALL_ELEMENTS = float(os.environ.get("NETDSL_ONEDNN_SMALL_ELEMENTS", 2**17))
# Pooling (GAP too) and concat are the same kind of kernel, one memory-bound pass measured in
# elements: they took the FLOP threshold before, so that every pooling and concat of the four
# nets ran on one thread (inception_small at batch 256: 2.4 + 2.4 + 1.1 + 0.8 ms of pooling
# and 5.8 + 1.7 ms of concat a step); under load the two settings measured alike (step time
# ratio 1.00 inception_small, 0.99 LeNet-5, interleaved), quiet the second thread is free.
ELEMENTWISE = frozenset(("add", "mul", "relu", "tanh", "sigmoid", "relu6", "silu", "hswish",
                         "hsigmoid", "pool", "concat"))


def is_serial(kind: str, work: float | None = None) -> bool:
    """Whether a kernel of ``kind`` doing ``work`` runs on one thread."""
    if kind in SERIAL:
        return True
    return work is not None and work < (SMALL_ELEMENTS if kind in ELEMENTWISE else SMALL)


class serial:
    """Context: OpenMP on one thread while a serial kernel is created or executed."""

    _omp = None

    def __init__(self, kind: str, work: float | None = None):
        self.active = is_serial(kind, work)

    def __enter__(self):
        if self.active:
            if serial._omp is None:
                import ctypes
                serial._omp = ctypes.CDLL("libgomp.so.1")
            self.saved = serial._omp.omp_get_max_threads()
            serial._omp.omp_set_num_threads(1)
        return self

    def __exit__(self, *exc):
        if self.active:
            serial._omp.omp_set_num_threads(self.saved)
        return False
