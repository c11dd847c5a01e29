"""Persistent workspace: memory a compiled model keeps between steps on purpose.

Some kernels need temporary memory inside a step (im2col columns, padded copies, oneDNN
scratchpads). Allocating it fresh every step costs page faults and allocator work; holding it
across steps is faster but is memory the model owns for its lifetime. Every object that holds
such memory registers here, so that what is held is never hidden:

* ``netdsl bench`` adds :func:`held_bytes` to the peak it measures inside a step (tracemalloc
  sees only what a step allocates, not what was already held when it started);
* the memory planner (netdsl/runtime/memory.py) plans these bytes as part of the peak.

A holder is any object with an ``nbytes`` attribute (bytes it holds now). Holders are tracked
weakly: a model that is dropped stops counting.

Also here, for the NumPy kernels: :class:`Scratch` (one region of per-call temporaries per
executor), the worker threads that split a kernel's work (:func:`parallel_for`,
:func:`split_rows`, :func:`matmul_rows`; ``--threads`` sets their count through
``netdsl.runtime.kernels.set_threads``) with BLAS single-threaded through a step
(:class:`single_threaded_blas`), and :func:`keep_freed_memory` (glibc keeps freed step memory).
"""
from __future__ import annotations

import os
import weakref

_HOLDERS: "weakref.WeakSet" = weakref.WeakSet()


def register(holder) -> None:
    """Count ``holder.nbytes`` in :func:`held_bytes` for as long as ``holder`` lives."""
    _HOLDERS.add(holder)


def held_bytes() -> int:
    """Bytes held across steps by every live registered holder."""
    return sum(int(h.nbytes) for h in list(_HOLDERS))


_WINDOW = 0   # which piece of work the holders are recording their use for


def open_window() -> int:
    """Start recording which holders the work from now on uses, and how much of them
    (:func:`held_bytes_used`); returns the window's number (``holder.used_bytes`` takes it)."""
    global _WINDOW
    _WINDOW += 1
    return _WINDOW


def current_window() -> int:
    """The number of the window :func:`open_window` opened last (0: none yet)."""
    return _WINDOW


def held_bytes_used() -> int:
    """Bytes held across steps that the work since :func:`open_window` needed: each holder's
    ``used_bytes(window)``. Why not :func:`held_bytes`: a Scratch region of another live
    model, or a oneDNN scratchpad grown by another network's primitives, is held memory but
    not this work's (a measurement that counted it would depend on what ran before)."""
    return sum(int(h.used_bytes(_WINDOW)) for h in list(_HOLDERS))


# --------------------------------------------------------------------------------------------
# Scratch: one region of temporaries per executor.

_ALIGN = 64   # bytes: every take starts on a cache line, as a fresh NumPy array would


class Scratch:
    """One memory region an executor's kernels take their temporaries from.

    Why: a training step of a conv net allocates hundreds of MB of short-lived temporaries
    (padded copies, im2col columns, gradient blocks). Fresh allocations of that size come from
    the OS as untouched pages: every step pays the page faults and the zeroing again. Steps run
    one at a time and a temporary never outlives its kernel call, so one region reused by every
    call is enough: its size is the largest that any single call needs.

    Use: the executor calls :meth:`reset` before each kernel call; the kernel calls
    :meth:`take` for each temporary. The region never grows inside a call (an array already
    handed out would move): a take that does not fit is served by a fresh array and the region
    is enlarged at the next :meth:`reset`, so after the first step every take fits.

    RULE: an array from :meth:`take` must never be returned, cached or stored: the next kernel
    call overwrites it. Memory that must outlive a call is allocated fresh (or registered as a
    holder of its own).
    """

    def __init__(self, xp=None):
        import numpy as np
        self.xp = np if xp is None else xp
        self._region = self.xp.empty(0, dtype=self.xp.uint8)
        self._top = 0     # bytes handed out since the last reset (fitting or not)
        self._need = 0    # the most any call has asked for: the size of the next region
        self._used_in = 0   # the last window (open_window) in which a kernel call used it
        register(self)

    @property
    def nbytes(self) -> int:
        """Bytes the region holds now (counted by :func:`held_bytes`)."""
        return int(self._region.nbytes)

    def used_bytes(self, window: int) -> int:
        """The region's bytes if a kernel call used it in ``window``, else 0."""
        return self.nbytes if self._used_in == window else 0

    @property
    def needed(self) -> int:
        """The most bytes any one call has taken so far (what the memory planner predicts)."""
        return self._need

    def reset(self) -> None:
        """Start a new kernel call: everything taken before is free again. Enlarges the region
        to what the largest call so far needed."""
        if self._need > self._region.nbytes:
            self._region = None   # let the old region go before the larger one is allocated
            self._region = aligned_empty(self.xp, self._need)
        self._top = 0
        self._used_in = _WINDOW

    def mark(self) -> int:
        """The current fill level, for :meth:`rewind`."""
        return self._top

    def rewind(self, mark: int) -> None:
        """Free every take since ``mark`` (the caller no longer uses those arrays)."""
        self._top = mark

    def take(self, shape, dtype, zero: bool = False):
        """An uninitialised (or, with ``zero``, zeroed) C-contiguous array of ``shape`` and
        ``dtype`` valid until the next :meth:`reset` or a :meth:`rewind` before it."""
        import math
        dtype = self.xp.dtype(dtype)
        shape = tuple(int(d) for d in shape)
        nbytes = math.prod(shape) * dtype.itemsize
        start = self._top
        self._top = start + -(-nbytes // _ALIGN) * _ALIGN
        self._need = max(self._need, self._top)
        if self._top > self._region.nbytes:       # first step: grows at the next reset
            return self.xp.zeros(shape, dtype) if zero else self.xp.empty(shape, dtype)
        arr = self._region[start:start + nbytes].view(dtype).reshape(shape)
        if zero:
            arr.fill(0)
        return arr


def aligned_empty(xp, nbytes: int):
    """A uint8 array of ``nbytes`` starting on a cache line (64 bytes), from ``xp``'s allocator
    (so that tracemalloc sees the region, as every memory measurement of a run expects)."""
    raw = xp.empty(nbytes + _ALIGN, dtype=xp.uint8)
    at = getattr(raw, "ctypes", None)
    off = (-at.data) % _ALIGN if at is not None else 0
    return raw[off:off + nbytes]


# --------------------------------------------------------------------------------------------
# glibc's allocator: keep freed step memory instead of handing it back to the OS every step

_MALLOC_TUNED = False
_MMAP_THRESHOLD = 32 << 20    # glibc's own ceiling for its dynamic mmap threshold (64-bit)
_TRIM_THRESHOLD = 256 << 20   # free memory at the heap top kept for the next step


def keep_freed_memory() -> None:
    """Ask glibc's malloc (Linux only; once per process; ``NETDSL_MALLOPT=0`` disables) to keep
    up to 256 MB of freed memory for reuse and to map only blocks over 32 MB apart.

    Why: a training step frees and reallocates the same activations and gradients every step.
    glibc's defaults return the heap's free top to the OS when it exceeds twice a threshold that
    grows only when a large mapped block is freed; with the im2col temporaries in the Scratch
    region no such block is freed, the threshold stays low, and a ResNet-20 step (batch 64)
    faulted 15–19 thousand fresh pages back in (60–76 MB zeroed by the kernel per step)."""
    global _MALLOC_TUNED
    import sys
    if _MALLOC_TUNED or os.environ.get("NETDSL_MALLOPT") == "0":
        return
    _MALLOC_TUNED = True
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):   # not glibc (musl): leave the allocator alone
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    mallopt(M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


# --------------------------------------------------------------------------------------------
# Work split over threads by the NumPy kernels themselves

_THREADS = 1
_POOL = None
_BLAS = None      # threadpoolctl's controllers of the loaded BLAS libraries, found once


def set_threads(n: int | None) -> None:
    """How many threads :func:`parallel_for` uses (``netdsl.runtime.kernels.set_threads`` sets it with
    the BLAS/OpenMP count, so that --threads governs every parallel part). Default 1."""
    global _THREADS
    _THREADS = max(1, int(n or 1))


def threads() -> int:
    """The thread count :func:`parallel_for` uses."""
    return _THREADS


def workers(items: int) -> int:
    """How many workers :func:`parallel_for` runs for ``items`` pieces of work: 1 where the
    BLAS thread count cannot be controlled (threadpoolctl missing, or no BLAS it knows), since
    our threads must run single-threaded BLAS."""
    if _THREADS < 2 or not _blas_controllers():
        return 1
    return max(1, min(_THREADS, items))


def parallel_for(items: list, body) -> None:
    """``body(k, share)`` for each worker k with its contiguous share of ``items``, worker 0 in
    this thread and the others in a pool, BLAS limited to one thread meanwhile.

    Why: a conv's chunked im2col + GEMM loop is many small GEMMs. With BLAS's own threads each
    one synchronises its threads; on a loaded machine a descheduled BLAS thread stalls every
    GEMM (3–5× slower steps). Splitting the chunks over our threads, each running
    single-threaded BLAS and its own gathers (NumPy releases the GIL in both), synchronises once
    per kernel call and parallelises the gathers too. Each worker must write only its own
    outputs and scratch buffers (taken before the call: Scratch is not thread-safe)."""
    global _POOL
    count = workers(len(items))
    if count == 1:
        body(0, items)
        return
    bounds = [len(items) * k // count for k in range(count + 1)]
    shares = [items[a:b] for a, b in zip(bounds, bounds[1:])]
    if _POOL is None or _POOL._max_workers < count - 1:
        from concurrent.futures import ThreadPoolExecutor
        _POOL = ThreadPoolExecutor(max_workers=count - 1, thread_name_prefix="netdsl")
    saved = _blas_single()
    try:
        futures = [_POOL.submit(body, k, shares[k]) for k in range(1, count)]
        try:
            body(0, shares[0])
        finally:
            for f in futures:
                f.result()
    finally:
        _blas_restore(saved)


class single_threaded_blas:
    """Context: every loaded BLAS runs single-threaded inside, when :func:`threads` > 1 (the
    NumPy executor's steps: their parallel work is split by :func:`parallel_for`).

    Why: after a multi-threaded BLAS call, OpenBLAS's helper threads busy-wait for a while
    before sleeping; our worker threads then share the cores with a spinning thread. Switching
    BLAS to one thread only around each parallel loop left fc and relu calls in between to wake
    them again: cs231n's conv backward ran 1.5–2× slower than in isolation (182 ms steps
    against 134 ms with BLAS single-threaded for the whole step, 2 threads, quiet machine)."""

    def __enter__(self):
        self._saved = _blas_single() if _THREADS > 1 else []
        return self

    def __exit__(self, *exc):
        _blas_restore(self._saved)
        return False


_SPLIT_BYTES = 1 << 20   # below this a thread hand-off costs more than it saves


def split_rows(xp, n: int, nbytes: int, fn) -> None:
    """``fn(a, b)`` over ranges of ``n`` rows (images) covering them, split over the worker
    threads when the data (``nbytes``) is large enough and ``xp`` is NumPy. ``fn`` must touch
    only its own rows of every output, and allocate (not take from Scratch) what it needs."""
    if n < 2 or nbytes < _SPLIT_BYTES or getattr(xp, "__name__", "") != "numpy" \
            or _THREADS < 2:
        fn(0, n)
        return
    count = workers(n)
    ranges = [(n * k // count, n * (k + 1) // count) for k in range(count)]
    parallel_for(ranges, lambda k, share: [fn(a, b) for a, b in share])


def matmul_rows(a, b, out=None):
    """``a @ b`` for 2-D NumPy arrays, split over the worker threads (each running
    single-threaded BLAS) by rows of ``a``, or by columns of ``b`` when ``a`` has few rows (a
    fully connected layer's batch): the GEMMs outside the conv's chunk loops keep both cores
    busy while BLAS is single-threaded through a step. Small products run as they are."""
    import numpy as np
    if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray):
        return a @ b if out is None else np.matmul(a, b, out=out)
    m, n = a.shape[0], b.shape[1]
    if out is None:
        out = np.empty((m, n), dtype=np.result_type(a, b))
    if _THREADS < 2 or m * n * a.shape[1] < (1 << 22):
        np.matmul(a, b, out=out)
        return out
    if m >= 512:
        count = workers(m // 256)
        ranges = [(m * k // count, m * (k + 1) // count) for k in range(count)]
        parallel_for(ranges, lambda k, share: [np.matmul(a[i:j], b, out=out[i:j])
                                                for i, j in share])
    else:
        count = workers(max(1, n // 128))
        ranges = [(n * k // count, n * (k + 1) // count) for k in range(count)]
        parallel_for(ranges, lambda k, share: [np.matmul(a, b[:, i:j], out=out[:, i:j])
                                                for i, j in share])
    return out


def _forget_pool() -> None:
    """In a forked child the pool's threads do not exist: start a new pool when needed."""
    global _POOL
    _POOL = None


if hasattr(os, "register_at_fork"):   # POSIX
    os.register_at_fork(after_in_child=_forget_pool)


def _blas_controllers() -> list:
    """threadpoolctl's controllers of the loaded BLAS libraries (found once), or []."""
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController
            _BLAS = [c for c in ThreadpoolController().lib_controllers
                     if c.user_api == "blas"]
        except Exception:   # threadpoolctl missing or failing: BLAS keeps its threads
            _BLAS = []
    return _BLAS


def _blas_single() -> list:
    """Set every loaded BLAS to one thread; return what to restore."""
    saved = []
    for c in _blas_controllers():
        n = c.get_num_threads()
        if n != 1:
            c.set_num_threads(1)
            saved.append((c, n))
    return saved


def _blas_restore(saved: list) -> None:
    for c, n in saved:
        c.set_num_threads(n)
