"""Checkpoints: one uncompressed ``.npz`` per save, written atomically.

Layout of the archive:

* ``param/<node>/<param>``  each parameter (and buffer), e.g. ``param/inc3a/conv1/weight``
* ``opt/<key>``             each array of the optimizer's ``state_dict()``, e.g. ``opt/m/fc/bias``
* ``__netdsl__``            a 0-d string array holding JSON: format tag and version, epoch, step,
                            metrics, meta (net source, bound params, train config, seed, rng
                            state) and the optimizer's non-array entries (``t``, its kind)

Node names contain '/', so a parameter key is split on its LAST '/': parameter names never hold
one. Strings and JSON rather than pickles keep loading safe (``allow_pickle=False``).

Atomicity: the bytes go to a temporary file in the target's directory (so that the final rename
stays on one file system), are flushed and fsync'ed, and only then ``os.replace`` puts the file
in place (netdsl/core/files.py). A crash or a full disk mid-save therefore leaves the previous
checkpoint untouched.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..core.backend import to_numpy
from ..core.errors import NetdslError
from ..core.files import atomic_write

FORMAT_TAG = "netdsl-checkpoint"
FORMAT_VERSION = 1
_HEADER_KEY = "__netdsl__"
_PARAM_PREFIX = "param/"
_OPT_PREFIX = "opt/"
_ZIP_MAGIC = b"PK"
_NPY_MAGIC = b"\x93NUMPY"


def _is_array(value) -> bool:
    return isinstance(value, np.ndarray) or type(value).__module__.startswith("cupy")


def _to_jsonable(value):
    """``json.dumps`` fallback for NumPy/CuPy scalars and arrays."""
    if isinstance(value, np.generic):
        return value.item()
    if _is_array(value):
        return to_numpy(value).tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def write_json_atomic(path, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (NumPy scalars/arrays allowed)."""
    text = json.dumps(obj, indent=2, default=_to_jsonable) + "\n"   # fail before touching disk
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), "JSON file")


def save_checkpoint(path, *, params, optimizer_state: dict, epoch: int, step: int, metrics: dict,
                    meta: dict) -> None:
    """Save parameters, optimizer state and run bookkeeping to ``path`` atomically (the
    arguments as :func:`checkpoint_writer` takes them)."""
    atomic_write(path, checkpoint_writer(params=params, optimizer_state=optimizer_state,
                                         epoch=epoch, step=step, metrics=metrics, meta=meta),
                 "checkpoint")


def checkpoint_writer(*, params, optimizer_state: dict, epoch: int, step: int, metrics: dict,
                      meta: dict):
    """A ``write_contents(binary_file)`` that writes the checkpoint (for
    :func:`netdsl.core.files.write_together`, which writes it beside other files).

    ``params`` is ``{node: {param: array}}`` (NumPy or CuPy); ``optimizer_state`` is an
    optimizer's ``state_dict()``; ``metrics`` and ``meta`` must be JSON-able (NumPy scalars ok).
    """
    arrays = {}
    for node, node_params in params.items():
        for name, value in node_params.items():
            if "/" in name:
                raise ValueError(f"parameter name {name!r} of node {node!r} must not contain '/'")
            arrays[f"{_PARAM_PREFIX}{node}/{name}"] = to_numpy(value)
    optimizer_scalars = {}
    for key, value in optimizer_state.items():
        if _is_array(value):
            arrays[_OPT_PREFIX + key] = to_numpy(value)
        else:
            optimizer_scalars[key] = value
    header = {"format": FORMAT_TAG, "version": FORMAT_VERSION, "epoch": int(epoch),
              "step": int(step), "metrics": metrics, "meta": meta,
              "optimizer_scalars": optimizer_scalars}
    arrays[_HEADER_KEY] = np.array(json.dumps(header, default=_to_jsonable))
    return lambda f: np.savez(f, **arrays)


def _unreadable(path: str, exc: Exception) -> NetdslError:
    return NetdslError(f"'{path}' is not a netdsl checkpoint or is damaged "
                       f"({type(exc).__name__}: {exc})",
                       hint="a file cut short (full disk, interrupted copy) cannot be read; "
                            "use an earlier checkpoint")


def _read_archive(path: str, f, with_arrays: bool = True) -> tuple:
    """The parsed JSON header and all arrays (none unless ``with_arrays``) of the open
    checkpoint file ``f``."""
    magic = f.read(len(_NPY_MAGIC))
    # Checked here so that np.load never gets to suggest unpickling a foreign file.
    if magic.startswith(_NPY_MAGIC):
        raise NetdslError(f"'{path}' is a single NumPy array, not a netdsl checkpoint")
    if not magic.startswith(_ZIP_MAGIC):
        raise NetdslError(f"'{path}' is not a netdsl checkpoint (not an .npz archive)")
    f.seek(0)
    try:
        archive = np.load(f, allow_pickle=False)
    except Exception as exc:   # BadZipFile, EOFError, ... from a damaged or truncated archive
        raise _unreadable(path, exc) from None
    with archive:
        if _HEADER_KEY not in archive.files:
            raise NetdslError(f"'{path}' is a .npz file but not a netdsl checkpoint "
                              f"(it has no '{_HEADER_KEY}' entry)")
        try:
            header = json.loads(str(archive[_HEADER_KEY]))
            # only the members netdsl reads: another (a 4 GiB deflated extra) is never inflated
            arrays = {key: archive[key] for key in archive.files
                      if with_arrays and key.startswith((_PARAM_PREFIX, _OPT_PREFIX))}
        except Exception as exc:   # a damaged member: zlib/CRC errors, bad .npy header, bad JSON
            raise _unreadable(path, exc) from None
    return header, arrays


# The header fields a loader relies on, with the types it relies on (a hand-edited or damaged
# header must be a user error, not a crash deep in resume).
_HEADER_TYPES = {"version": int, "epoch": int, "step": int, "optimizer_scalars": dict,
                 "metrics": dict, "meta": dict}


def _check_header_types(path: str, header: dict) -> None:
    for key, kind in _HEADER_TYPES.items():
        if key not in header:
            continue
        value = header[key]
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if ok and kind is int and value < 0:
            ok = False
        if not ok:
            raise NetdslError(f"checkpoint '{path}' is damaged: header field {key} = "
                              f"{json.dumps(value)[:60]} is not a{'' if kind is dict else ' non-negative'} "
                              f"{'JSON object' if kind is dict else 'whole number'}",
                              hint="resume from another checkpoint, or start afresh")


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns ``{"params": {node: {param: ndarray}}, "optimizer_state": dict, "epoch": int,
    "step": int, "metrics": dict, "meta": dict}``. Any problem with the file (missing, not a
    checkpoint, truncated) raises :class:`NetdslError` naming it.
    """
    path = os.fspath(path)
    header, arrays = _read_checked(path, with_arrays=True)
    params: dict = {}
    optimizer_state = dict(header.get("optimizer_scalars", {}))
    for key, value in arrays.items():
        if key.startswith((_PARAM_PREFIX, _OPT_PREFIX)) and (
                value.dtype.kind != "f" or value.dtype.itemsize > 8):
            raise _damaged(path, f"array '{key}' has dtype {value.dtype}, not float32/float64")
        if key.startswith(_PARAM_PREFIX):
            node, _, name = key[len(_PARAM_PREFIX):].rpartition("/")
            params.setdefault(node, {})[name] = value
        elif key.startswith(_OPT_PREFIX):
            optimizer_state[key[len(_OPT_PREFIX):]] = value
    metrics = dict(header.get("metrics", {}))
    metrics.setdefault("history", [])
    return {"params": params, "optimizer_state": optimizer_state, "epoch": header.get("epoch", 0),
            "step": header.get("step", 0), "metrics": metrics, "meta": header.get("meta", {})}


def load_header(path) -> dict:
    """Only the checked JSON header of a checkpoint (``epoch``, ``step``, ``metrics``,
    ``meta``, ...): cheap, so the CLI can refuse a mismatched resume before loading data."""
    return _read_checked(os.fspath(path), with_arrays=False)[0]


def _read_checked(path: str, with_arrays: bool) -> tuple:
    if not os.path.exists(path):
        raise NetdslError(f"checkpoint '{path}' does not exist")
    if os.path.isdir(path):
        raise NetdslError(f"checkpoint '{path}' is a directory, not a file")
    try:
        # We open the file ourselves: np.load(path) leaks its handle when the zip is damaged.
        with open(path, "rb") as f:
            header, arrays = _read_archive(path, f, with_arrays)
    except OSError as exc:
        raise NetdslError(f"cannot read checkpoint '{path}': {exc.strerror or exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_TAG:
        raise NetdslError(f"'{path}' is not a netdsl checkpoint (unrecognised header)")
    _check_header_types(path, header)
    if header.get("version", 0) > FORMAT_VERSION:
        raise NetdslError(f"checkpoint '{path}' has format version {header['version']}, newer "
                          f"than this netdsl understands ({FORMAT_VERSION})",
                          hint="upgrade netdsl to load it")
    check_header(header, path)
    return header, arrays


# Far above any real run, far below where int/float conversions or schedules would misbehave.
MAX_EPOCH, MAX_STEP = 10 ** 9, 2 ** 53
_ROW_NUMBERS = ("loss", "train_acc", "test_acc", "images_per_s", "lr", "seconds")


def _damaged(path: str, why: str) -> NetdslError:
    return NetdslError(f"checkpoint '{path}' is damaged: {why}",
                       hint="was the file edited by hand? use the checkpoint as netdsl wrote it, "
                            "or an earlier one")


def _is_count(value, limit: int) -> bool:
    return type(value) is int and 0 <= value <= limit


def check_header(header: dict, path: str) -> None:
    """Every header field has the type and range netdsl writes; anything else (a hand-edited
    or corrupted header) is a NetdslError naming the field, never a crash later on. Types
    first (:func:`_check_header_types`), then the ranges a resumed run relies on."""
    _check_header_types(path, header)
    for key, limit in (("epoch", MAX_EPOCH), ("step", MAX_STEP)):
        if key in header and not _is_count(header[key], limit):
            raise _damaged(path, f"{key} = {header[key]!r} is not a whole number "
                                 f"between 0 and {limit}")
    if "meta" in header:
        check_meta(header["meta"], path)
    scalars = header.get("optimizer_scalars", {})
    if "t" in scalars and not _is_count(scalars["t"], MAX_STEP):
        raise _damaged(path, f"optimizer step count t = {scalars['t']!r} is not a whole number")
    if "optimizer" in scalars and not isinstance(scalars["optimizer"], str):
        raise _damaged(path, f"optimizer = {scalars['optimizer']!r} is not a name")


# The meta fields readers use, with their types (netdsl writes exactly these).
_META_TYPES = {"network": str, "source": str, "params": dict, "graph": dict, "preprocess": dict,
               "config": dict, "data": dict, "batch_in_epoch": int, "interrupted": bool,
               "epoch_sums": dict, "changes": list, "imported_from": str,
               "converted_from": str}


def check_meta(meta: dict, path: str) -> None:
    """The checkpoint's meta record: each field netdsl reads has the type it writes, the
    program parameters are values the language has, and the preprocessing record is sane
    (data.images.check_record) — checked once here, so that no reader meets a wrong type."""
    for key, kind in _META_TYPES.items():
        if key not in meta:
            continue
        value = meta[key]
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if ok and kind is int:
            ok = _is_count(value, MAX_STEP)
        if not ok:
            raise _damaged(path, f"meta.{key} = {json.dumps(value)[:60]} is not "
                                 f"{_KIND_NAMES[kind]}")
    for name, value in meta.get("params", {}).items():
        if not _is_program_value(value):
            raise _damaged(path, f"meta.params.{name} = {json.dumps(value)[:60]} is not a "
                                 "program parameter value")
    if "preprocess" in meta:
        from ..data.images import check_record
        check_record(meta["preprocess"], f"checkpoint '{path}'")


_KIND_NAMES = {str: "a string", dict: "a JSON object", int: "a whole number",
               bool: "true or false", list: "a list"}


def _is_program_value(value, depth: int = 0) -> bool:
    """A value a .net parameter can hold: a number, string or bool, or a (short) list."""
    if isinstance(value, (bool, int, float, str)):
        return not isinstance(value, float) or value == value   # no NaN
    return isinstance(value, list) and depth < 4 and len(value) <= 64 and all(
        _is_program_value(v, depth + 1) for v in value)


def check_history(history, epochs_done: int, path: str) -> list:
    """The trainer's ``metrics.history``: one record per finished epoch, numbered 1, 2, …"""
    if not isinstance(history, list):
        raise _damaged(path, "metrics.history is not a list")
    for i, row in enumerate(history):
        ok = isinstance(row, dict) and _is_count(row.get("epoch"), MAX_EPOCH) and all(
            isinstance(row.get(k, 0.0), (int, float)) and not isinstance(row.get(k), bool)
            for k in _ROW_NUMBERS)
        if not ok or row["epoch"] != i + 1 or "test_acc" not in row:
            raise _damaged(path, f"metrics.history[{i}] is not an epoch record: {row!r:.80}")
    if len(history) != epochs_done:
        raise _damaged(path, f"{len(history)} epoch record(s) for {epochs_done} epoch(s) done")
    return list(history)
