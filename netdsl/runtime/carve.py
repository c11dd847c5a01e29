"""The executor's arena: one preallocated region from which the long-lived arrays of a step
are carved at the memory planner's offsets.

Why: a training step allocates every activation, input gradient and fan-out sum anew; glibc
recycles the freed blocks (workspace.keep_freed_memory), but each is still a malloc, a free
and, when the recycled block moved, cold pages. The planner (runtime/memory.py) already knows
each buffer's size and lifetime and lays them out (``MemoryPlan.slots``: (step, role) ->
(offset, bytes)); the executor backs the kernels' :func:`netdsl.layers.fresh` with views of one
region at those offsets, so that a steady-state step allocates none of them.

Which arrays: a step's single output ("out"; not the main head's input, which forward returns
to the caller, nor a loss), the fresh gradient of its input k ("dx<k>"), and the sum of
gradients reaching a tensor read by several layers ("sum<k>": made by the step reading it
through input k). Caches and parameter gradients stay fresh arrays (the optimizer and data
parallel all-reduce hold the gradients past the step). A kernel that asks for a size the
planner did not plan (or asks twice) gets a fresh array: the arena is an optimisation, never a
condition. NumPy executors only; ``NETDSL_ARENA=0`` switches it off (for A/B measurements).

RULE the plan relies on: a carved array is read only during the lifetime the planner gave its
buffer (the footprint rules say what caches keep). The next step overwrites the region, so an
array a caller keeps across steps must not come from it (hence the logits and losses).
"""
from __future__ import annotations

import math

import numpy as np

from ..core.workspace import aligned_empty, current_window, register
from .arena import layout_slots
from .carving import ENABLED  # noqa: F401  (the switch, read by the executor)


class Carver:
    """The arena of one executor's plan: a layout per (batch, training), one region as large as
    the largest of them (held across steps and counted by ``workspace.held_bytes``), and the
    slots of the step running now.

    A layout is made in two goes: the first pass of its kind runs on every buffer the planner
    offers (MemoryPlan.slots); :meth:`finish` then lays out again only the ones the kernels took,
    so that a buffer a kernel allocates itself (a padded gradient, a layer without the hook) is
    not also reserved in the arena."""

    def __init__(self, plan, itemsize: int):
        self.plan, self.itemsize = plan, itemsize
        self.layouts: dict = {}     # (batch, training) -> _Layout
        self.region = np.empty(0, dtype=np.uint8)
        self.layout = None          # the current pass's
        self.open: dict = {}        # roles of the current step not yet taken
        self.step = -1
        self._used_in = 0
        register(self)

    @property
    def nbytes(self) -> int:
        """Bytes the region holds now."""
        return int(self.region.nbytes)

    def used_bytes(self, window: int) -> int:
        """The region's bytes if a step used it in ``window`` (workspace.held_bytes_used)."""
        return self.nbytes if self._used_in == window else 0

    def start(self, batch: int, training: bool) -> "Carver":
        """Take the layout for a pass over a batch of ``batch`` (``training``: forward with
        caches then backward; else forward alone), planning it the first time."""
        key = (int(batch), bool(training))
        if key not in self.layouts:
            from .memory import plan_memory
            mp = plan_memory(self.plan, key[0], itemsize=self.itemsize, training=key[1])
            self.layouts[key] = _Layout(mp.slots, mp.steps)
        self.layout = self.layouts[key]
        self._fit()
        self._used_in = current_window()
        return self

    def at(self, i: int) -> None:
        """Step ``i`` of the plan runs next (forward or backward)."""
        self.step = i
        self.open = dict(self.layout.by_step.get(i, ()))

    def take(self, role: str, shape, dtype):
        """A view of the region for ``role`` of the current step, or None when the planner
        placed no buffer of exactly this size there (or it was taken already)."""
        slot = self.open.pop(role, None)
        if slot is None:
            return None
        off, nbytes = slot
        dtype = np.dtype(dtype)
        if math.prod(shape) * dtype.itemsize != nbytes:   # (math.prod: 30× np.prod's speed)
            return None
        if not self.layout.final:
            self.layout.taken.add((self.step, role))
        return self.region[off:off + nbytes].view(dtype).reshape(shape)

    def finish(self) -> None:
        """The pass ended (the forward of an inference pass, the backward of a training one):
        after the first, keep in the layout only the buffers its kernels took."""
        lay, self.layout, self.open = self.layout, None, {}
        if lay is not None and not lay.final:
            lay.place(lay.taken)
            lay.final = True
            self._fit()   # now, not inside the next step

    def _fit(self) -> None:
        """The region exactly as large as the largest layout."""
        need = max(lay.size for lay in self.layouts.values())
        if need != self.region.nbytes:
            self.region = None   # the old region goes before the new one is made
            self.region = aligned_empty(np, need)


class _Layout:
    """Offsets of the carved buffers of one kind of pass: ``by_step`` {step: {role: (offset,
    bytes)}} and the arena's ``size``."""

    def __init__(self, slots: dict, steps: int):
        self.slots, self.steps = slots, steps
        self.taken: set = set()
        self.final = False
        self.place(None)

    def place(self, keys) -> None:
        """Lay out the buffers ``keys`` (None: all) by their lifetimes."""
        self.size, offsets = layout_slots(self.slots, self.steps, keys)
        self.by_step: dict = {}
        for (i, role), off in offsets.items():
            self.by_step.setdefault(i, {})[role] = (off, self.slots[(i, role)][0])
