"""The modern zoo (nets/modern/, issue 15): each net compiles to the published parameter count
at 224×224×3 → 1000 classes, and takes a training step at a reduced input.

The counts are torchvision's (``sum(p.numel() for p in model.parameters())`` of
torchvision.models.<name>()) and, for SE-ResNet-50, timm's seresnet50 — written here, not taken
from netdsl. With torchvision installed, a further test compares every parameter tensor's size
with torchvision's own model.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import NETS
from netdsl.compile.compiler import compile_file
from netdsl.core.graph import nodes
from netdsl.runtime.executor import Executor
from netdsl.train.optim import SGD

MODERN = NETS / "modern"

PUBLISHED = {
    "mobilenet_v2": 3_504_872,
    "efficientnet_b0": 5_288_548,
    "shufflenet_v2_x1_0": 2_278_604,
    "densenet121": 7_978_856,
    "resnext50_32x4d": 25_028_904,
    "se_resnet50": 28_088_024,          # timm seresnet50 (torchvision has no SE-ResNet)
}


def compiled(name, input_override=None):
    return compile_file(str(MODERN / f"{name}.net"), need_data=False,
                        input_override=input_override).graph


def test_the_modern_zoo_is_complete():
    assert {p.stem for p in MODERN.glob("*.net")} == set(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_count_and_classes(name):
    g = compiled(name)
    recs = nodes(g)
    assert sum(r.n_params for r in recs) == PUBLISHED[name]
    assert next(r for r in recs if r.op == "input").out_shape == (224, 224, 3)
    logits = [r for r in recs if r.op == "fc"][-1]
    assert logits.out_shape == (1000,)
    # Nothing added behind the user's back: no projection where the file asked for none.
    if name in ("mobilenet_v2", "efficientnet_b0", "shufflenet_v2_x1_0", "densenet121"):
        assert not any(r.meta.get("projection") for r in recs)


@pytest.mark.slow   # 2–8 s each: a forward, backward and SGD step of a full-width net at 32×32
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_trains_a_step_at_a_reduced_input(name):
    g = compiled(name, input_override=(32, 32, 3))
    ex = Executor(g, dtype=np.float32, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 1000, size=2)
    before = {k: {p: v.copy() for p, v in layer.items()} for k, layer in ex.params.items()}
    loss = float(ex.forward(x, y, training=True).loss)
    assert np.isfinite(loss) and loss > 0
    grads = ex.backward()
    assert all(np.all(np.isfinite(g)) for layer in grads.values() for g in layer.values())
    SGD(0.01, momentum=0.9).step(ex.params, grads)
    # Every tensor with a gradient moved. (A BN shift right before a linear layer and another BN
    # has an exactly zero gradient — the second BN removes any per-channel constant — so a few
    # tensors may stay; most must not.)
    live = [(k, p) for k in grads for p in grads[k] if np.any(grads[k][p])]
    assert len(live) > 0.9 * sum(len(layer) for layer in grads.values())
    assert all(not np.array_equal(before[k][p], ex.params[k][p]) for k, p in live)
    assert np.isfinite(float(ex.forward(x, y, training=True).loss))


TORCHVISION = ["mobilenet_v2", "efficientnet_b0", "shufflenet_v2_x1_0", "densenet121",
               "resnext50_32x4d"]


@pytest.mark.slow   # builds torchvision's model (1–3 s)
@pytest.mark.parametrize("name", TORCHVISION)
def test_every_tensor_matches_torchvision(name):
    """The multiset of parameter tensor sizes equals torchvision's: the same layers, not only the
    same total."""
    models = pytest.importorskip("torchvision.models")
    model = getattr(models, name)(weights=None)
    theirs = sorted(p.numel() for p in model.parameters())
    assert sum(theirs) == PUBLISHED[name]
    ours = sorted(int(np.prod(spec.shape)) for r in nodes(compiled(name))
                  for spec in (r.param_specs or {}).values() if spec.trainable)
    assert ours == theirs
