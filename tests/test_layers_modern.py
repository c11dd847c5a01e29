"""The modern nets' layers (silu, relu6, hswish, hsigmoid, mul, split, slice, shuffle, gap with
keep=true) against independent references: PyTorch's own functions (skipped without torch) or
float64 NumPy formulas written here; and the language reading them (SE block, split ports)."""
from __future__ import annotations

import numpy as np
import pytest

from netdsl.compile.compiler import compile_text
from netdsl.layers import Ctx, get
from netdsl.runtime.executor import Executor

RNG = np.random.default_rng(7)


def _fwd_bwd(name, inputs, attrs=None, dout=None):
    spec = get(name)
    bound = {a.name: a.default for a in spec.args} | (attrs or {})
    ctx = Ctx(xp=np, training=True, rng=np.random.default_rng(0))
    out, cache = spec.forward(ctx, bound, {}, list(inputs))
    if dout is None:
        return out, None
    dins, _ = spec.backward(ctx, bound, {}, cache, dout)
    return out, dins


@pytest.mark.parametrize("name, torch_fn", [
    ("silu", "silu"), ("swish", "silu"), ("relu6", "relu6"), ("hswish", "hardswish"),
    ("hardswish", "hardswish"), ("hsigmoid", "hardsigmoid"), ("hardsigmoid", "hardsigmoid")])
def test_activations_match_pytorch(name, torch_fn):
    torch = pytest.importorskip("torch")
    x = RNG.uniform(-8, 8, size=(4, 5, 5, 3))     # every piece: below −3, the band, above 6
    g = RNG.standard_normal(x.shape)
    out, (dx,) = _fwd_bwd(name, [x], dout=g)
    tx = torch.tensor(x, requires_grad=True)
    ty = getattr(torch.nn.functional, torch_fn)(tx)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(out, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    # PyTorch's hardsigmoid backward multiplies by a float32 1/6 even in float64 (2^-25 off)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-7, atol=1e-12)


def test_activations_float32_against_float64_formulas():
    """Without torch: the definitions, written out in float64."""
    x = RNG.uniform(-8, 8, size=(2, 50)).astype(np.float32)
    x64 = x.astype(np.float64)
    relu6 = np.minimum(np.maximum(x64, 0), 6)
    want = {"silu": x64 / (1 + np.exp(-x64)), "relu6": relu6,
            "hswish": x64 * np.minimum(np.maximum(x64 + 3, 0), 6) / 6,
            "hsigmoid": np.minimum(np.maximum(x64 + 3, 0), 6) / 6}
    for name, ref in want.items():
        out, _ = _fwd_bwd(name, [x])
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("gate_shape", [(1, 1, 3), (3,)])
@pytest.mark.parametrize("gate_first", [False, True])
def test_mul_broadcasts_a_gate_and_reduces_its_gradient(gate_shape, gate_first):
    x = RNG.standard_normal((2, 4, 5, 3))
    s = RNG.standard_normal((2,) + gate_shape)
    g = RNG.standard_normal(x.shape)
    ins = [s, x] if gate_first else [x, s]
    out, dins = _fwd_bwd("mul", ins, dout=g)
    s_map = s.reshape(2, 1, 1, 3)
    np.testing.assert_allclose(out, x * s_map, rtol=1e-14)
    dx, ds = (dins[1], dins[0]) if gate_first else dins
    np.testing.assert_allclose(dx, g * s_map, rtol=1e-14)
    # dL/ds_c = Σ_{h,w} g·x, written as explicit loops over the positions
    want = np.zeros((2, 3))
    for i in range(4):
        for j in range(5):
            want += g[:, i, j, :] * x[:, i, j, :]
    assert ds.shape == s.shape
    np.testing.assert_allclose(ds.reshape(2, 3), want, rtol=1e-12)


def test_shuffle_matches_pytorch_channel_shuffle():
    torch = pytest.importorskip("torch")
    x = RNG.standard_normal((2, 3, 4, 12))
    for groups in (2, 3, 4):
        out, (dx,) = _fwd_bwd("shuffle", [x], {"groups": groups}, dout=x)
        want = torch.nn.ChannelShuffle(groups)(torch.tensor(x).permute(0, 3, 1, 2))
        np.testing.assert_array_equal(out, want.permute(0, 2, 3, 1).numpy())
        # backward is the inverse permutation: it undoes the forward
        back, (dback,) = _fwd_bwd("shuffle", [x], {"groups": groups}, dout=out)
        np.testing.assert_array_equal(dback, x)


def test_shuffle_by_index():
    """Channel i·g + k of the output is channel k·(C/g) + i of the input."""
    x = np.arange(6.0).reshape(1, 6)
    out, _ = _fwd_bwd("shuffle", [x], {"groups": 2})
    assert out.tolist() == [[0, 3, 1, 4, 2, 5]]


def test_split_and_slice_match_pytorch_chunk():
    torch = pytest.importorskip("torch")
    x = RNG.standard_normal((2, 3, 3, 6))
    outs, (dx,) = _fwd_bwd("split", [x], {"parts": 3}, dout=(None, x[..., :2], None))
    for o, w in zip(outs, torch.chunk(torch.tensor(x), 3, dim=-1)):
        np.testing.assert_array_equal(o, w.numpy())
    want = np.zeros_like(x)
    want[..., 2:4] = x[..., :2]
    np.testing.assert_array_equal(dx, want)
    out, (dx,) = _fwd_bwd("slice", [x], {"start": 1, "stop": 4}, dout=np.ones((2, 3, 3, 3)))
    np.testing.assert_array_equal(out, x[..., 1:4])
    assert dx.sum() == 2 * 3 * 3 * 3 and np.all(dx[..., [0, 4, 5]] == 0)


def test_gap_keep_gives_a_one_by_one_map():
    x = RNG.standard_normal((2, 3, 4, 5))
    out, (dx,) = _fwd_bwd("gap", [x], {"keep": True}, dout=np.ones((2, 1, 1, 5)))
    np.testing.assert_allclose(out, x.mean(axis=(1, 2), keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(dx, np.full(x.shape, 1 / 12), rtol=1e-12)


SE_NET = """
INPUT(6x6x8) -> CONV(8, 3, pad=1) ->
mul { IDENTITY | GAP(keep=true) -> CONV(2, 1) -> RELU -> CONV(8, 1) -> SIGMOID } ->
s: SPLIT(2) -> concat { HSWISH | @s.1 -> SILU } -> SHUFFLE(2) -> SLICE(0, 6) -> RELU6 -> GAP ->
FC(3) -> HSIGMOID -> FC(3)
"""


def test_se_block_and_split_ports_compile_and_train_a_step():
    from netdsl.core import graph as G
    c = compile_text(SE_NET, num_classes=3)
    ops = {rec.op: rec for rec in G.nodes(c.graph)}
    assert ops["mul"].out_shapes == ((6, 6, 8),)
    assert ops["split"].out_shapes == ((6, 6, 4), (6, 6, 4))
    assert ops["slice"].out_shapes == ((6, 6, 6),)
    ex = Executor(c.graph, seed=0)
    x = RNG.standard_normal((4, 6, 6, 8)).astype(np.float32)
    y = np.array([0, 1, 2, 1])
    res = ex.forward(x, y, training=True)
    grads = ex.backward()
    assert np.isfinite(float(res.loss))
    # every weighted layer got a gradient: both split ports and the gate carried one
    weighted = {rec.name for rec in G.nodes(c.graph) if rec.param_specs}
    assert weighted <= set(grads)
    assert all(np.any(g != 0) for d in grads.values() for g in d.values())


def test_language_doc_examples_of_the_new_sections_compile():
    """Every code block of docs/language.md's mobile-layer and heads sections compiles, with
    the shapes its text promises."""
    from pathlib import Path
    from netdsl.core import graph as G
    doc = (Path(__file__).resolve().parents[1] / "docs" / "language.md").read_text()
    text = doc.split("## Mobile-net layers")[1].split("## Examples")[0]
    blocks = text.split("```")[1::2]
    assert len(blocks) == 4
    for block in blocks:
        for line in block.strip().splitlines() if "block" not in block else [block]:
            g = compile_text(line, num_classes=10, input_shape=(8, 8, 1)).graph
            ops = [rec.op for rec in G.nodes(g)]
            if "mul" in ops:
                mul = next(r for r in G.nodes(g) if r.op == "mul")
                assert mul.in_shapes == ((32, 32, 64), (1, 1, 64))
            if "shuffle" in ops:
                split = next(r for r in G.nodes(g) if r.op == "split")
                assert split.out_shapes == ((32, 32, 24), (32, 32, 24))
            if "bce" in ops or "mse" in ops:
                assert "softmax_xent" not in ops
