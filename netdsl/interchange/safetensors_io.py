"""Weights as ``.safetensors`` (the format of Hugging Face's safetensors package), written and
read here without that package: the format is small enough to do by hand, and netdsl needs
no extra dependency for it.

Layout: an 8-byte little-endian header length, a JSON header mapping each tensor name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into the data that follows) plus
an optional ``"__metadata__"`` of string → string, then the raw little-endian bytes.
netdsl uses the checkpoint's key names (``param/<node>/<name>``) and stores the checkpoint's
meta as JSON text under ``__metadata__["netdsl"]``.
"""
from __future__ import annotations

import json
import struct

import numpy as np

from ..core.errors import NetdslError
from ..core.files import atomic_write

_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64,
           "I32": np.int32, "U8": np.uint8}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
_PREFIX = "param/"


def write_safetensors(path: str, params: dict, meta: dict) -> None:
    """Write ``{node: {name: array}}`` and ``meta`` (JSON-able) to ``path``."""
    header, blobs, offset = {}, [], 0
    for node in sorted(params):
        for name in sorted(params[node]):
            a = np.ascontiguousarray(params[node][name])
            data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
            header[f"{_PREFIX}{node}/{name}"] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape),
                                                "data_offsets": [offset, offset + len(data)]}
            blobs.append(data)
            offset += len(data)
    header["__metadata__"] = {"format": "netdsl-checkpoint",
                              "netdsl": json.dumps(meta, default=str)}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)   # the format aligns the data on 8 bytes
    def write(f):
        f.write(struct.pack("<Q", len(text)) + text)
        for blob in blobs:
            f.write(blob)
    atomic_write(path, write, "safetensors file")


MAX_HEADER_BYTES = 100 << 20   # the format's own readers refuse larger headers too


def read_safetensors(path: str) -> dict:
    """``{"params": {node: {name: array}}, "meta": dict}`` from a .safetensors file; tensors
    named without the ``param/`` prefix are read as ``node/name`` too. Everything in the
    header is checked before use (types, dtypes, shapes against byte ranges, ranges inside
    the file and apart from each other): a malformed file is a NetdslError naming the
    problem."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise NetdslError(f"weights file '{path}' does not exist") from None
    except IsADirectoryError:
        raise NetdslError(f"weights file '{path}' is a directory") from None
    except OSError as exc:
        raise NetdslError(f"cannot read '{path}': {exc.strerror or exc}") from None

    def bad(why):
        return NetdslError(f"'{path}' is not a readable .safetensors file: {why}",
                           hint="write it with netdsl export -o FILE.safetensors")
    if len(raw) < 8:
        raise bad("shorter than its 8-byte header length")
    (size,) = struct.unpack("<Q", raw[:8])
    if size > min(MAX_HEADER_BYTES, len(raw) - 8):
        raise bad(f"its header claims {size:,} bytes, the file has {len(raw) - 8:,} after it")
    try:
        header = json.loads(raw[8:8 + size])
    except (ValueError, RecursionError) as exc:
        raise bad(f"its header is not JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise bad(f"its header is a JSON {type(header).__name__}, not an object")
    data = memoryview(raw)[8 + size:]
    meta = _read_meta(header.pop("__metadata__", None), bad)
    params: dict = {}
    ranges = []
    for key, info in header.items():
        a = _read_tensor(key, info, data, bad)
        ranges.append((info["data_offsets"][0], info["data_offsets"][1], key))
        node, _, name = key.removeprefix(_PREFIX).rpartition("/")
        if not node or not name:
            raise bad(f"tensor {key!r:.60} is not named NODE/PARAM")
        params.setdefault(node, {})[name] = a.astype(a.dtype.newbyteorder("="))
    ranges.sort()
    for (_, end, first), (begin, _, second) in zip(ranges, ranges[1:]):
        if begin < end:
            raise bad(f"tensors {first!r:.40} and {second!r:.40} share bytes")
    if meta:
        from ..train.checkpoint import check_meta
        check_meta(meta, path)
    return {"params": params, "meta": meta}


def _read_meta(metadata, bad) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad("__metadata__ must map names to strings")
    try:
        meta = json.loads(metadata.get("netdsl", "{}"))
    except (ValueError, RecursionError):
        raise bad("its netdsl metadata is not JSON") from None
    if not isinstance(meta, dict):
        raise bad("its netdsl metadata is not a JSON object")
    return meta


def _read_tensor(key, info, data, bad) -> np.ndarray:
    if not isinstance(info, dict):
        raise bad(f"the entry of {key!r:.60} is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise bad(f"{key!r:.60} has dtype {dtype!r:.20}; netdsl reads {', '.join(_DTYPES)}")
    if not (isinstance(shape, list) and len(shape) <= 8 and all(
            type(d) is int and 0 <= d <= 2 ** 40 for d in shape)):
        raise bad(f"{key!r:.60} has shape {shape!r:.60}, not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(
            type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1] <= len(data)):
        raise bad(f"{key!r:.60} has data_offsets {offsets!r:.60} outside the "
                  f"{len(data):,} bytes of data")
    item = np.dtype(_DTYPES[dtype]).newbyteorder("<")
    count = 1
    for d in shape:
        count *= d
    if offsets[1] - offsets[0] != count * item.itemsize:
        raise bad(f"{key!r:.60}: {offsets[1] - offsets[0]:,} bytes for shape {shape} of "
                  f"{dtype} ({count * item.itemsize:,} bytes)")
    return np.frombuffer(data[offsets[0]:offsets[1]], dtype=item).reshape(shape)
