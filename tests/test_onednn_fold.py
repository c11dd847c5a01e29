"""conv_fold.py: a forward convolution with few filters runs with pairs of columns folded
into channels (inference and training). Its outputs and training gradients against the
float64 NumPy reference (the registry's own conv and activation), the rule's reach, the
folded weights refreshed when the weights change, and LeNet-5's inference plan against the
NumPy provider's."""
from __future__ import annotations

import numpy as np
import pytest

from netdsl.runtime import kernels
from netdsl.layers import Ctx, get
from netdsl.tools.gradcheck import bound_attrs, distinct_values

if not kernels.available("onednn"):
    pytest.skip("oneDNN (libdnnl.so.3) cannot load here", allow_module_level=True)

from netdsl.runtime.kernels.onednn import common, conv, conv_fold  # noqa: E402
from netdsl.runtime.kernels.onednn.conv_geometry import geometry  # noqa: E402
from netdsl.runtime.kernels.onednn.packs import weights_changed  # noqa: E402


def _rel(got, want) -> float:
    want = np.asarray(want, dtype=np.float64)
    return float(np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-6))


CASES = [   # (input H, W, C), conv attrs, fused activation: folded on AVX-512 and AVX2 alike
    ((12, 12, 1), {"filters": 6, "kernel": 5, "pad": "valid"}, "tanh"),
    ((9, 10, 3), {"filters": 4, "kernel": 3, "pad": "valid"}, "relu"),
    ((8, 8, 2), {"filters": 4, "kernel": (4, 3), "pad": "valid", "bias": False}, None),
    ((7, 6, 1), {"filters": 7, "kernel": 3, "pad": "valid"}, "sigmoid"),
    ((10, 12, 2), {"filters": 4, "kernel": 5, "pad": "same"}, "relu"),   # 2 columns: 1 pair
    ((8, 10, 3), {"filters": 3, "kernel": 3, "pad": "same"}, None),      # 1 column: r = 1
    ((12, 12, 1), {"filters": 6, "kernel": 5, "pad": "same"}, "tanh"),
]


@pytest.mark.parametrize("training", [False, True], ids=["infer", "train"])
@pytest.mark.parametrize("shape, attrs, act", CASES)
def test_folded_conv_matches_reference(shape, attrs, act, training):
    spec = get("conv")
    bound = bound_attrs(spec, attrs)
    rng = np.random.default_rng(4)
    x = distinct_values(rng, (3,) + shape)
    params = {k: rng.normal(size=ps.shape) for k, ps in spec.params(bound, [shape]).items()}
    geo = geometry(bound, (3,) + shape, attrs["filters"])
    assert conv_fold.factor(geo) == 2
    ctx = Ctx(xp=np, training=training)
    want, _ = spec.forward(ctx, bound, params, [x])
    if act:
        want, _ = get(act).forward(ctx, {}, {}, [want])
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    common.clear_cache()
    try:
        got, _ = conv.conv_forward(ctx, bound, p32, [x.astype(np.float32)], act=act)
        assert _rel(got, want) <= 1e-5
        # the weights change in place (an optimizer step, then weights_changed()): the folded
        # copy and its blocked pack follow
        p32["weight"] *= -0.5
        weights_changed()
        got, _ = conv.conv_forward(ctx, bound, p32, [x.astype(np.float32)], act=act)
        want2, _ = spec.forward(ctx, bound, {k: v.astype(np.float64) for k, v in p32.items()},
                                [x])
        if act:
            want2, _ = get(act).forward(ctx, {}, {}, [want2])
        assert _rel(got, want2) <= 1e-5
        if training:    # backward on the plain layout, from the folded forward's cache
            _gradients_match(spec, bound, p32, x, act, got, want2, rng)
    finally:
        common.clear_cache()


def _gradients_match(spec, bound, p32, x, act, got, want, rng):
    """conv.conv_backward after a folded training forward against the reference's backward
    (float64), every gradient: input and parameters."""
    ctx = Ctx(xp=np, training=True)
    p64 = {k: v.astype(np.float64) for k, v in p32.items()}
    dout = rng.normal(size=want.shape)
    pre, c_cache = spec.forward(ctx, bound, p64, [x])
    d_pre = dout if not act else get(act).backward(
        ctx, {}, {}, get(act).forward(ctx, {}, {}, [pre])[1], dout)[0][0]
    want_dx, want_dp = spec.backward(ctx, bound, p64, c_cache, d_pre)
    forward, backward = conv.fused_forms()[act] if act else (conv.conv_forward,
                                                               conv.conv_backward)
    out, cache = forward(ctx, bound, p32, [x.astype(np.float32)])
    assert _rel(out, want) <= 1e-5
    dx, dp = backward(ctx, bound, p32, cache, dout.astype(np.float32))
    assert _rel(dx[0], want_dx[0]) <= 1e-4
    for k in want_dp:
        assert _rel(dp[k], want_dp[k]) <= 1e-4, k


@pytest.mark.parametrize("shape, attrs", [
    ((12, 11, 1), {"filters": 6, "kernel": 5, "pad": "valid"}),   # odd width
    ((12, 12, 1), {"filters": 6, "kernel": 5, "stride": 2}),
    ((12, 12, 1), {"filters": 16, "kernel": 5, "pad": "valid"}),  # lanes already filled
    ((12, 12, 32), {"filters": 6, "kernel": 5, "pad": "valid"}),    # many channels
    ((12, 12, 1), {"filters": 6, "kernel": (5, 1), "pad": "valid"}),
])
def test_fold_rule_leaves_others_alone(shape, attrs):
    bound = bound_attrs(get("conv"), attrs)
    assert conv_fold.factor(geometry(bound, (2,) + shape, attrs["filters"])) == 0


def test_fold_weights_place_each_tap_once():
    """Every original tap appears once per (output parity p) in the folded kernel, at
    column 2j + q − p, and the rest is zeros."""
    w = np.arange(1, 5 * 5 * 2 * 3 + 1, dtype=np.float32).reshape(5, 5, 2, 3)
    f = conv_fold.fold_weights(w, 2).reshape(5, 3, 2, 2, 2, 3)   # ky, j, q, c, p, f
    for p in range(2):
        for kx in range(5):
            j, q = divmod(kx + p, 2)
            np.testing.assert_array_equal(f[:, j, q, :, p, :], w[:, kx])
    assert np.count_nonzero(f) == 2 * w.size


def test_lenet5_inference_runs_folded_and_matches_numpy():
    from pathlib import Path

    from netdsl.compile.compiler import compile_file
    from netdsl.runtime.executor import Executor
    from netdsl.runtime.kernels.onednn.impls import conv_impls, slow
    g = compile_file(str(Path(__file__).resolve().parents[1] / "nets" / "lenet5.net"),
                     num_classes=10).graph
    fast = Executor(g, seed=0, kernels="onednn").for_inference()
    ref = Executor(g, seed=0, kernels="numpy").for_inference()
    c1 = next(st for st in fast.plan if st.node.name == "C1")
    geo = geometry(c1.node.attrs, (2,) + tuple(c1.node.in_shapes[0]), 6)
    assert conv_fold.factor(geo) == 2
    assert not any(slow(i) for p in conv_impls(fast.plan, 2, False).values() for i in p.values())
    x = np.random.default_rng(0).standard_normal((5, 32, 32, 1)).astype(np.float32)
    assert _rel(fast.forward(x).logits, ref.forward(x).logits) <= 1e-4
