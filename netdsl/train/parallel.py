"""How the training loop takes one step: alone (:class:`Single`) or as one of N MPI ranks
(:class:`DataParallel`). The loop calls the same few hooks either way, so the single-process
path is the one it always was; distributed.py says why N ranks compute what one process does.
"""
from __future__ import annotations

import numpy as np

from ..core.backend import to_numpy
from ..core.errors import NetdslError
from .allreduce import GradSync
from .distributed import DEFAULT_BUCKET_MB, AgreedStop, Comm, SlicedRng, share
from .metrics import batch_score


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

    def train_step(self, ex, xb, yb, lo: int, hi: int, n: int, kind: str = "classes"):
        """Forward and backward of one batch: (gradients, mean loss, the batch's summed
        metric: correct predictions, or absolute errors for a regression head (metrics.py))."""
        res = ex.forward(xb, yb, training=True)
        grads, loss = ex.backward(), float(res.loss)
        return grads, loss, batch_score(ex.xp, kind, res.logits, yb)


class BatchSync:
    """``Ctx.sync`` for ``sync_bn``: a batch norm layer's per-channel sums over all ranks.

    Each rank's loss is the mean over its own n_r examples, so its gradients are n / n_r times
    those of the global mean; ``grads=True`` sums them weighted by n_r / n (the global batch's
    units) and hands them back in this rank's units, which the layer's formulas expect."""

    def __init__(self, comm: Comm, xp=np):
        self.comm, self.xp, self.weight = comm, xp, 1.0

    def batch_sums(self, arrays: list, count: int, grads: bool = False):
        """(the arrays summed over ranks, the global batch's count per channel)."""
        xp, w = self.xp, self.weight if grads else 1.0
        host = [np.asarray(to_numpy(a), dtype=np.float64).reshape(-1) * w for a in arrays]
        buf = np.concatenate(host + [np.array([count], dtype=np.float64)])
        self.comm.allreduce(buf, "the sync_bn sums")
        out, at = [], 0
        for a, h in zip(arrays, host):
            summed = (buf[at:at + h.size] / w).reshape(a.shape).astype(a.dtype)
            out.append(summed if xp is np else xp.asarray(summed))
            at += h.size
        return out, int(round(buf[-1]))


def reference_batchnorm(ex) -> None:
    """Batch norm steps on the registry's NumPy kernel (a ReLU fused into a oneDNN kernel
    becomes the plan's in-place activation again): only it sums over ranks (``Ctx.sync``)."""
    for st in ex.plan:
        if st.node.op == "batchnorm" and st.provider != "numpy":
            st.forward, st.backward, st.provider = st.spec.forward, st.spec.backward, "numpy"
            st.act = st.node.meta.get("act")


class DataParallel(Single):
    """One of N ranks: its share of each global batch, gradients summed in buckets."""

    def __init__(self, comm: Comm, ex, bucket_mb: float = DEFAULT_BUCKET_MB,
                 overlap: bool = True, sync_bn: bool = False):
        self.comm, self.rank, self.size = comm, comm.rank, comm.size
        self.writes = comm.rank == 0
        self.sync = GradSync(ex, comm, bucket_mb, overlap)
        self.bn = BatchSync(comm, ex.xp) if sync_bn else None
        ex.bn_sync = self.bn
        if sync_bn:
            reference_batchnorm(ex)

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

    def report(self, train_seconds: float) -> str:
        """How long this rank waited for the gradients after backward, per step and as a share
        of the training time (with overlap on, what the overlap did not hide)."""
        s = self.sync
        steps, seconds = max(s.steps, 1), max(train_seconds, 1e-9)
        ahead = "" if s.overlap else \
            (f" after {1e3 * s.imbalance / steps:.2f} ms waiting for the slowest rank's backward "
             f"({100 * s.imbalance / seconds:.1f}%)")
        return (f"gradient all-reduce: {s.steps} steps, {1e3 * s.seconds / steps:.2f} ms a step "
                f"waited after backward ({100 * s.seconds / seconds:.1f}% of the training "
                f"time){ahead}, {sum(b.buf.nbytes for b in s.buckets) / 1e6:.2f} MB in "
                f"{len(s.buckets)} bucket(s), overlap {'on' if s.overlap else 'off'}")

    def train_step(self, ex, xb, yb, lo: int, hi: int, n: int, kind: str = "classes"):
        """This rank's rows, then the global gradients, mean loss and summed metric."""
        self.sync.begin((hi - lo) / n)
        if self.bn is not None:
            if n < self.size:   # every rank must take part in each layer's sums
                raise NetdslError(f"sync_bn: a batch of {n} example(s) leaves some of the "
                                  f"{self.size} ranks without examples",
                                  hint="use a batch size (and data size) so that every batch "
                                       "has at least one example per rank")
            self.bn.weight = (hi - lo) / n
        grads, loss_sum, hits = {}, 0.0, 0
        if hi > lo:   # a batch smaller than the ranks leaves some ranks without examples
            ex.xp_rng = SlicedRng(ex.xp_rng, n, lo, hi)
            res = ex.forward(xb, yb, training=True)
            grads = ex.backward(on_grads=self.sync.on_grads)
            loss_sum, hits = float(res.loss) * (hi - lo), batch_score(ex.xp, kind, res.logits, yb)
        totals = self.comm.allreduce(np.array([loss_sum, hits], dtype=np.float64),
                                     "the loss sum")
        grads = self.sync.finish(grads)
        return grads, float(totals[0] / n), float(totals[1])
