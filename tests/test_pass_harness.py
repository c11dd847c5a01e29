"""The generic pass harness: every pass, on random nets and on every file in nets/.

For each (net, pass) the harness checks, on float64 weights with batch-norm statistics and
scales drawn at random (so that folding is not a no-op):

* idempotence: running the pass a second time reports no change;
* the verifier (graph and weights) accepts the result;
* equivalence, tolerance 1e-10 relative (float64): in the pass's mode, the main head's logits
  and loss are equal before and after, and so is the gradient of every parameter whose node and
  values the pass left alone (a folded conv's weights are new parameters; a pass that drops
  auxiliary heads changes the loss being differentiated, so there only outputs are compared).

The reference for "before" is the unoptimised graph run with ``passes=()``.
"""
from __future__ import annotations

import functools
import random
import re

import numpy as np
import pytest

from netdsl.core import graph as G
from netdsl.compile.compiler import build_graph
from netdsl.core.errors import SourceFile
from netdsl.runtime.executor import Executor
from netdsl.compile.model import BoundModel
from netdsl.compile.passes import PASSES, PIPELINES, run_model_passes
from netdsl.compile.verify import VerifyError, verify
from netdsl.compile.shapes import infer_shapes, resolve_auto

from conftest import NETS

RTOL = 1e-10   # float64: passes only reorder or fold arithmetic
CLASSES = 10


def random_net(seed: int) -> str:
    """A random valid network: conv/pool/bn/relu/concat/residual/fc/dropout chains, sometimes
    an auxiliary head. Spatial sizes stay ≥ 2 because pools are counted."""
    r = random.Random(seed)
    size = r.choice([6, 8])
    parts = [f"INPUT({size}x{size}x{r.choice([1, 3])})"]
    aux = None
    for i in range(r.randint(2, 5)):
        kind = r.choice(["conv", "conv", "bn", "pool", "concat", "residual", "dropout"])
        c = r.randint(2, 5)
        if kind == "conv":
            parts.append(f"CONV({c}, {r.choice([1, 3])}, bias={r.choice(['true', 'false'])})"
                         + r.choice(["", " -> RELU", " -> BN -> RELU", " -> BN", " -> TANH"]))
        elif kind == "bn":
            parts.append("CONV(4, 3) -> BN -> RELU")
        elif kind == "pool" and size >= 4:
            parts.append(r.choice(["MAXPOOL(2)", "AVGPOOL(2)", "MAXPOOL(3, stride=1, pad=1)"]))
            size //= 2
        elif kind == "concat":
            parts.append(f"m{i}: concat {{ CONV({c}, 1) -> RELU | CONV(2, 3) -> BN | identity }}")
            if aux is None and r.random() < 0.6:
                aux = f"m{i}"
        elif kind == "residual":
            parts.append(f"residual {{ CONV({c}, 3) -> BN -> RELU -> CONV({c}, 3) -> BN }} -> RELU")
        elif kind == "dropout":
            parts.append("DROPOUT(0.3)")
    tail = r.choice(["GAP -> FC", "FC(7) -> RELU -> DROPOUT(0.5) -> FC", "FC(6) -> BN -> RELU -> FC"])
    text = " -> ".join(parts) + f" -> {tail}\n"
    if aux:
        text += f"@{aux} -> GAP -> FC(5) -> RELU -> FC -> LOSS(0.3)\n"
    return text


# Zoo nets whose input the 224→32 rule does not shrink to a size every layer still fits.
ZOO_INPUTS = {"alexnet.net": ("227x227x3", "67x67x3"), "zfnet.net": ("224x224x3", "64x64x3"),
              "googlenet.net": ("224x224x3", "96x96x3"), "deepface.net": ("152x152x3", "73x73x3"),
              "unet.net": ("572x572x1", "188x188x1"),
              "resnet20.net": ("32x32x3", "8x8x3")}   # CIFAR-sized already: 8×8 keeps it quick
SHRUNK_WIDTHS = ("vgg16.net", "vgg19.net", "resnet18.net", "resnet34.net", "resnet50.net",
                 "alexnet.net", "zfnet.net", "deepface.net", "googlenet.net")


def _file_text(name: str) -> str:
    """The file, shrunk where it is ImageNet-sized: a small input and widths divided by 16, so
    that float64 runs take milliseconds. The passes see the same structure."""
    text = (NETS / name).read_text()
    old, new = ZOO_INPUTS.get(name, ("224x224x3", "32x32x3"))
    text = text.replace(f"INPUT({old})", f"INPUT({new})")
    if name in SHRUNK_WIDTHS:
        text = re.sub(r"(CONV3-|FC-|basic\(|bottleneck\(|CONV\(|LOCAL\()(\d+)",
                      lambda m: f"{m.group(1)}{max(2, int(m.group(2)) // 16)}", text)
    if name == "googlenet.net":
        text = re.sub(r"inception\(([\d, ]+)\)", lambda m: "inception(" + ", ".join(
            str(max(2, int(v) // 16)) for v in m.group(1).split(", ")) + ")", text)
    if name == "unet.net":
        text = text.replace("param W = 64", "param W = 2")
    if name == "allcnn_c.net":
        text = text.replace("param S = 32, A = 96, B = 192", "param S = 12, A = 6, B = 12")
    return text


NET_FILES = sorted(p.name for p in NETS.glob("*.net"))
RANDOM = [f"random{s}" for s in range(12)]


@functools.lru_cache(maxsize=None)
def _source(net: str) -> str:
    return random_net(int(net[6:])) if net.startswith("random") else _file_text(net)


def bound(net: str) -> BoundModel:
    """The net compiled with no passes, float64 weights, random BN statistics."""
    g = build_graph(SourceFile(net if net.endswith(".net") else f"{net}.net", _source(net)))
    resolve_auto(g, input_shape=(32, 32, 3), num_classes=CLASSES)
    infer_shapes(g)
    verify(g, "test")
    return randomize_batchnorm(BoundModel.init(g, dtype=np.float64, seed=7))


def randomize_batchnorm(m: BoundModel, seed: int = 11) -> BoundModel:
    """Batch-norm scales, shifts and running statistics drawn at random (in place), so that
    folding them is not a no-op."""
    rng = np.random.default_rng(seed)
    for rec in G.nodes(m.graph):
        if rec.op == "batchnorm":
            p = m.params[rec.name]
            c = p["gamma"].shape
            p["gamma"][...] = rng.uniform(0.5, 1.5, c)
            p["beta"][...] = rng.normal(0, 0.3, c)
            p["running_mean"][...] = rng.normal(0, 0.5, c)
            p["running_var"][...] = rng.uniform(0.5, 2.0, c)
    return m


def run(m: BoundModel, x, y, mode: str):
    ex = Executor(m, passes=(), seed=3)
    ex.reseed(5)   # the same dropout masks before and after
    res = ex.forward(x, y, training=mode == "train", keep=True)
    return res, ex.backward()


def batch(m: BoundModel, n: int = 2):
    """Inputs and labels: one per example, or one per position for a per-pixel head (U-Net,
    SegNet), each below the head's logit count."""
    from netdsl.compile.verify import main_head
    rng = np.random.default_rng(1)
    shape = [r for r in G.nodes(m.graph) if r.op == "input"][0].out_shape
    src, port = main_head(m.graph).inputs[0]
    logits = G.node(m.graph, src).out_shapes[port]
    labels = rng.integers(0, min(CLASSES, logits[-1]), (n, *logits[:-1]))
    return rng.standard_normal((n, *shape)), labels


def main_loss(m, res):
    from netdsl.compile.verify import main_head
    return float(res.losses[main_head(m.graph).name])


def wiring(g) -> set:
    """Every node with what it reads: a pass that reports a change changed this (or fused)."""
    return {(r.name, r.op, tuple(r.inputs)) for r in G.nodes(g)}


@pytest.mark.parametrize("name", list(PASSES))
@pytest.mark.parametrize("net", NET_FILES + RANDOM)
def test_pass_harness(net, name):
    p = PASSES[name]
    before = bound(net)
    x, y = batch(before)
    for mode in p.modes:
        after = before.copy()
        log = run_model_passes(after, mode, [name])            # verifies graph + weights
        assert run_model_passes(after, mode, [name]) == [(name, False)], "not idempotent"
        changed = log[-1][1]
        assert changed == (wiring(after.graph) != wiring(before.graph)
                           or any(r.meta.get("act") for r in G.nodes(after.graph)))
        r0, g0 = run(before.copy(), x, y, mode)
        r1, g1 = run(after, x, y, mode)
        np.testing.assert_allclose(r1.logits, r0.logits, rtol=RTOL, atol=1e-12)
        np.testing.assert_allclose(main_loss(after, r1), main_loss(before, r0), rtol=RTOL)
        if name == "remove_aux_heads" and changed:
            continue
        compared = 0
        for node, tensors in g1.items():
            if node not in g0 or G.node(after.graph, node).meta.get("folded"):
                continue
            for k, grad in tensors.items():
                np.testing.assert_allclose(grad, g0[node][k], rtol=RTOL, atol=1e-12,
                                           err_msg=f"{net} {name} {mode}: d{node}.{k}")
                compared += 1
        assert compared > 0


@pytest.mark.parametrize("mode", ["train", "infer"])
@pytest.mark.parametrize("net", NET_FILES + RANDOM[:6])
def test_whole_pipeline_keeps_predictions(net, mode):
    before = bound(net)
    x, y = batch(before)
    after = before.copy()
    run_model_passes(after, mode)
    assert [n for n, _ in run_model_passes(after, mode)] == list(PIPELINES[mode])
    assert not any(c for _, c in run_model_passes(after, mode)), "pipeline not idempotent"
    r0, _ = run(before.copy(), x, y, mode)
    r1, _ = run(after, x, y, mode)
    np.testing.assert_allclose(r1.logits, r0.logits, rtol=RTOL, atol=1e-12)


def test_batchnorm_folding_float32_within_1e5():
    """conv → BN → ReLU folded in float32: logits equal within 1e-5 relative."""
    m64 = bound("resnet18.net")
    m = BoundModel(m64.graph, {n: {k: v.astype(np.float32) for k, v in t.items()}
                               for n, t in m64.params.items()}, dtype=np.float32)
    x, _ = batch(m, 4)
    ref = Executor(m.copy(), passes=()).forward(x.astype(np.float32)).logits
    folded = m.for_inference()
    assert not any(r.op == "batchnorm" for r in G.nodes(folded.graph))
    out = Executor(folded, passes=()).forward(x.astype(np.float32)).logits
    scale = np.abs(ref).max()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * scale)


def test_aux_head_branch_is_not_computed_at_inference():
    m = bound("inception_small.net")
    infer = Executor(m.for_inference(), passes=())
    ops = [st.node.op for st in infer.plan]
    assert ops.count("softmax_xent") == 1
    assert not any(st.node.name.startswith("avgpool") for st in infer.plan)
    assert not any(op in ("dropout", "batchnorm", "relu") for op in ops)
    assert len(infer.plan) < len(Executor(m, passes=()).plan) - 5


def test_verifier_checks_weights_against_specs():
    m = bound("random0")
    conv = next(r for r in G.nodes(m.graph) if r.op == "conv")
    m.params[conv.name]["weight"] = m.params[conv.name]["weight"][..., :1]
    with pytest.raises(VerifyError, match="spec computes"):
        m.verify("test")
    m = bound("random0")
    del m.params[conv.name]["weight"]
    with pytest.raises(VerifyError, match="asks for"):
        m.verify("test")


def test_unknown_pass_is_a_user_error():
    from netdsl.core.errors import NetdslError
    with pytest.raises(NetdslError, match="unknown pass 'fold_bn'") as err:
        run_model_passes(bound("random1"), "infer", ["fold_bn"])
    assert "fold_batchnorm" in err.value.hint


def test_inference_of_a_training_fused_model_still_folds_batchnorm():
    """The executor fuses BN+ReLU for training; its inference copy must still fold that BN
    into the conv (carrying the ReLU over) and predict what the unoptimised graph predicts."""
    m = bound("resnet18.net")
    x, _ = batch(m, 3)
    ref = Executor(m.copy(), passes=()).forward(x).logits
    ex = Executor(m.copy())                        # training pipeline: BN+ReLU fused
    assert any(st.node.op == "batchnorm" and st.act == "relu" for st in ex.plan)
    inf = ex.for_inference()
    assert not any(st.node.op == "batchnorm" for st in inf.plan)
    # the ReLU moved to the conv: node.meta['act'] (its kernel may apply it itself, as a
    # oneDNN post-op or the NumPy conv's fused form do, leaving st.act None)
    assert any(st.node.op == "conv" and st.node.meta.get("act") == "relu" for st in inf.plan)
    np.testing.assert_allclose(inf.forward(x).logits, ref, rtol=RTOL, atol=1e-12)


def test_verifier_recomputes_specs_from_attributes():
    """A pass that changes attributes without reinfer() is caught: a conv given a bias in its
    attributes but not in its weights."""
    m = bound("random0")
    conv = next(r for r in G.nodes(m.graph) if r.op == "conv" and not r.attrs["bias"]) \
        if any(r.op == "conv" and not r.attrs["bias"] for r in G.nodes(m.graph)) else None
    if conv is None:
        conv = next(r for r in G.nodes(m.graph) if r.op == "conv")
        conv.attrs["bias"] = False
    else:
        conv.attrs["bias"] = True
    with pytest.raises(VerifyError, match="stale"):
        m.verify("test")
    m.reinfer()
    with pytest.raises(VerifyError, match="asks for"):   # now the weights disagree
        m.verify("test")


def test_cli_pass_flags(capsys):
    """--passes names are checked (a located user error, exit 1); -O0 is accepted."""
    from netdsl.cli.app import main
    path = str(NETS / "lenet5.net")
    assert main(["summary", path, "--passes", "fold_bn"]) == 1
    assert "unknown pass 'fold_bn'" in capsys.readouterr().err
    assert main(["summary", path, "-O0"]) == 0
    assert main(["summary", path, "--passes", "fold_batchnorm,fuse_activations"]) == 0
