"""The memory planner's arena: offsets for the long-lived buffers of a step (activations,
caches, gradients) such that two buffers alive at the same time never share bytes, buffers
whose lifetimes do not overlap reusing each other's memory. netdsl/runtime/memory.py
simulates the step and hands the lifetimes here.
"""
from __future__ import annotations

import bisect


EXACT_ARENA_BUFFERS = 2000
"""Up to this many buffers the arena is laid out offline (largest first, first fit: the
tightest layout, O(n²) comparisons, ~0.2 s at the limit); beyond it by a sweep in time
(O(n log n)), so that a net of 100,000 layers plans in seconds, not hours. The zoo's nets
have at most a few hundred buffers."""


def layout_arena(s) -> tuple[int, dict]:
    """An offset for every buffer of the simulation ``s`` (``size``, ``born``, ``died`` by
    buffer; ``t``: the step count, the death of buffers still alive at the end) such that buffers
    alive at the same step never share bytes, and the arena's size: (size, {buffer: offset})."""
    if len(s.size) <= EXACT_ARENA_BUFFERS:
        return arena_by_size(s)
    return arena_by_time(s)


class _Lifetimes:
    """Buffers by key: what :func:`layout_arena` reads of a simulation."""

    def __init__(self, size, born, died, t):
        self.size, self.born, self.died, self.t = size, born, died, t


def layout_slots(slots: dict, t: int, keys=None, align: int = 64) -> tuple[int, dict]:
    """:func:`layout_arena` of the buffers ``slots`` ({key: (bytes, born, died)}, ``t`` the
    step count), of those in ``keys`` only when given, each size rounded up to ``align`` (the
    executor's arena starts each buffer on a cache line, as a fresh array would).

    ``died`` is the step at which the buffer is already free (the planner lets a buffer go
    after its last step's work, and the step count moves on first): so a buffer held through
    steps born..died-1 may share bytes with one born at ``died``. (The planner's own layout
    keeps [born, died], one step longer; on inception_small's inference that costs 25% more
    arena than the most bytes alive at once.)"""
    keys = slots if keys is None else [k for k in keys if k in slots]
    s = _Lifetimes({k: -(-slots[k][0] // align) * align for k in keys},
                   {k: slots[k][1] for k in keys},
                   {k: max(slots[k][1], slots[k][2] - 1) for k in keys}, t)
    return layout_arena(s)


def arena_by_size(s) -> tuple[int, dict]:
    """Largest buffer first, each at the lowest offset free for its whole lifetime."""
    placed, top, offsets = [], 0, {}
    for b in sorted(s.size, key=lambda b: (-s.size[b], s.born[b])):
        lo, hi, size = s.born[b], s.died.get(b, s.t), s.size[b]
        clash = sorted((o, o + z) for o, z, a, d in placed if a <= hi and lo <= d)
        off = 0
        for o, e in clash:
            if off + size <= o:
                break
            off = max(off, e)
        placed.append((off, size, lo, hi))
        offsets[b] = off
        top = max(top, off + size)
    return top, offsets


def arena_by_time(s) -> tuple[int, dict]:
    """The steps swept in time order: a buffer takes the smallest free hole that holds it
    (best fit, lowest offset among equals) when it is born and gives it back after its last
    step, holes merging with their neighbours. Each birth and death costs a bisection in the
    holes sorted by size and two dictionary lookups: O(n log n). Up to ~40% larger than
    :func:`arena_by_size` on the zoo's nets (fragmentation), hence only for large plans."""
    births: dict = {}
    deaths: dict = {}
    for b, born in s.born.items():
        births.setdefault(born, []).append(b)
        deaths.setdefault(s.died.get(b, s.t), []).append(b)
    holes: list = []                # (size, offset) of every free hole below ``top``
    by_start, by_end = {}, {}       # offset -> size, end -> offset of each hole
    top = size_max = 0
    offsets: dict = {}

    def drop(off, size):
        holes.pop(bisect.bisect_left(holes, (size, off)))
        del by_start[off], by_end[off + size]

    def free(off, size):
        nonlocal top
        if off + size in by_start:                    # merge with the hole above
            above = by_start[off + size]
            drop(off + size, above)
            size += above
        if off in by_end:                             # ... and the one below
            below = by_end[off]
            drop(below, off - below)
            off, size = below, size + off - below
        if off + size == top:                         # the top of the arena is free again
            top = off
            return
        bisect.insort(holes, (size, off))
        by_start[off], by_end[off + size] = size, off

    for t in range(s.t + 1):
        for b in sorted(births.get(t, ()), key=lambda b: (-s.size[b], b)):
            need = s.size[b]
            k = bisect.bisect_left(holes, (need, -1))
            if k < len(holes):                        # the smallest hole that fits
                size, off = holes[k]
                drop(off, size)
                if size > need:
                    free(off + need, size - need)
            else:
                off, top = top, top + need
                size_max = max(size_max, top)
            offsets[b] = off
        for b in deaths.get(t, ()):                   # alive through step t, free after it
            free(offsets[b], s.size[b])
    return size_max, offsets
