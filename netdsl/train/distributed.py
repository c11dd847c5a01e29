"""Data-parallel training over MPI (mpi4py): N ranks train one model, equal to one process.

What makes N ranks equal to one process (docs/distributed.md):

* every step takes the global batch of the single-process run (same shuffle, same bounds) and
  gives rank r the contiguous part ``share(n)[r]`` of it;
* every rank starts from rank 0's weights (broadcast), and every random draw is made for the
  whole global batch and sliced: augmentation draws (data/augment.py ``part=``) and dropout
  masks (:class:`SlicedRng`), so a mask or crop belongs to the example, not to the rank;
* the gradients of each rank's mean loss are scaled by n_r / n and summed over ranks, which is
  the gradient of the mean over the global batch, uneven last batch included;
* batch norm statistics are per rank (as PyTorch's BatchNorm under DDP); only they differ.

Without MPI (no mpi4py, or not started by a launcher) :func:`world` is ``None`` and nothing in
the single-process path changes. A collective that waits longer than the timeout (a rank died
or hangs) prints why and calls ``MPI_Abort``, so no rank waits for ever.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from ..core.errors import NetdslError

# Environment variables that MPI launchers set in the processes they start (MPICH/Hydra and
# Slurm's PMI, Open MPI, PMIx). Without one of them this process was not started by mpiexec.
LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")
DEFAULT_TIMEOUT_S = 60.0   # > a slow checkpoint save and plot on rank 0, which the others wait for
DEFAULT_BUCKET_MB = 25.0
# Spin this long before sleeping between polls: a sleeping poller stalls every round of a
# non-blocking all-reduce by a scheduler tick (measured: 15 ms instead of 4 for 3.5 MB).
SPIN_S = 0.05


def launched_by_mpi(env=None) -> bool:
    """Whether an MPI launcher (mpiexec, srun) started this process."""
    env = os.environ if env is None else env
    return any(k in env for k in LAUNCHER_VARS)


def world():
    """A :class:`Comm` over MPI_COMM_WORLD when this process is one of several MPI ranks, else
    None (also when mpi4py is not installed: a single process then)."""
    if not launched_by_mpi():
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        # N copies of a single-process run would fight over one run directory: refuse.
        size = os.environ.get("PMI_SIZE") or os.environ.get("OMPI_COMM_WORLD_SIZE") or "1"
        if size.isdigit() and int(size) > 1:
            raise NetdslError(f"started as one of {size} MPI ranks, but mpi4py is not "
                              f"installed", hint="pip install 'netdsl[mpi]'") from None
        return None
    comm = MPI.COMM_WORLD
    return Comm(comm, MPI) if comm.Get_size() > 1 else None


def share(n: int, size: int) -> list[tuple[int, int]]:
    """(lo, hi) of each rank's contiguous part of an n-example batch; sizes differ by at most
    one (the first n % size ranks take one more), as ``numpy.array_split``."""
    q, r = divmod(n, size)
    cuts = [i * q + min(i, r) for i in range(size + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


class Comm:
    """The collectives the trainer needs, each bounded by a timeout (then ``MPI_Abort``)."""

    def __init__(self, comm, mpi, timeout_s: float | None = None):
        self.comm, self.MPI = comm, mpi
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        env = os.environ.get("NETDSL_MPI_TIMEOUT")
        self.timeout_s = float(env) if env else (timeout_s or DEFAULT_TIMEOUT_S)
        self.comm_seconds = 0.0   # time spent waiting on collectives (the cost model's check)

    def local_size(self) -> int:
        """Ranks on this machine (they share its cores)."""
        return self.comm.Split_type(self.MPI.COMM_TYPE_SHARED).Get_size()

    def wait(self, reqs, what: str) -> None:
        """Wait for the requests; a rank that does not answer within the timeout is dead or
        stuck: say so and abort every rank (a plain Wait would hang for ever)."""
        t0 = time.perf_counter()
        pause = 1e-5
        while not self.MPI.Request.Testall(reqs):
            waited = time.perf_counter() - t0
            if waited < SPIN_S:   # MPICH moves a collective on only inside MPI calls: spin
                continue
            if waited > self.timeout_s:
                self.abort(f"rank {self.rank}: no answer from the other ranks for "
                           f"{waited:.0f} s during {what}; a rank died or hangs")
            time.sleep(pause)   # a long wait (rank 0 saving): let the core go
            pause = min(pause * 2, 1e-3)
        self.comm_seconds += time.perf_counter() - t0

    def abort(self, message: str, code: int = 1) -> None:
        """Print ``message`` and end every rank (MPI_Abort)."""
        print(f"netdsl: error: {message}; stopping all ranks (the last checkpoint is kept)",
              file=sys.stderr, flush=True)
        self.comm.Abort(code)

    def allreduce(self, buf: np.ndarray, what: str, op=None) -> np.ndarray:
        """``buf`` summed (or ``op``) over ranks, in place."""
        self.wait([self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op or self.MPI.SUM)], what)
        return buf

    def bcast(self, buf: np.ndarray, what: str) -> np.ndarray:
        """Rank 0's ``buf`` on every rank, in place."""
        self.wait([self.comm.Ibcast(buf, root=0)], what)
        return buf

    def barrier(self, what: str) -> None:
        """Every rank reached this point (bounded by the timeout)."""
        self.wait([self.comm.Ibarrier()], what)

    def broadcast_params(self, params: dict, xp) -> None:
        """Every parameter and buffer of rank 0 on every rank."""
        for name in sorted(params):
            for key in sorted(params[name]):
                host = np.ascontiguousarray(np.asarray(params[name][key]))
                self.bcast(host, f"the broadcast of {name}/{key}")
                params[name][key][...] = xp.asarray(host)


class AgreedStop:
    """A :class:`~netdsl.train.signals.StopFlag` that all ranks read alike: ``hit`` is true on
    every rank once any rank got a signal (one small all-reduce per read, made at the same
    step boundary on every rank), so all ranks stop at the same step."""

    def __init__(self, flag, comm: Comm):
        self.flag, self.comm = flag, comm
        self.signum = None

    @property
    def hit(self) -> bool:
        """Whether any rank got a signal (a collective: every rank reads it at the same step);
        ``signum`` becomes the largest signal number any rank got."""
        local = np.array([self.flag.signum or 0], dtype=np.int64)
        agreed = int(self.comm.allreduce(local, "the stop check", self.comm.MPI.MAX)[0])
        self.signum = agreed or None
        return agreed != 0

    @hit.setter
    def hit(self, value: bool) -> None:
        """Stop this rank by hand (tests; what a signal does)."""
        self.flag.hit = value

    def __enter__(self):
        self.flag.__enter__()
        return self

    def __exit__(self, *exc):
        return self.flag.__exit__(*exc)


class SlicedRng:
    """A random generator whose ``random(shape)`` draws for the whole global batch and returns
    this rank's rows: the dropout mask of an example is the one a single process draws."""

    def __init__(self, rng, total: int, lo: int, hi: int):
        self.rng, self.total, self.lo, self.hi = rng, total, lo, hi

    def random(self, shape, dtype=None):
        """Rows lo:hi of a (total, ...) draw."""
        full = (self.total,) + tuple(shape[1:])
        out = self.rng.random(full) if dtype is None else self.rng.random(full, dtype=dtype)
        return out[self.lo:self.hi]
