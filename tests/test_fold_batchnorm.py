"""Acceptance 3 of issue 7: BN folding leaves inference logits equal within 1e-5 relative, in
float32, on the benchmark's BN nets at their benchmark size (CIFAR ResNet-20 and
inception_small on 32×32×3).

The reference is the same float32 weights run unfolded (no pass at all); batch-norm statistics
and scales are drawn at random so that folding changes every conv's weights. The folded model
is the one `bench --mode infer` runs: the executor's training pipeline (BN+ReLU fused) and then
its inference pipeline (BN folded into the conv, the ReLU moved along).
"""
import numpy as np
import pytest

from netdsl.core import graph as G
from netdsl.compile.compiler import build_graph
from netdsl.core.errors import SourceFile
from netdsl.runtime.executor import Executor
from netdsl.compile.model import BoundModel
from netdsl.compile.shapes import infer_shapes, resolve_auto

from conftest import NETS
from test_pass_harness import randomize_batchnorm


def _model(name: str) -> BoundModel:
    g = build_graph(SourceFile(name, (NETS / name).read_text()))
    resolve_auto(g, input_shape=(32, 32, 3), num_classes=10)
    infer_shapes(g)
    return randomize_batchnorm(BoundModel.init(g, dtype=np.float32, seed=7))


@pytest.mark.parametrize("net", ["resnet20.net", "inception_small.net"])
@pytest.mark.parametrize("kernels", ["numpy", "auto"])
def test_folded_logits_within_1e5_relative_float32(net, kernels):
    m = _model(net)
    bns = sum(1 for r in G.nodes(m.graph) if r.op == "batchnorm")
    x = np.random.default_rng(3).standard_normal((4, 32, 32, 3)).astype(np.float32)
    ref = Executor(m.copy(), passes=(), kernels="numpy").forward(x).logits
    folded = Executor(m.copy(), kernels=kernels).for_inference()
    left = sum(1 for st in folded.plan if st.node.op == "batchnorm")
    assert bns > 0 and left < bns, "folding had nothing to fold"
    assert sum(1 for st in folded.plan if st.node.meta.get("folded")) == bns - left
    out = folded.forward(x).logits
    assert out.dtype == np.float32
    err = np.abs(out.astype(np.float64) - ref).max() / np.abs(ref).max()
    assert err <= 1e-5, f"{net}: folded logits differ by {err:.2e} of their scale"
