"""The CLI fuzzer's rule for the interchange commands: hostile checkpoints through predict,
eval and export, hostile ONNX files through import, hostile images and .npy batches through
predict. Every case must end as a user-facing outcome (exit 0, 1 or 2; no internal error, no
traceback, no hang). Seeded (NETDSL_FUZZ_SEED) with fixed case counts, as test_fuzz_cli."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest

from test_fuzz_cli import SEED, Failures, _flip, mutate_checkpoint, run_cli

# NETDSL_FUZZ_SCALE=N multiplies the counts for a longer offline run (docs/testing.md).
SCALE = int(os.environ.get("NETDSL_FUZZ_SCALE", "1"))
CASES = {"checkpoints": 48 * SCALE, "onnx": 600 * SCALE, "inputs": 300 * SCALE}

NET = "INPUT(8x8x1) -> CONV(4, 3) -> BN -> RELU -> MAXPOOL(2) -> FC(12) -> RELU -> FC\n"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A trained tiny conv net, its checkpoint, its ONNX export and an npz data set."""
    root = tmp_path_factory.mktemp("fuzz_ic")
    net = root / "tiny.net"
    net.write_text(NET, encoding="utf-8")
    data = root / "d.npz"
    np.savez(data, x=np.random.default_rng(0).random((40, 8, 8)), y=np.arange(40) % 10)
    assert run_cli(["run", net, "--data", f"npz:{data}", "--batch-size", 8, "--epochs", 1,
                    "--quiet", "--out", root / "run"])[0] == 0
    out = {"root": root, "net": net, "data": f"npz:{data}", "ckpt": root / "run" / "checkpoint.npz"}
    if _has("onnx"):
        out["onnx"] = root / "tiny.onnx"
        assert run_cli(["export", net, "--weights", out["ckpt"], "-o", out["onnx"]])[0] == 0
    return out


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def test_fuzz_checkpoints_through_predict_eval_export(good):
    rng = random.Random(SEED + 10)
    batch = good["root"] / "b.npy"
    np.save(batch, np.random.default_rng(1).random((2, 8, 8)))
    failures = Failures()
    for i in range(CASES["checkpoints"]):
        bad = good["root"] / f"bad{i}.npz"
        what = mutate_checkpoint(good["ckpt"], bad, rng)
        for argv in (["predict", good["net"], "--weights", bad, batch],
                     ["eval", good["net"], "--weights", bad, "--data", good["data"]],
                     ["export", good["net"], "--weights", bad, "-o", good["root"] / "x.safetensors"]):
            status, output = run_cli(argv)
            failures.check(argv, status, output, what)
    failures.assert_none("interchange checkpoints")


def _mutate_onnx(data: bytes, rng: random.Random):
    """Bytes flipped or cut, or a structural edit of the model: an attribute, an initializer,
    an op type, the input shape, a node's inputs."""
    import onnx
    kind = rng.randrange(6)
    if kind == 0:
        return _flip(data, rng, rng.randint(1, 12)), "byte flips"
    if kind == 1:
        return data[:rng.randrange(len(data))], "truncated"
    model = onnx.load_from_string(data)
    g = model.graph
    node = rng.choice(list(g.node))
    if kind == 2 and node.attribute:
        attr = rng.choice(list(node.attribute))
        if attr.ints:
            attr.ints[rng.randrange(len(attr.ints))] = rng.choice([0, -1, 2, 7, 10**6])
        else:
            attr.i = rng.choice([0, -3, 5, 10**9])
        what = f"{node.op_type}.{attr.name} edited"
    elif kind == 3 and g.initializer:
        t = rng.choice(list(g.initializer))
        a = onnx.numpy_helper.to_array(t)
        new = rng.choice([np.zeros((3,), np.float32), np.full(a.shape, np.nan, np.float32),
                          np.zeros(a.shape[:-1] + (a.shape[-1] + 1,) if a.ndim else (2,),
                                   np.float32)])
        t.CopyFrom(onnx.numpy_helper.from_array(new, t.name))
        what = f"initializer {t.name} replaced by {new.shape}"
    elif kind == 4:
        node.op_type = rng.choice(["Conv", "Relu", "Gemm", "Flatten", "Concat", "Softmax",
                                   "Mystery", "MaxPool", "BatchNormalization"])
        what = f"node {node.name} became {node.op_type}"
    else:
        dims = g.input[0].type.tensor_type.shape.dim
        dims[rng.randrange(1, len(dims))].dim_value = rng.choice([0, 1, 3, 1000])
        what = "input shape edited"
    return model.SerializeToString(), what


def test_fuzz_onnx_through_import(good):
    pytest.importorskip("onnx")
    rng = random.Random(SEED + 11)
    data = good["onnx"].read_bytes()
    failures = Failures()
    for i in range(CASES["onnx"]):
        bad = good["root"] / f"m{i}.onnx"
        try:
            blob, what = _mutate_onnx(data, rng)
        except Exception:   # the edit itself broke the protobuf: keep the raw flip
            blob, what = _flip(data, rng), "byte flips"
        bad.write_bytes(blob)
        argv = ["import", bad, "-o", good["root"] / f"m{i}.net"]
        status, output = run_cli(argv)
        failures.check(argv, status, output, what)
    failures.assert_none("onnx import")


def test_fuzz_inputs_through_predict(good):
    rng = random.Random(SEED + 12)
    failures = Failures()
    root = good["root"]
    for i in range(CASES["inputs"]):
        kind = rng.randrange(4)
        if kind == 0:
            path = root / f"i{i}.npy"
            a = rng.choice([np.zeros((0, 8, 8)), np.zeros((2, 8, 8, 3)), np.zeros((1, 8, 8, 2)),
                            np.zeros((1, 1, 1)), np.zeros((2, 3, 4, 5, 6)), np.array(["x"]),
                            np.full((1, 8, 8), np.inf), np.ones((1, 5000, 1), np.uint16),
                            np.zeros((1, 8, 8), np.complex64), np.zeros((1, 8, 0))])
            np.save(path, a)
            what = f"npy {a.dtype} {a.shape}"
        elif kind == 1:
            path = root / f"i{i}.png"
            path.write_bytes(_flip(b"\x89PNG\r\n\x1a\n" + bytes(rng.randbytes(60)), rng))
            what = "garbage png"
        elif kind == 2:
            path = root / f"i{i}.npy"
            path.write_bytes(rng.randbytes(rng.randrange(1, 200)))
            what = "garbage npy"
        else:
            path = root
            what = "a directory"
        argv = ["predict", good["net"], "--weights", good["ckpt"], path,
                *rng.choice([[], ["--invert"], ["--crop-ink"], ["--format", "json"]])]
        status, output = run_cli(argv)
        failures.check(argv, status, output, what)
    failures.assert_none("predict inputs")

