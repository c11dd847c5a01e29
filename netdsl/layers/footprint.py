"""What one kernel call of a layer allocates: the ``Footprint`` a layer's ``footprint`` hook
returns for the memory planner (netdsl/runtime/memory.py), and the arithmetic the hooks share.

A hook is ``footprint(step, n, it, training, scratch) -> Footprint`` for a plan step running
the layer's own (NumPy/``xp``) kernel on a batch of ``n`` with ``it``-byte elements; ``scratch``
says whether the executor gives its kernels a Scratch region (NumPy executors do). It reads
``step.node`` (attrs, in_shapes, out_shapes), ``step.inputs`` (how many), ``step.meta``,
``step.data_only`` (no d(input) needed) and, for conv, ``step.recompute`` and
``step.cols_exceed_input``. Providers' kernels have their own rules beside them
(netdsl/runtime/kernels/onednn/footprint.py). tests/test_plan_memory_layers.py checks every
hook against tracemalloc, per kernel call, on every example of every registered layer.
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import numel


@dataclass
class Footprint:
    """Bytes one step allocates. ``out_alias``: the output *is* input k's buffer (a view)."""
    out: int = 0
    out_alias: int | None = None
    fwd_tmp: int = 0
    keep_in: tuple = ()          # inputs the training cache references
    keep_out: bool = False       # the training cache references the output
    cache: int = 0               # bytes the cache owns
    bwd_tmp: int = 0
    bwd_tmp_prediction: int = 0  # more backward bytes when the output is the prediction (the
    #                              caller holds it: a backward that overwrites it cannot)
    dx: tuple | None = None      # per input: fresh bytes, or None = a view of the incoming grad
    outs: tuple = ()             # several outputs: bytes per port (``out`` is their sum)
    fwd_scratch: int = 0         # bytes taken from the executor's Scratch region, forward
    bwd_scratch: int = 0         # ... and backward (the region is the max over every call)


def aligned(nbytes: int) -> int:
    """Bytes a scratch take of ``nbytes`` occupies (workspace.Scratch aligns takes)."""
    return -(-nbytes // 64) * 64 if nbytes > 0 else 0


ITER_BUFFER_ELEMENTS = 8192
"""NumPy's iterator buffer (``np.getbufsize()``): NumPy 2 runs a broadcast in-place op (a
conv's ``out += bias``) through buffers of up to this many elements (measured: min(array
bytes, 8192·itemsize) + ~1 KB, whatever the sizes)."""


def iter_buffer(nbytes: int, it: int) -> int:
    """Bytes of the iterator buffer a broadcast in-place op on an ``nbytes`` array takes."""
    return min(int(nbytes), ITER_BUFFER_ELEMENTS * it)


def batch_bytes(n: int, shape, it: int) -> int:
    """Bytes of a batch of ``n`` tensors of ``shape`` with ``it``-byte elements."""
    return n * numel(shape) * it


def in_bytes(st, n: int, it: int, k: int = 0) -> int:
    """Bytes of input ``k`` of the step, for the whole batch."""
    return batch_bytes(n, st.node.in_shapes[k], it)


def out_bytes(st, n: int, it: int, k: int = 0) -> int:
    """Bytes of output ``k`` of the step, for the whole batch."""
    return batch_bytes(n, st.node.out_shapes[k], it)


def spatial_shapes(st) -> tuple:
    """(H, W, C, Ho, Wo, F) of a step mapping one H×W×C map to one Ho×Wo×F map."""
    h, w, c = st.node.in_shapes[0]
    ho, wo, f = st.node.out_shapes[0]
    return h, w, c, ho, wo, f


def elementwise(st, n, it, tmp_fwd, tmp_bwd) -> Footprint:
    """An activation computed in place into a fresh output that its cache keeps: ``tmp_fwd``
    and ``tmp_bwd`` temporaries (in units of the input's bytes) forward and backward."""
    x = in_bytes(st, n, it)
    return Footprint(out=x, fwd_tmp=tmp_fwd * x, keep_out=True, bwd_tmp=int(tmp_bwd * x),
                     dx=(x,))


def view_of_input(st, n, it, training, scratch=True) -> Footprint:
    """The output is input 0 itself (flatten, identity, input; dropout at inference) and so is
    the gradient."""
    return Footprint(out_alias=0, dx=(None,))
