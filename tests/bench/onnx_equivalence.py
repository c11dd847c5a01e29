"""Measure how closely onnxruntime reproduces netdsl's logits for the zoo nets (exported with
random weights, non-trivial biases and BN statistics), and how long export takes.

    python tests/bench/onnx_equivalence.py [--batch 2]

Prints one row per net: ONNX nodes, file size, export seconds, max |ORT − netdsl| relative to
the largest logit. The tests assert the same bound (1e-5); this shows the actual margins.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

NETS = [("lenet5", None), ("inception_small", (28, 28, 1)), ("resnet18", None),
        ("vgg16", None)]


def main() -> None:
    import onnxruntime as ort
    from netdsl.core import graph as G
    from netdsl.interchange.onnx_export import to_onnx
    from netdsl.interchange.trained import load_trained
    from test_onnx_export import randomise

    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=2)
    args = p.parse_args()
    print(f"{'net':16} {'nodes':>5} {'MB':>7} {'export s':>8} {'max rel diff':>12}")
    for name, shape in NETS:
        t = load_trained(str(ROOT / "nets" / f"{name}.net"), input_shape=shape)
        params = randomise(t.params)
        start = time.perf_counter()
        model = to_onnx(t.graph, params)
        seconds = time.perf_counter() - start
        blob = model.SerializeToString()
        inp = next(r for r in G.nodes(t.graph) if r.op == "input").out_shape
        x = np.random.default_rng(1).standard_normal((args.batch, *inp)).astype(np.float32)
        ours = t.executor().forward(x).logits
        sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
        theirs = sess.run(["logits"], {"input": x.transpose(0, 3, 1, 2).copy()})[0]
        err = np.abs(theirs - ours).max() / np.abs(ours).max()
        print(f"{name:16} {len(model.graph.node):5d} {len(blob) / 2**20:7.1f} {seconds:8.2f} "
              f"{err:12.2e}")


if __name__ == "__main__":
    main()
