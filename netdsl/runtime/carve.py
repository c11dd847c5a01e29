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

    The first pass of each kind (:attr:`probing`) runs on fresh arrays: it records which offered
    buffers the kernels ask for, and checks what the layout relies on against the arrays — no
    output, cache or fresh input gradient is a view of an array the footprint rules do not say
    it keeps (:meth:`check_forward`, :meth:`check_backward`). :meth:`finish` then lays out the
    buffers taken, or, if a check failed, none: that kind of pass keeps fresh arrays."""

    def __init__(self, plan, itemsize: int):
        self.plan, self.itemsize = plan, itemsize
        self.layouts: dict = {}     # (batch, training) -> _Layout
        self.region = np.empty(0, dtype=np.uint8)
        self.layout = None          # the current pass's
        self.open: dict = _NONE     # the current step's slots by role
        self.step = -1
        self.call = 0               # kernel calls so far (a slot is taken once per call)
        self._used_in = 0
        register(self)

    @property
    def nbytes(self) -> int:
        """Bytes the region holds now."""
        return int(self.region.nbytes)

    def used_bytes(self, window: int) -> int:
        """The region's bytes if a step used it in ``window`` (workspace.held_bytes_used)."""
        return self.nbytes if self._used_in == window else 0

    @property
    def probing(self) -> bool:
        """Whether this pass is its kind's first (fresh arrays, checked)."""
        return self.layout is not None and self.layout.probing

    def start(self, batch: int, training: bool) -> "Carver":
        """Take the layout for a pass over a batch of ``batch`` (``training``: a training
        forward with caches then backward; else an inference forward), planning it the first
        time."""
        key = (int(batch), bool(training))
        if key not in self.layouts:
            from .memory import footprint, plan_memory
            mp = plan_memory(self.plan, key[0], itemsize=self.itemsize, training=key[1])
            fps = [footprint(st, key[0], self.itemsize, key[1]) for st in self.plan]
            self.layouts[key] = _Layout(mp.slots, mp.steps, fps, key[1])
        self.layout = self.layouts[key]
        self._used_in = current_window()
        return self

    def at(self, i: int) -> None:
        """Step ``i`` of the plan runs next (forward or backward)."""
        self.step = i
        self.call += 1     # a new call: every slot of step i may be taken once
        self.open = self.layout.by_step.get(i, _NONE)

    def take(self, role: str, shape, dtype):
        """A view of the region for ``role`` of the current step, or None when the planner
        placed no buffer of exactly this size there (or it was taken already, or the pass is
        probing). Per step a few microseconds: the view made at the first take is kept."""
        slot = self.open.get(role)
        if slot is None or slot.call == self.call:
            return None
        slot.call = self.call
        if slot.view is not None and slot.shape == shape and slot.dtype is dtype:
            return slot.view
        dt = np.dtype(dtype)
        if math.prod(shape) * dt.itemsize != slot.nbytes:   # (math.prod: 30× np.prod's speed)
            return None
        if slot.offset is None:    # probing
            self.layout.taken.add((self.step, role))
            return None
        slot.shape, slot.dtype = shape, dtype
        slot.view = self.region[slot.offset:slot.offset + slot.nbytes].view(dt).reshape(shape)
        return slot.view

    def check_forward(self, i: int, ins: list, out, cache) -> None:
        """Probing: step ``i``'s output is a view of an input only where its footprint says so
        (out_alias), and its cache references only the inputs (and output) the footprint keeps:
        otherwise an array would outlive the lifetime the layout gives it."""
        lay = self.layout
        fp = lay.fps[i]
        outs = [o for o in (out if isinstance(out, tuple) else (out,))
                if isinstance(o, np.ndarray)]
        ins = [x if isinstance(x, np.ndarray) else None for x in ins]
        if fp.out_alias is None and any(_shares(o, x) for o in outs for x in ins):
            lay.fail(f"step {i}: its output is a view of an input")
        if not lay.training:
            return
        kept = set(fp.keep_in) | ({fp.out_alias} if fp.keep_out and fp.out_alias is not None
                                  else set())
        for a in _arrays(cache):
            if any(_shares(a, x) for k, x in enumerate(ins) if k not in kept):
                lay.fail(f"step {i}: its cache keeps an input its footprint does not")
            if not fp.keep_out and fp.out_alias is None and any(_shares(a, o) for o in outs):
                lay.fail(f"step {i}: its cache keeps its output, its footprint does not")

    def check_backward(self, i: int, dout, dins) -> None:
        """Probing: a gradient step ``i``'s footprint calls fresh is not a view of its
        incoming gradient (which the layout lets go after the step)."""
        lay = self.layout
        fresh_dx = lay.fps[i].dx or ()
        douts = list(_arrays(dout))
        for k, d in enumerate(dins or ()):
            if isinstance(d, np.ndarray) and k < len(fresh_dx) and fresh_dx[k] \
                    and any(_shares(d, g) for g in douts):
                lay.fail(f"step {i}: its d(input {k}) is a view of its incoming gradient")

    def finish(self) -> None:
        """The pass ended (the forward of an inference pass, the backward of a training one):
        after its kind's first, lay out the buffers its kernels took (none if a check
        failed) and size the region now, not inside the next step."""
        lay, self.layout, self.open = self.layout, None, _NONE
        if lay is not None and lay.probing:
            lay.place(lay.taken if lay.problem is None else ())
            lay.probing = False
            need = max(la.size for la in self.layouts.values())
            if need != self.region.nbytes:
                self.region = None   # the old region goes before the new one is made
                self.region = aligned_empty(np, need)
                for la in self.layouts.values():   # views of the old region: made anew
                    for slot in (x for step in la.by_step.values() for x in step.values()):
                        slot.view = None


_NONE: dict = {}   # no slots (never written)


class _Slot:
    """One carved buffer of a step: its offset (None while probing) and bytes, the view of
    the region made at its first take (for that shape and dtype), the call that took it."""

    __slots__ = ("offset", "nbytes", "shape", "dtype", "view", "call")

    def __init__(self, offset, nbytes: int):
        self.offset, self.nbytes = offset, nbytes
        self.shape = self.dtype = self.view = None
        self.call = -1


def _shares(a, b) -> bool:
    return b is not None and np.may_share_memory(a, b)


def _arrays(obj, depth: int = 0):
    """The NumPy arrays in a cache (nested tuples, lists and dicts)."""
    if isinstance(obj, np.ndarray):
        yield obj
    elif depth < 4 and isinstance(obj, (tuple, list)):
        for x in obj:
            yield from _arrays(x, depth + 1)
    elif depth < 4 and isinstance(obj, dict):
        for x in obj.values():
            yield from _arrays(x, depth + 1)


class _Layout:
    """Offsets of the carved buffers of one kind of pass: ``by_step`` {step: {role: (offset,
    bytes)}} (offset None while probing) and the arena's ``size``."""

    def __init__(self, slots: dict, steps: int, fps: list, training: bool):
        self.slots, self.steps, self.fps, self.training = slots, steps, fps, training
        self.taken: set = set()
        self.probing = True
        self.problem = None     # why the checks refused the layout, if they did
        self.size = 0
        self.by_step: dict = {}
        for (i, role), (nbytes, _, _) in slots.items():
            self.by_step.setdefault(i, {})[role] = _Slot(None, nbytes)

    def fail(self, why: str) -> None:
        """A check failed: this kind of pass carves nothing."""
        if self.problem is None:
            self.problem = why

    def place(self, keys) -> None:
        """Lay out the buffers ``keys`` by their lifetimes."""
        self.size, offsets = layout_slots(self.slots, self.steps, keys)
        self.by_step = {}
        for (i, role), off in offsets.items():
            self.by_step.setdefault(i, {})[role] = _Slot(off, self.slots[(i, role)][0])
