"""Malformed .safetensors weights through `predict --weights`: headers that are not objects,
nested too deep, with wrong dtypes, shapes, offsets outside the data or overlapping, lengths
that lie, and bytes flipped at random. Every case must end in a clean user error (exit 1) or,
for a harmless change, success: never exit 70 or a traceback (25 of 68 hand-made cases
ended in exit 70 before)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import struct

import numpy as np
import pytest

from netdsl.cli.app import main

from conftest import NETS, ROOT

LENET = str(NETS / "lenet5.net")
IMAGE = str(ROOT / "docs" / "examples" / "digit3.png")


def _parts(path):
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + size]), raw[8 + size:]


def _pack(header, data: bytes, size=None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if size is None else size) + text + data


def _hand_made(header, data):
    """(name, bytes) of structural mutations of a good file."""
    name = next(k for k in header if k != "__metadata__")
    first = header[name]
    yield "not an object", _pack([1, 2, 3], data)
    yield "a string", _pack("header", data)
    yield "deep", _pack(b"[" * 100_000 + b"]" * 100_000, data)
    yield "not json", _pack(b"{nope", data)
    yield "length too long", _pack(header, data, size=10 ** 12)
    yield "length zero", _pack(b"", data, size=0)
    yield "short file", b"\x01\x02"
    yield "empty file", b""
    for field, values in {"dtype": [None, 7, "F8", "BF16", [], "f32"],
                          "shape": [None, "3", [-1], [1.5], [2 ** 62, 2 ** 62], [[1]], [1] * 9],
                          "data_offsets": [None, [0], [5, 1], [-4, 0], [0, 10 ** 15],
                                           ["0", "4"], [0.0, 4.0], [0, 1, 2]]}.items():
        for value in values:
            h = json.loads(json.dumps(header))
            h[name][field] = value
            yield f"{field}={value!r:.20}", _pack(h, data)
    h = json.loads(json.dumps(header))
    h[name] = "not a tensor entry"
    yield "entry not an object", _pack(h, data)
    h = json.loads(json.dumps(header))
    other = next(k for k in h if k not in ("__metadata__", name))
    h[other]["data_offsets"] = list(first["data_offsets"])   # two tensors, one byte range
    h[other]["shape"], h[other]["dtype"] = first["shape"], first["dtype"]
    yield "overlapping", _pack(h, data)
    for meta in [None, 3, [], {"netdsl": 5}, {"netdsl": "[1]"}, {"netdsl": "{"},
                 {"netdsl": json.dumps({"preprocess": {"native_shape": [10 ** 6] * 2 + [1],
                                                       "mean": [0], "std": [1]}})},
                 {"netdsl": json.dumps({"params": {"N": {"a": 1}}})}]:
        h = json.loads(json.dumps(header))
        h["__metadata__"] = meta
        yield f"metadata {meta!r:.30}", _pack(h, data)
    h = json.loads(json.dumps(header))
    h["__metadata__"] = {"netdsl": "[" * 50_000 + "]" * 50_000}
    yield "metadata deep", _pack(h, data)


def _flipped(good: bytes, count: int, seed: int):
    rng = np.random.default_rng(seed)
    (size,) = struct.unpack("<Q", good[:8])
    for i in range(count):
        b = bytearray(good)
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(0, 8 + size))          # mostly the header
            b[at] = int(rng.integers(0, 256))
        yield f"flip{i}", bytes(b)


@pytest.mark.slow   # ~1,100 in-process predictions
def test_malformed_safetensors_are_user_errors(tmp_path):
    run = tmp_path / "run"
    assert main(["run", LENET, "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    good = tmp_path / "good.safetensors"
    assert main(["export", LENET, "--weights", str(run / "checkpoint.npz"),
                 "-o", str(good)]) == 0
    header, data = _parts(good)
    scale = int(os.environ.get("NETDSL_FUZZ_SCALE", "1"))    # more for an offline run
    seed = int(os.environ.get("NETDSL_FUZZ_SEED", "0"))
    cases = list(_hand_made(header, data)) + list(_flipped(good.read_bytes(), 1000 * scale,
                                                           seed))
    bad_path = tmp_path / "bad.safetensors"
    failures = []
    for name, blob in cases:
        bad_path.write_bytes(blob)
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            status = main(["predict", LENET, "--weights", str(bad_path), IMAGE])
        if status not in (0, 1) or "Traceback" in err.getvalue():
            failures.append((name, status, err.getvalue()[-300:]))
        if not name.startswith("flip"):
            assert status == 1, name          # every structural change is refused
    assert len(cases) >= 1000
    assert failures == [], failures[:5]
