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


def read_safetensors(path: str) -> dict:
    """``{"params": {node: {name: array}}, "meta": dict}`` from a .safetensors file; tensors
    named without the ``param/`` prefix are read as ``node/name`` too."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise NetdslError(f"weights file '{path}' does not exist") from None
    except OSError as exc:
        raise NetdslError(f"cannot read '{path}': {exc.strerror or exc}") from None
    try:
        (size,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + size])
        data = memoryview(raw)[8 + size:]
        meta = json.loads((header.pop("__metadata__", None) or {}).get("netdsl", "{}"))
        params: dict = {}
        for key, info in header.items():
            begin, end = info["data_offsets"]
            a = np.frombuffer(data[begin:end], dtype=np.dtype(_DTYPES[info["dtype"]]).newbyteorder(
                "<")).reshape(info["shape"])
            node, _, name = key.removeprefix(_PREFIX).rpartition("/")
            params.setdefault(node, {})[name] = a.astype(a.dtype.newbyteorder("="))
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise NetdslError(f"'{path}' is not a readable .safetensors file ({type(exc).__name__}: "
                          f"{exc})") from None
    return {"params": params, "meta": meta}
