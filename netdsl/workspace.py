"""Persistent workspace: memory a compiled model keeps between steps on purpose.

Some kernels need temporary memory inside a step (im2col columns, padded copies, oneDNN
scratchpads). Allocating it fresh every step costs page faults and allocator work; holding it
across steps is faster but is memory the model owns for its lifetime. Every object that holds
such memory registers here, so that what is held is never hidden:

* ``netdsl bench`` adds :func:`held_bytes` to the peak it measures inside a step (tracemalloc
  sees only what a step allocates, not what was already held when it started);
* the memory planner (netdsl/memory.py) plans these bytes as part of the peak.

A holder is any object with an ``nbytes`` attribute (bytes it holds now). Holders are tracked
weakly: a model that is dropped stops counting.
"""
from __future__ import annotations

import weakref

_HOLDERS: "weakref.WeakSet" = weakref.WeakSet()


def register(holder) -> None:
    """Count ``holder.nbytes`` in :func:`held_bytes` for as long as ``holder`` lives."""
    _HOLDERS.add(holder)


def held_bytes() -> int:
    """Bytes held across steps by every live registered holder."""
    return sum(int(h.nbytes) for h in list(_HOLDERS))
