"""`--workers N`: run this very command under ``mpiexec -n N`` on this machine, and what each
rank of an MPI-launched `netdsl run` sets up (threads, quiet non-zero ranks). docs/distributed.md.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

from ..core.errors import NetdslError

MPI_HINT = "install the mpi extra: pip install 'netdsl[mpi]' (mpi4py and mpich)"


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def find_mpiexec() -> str:
    """The mpiexec next to this Python (the mpich wheel installs it there), else on PATH."""
    here = os.path.dirname(sys.executable)
    found = shutil.which("mpiexec", path=here + os.pathsep + os.environ.get("PATH", ""))
    try:
        import mpi4py  # noqa: F401  (the ranks import it; refuse here, before starting them)
    except ImportError:
        found = None
    if not found:
        raise NetdslError("--workers needs MPI: mpi4py and an mpiexec were not found",
                          hint=MPI_HINT)
    return found


def strip_workers(argv: list[str]) -> list[str]:
    """``argv`` without its --workers N (or --workers=N)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        elif not a.startswith("--workers="):
            out.append(a)
    return out


def spawn(argv: list[str], workers: int, threads: bool = True) -> int:
    """Run ``netdsl argv`` (without --workers) on ``workers`` MPI ranks here and return its exit
    status; with ``threads``, each rank gets cores // workers threads unless --threads is given.
    A signal to this process is passed on to mpiexec, which passes it to every rank."""
    if workers < 1:
        raise NetdslError(f"--workers {workers}: needs at least 1 rank")
    cmd = strip_workers(list(argv))
    if threads and not any(a == "--threads" or a.startswith("--threads=") for a in cmd):
        cmd += ["--threads", str(max(1, cores() // workers))]
    proc = subprocess.Popen([find_mpiexec(), "-n", str(workers), sys.executable, "-m", "netdsl",
                             *cmd])

    def forward(signum, frame):
        """Pass a signal to mpiexec, which passes it to every rank."""
        proc.send_signal(signum)
    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGHUP)
           if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        while True:
            try:
                rc = proc.wait()
                break
            except KeyboardInterrupt:   # Ctrl-C reached the ranks too: wait for their save
                continue
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if rc not in (0, 1, 129, 130, 143):
        print(f"netdsl: error: a rank of the {workers}-rank run ended abnormally (mpiexec exit "
              f"status {rc}); the other ranks were stopped and the last checkpoint written "
              f"is kept", file=sys.stderr)
    return rc


def setup_rank(args, comm) -> None:
    """Under MPI: threads so that ranks × threads = cores (unless --threads), and only rank 0
    prints, draws and shows progress."""
    if getattr(args, "threads", None) is None:
        args.threads = max(1, cores() // comm.local_size())
    if comm.rank != 0:
        args.quiet = args.no_plots = True
        sys.stdout.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
