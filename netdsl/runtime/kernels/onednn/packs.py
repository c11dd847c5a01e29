"""Prepacked weights: the blocked copies of convolution weights that oneDNN's fast kernels read.

Why: asked for ``format any`` weights, oneDNN 3.2 picks its direct kernels (brgconv/jit) on
every ISA; given netdsl's plain ``(KH, KW, C, F)`` layout it runs im2col + GEMM on AVX2
hosts, 2–3× slower (docs/performance.md). netdsl keeps its own layout for the weights the
optimizer updates and that export/checkpoints write; the provider keeps, per weight array
and primitive, one blocked copy beside it:

* inference: packed at the first batch and reused by every later one, until the weights
  change (:func:`weights_changed`, which the executor calls after each backward, i.e. before
  the optimizer updates them, and when its parameters are replaced);
* training: refreshed once per step by the forward convolution (the optimizer has just
  updated the weights). The backward-data convolution reads it where it wants the same layout;
  oneDNN 3.2's brgconv kernels want another one (given the forward's, backward-data falls to
  ``ref:any``), so there it reorders the weights once per step into the scratchpad region.

The copies are held across steps on purpose: :data:`PACKS` is registered with
:mod:`netdsl.core.workspace` (``held_bytes`` counts it) and the memory planner plans it
(``footprint.held_bytes``). A copy lives as long as its weight array does (a weak reference).
"""
from __future__ import annotations

import weakref

import numpy as np

from ....core import workspace

_GENERATION = 0


def weights_changed() -> None:
    """Say that weights may have changed in place: inference packs are refreshed at next use."""
    global _GENERATION
    _GENERATION += 1


ALIGN = 64   # oneDNN's kernels want cache-line aligned buffers


def held_bytes(nbytes: int) -> int:
    """Bytes a pack of ``nbytes`` holds (its array, with room to align it)."""
    return int(nbytes) + ALIGN


def _sample(weight: np.ndarray) -> bytes:
    """A few of the weights, spread over the array: a second guard beside the generation,
    which catches weights overwritten without :func:`weights_changed` (a checkpoint loaded
    into the arrays in place) at the cost of reading 64 numbers. As bytes: comparing them
    costs a fraction of ``np.array_equal``'s ~4 µs (every conv call asks)."""
    flat = weight.reshape(-1)
    return flat[::max(1, flat.size // 64)].tobytes()


class _Entry:
    __slots__ = ("ref", "raw", "view", "generation", "window", "sample")


class Packs:
    """The blocked weight copies of the process, keyed by (weight array, primitive key)."""

    def __init__(self):
        self._entries: dict = {}

    @property
    def nbytes(self) -> int:
        return sum(e.raw.nbytes for e in list(self._entries.values()))

    def used_bytes(self, window: int) -> int:
        """Bytes of the packs the work of ``window`` (workspace.open_window) read."""
        return sum(e.raw.nbytes for e in list(self._entries.values()) if e.window == window)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, weight: np.ndarray, key, nbytes: int, fill, refresh: bool) -> np.ndarray:
        """The pack of ``weight`` for primitive ``key`` (``nbytes``, uint8), filled by
        ``fill(buffer)`` when new, when ``refresh`` or when weights changed since."""
        k = (id(weight), key)
        e = self._entries.get(k)
        if e is None or e.ref() is not weight or e.raw.nbytes != held_bytes(nbytes):
            e = _Entry()
            e.raw = np.empty(held_bytes(nbytes), dtype=np.uint8)
            off = (-e.raw.ctypes.data) % ALIGN
            e.view = e.raw[off:off + nbytes]
            e.ref = weakref.ref(weight, self._forget(k))
            e.generation = None
            self._entries[k] = e
        sample = _sample(weight)
        if refresh or e.generation != _GENERATION or sample != e.sample:
            fill(e.view)
            e.generation, e.sample = _GENERATION, sample
        e.window = workspace.current_window()
        return e.view

    def _forget(self, k):
        entries = self._entries

        def gone(ref):   # the weight array died: its pack goes too (not a newer one's)
            e = entries.get(k)
            if e is not None and e.ref is ref:
                del entries[k]
        return gone

    def clear(self) -> None:
        """Drop every pack (tests)."""
        self._entries.clear()


PACKS = Packs()
workspace.register(PACKS)
