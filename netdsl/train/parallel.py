"""How the training loop takes one step: alone (:class:`Single`) or as one of N MPI ranks
(:class:`DataParallel`). The loop calls the same few hooks either way, so the single-process
path is the one it always was; distributed.py says why N ranks compute what one process does.
"""
from __future__ import annotations

import numpy as np

from ..core.backend import to_numpy
from .allreduce import GradSync
from .distributed import DEFAULT_BUCKET_MB, AgreedStop, Comm, SlicedRng, share


def _hits(ex, logits, labels) -> int:
    return int(to_numpy((ex.xp.argmax(logits, axis=1) == labels).sum()))


class Single:
    """One process: every hook is the plain single-process step."""

    rank, size, writes = 0, 1, True

    def part(self, n: int) -> tuple[int, int]:
        """This rank's rows of an n-example global batch."""
        return 0, n

    def stop_flag(self, flag):
        """The stop flag the loop reads (this process's own)."""
        return flag

    def start(self, ex) -> None:
        """Before the first step (ranks: rank 0's weights everywhere)."""

    def barrier(self, what: str) -> None:
        """Every rank reached this point (nothing to wait for alone)."""

    def train_step(self, ex, xb, yb, lo: int, hi: int, n: int):
        """Forward and backward of one batch: (gradients, mean loss, correct predictions)."""
        res = ex.forward(xb, yb, training=True)
        grads, loss = ex.backward(), float(res.loss)
        return grads, loss, _hits(ex, res.logits, yb)


class DataParallel(Single):
    """One of N ranks: its share of each global batch, gradients summed in buckets."""

    def __init__(self, comm: Comm, ex, bucket_mb: float = DEFAULT_BUCKET_MB,
                 overlap: bool = True):
        self.comm, self.rank, self.size = comm, comm.rank, comm.size
        self.writes = comm.rank == 0
        self.sync = GradSync(ex, comm, bucket_mb, overlap)

    def part(self, n: int) -> tuple[int, int]:
        """Rank r's contiguous rows of the global batch (distributed.share)."""
        return share(n, self.size)[self.rank]

    def stop_flag(self, flag):
        """A flag that is set on every rank once any rank got a signal."""
        return AgreedStop(flag, self.comm)

    def start(self, ex) -> None:
        """Rank 0's weights (and buffers) on every rank."""
        self.comm.broadcast_params(ex.params, ex.xp)

    def barrier(self, what: str) -> None:
        """Wait for every rank (bounded by the collective timeout)."""
        self.comm.barrier(what)

    def train_step(self, ex, xb, yb, lo: int, hi: int, n: int):
        """This rank's rows, then the global gradients, mean loss and hit count."""
        self.sync.begin((hi - lo) / n)
        grads, loss_sum, hits = {}, 0.0, 0
        if hi > lo:   # a batch smaller than the ranks leaves some ranks without examples
            ex.xp_rng = SlicedRng(ex.xp_rng, n, lo, hi)
            res = ex.forward(xb, yb, training=True)
            grads = ex.backward(on_grads=self.sync.on_grads)
            loss_sum, hits = float(res.loss) * (hi - lo), _hits(ex, res.logits, yb)
        totals = self.comm.allreduce(np.array([loss_sum, hits], dtype=np.float64),
                                     "the loss sum")
        grads = self.sync.finish(grads)
        return grads, float(totals[0] / n), int(totals[1])
