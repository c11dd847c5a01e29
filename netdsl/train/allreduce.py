"""Gradient all-reduce in planned buckets, overlapped with backward (as PyTorch DDP does).

The executor's plan fixes the order in which backward produces each layer's gradients (the
plan reversed), so the buckets are planned once, not discovered: consecutive trainable tensors
in backward order are packed into flat buffers of about ``bucket_mb`` megabytes. During
backward each layer's gradients are copied (already scaled by n_r / n, see distributed.py) into
their bucket; a bucket whose last tensor arrived starts a non-blocking ``Iallreduce`` at once and
travels while the earlier layers' backward runs. MPICH progresses a non-blocking collective
only inside MPI calls, so every arriving gradient also polls the requests in flight.
The first bucket (the last layers) is capped at 1 MB, as PyTorch DDP caps it: it fills after a
few layers, so the first all-reduce starts early instead of after most of backward.
``overlap = False`` starts every bucket after backward: the control that measures what the
overlap hides.
"""
from __future__ import annotations

import time

import numpy as np

from .distributed import Comm

FIRST_BUCKET_MB = 1.0


class Bucket:
    """One flat buffer and the (node, key, offset, shape) of the tensors packed into it."""

    def __init__(self, entries, dtype):
        self.entries = entries
        size = sum(int(np.prod(shape)) for *_, shape in entries)
        self.buf = np.zeros(size, dtype=dtype)
        self.keys = {(node, key) for node, key, *_ in entries}
        self.filled: set = set()
        self.req = None


def plan_buckets(ex, bucket_mb: float) -> list[Bucket]:
    """Buckets of the executor's trainable tensors in the order backward produces them."""
    trainable = set(ex.trainable())
    itemsize = np.dtype(ex.dtype).itemsize
    limit = max(1, int(min(bucket_mb, FIRST_BUCKET_MB) * 1e6))
    buckets, entries, nbytes, offset = [], [], 0, 0
    for st in reversed(ex.plan):
        name = st.node.name
        for key in sorted(ex.params.get(name, {})):
            if (name, key) not in trainable:
                continue
            shape = tuple(ex.params[name][key].shape)
            entries.append((name, key, offset, shape))
            size = int(np.prod(shape))
            offset += size
            nbytes += size * itemsize
            if nbytes >= limit:
                buckets.append(Bucket(entries, ex.dtype))
                entries, nbytes, offset = [], 0, 0
                limit = max(1, int(bucket_mb * 1e6))
    if entries:
        buckets.append(Bucket(entries, ex.dtype))
    return buckets


class GradSync:
    """Sums each step's gradients over ranks, in buckets; see the module docstring."""

    def __init__(self, ex, comm: Comm, bucket_mb: float, overlap: bool = True):
        self.ex, self.comm, self.overlap = ex, comm, overlap
        self.buckets = plan_buckets(ex, bucket_mb)
        self.where = {e[:2]: (b, e[2], e[3]) for b in self.buckets for e in b.entries}
        self.scale = 1.0
        self.seconds, self.steps = 0.0, 0   # time finish() waited: the exposed communication
        self.imbalance = 0.0   # overlap off: waiting for the slowest rank's backward, apart

    def begin(self, scale: float) -> None:
        """A new step whose local gradients are multiplied by ``scale`` (n_r / n)."""
        self.scale = scale
        for b in self.buckets:
            b.filled.clear()
            b.req = None

    def on_grads(self, node: str, dparams: dict) -> None:
        """Called by backward with one layer's gradients: pack them, start full buckets."""
        for key, grad in dparams.items():
            if (node, key) not in self.where:
                continue
            bucket, offset, shape = self.where[(node, key)]
            size = int(np.prod(shape))
            np.multiply(np.asarray(grad).reshape(-1), self.scale,
                        out=bucket.buf[offset:offset + size])
            bucket.filled.add((node, key))
            if self.overlap and bucket.filled == bucket.keys:
                self._start(bucket)
        self._poll()

    def _start(self, bucket: Bucket) -> None:
        mpi = self.comm.MPI
        bucket.req = self.comm.comm.Iallreduce(mpi.IN_PLACE, bucket.buf, mpi.SUM)

    def _poll(self) -> None:
        reqs = [b.req for b in self.buckets if b.req is not None]
        if reqs:
            self.comm.MPI.Request.Testall(reqs)

    def finish(self, grads: dict) -> dict:
        """Wait for every bucket and put the global gradients into ``grads`` (returned).
        Tensors that got no gradient this step (or a rank with no examples) count as zeros."""
        if not self.overlap:   # the control: time the slowest rank apart from the all-reduce
            t0 = time.perf_counter()
            self.comm.barrier("the end of backward")
            self.imbalance += time.perf_counter() - t0
        t0 = time.perf_counter()
        for b in self.buckets:
            for node, key, offset, shape in b.entries:
                if (node, key) not in b.filled:
                    b.buf[offset:offset + int(np.prod(shape))] = 0
            if b.req is None:
                self._start(b)
        self.comm.wait([b.req for b in self.buckets], "the gradient all-reduce")
        self.seconds += time.perf_counter() - t0
        self.steps += 1
        xp = self.ex.xp
        for b in self.buckets:
            for node, key, offset, shape in b.entries:
                view = b.buf[offset:offset + int(np.prod(shape))].reshape(shape)
                grads.setdefault(node, {})[key] = view if xp is np else xp.asarray(view)
        return grads
