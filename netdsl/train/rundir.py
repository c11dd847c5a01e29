"""The run directory (`netdsl run --out DIR`): checked, locked and tidied before any work starts.

Why before: a bad ``--out`` used to surface at the first checkpoint, after a whole epoch of
training, and two runs on one directory silently overwrote each other's checkpoints. So
:func:`open_run_dir` runs right after compiling, before data is loaded or weights are made:

1. the directory must be (or become) a writable directory, else a NetdslError naming it;
2. ``DIR/.lock`` is locked with ``fcntl.flock`` and holds the holder's pid, host and start time.
   The kernel drops the lock when its holder dies (even by kill -9), so a dead run's lock is
   free automatically; a live one refuses the second run, naming the holder's pid. A run
   that ends removes its ``.lock`` (still holding it; :func:`_lock` checks that the file it
   locked is still the one named ``.lock``, so the removal cannot let two runs in);
3. temp files a killed atomic write left behind (``.checkpoint.npz.*.tmp``,
   ``.metrics.json.*.tmp``) are removed: nobody else may be writing while we hold the lock;
4. a directory that already holds a checkpoint refuses a fresh run unless ``--resume`` (from
   that same checkpoint) or ``--overwrite`` (the new run's first save replaces it) is given.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from ..core.errors import NetdslError

LOCK_NAME = ".lock"
CHECKPOINT_NAME = "checkpoint.npz"
METRICS_NAME = "metrics.json"
# The names core.files.atomic_write gives its temp files: ".<target>.<random>.tmp".
_TEMP_PATTERNS = (f".{CHECKPOINT_NAME}.*.tmp", f".{METRICS_NAME}.*.tmp", ".best.npz.*.tmp",
                  ".log.csv.*.tmp")

try:
    import fcntl
except ImportError:   # Windows: no flock; the directory checks still run, the lock is skipped
    fcntl = None


class RunDir:
    """A checked, locked ``--out`` directory; :meth:`release` (or ``with``) unlocks it."""

    def __init__(self, path: Path, fd: int | None, removed_temps: list[str]):
        self.path = path
        self._fd = fd
        self.removed_temps = removed_temps

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_NAME

    def release(self) -> None:
        """Remove ``.lock`` while still holding it, then unlock. Safe against a run that
        opened the file just before: having locked it, that run finds the name gone (or
        another file there) and locks afresh (see :func:`_lock`)."""
        if self._fd is not None:
            try:
                if _names_file(self.path / LOCK_NAME, self._fd):
                    (self.path / LOCK_NAME).unlink()
            except OSError:
                pass   # a lock file left behind is harmless: the next run locks it
            try:
                if fcntl is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _bad_out(path: Path, why: str, hint: str) -> NetdslError:
    return NetdslError(f"--out '{path}' {why}", hint=hint)


def _is_file(path: Path) -> bool:
    try:
        return path.exists() and not path.is_dir()
    except OSError:      # e.g. a name too long to look up: not a file in the way
        return False


def _make_directory(path: Path) -> None:
    if _is_file(path):
        raise _bad_out(path, "is a file, not a directory",
                       "give a directory for checkpoints, e.g. --out runs/NAME")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):   # a parent is a file
        blocker = next((p for p in path.parents if _is_file(p)), None)
        raise _bad_out(path, f"cannot be created: {blocker or 'a part of the path'} is a file",
                       "give a directory path whose parents are directories") from None
    except OSError as exc:
        raise _bad_out(path, f"cannot be created: {exc.strerror or exc}",
                       "choose a directory you can write to") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise _bad_out(path, "is not writable", "choose a directory you can write to")


def _holder(lock_path: Path) -> str:
    """'pid 123 on host, started 2026-…' from the lock file, as far as it can be read."""
    try:
        info = json.loads(lock_path.read_text())
        return (f"pid {int(info['pid'])} on {info.get('host', '?')}, "
                f"started {info.get('started', '?')}")
    except (OSError, ValueError, TypeError, KeyError):
        return "a process whose details could not be read"


def _names_file(path: Path, fd: int) -> bool:
    """Whether ``path`` is (still) the file open as ``fd``."""
    try:
        here, held = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)


def _lock(path: Path) -> int | None:
    lock_path = path / LOCK_NAME
    for _ in range(100):
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _bad_out(path, f"cannot hold a lock file: {exc.strerror or exc}",
                           "choose a directory you can write to") from None
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise NetdslError(f"--out '{path}' is in use by another netdsl run "
                              f"({_holder(lock_path)})",
                              hint="wait for that run to finish or stop it, or choose another "
                                   "--out") from None
        if _names_file(lock_path, fd):
            break
        # the run that held it removed it (finishing) between our open and our lock: the
        # file we hold is no longer the lock; lock the one at the name now
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    else:
        raise _bad_out(path, "keeps losing its lock file", "choose another --out")
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return fd


def _remove_temps(path: Path) -> list[str]:
    removed = []
    for pattern in _TEMP_PATTERNS:
        for tmp in sorted(path.glob(pattern)):
            try:
                tmp.unlink()
                removed.append(tmp.name)
            except OSError:
                pass   # not ours to fight over; it only wastes space
    return removed


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def open_run_dir(out: str, *, resume: str | None = None, overwrite: bool = False) -> RunDir:
    """Check, create and lock ``out``; remove stale temp files; refuse to clobber a checkpoint.

    Raises NetdslError for a file in the way, an uncreatable or unwritable directory, a
    directory locked by a live run, or one holding a checkpoint that neither ``resume`` (the
    same file) nor ``overwrite`` allows replacing.
    """
    path = Path(out).expanduser()
    _make_directory(path)
    fd = _lock(path)
    run_dir = RunDir(path, fd, [])
    try:
        run_dir.removed_temps = _remove_temps(path)
        existing = path / CHECKPOINT_NAME
        if existing.exists() and not overwrite and not (resume and _same_file(resume, existing)):
            what = (f"and --resume names another checkpoint ({resume})" if resume else
                    "from an earlier run")
            raise NetdslError(
                f"--out '{path}' already holds a checkpoint {what}; a new run would replace it",
                hint=f"continue that run with --resume {existing}, add --overwrite to replace "
                     f"it, or choose another --out")
    except BaseException:
        run_dir.release()
        raise
    return run_dir
