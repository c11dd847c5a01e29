"""Writing what a command produces: atomically, and never over one of its inputs.

Every file netdsl writes (checkpoints, metrics, ONNX and safetensors exports, imported
``.net``/``.npz`` pairs, converted nets, diagrams, plots, sweep tables) goes through here:

* :func:`atomic_write` writes into a temporary file in the target's directory (so that the
  final rename stays on one file system), flushes and fsyncs it, and only then ``os.replace``s
  it over the target: a reader sees the old file or the new one, never half of one, and a write
  that fails part-way (a full disk, Ctrl-C) leaves the previous file as it was.
* :func:`write_together` does the same for several files that belong together (an imported
  network and its weights): all are written first, then replaced, and put back as they were if
  a replacement fails, so that either all are new or all are old.
* :func:`staged` lends a temporary path to writers that want a file name (matplotlib,
  graphviz) and moves the result into place when they succeed.
* :func:`refuse_input_as_output` stops a command whose output path is one of its inputs (by
  ``os.path.samefile``, so links and other spellings of the path count) before anything runs.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from .errors import NetdslError

_TEMP_SUFFIX = ".tmp"   # ".<target>.<random>.tmp": what a killed write leaves (train.rundir)


def _default_file_mode(path: str) -> int:
    """The mode a new file gets under the process umask (mkstemp's are 0600); an existing
    file's mode is kept."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (where the OS allows opening directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _cannot_write(path: str, what: str, exc: OSError, hint: str) -> NetdslError:
    return NetdslError(f"cannot write {what} '{path}': {exc.strerror or exc}", hint=hint)


def _write_temp(path: str, write_contents, what: str, suffix: str = "") -> str:
    """A fsynced temporary file beside ``path`` holding ``write_contents(binary_file)``'s
    output, with the mode ``path`` has (or would get); its name is returned."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        tmp = tempfile.NamedTemporaryFile(dir=directory, prefix=f".{os.path.basename(path)}.",
                                          suffix=_TEMP_SUFFIX + suffix, delete=False)
    except OSError as exc:
        raise _cannot_write(path, what, exc,
                            "check that the directory exists and is writable") from None
    try:
        with tmp:
            write_contents(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp.name, _default_file_mode(path))
    except BaseException as exc:   # also Ctrl-C: never leave a half-written temp file behind
        _unlink(tmp.name)
        if isinstance(exc, OSError):
            raise _cannot_write(path, what, exc,
                                "the previous file, if any, is unchanged") from exc
        raise
    return tmp.name


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write(path, write_contents, what: str) -> None:
    """Write ``path`` via ``write_contents(binary_file)``: into a temporary file, then
    ``os.replace``. ``what`` names the file in errors ("checkpoint", "ONNX model")."""
    path = os.fspath(path)
    tmp = _write_temp(path, write_contents, what)
    try:
        os.replace(tmp, path)
    except OSError as exc:
        _unlink(tmp)
        raise _cannot_write(path, what, exc, "the previous file, if any, is unchanged") from exc
    fsync_directory(os.path.dirname(os.path.abspath(path)))


def write_text(path, text: str, what: str) -> None:
    """:func:`atomic_write` of UTF-8 text."""
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data), what)


def write_together(files: list, what: str) -> None:
    """Write several files that belong together: ``files`` is ``[(path, write_contents), ...]``.
    Every file is written to a temporary first; then each replaces its target, the old
    targets kept aside (hard links) until all are in place and put back if a replacement
    fails. Either every path is new or every path is as it was."""
    paths = [os.fspath(p) for p, _ in files]
    temps: list[str] = []
    try:
        for path, (_, write_contents) in zip(paths, files):
            temps.append(_write_temp(path, write_contents, what))
    except BaseException:
        for tmp in temps:
            _unlink(tmp)
        raise
    kept: dict[str, str | None] = {}   # target -> a link to its old contents (None: was new)
    done: list[str] = []                # targets replaced so far
    try:
        for path in paths:
            if os.path.exists(path):
                old = path + f".{os.getpid()}.old{_TEMP_SUFFIX}"
                _unlink(old)
                try:
                    os.link(path, old)
                except OSError:           # a file system without hard links: a copy
                    shutil.copy2(path, old)
                kept[path] = old
            else:
                kept[path] = None
        for path, tmp in zip(paths, temps):
            os.replace(tmp, path)
            done.append(path)
    except OSError as exc:
        for path, old in kept.items():
            with contextlib.suppress(OSError):
                if path not in done:      # still the old file: drop the spare link
                    if old is not None:   # (rename over a link to itself would do nothing)
                        os.unlink(old)
                elif old is not None:     # replaced: the old contents back
                    os.replace(old, path)
                else:                     # it did not exist before
                    os.unlink(path)
        for tmp in temps:
            _unlink(tmp)
        raise NetdslError(f"cannot write {what} {', '.join(repr(p) for p in paths)}: "
                          f"{exc.strerror or exc}",
                          hint="the previous files, if any, are unchanged") from exc
    for old in kept.values():
        if old is not None:
            _unlink(old)
    for directory in {os.path.dirname(os.path.abspath(p)) for p in paths}:
        fsync_directory(directory)


@contextlib.contextmanager
def staged(path, what: str):
    """A temporary path beside ``path`` (same extension, so writers that pick the format from
    the name still do) for a writer that wants a file name; moved over ``path`` when the block
    succeeds, removed when it fails. An OSError inside becomes a NetdslError."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    ext = os.path.splitext(base)[1]
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{base}.", suffix=_TEMP_SUFFIX + ext)
    except OSError as exc:
        raise _cannot_write(path, what, exc,
                            "check that the directory exists and is writable") from None
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _default_file_mode(path))
        os.replace(tmp, path)
    except OSError as exc:
        _unlink(tmp)
        raise _cannot_write(path, what, exc, "the previous file, if any, is unchanged") from exc
    except BaseException:
        _unlink(tmp)
        raise
    fsync_directory(directory)


def refuse_input_as_output(output, inputs: dict, flag: str = "-o") -> None:
    """A NetdslError when ``output`` is the same file as one of ``inputs`` ({what: path}, None
    paths skipped): writing it would destroy what the command reads."""
    if output is None or not os.path.exists(output):
        return
    for what, path in inputs.items():
        if path is None:
            continue
        try:
            same = os.path.samefile(output, path)
        except OSError:
            continue
        if same:
            raise NetdslError(f"{flag} '{output}' is the {what} this command reads: writing it "
                              f"would destroy its input",
                              hint=f"choose another {flag} path")
