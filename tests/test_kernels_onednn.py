"""oneDNN provider kernels against the NumPy reference run in float64 (an independent, more
precise computation): outputs, input gradients and parameter gradients within 1e-4 relative
(to the largest magnitude) for every registry example and stride/pad/dilation/group variants,
plus a whole-network training step with either provider."""
import numpy as np
import pytest

from netdsl.runtime import kernels
from netdsl.tools.gradcheck import bound_attrs, distinct_values
from netdsl.layers import Ctx, get
from netdsl.layers.init import init_param

if not kernels.available("onednn"):
    pytest.skip("oneDNN (libdnnl.so.3) cannot load here", allow_module_level=True)

TOL = 1e-4
BATCH = 3

CASES = [
    ("conv", {}, None),
    ("conv", {"filters": 3, "kernel": 3}, (5, 5, 2)),
    ("conv", {"filters": 2, "kernel": 3, "stride": 2, "pad": 1}, (6, 5, 3)),
    ("conv", {"filters": 3, "stride": 2, "pad": 1}, (5, 6, 2)),
    ("conv", {"filters": 2, "kernel": 3, "dilation": 2, "pad": "valid"}, (7, 6, 2)),
    ("conv", {"filters": 2, "dilation": 2}, (6, 6, 2)),
    ("conv", {"filters": 4, "kernel": 3, "groups": 2}, (4, 4, 4)),
    ("conv", {"filters": 6, "kernel": 3, "groups": 3, "stride": 2}, (7, 7, 3)),
    ("conv", {"filters": 3, "kernel": (2, 3), "stride": (1, 2), "pad": (1, 0)}, (4, 5, 2)),
    ("conv", {"filters": 2, "kernel": (2, 3), "pad": (1, 0), "stride": (1, 2)}, (5, 6, 2)),
    ("conv", {"filters": 2, "kernel": 1}, (3, 3, 3)),
    ("conv", {"filters": 5, "kernel": 1, "stride": 2}, (5, 5, 3)),
    ("conv", {"filters": 2, "kernel": 3, "bias": False, "dilation": 2}, (5, 5, 1)),
    ("conv", {"filters": 16, "kernel": 5, "pad": "valid"}, (12, 12, 6)),
    ("conv", {"filters": 8, "kernel": 3, "stride": 2, "pad": 1, "bias": False}, (9, 9, 8)),
    # one window covering the input: run as an inner product (conv_fc.py)
    ("conv", {"filters": 20, "kernel": 5, "pad": "valid"}, (5, 5, 4)),
    ("conv", {"filters": 3, "kernel": (3, 2), "stride": 2, "pad": "valid", "bias": False},
     (3, 2, 5)),
    ("pool", {}, None),
    ("maxpool", {}, None),
    ("avgpool", {}, None),
    ("pool", {"size": 2, "kind": "max"}, (5, 5, 3)),
    ("pool", {"size": 2, "kind": "avg"}, (5, 5, 3)),
    ("pool", {"size": 3, "stride": 2, "pad": 1, "kind": "max"}, (6, 6, 3)),
    ("pool", {"size": 3, "stride": 2, "pad": 1, "kind": "avg"}, (6, 6, 3)),
    ("pool", {"size": (3, 2), "stride": (1, 2), "pad": (1, 0), "kind": "max"}, (4, 5, 3)),
    ("pool", {"size": (3, 2), "stride": (1, 2), "pad": (1, 0), "kind": "avg"}, (4, 5, 3)),
    ("pool", {"size": 3, "stride": 1, "kind": "max"}, (5, 5, 2)),
    ("pool", {"size": 3, "stride": 1, "kind": "avg"}, (5, 5, 2)),
    ("pool", {"size": 3, "stride": 2, "ceil": True, "kind": "max"}, (7, 7, 2)),
    ("batchnorm", {}, None),
    ("batchnorm", {}, (4, 5, 6)),
    ("batchnorm", {"eps": 1e-3, "momentum": 0.3}, (7,)),
    ("relu", {}, (4, 5, 6)),
    ("tanh", {}, (7,)),
    ("sigmoid", {}, (3, 3, 2)),
    ("fc", {}, None),
    ("fc", {"units": 5}, (9,)),
    ("fc", {"units": 4, "bias": False}, (3, 2, 5)),
]


def _generated_cases():
    """Each provider kernel's registry examples and random examples (when the registry entry
    offers them), plus the hand-written variants above."""
    kernels.available("onednn")  # registers the kernels
    from netdsl.layers import all_specs
    out = list(CASES)
    rng = np.random.default_rng(11)
    for spec in all_specs():
        if "onednn" not in kernels.kernels_for(spec.name) or spec.inputs[0] > 1:
            continue   # the two-input mul has its own test (test_mul_kernel_matches_reference)
        if not any(c[0] == spec.name for c in CASES):
            out.append((spec.name, {}, None))
        for ex in getattr(spec, "examples", ()) or ():
            out.append((spec.name, dict(ex["attrs"]), tuple(ex["in_shapes"][0])))
        make = getattr(spec, "random_example", None)
        for _ in range(6 if make else 0):
            ex = make(rng)
            out.append((spec.name, dict(ex["attrs"]), tuple(ex["in_shapes"][0])))
    return out


def _case_id(case):
    name, attrs, shape = case
    return f"{name}-{attrs}-{shape}".replace(" ", "")


def _run(spec, fwd, bwd, attrs, params, x, dout, training, dtype):
    ctx = Ctx(xp=np, training=training, rng=np.random.default_rng(0), dtype=dtype)
    params = {k: v.astype(dtype) for k, v in params.items()}
    out, cache = fwd(ctx, attrs, params, [x.astype(dtype)])
    dins, dparams = bwd(ctx, attrs, params, cache, dout(out).astype(dtype))
    return out, dins[0], dparams, params


def _close(name, got, want):
    want = np.asarray(want, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape, name
    scale = max(np.abs(want).max(), 1e-6)
    err = np.abs(got - want).max() / scale
    assert err <= TOL, f"{name}: max relative error {err:.2e} > {TOL}"


@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("case", _generated_cases(), ids=_case_id)
def test_kernel_matches_reference(case, training):
    name, attrs, in_shape = case
    spec = get(name)
    bound = bound_attrs(spec, attrs)
    in_shape = tuple(in_shape or spec.example["in_shapes"][0])
    kernel = kernels.kernels_for(spec.name)["onednn"]
    supported = kernel.supports(bound, [in_shape], np.float32)
    assert supported or case not in CASES  # the hand-written variants are all for oneDNN
    if not supported:
        # Not for oneDNN: the executor must get the reference for it.
        assert kernels.select(spec, bound, [in_shape], np.float32, "onednn")[2] == "numpy"
        return
    rng = np.random.default_rng(7)
    x = distinct_values(rng, (BATCH,) + in_shape)
    pspecs = spec.params(bound, [in_shape])
    params = {k: init_param(np, rng, ps, np.float64) for k, ps in pspecs.items()}
    for k in params:  # non-trivial scale/shift/statistics, not the 1/0 initial values
        if k in ("gamma", "beta", "bias", "running_mean"):
            params[k] = rng.normal(size=params[k].shape)
        if k == "running_var":
            params[k] = rng.uniform(0.5, 2.0, size=params[k].shape)
    w_dout = None

    def dout(out):
        nonlocal w_dout
        if w_dout is None:
            w_dout = rng.normal(size=out.shape)
        return w_dout

    ref = _run(spec, spec.forward, spec.backward, bound, params, x, dout, training, np.float64)
    if bound.get("kind") == "max" and not training:
        # oneDNN max pooling keeps no switches in inference: compare the forward only.
        out, _ = kernel.forward(Ctx(xp=np, training=False), bound,
                                {}, [x.astype(np.float32)])
        _close("output", out, ref[0])
        return
    got = _run(spec, kernel.forward, kernel.backward, bound, params, x, dout, training,
               np.float32)
    assert got[0].dtype == np.float32
    _close("output", got[0], ref[0])
    _close("d input", got[1], ref[1])
    assert set(got[2]) == set(ref[2])
    for k in ref[2]:
        _close(f"d {k}", got[2][k], ref[2][k])
    for k in ("running_mean", "running_var"):
        if k in ref[3]:
            _close(k, got[3][k], ref[3][k])


def test_supports_refuses_what_onednn_cannot_do():
    pool = kernels.kernels_for("pool")["onednn"]
    ceil_extra = bound_attrs(get("pool"), {"size": 3, "stride": 2, "ceil": True})
    assert not pool.supports(ceil_extra, [(6, 6, 2)], np.float32)  # ceil adds a window
    assert pool.supports(ceil_extra, [(7, 7, 2)], np.float32)      # same size either way
    conv = kernels.kernels_for("conv")["onednn"]
    assert not conv.supports(bound_attrs(get("conv")), [(5, 5, 3)], np.float64)
    fwd, _, provider = kernels.select(get("pool"), ceil_extra, [(6, 6, 2)], np.float32,
                                      "onednn")
    assert provider == "numpy" and fwd is get("pool").forward


def test_conv_input_grad_skipped_for_data():
    spec = get("conv")
    bound = bound_attrs(spec, {"filters": 4})
    kernel = kernels.kernels_for("conv")["onednn"]
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
    params = {k: init_param(np, rng, ps, np.float32)
              for k, ps in spec.params(bound, [(5, 5, 3)]).items()}
    ctx = Ctx(xp=np, training=True, input_grad=False)
    out, cache = kernel.forward(ctx, bound, params, [x])
    dins, dparams = kernel.backward(ctx, bound, params, cache, np.ones_like(out))
    assert dins == [None] and set(dparams) == {"weight", "bias"}
    np.testing.assert_allclose(dparams["bias"], np.full(4, out.shape[0] * 25.0), rtol=1e-6)


RESIDUAL = """net small_res
param ROUND = floor
INPUT(10x10x3)
  -> CONV(8, 3, bias=false) -> BN -> RELU
  -> residual { CONV(8, 3, bias=false) -> BN -> RELU -> CONV(8, 3, bias=false) -> BN } -> RELU
  -> residual { CONV(16, 3, stride=2, bias=false) -> BN -> RELU -> CONV(16, 3) -> BN } -> RELU
  -> MAXPOOL(2) -> GAP -> FC(12) -> RELU -> FC
"""


def _nets():
    from pathlib import Path

    from netdsl.compile.compiler import compile_file, compile_text
    root = Path(__file__).resolve().parents[1] / "nets"
    yield "residual", compile_text(RESIDUAL, input_shape=(10, 10, 3), num_classes=5).graph, \
        (10, 10, 3)
    yield "inception_small", compile_file(str(root / "inception_small.net"),
                                          input_shape=(16, 16, 3), num_classes=5).graph, \
        (16, 16, 3)
    yield "lenet5", compile_file(str(root / "lenet5.net"), num_classes=5).graph, (32, 32, 1)


@pytest.mark.parametrize("net", list(_nets()), ids=lambda n: n[0])
def test_training_step_same_with_either_provider(net):
    from netdsl.runtime.executor import Executor
    _, graph, shape = net
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6,) + shape).astype(np.float32)
    y = rng.integers(0, 5, size=6)
    ref = Executor(graph, seed=1, kernels="numpy")
    fast = Executor(graph, seed=1, kernels="onednn",
                    params={n: {k: v.copy() for k, v in p.items()} for n, p in ref.params.items()})
    used = {st.provider for st in fast.plan}
    assert "onednn" in used
    for training in (True, False):
        a = ref.forward(x, y, training=training)
        b = fast.forward(x, y, training=training)
        _close("logits", b.logits, a.logits)
        assert abs(float(b.loss) - float(a.loss)) <= 1e-4 * abs(float(a.loss))
        if training:
            ga, gb = ref.backward(), fast.backward()
            assert set(ga) == set(gb)
            # Some gradients are zero but for round-off (a conv bias before batch norm):
            # measure every error against at least 1e-2 of the net's largest gradient.
            floor = 1e-2 * max(np.abs(g).max() for d in ga.values() for g in d.values())
            for node in ga:
                for k in ga[node]:
                    # float32 round-off accumulates over the layers: 1e-3 of the largest entry.
                    want, got = ga[node][k], gb[node][k]
                    err = np.abs(got - want).max() / max(np.abs(want).max(), floor)
                    assert err <= 1e-3, f"{node}.{k}: {err:.1e}"
    for node, p in ref.params.items():  # running statistics updated alike
        for k in p:
            _close(f"{node}.{k}", fast.params[node][k], p[k])


@pytest.fixture
def threaded(monkeypatch):
    """Every oneDNN primitive created threaded, however little its work (common.SMALL and
    SMALL_ELEMENTS at 0), in a cache of its own."""
    from netdsl.runtime.kernels.onednn import common
    monkeypatch.setattr(common, "SMALL", 0)
    monkeypatch.setattr(common, "SMALL_ELEMENTS", 0)
    common.clear_cache()
    yield
    common.clear_cache()


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in ("conv", "fc", "pool", "relu")],
                         ids=_case_id)
def test_multithreaded_primitives_match_too(case, threaded):
    """The cases above are small enough to run on one thread; force the threaded path."""
    test_kernel_matches_reference(case, True)


@pytest.mark.parametrize("shape", [(4, 5, 6), (3, 3, 16)])
def test_multithreaded_add_relu_matches_too(shape, threaded):
    """The element-wise kernels run threaded on large maps (common.SMALL_ELEMENTS): the fused
    add + ReLU forced onto that path still matches the reference."""
    test_add_and_fused_add_relu_match_reference(shape, True)


@pytest.mark.parametrize("overwrite", [False, True], ids=["keeps-out", "overwrites-out"])
@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("case", [c for c in CASES if c[0] in ("conv", "fc", "batchnorm")],
                         ids=_case_id)
def test_fused_activation_matches_layer_then_activation(case, training, act, overwrite):
    """kernels.select_fused: conv/fc + ReLU/tanh/sigmoid and batchnorm + ReLU in one oneDNN
    call equal the two reference layers in float64, outputs and gradients (w.r.t. the
    activation's output). The conv cases with fewer than 16 filters apply tanh and sigmoid
    as an in-place eltwise call after the convolution, the others as a post-op
    (eltwise.post_op_pays): both ways are checked. ``overwrite``: the backward may write the
    activation's gradient over the forward output (``Ctx.overwrite_output``, the executor's
    say for every step but the prediction's); without it the output must survive."""
    name, attrs, in_shape = case
    layer, activation = get(name), get(act)
    bound = bound_attrs(layer, attrs)
    in_shape = tuple(in_shape or layer.example["in_shapes"][0])
    fused = kernels.select_fused(layer, bound, [in_shape], np.float32, "onednn", act)
    if name == "batchnorm" and act != "relu":   # oneDNN's batch norm fuses only ReLU
        assert fused is None
        return
    assert fused is not None and fused[2] == "onednn"
    assert kernels.select_fused(layer, bound, [in_shape], np.float32, "onednn", "softmax") is None
    rng = np.random.default_rng(5)
    x = distinct_values(rng, (BATCH,) + in_shape)
    params = {k: rng.normal(size=ps.shape) for k, ps in layer.params(bound, [in_shape]).items()}
    if "running_var" in params:
        params["running_var"] = rng.uniform(0.5, 2.0, size=params["running_var"].shape)
    ctx = Ctx(xp=np, training=training)
    pre, c_cache = layer.forward(ctx, bound, params, [x])
    want, r_cache = activation.forward(ctx, {}, {}, [pre])
    dout = rng.normal(size=want.shape)
    d_pre = activation.backward(ctx, {}, {}, r_cache, dout)[0][0]
    want_dx, want_dp = layer.backward(ctx, bound, params, c_cache, d_pre)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    out, cache = fused[0](ctx, bound, p32, [x.astype(np.float32)])
    out_before = out.copy()
    dx, dp = fused[1](Ctx(xp=np, training=training, overwrite_output=overwrite), bound, p32,
                      cache, dout.astype(np.float32))
    _close("output", out_before, want)
    if not overwrite:
        np.testing.assert_array_equal(out, out_before)   # the caller's output, untouched
    elif name in ("conv", "fc"):     # the gradient was written over it (eltwise.fused_pair)
        assert not np.array_equal(out, out_before)
    _close("d input", dx[0], want_dx[0])
    for k in want_dp:
        _close(f"d {k}", dp[k], want_dp[k])


@pytest.mark.parametrize("shapes", [((4, 5, 6), (1, 1, 6)), ((4, 5, 6), (6,)),
                                    ((1, 1, 6), (4, 5, 6)), ((6,), (4, 5, 6)),
                                    ((4, 5, 6), (4, 5, 6)), ((7,), (7,))])
def test_mul_kernel_matches_reference(shapes):
    """oneDNN's binary mul (broadcasting a per-channel gate) against the registry's mul, in
    float64; its backward is the registry's own, so the forward is what differs."""
    spec, kernel = get("mul"), kernels.kernels_for("mul")["onednn"]
    assert kernel.supports({}, list(shapes), np.float32)
    rng = np.random.default_rng(3)
    a, b = (distinct_values(rng, (BATCH,) + s) for s in shapes)
    ref, _ = spec.forward(Ctx(xp=np), {}, {}, [a, b])
    out, cache = kernel.forward(Ctx(xp=np), {}, {}, [a.astype(np.float32), b.astype(np.float32)])
    assert out.dtype == np.float32
    _close("output", out, ref)
    dout = rng.normal(size=ref.shape)
    want, _ = spec.backward(Ctx(xp=np), {}, {}, (a, b), dout)
    got, _ = kernel.backward(Ctx(xp=np), {}, {}, cache, dout.astype(np.float32))
    for g, w in zip(got, want):
        _close("d input", g, w)


@pytest.mark.parametrize("attrs,in_shape,covers", [
    ({"filters": 20, "kernel": 5, "pad": "valid"}, (5, 5, 4), True),
    ({"filters": 3, "kernel": (3, 2), "stride": 2, "pad": "valid"}, (3, 2, 5), True),
    ({"filters": 20, "kernel": 5, "pad": "valid"}, (6, 5, 4), False),       # two windows
    ({"filters": 20, "kernel": 3, "pad": 1}, (1, 1, 4), False),             # padded
    ({"filters": 4, "kernel": 3, "groups": 2, "pad": "valid"}, (3, 3, 4), False),
])
def test_conv_covering_its_input_runs_as_inner_product(attrs, in_shape, covers):
    """conv_fc.py: exactly the convs with one window over the whole (unpadded) input run as
    oneDNN's inner product, in every pass; their numbers are checked by the cases above."""
    from netdsl.runtime.kernels.onednn.conv import impl_names
    bound = bound_attrs(get("conv"), attrs)
    names = impl_names(bound, (BATCH,) + in_shape, attrs["filters"], True, None, True)
    assert set(names) == {"forward", "backward_data", "backward_weights"}
    assert all(n.startswith("inner_product:") == covers for n in names.values()), names


@pytest.mark.parametrize("channels,want", [(6, 8), (3, 4), (1, 4), (16, None)])
def test_avgpool_backward_on_few_channels_runs_the_narrowest_vectors(channels, want):
    """pool.narrowest: an average-pooling backward on ``channels`` runs the jit kernel with
    the narrowest vectors holding them (where this host's list has one), or oneDNN's first
    choice from 9 channels on; its numbers are checked by the pooling cases above."""
    from netdsl.runtime.kernels.onednn import pool
    from netdsl.runtime.kernels.onednn.choices import lanes
    from netdsl.runtime.kernels.onednn.common import lib
    geo = pool._geometry(bound_attrs(get("avgpool"), {}), (4, 8, 8, channels))
    d = lib()
    first = d.impl_name(pool._fwd_pd(geo, True))      # the list starts with the widest
    chosen = d.impl_name(pool._bwd_pd(geo))
    if want is None or (lanes(first) or 0) <= want:
        assert lanes(chosen) == lanes(first), chosen
    else:
        assert lanes(chosen) == want, chosen


def test_conv_with_few_channels_runs_jit_on_avx512():
    """choices.few_channels: on an AVX-512 host, LeNet-5's C3 (6→16, 5×5) runs forward and
    backward-data on jit:avx512_core instead of brgconv (elsewhere oneDNN's own choice)."""
    from netdsl.runtime.kernels.onednn.conv import impl_names
    bound = bound_attrs(get("conv"), {"filters": 16, "kernel": 5, "pad": "valid"})
    names = impl_names(bound, (4, 14, 14, 6), 16, True, None, True)
    if "avx512" in names["backward_weights"]:    # (a jit kernel either way: the host's ISA)
        assert names["forward"] == names["backward_data"] == "jit:avx512_core", names
    else:
        assert "avx512" not in names["forward"] + names["backward_data"], names


@pytest.mark.parametrize("via_logistic", [False, True], ids=["tanh", "2sigma(2x)-1"])
def test_tanh_both_ways_match_float64(via_logistic, monkeypatch):
    """eltwise.TANH: oneDNN's tanh, or 2σ(2x) − 1 (what AVX2 hosts run: a binary ×2 with
    post-ops, and the same chain as a conv's and an fc's post-ops), against NumPy's float64
    tanh: within 3·10⁻⁷ absolute (3 float32 ulps at 1), outputs of the layer and of the fused
    conv (post-op and in-place forms) and fc."""
    from netdsl.runtime.kernels.onednn import common, conv, dense, eltwise
    monkeypatch.setattr(eltwise, "_VIA_LOGISTIC", via_logistic)
    common.clear_cache()
    try:
        rng = np.random.default_rng(7)
        ctx = Ctx(xp=np, training=True)
        x = (rng.standard_normal((5, 6, 7, 8)) * 3).astype(np.float32)
        out, _ = kernels.kernels_for("tanh")["onednn"].forward(ctx, {}, {}, [x])
        assert np.abs(out - np.tanh(x.astype(np.float64))).max() < 3e-7
        for filters in (6, 16):         # an in-place call after the conv, a post-op
            bound = bound_attrs(get("conv"), {"filters": filters, "kernel": 3})
            p = {"weight": rng.standard_normal((3, 3, 8, filters)).astype(np.float32),
                 "bias": rng.standard_normal(filters).astype(np.float32)}
            pre, _ = conv.conv_forward(ctx, bound, p, [x])
            got, _ = conv.conv_forward(ctx, bound, p, [x], act="tanh")
            assert np.abs(got - np.tanh(pre.astype(np.float64))).max() < 3e-7
        p = {"weight": rng.standard_normal((6 * 7 * 8, 9)).astype(np.float32)}
        pre, _ = dense.fc_forward(ctx, {}, p, [x])
        got, _ = dense.fc_forward(ctx, {}, p, [x], act="tanh")
        assert np.abs(got - np.tanh(pre.astype(np.float64))).max() < 3e-7
    finally:
        common.clear_cache()


@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("act", [None, "tanh"])
def test_conv_writing_a_blocked_destination_matches_reference(training, act, monkeypatch):
    """conv_dst.py: at inference a 1-channel conv with few filters writes oneDNN's blocked
    layout into the shared region, then reorders into NHWC (AVX2 hosts; forced here on any
    host by calling it an AVX2 kernel); training keeps NHWC: outputs and gradients equal the
    float64 reference's either way."""
    from netdsl.runtime.kernels.onednn import common, conv, conv_dst
    choose = conv_dst.choose
    used = []

    def as_if_avx2(geo, first, *args):
        found = choose(geo, "jit:avx2", *args)
        used.append(found is not None)
        return found
    monkeypatch.setattr(conv_dst, "choose", as_if_avx2)
    from netdsl.runtime.kernels.onednn import conv_fold
    monkeypatch.setattr(conv_fold, "FOLD", False)    # (it would fold this conv at inference)
    common.clear_cache()
    try:
        spec, layer = get("conv"), get(act) if act else None
        bound = bound_attrs(spec, {"filters": 6, "kernel": 5, "pad": "valid"})
        rng = np.random.default_rng(2)
        x = distinct_values(rng, (BATCH, 12, 12, 1))
        params = {k: rng.normal(size=ps.shape)
                  for k, ps in spec.params(bound, [(12, 12, 1)]).items()}
        ctx = Ctx(xp=np, training=training)
        want, c_cache = spec.forward(ctx, bound, params, [x])
        if act:
            pre = want
            want, a_cache = layer.forward(ctx, {}, {}, [pre])
        p32 = {k: v.astype(np.float32) for k, v in params.items()}
        fused = kernels.select_fused(spec, bound, [(12, 12, 1)], np.float32, "onednn", act) \
            if act else (conv.conv_forward, conv.conv_backward)
        out, cache = fused[0](ctx, bound, p32, [x.astype(np.float32)])
        # inference only (conv_dst.choose): in training the plain NHWC conv runs
        assert any(used) == (not training), "the blocked destination: inference only"
        _close("output", out, want)
        if training:
            dout = rng.normal(size=want.shape)
            d_pre = layer.backward(ctx, {}, {}, a_cache, dout)[0][0] if act else dout
            want_dx, want_dp = spec.backward(ctx, bound, params, c_cache, d_pre)
            dx, dp = fused[1](ctx, bound, p32, cache, dout.astype(np.float32))
            _close("d input", dx[0], want_dx[0])
            for k in want_dp:
                _close(f"d {k}", dp[k], want_dp[k])
    finally:
        common.clear_cache()
@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("shape", [(4, 5, 6), (7,), (3, 3, 16)])
def test_add_and_fused_add_relu_match_reference(shape, training):
    """oneDNN's binary add, and relu(a + b) as one call (the residual join with the ReLU the
    compiler fuses into it), against the registry's add then relu in float64: the output and
    both input gradients (w.r.t. the ReLU's output)."""
    add, relu = get("add"), get("relu")
    shapes = [shape, shape]
    kernel = kernels.kernels_for("add")["onednn"]
    assert kernel.supports({}, shapes, np.float32)
    assert not kernel.supports({}, shapes * 2, np.float32)   # three inputs: the reference
    fused = kernels.select_fused(add, {}, shapes, np.float32, "onednn", "relu")
    assert fused is not None and fused[2] == "onednn"
    rng = np.random.default_rng(7)
    a, b = (distinct_values(rng, (BATCH,) + shape) for _ in range(2))
    ctx = Ctx(xp=np, training=training)
    pre, c_cache = add.forward(ctx, {}, {}, [a, b])
    want, r_cache = relu.forward(ctx, {}, {}, [pre])
    assert (want == 0).any() and (want > 0).any()        # the mask matters
    dout = rng.normal(size=want.shape)
    d_pre = relu.backward(ctx, {}, {}, r_cache, dout)[0][0]
    out, cache = kernel.forward(ctx, {}, {}, [a.astype(np.float32), b.astype(np.float32)])
    _close("add output", out, pre)
    for g in kernel.backward(ctx, {}, {}, cache, dout.astype(np.float32))[0]:
        _close("add d input", g, dout)
    out, cache = fused[0](ctx, {}, {}, [a.astype(np.float32), b.astype(np.float32)])
    _close("add+relu output", out, want)
    dins, dparams = fused[1](ctx, {}, {}, cache, dout.astype(np.float32))
    assert len(dins) == 2 and not dparams
    for g in dins:
        _close("add+relu d input", g, d_pre)


def test_training_plan_fuses_the_residual_relu():
    """ResNet-20's training plan: every residual add carries the ReLU after it (one oneDNN
    call) and no separate ReLU step is left."""
    from pathlib import Path

    from netdsl.compile.compiler import compile_file
    from netdsl.runtime.executor import Executor
    root = Path(__file__).resolve().parents[1] / "nets"
    g = compile_file(str(root / "resnet20.net"), input_shape=(32, 32, 3)).graph
    plan = Executor(g, kernels="onednn").plan
    adds = [st for st in plan if st.node.op == "add"]
    assert len(adds) == 9
    assert all(st.provider == "onednn" and st.node.meta.get("act") == "relu"
               and st.act is None for st in adds)
    assert not any(st.node.op == "relu" for st in plan)


@pytest.mark.parametrize("barrier_free", [frozenset(), frozenset(("forward",)),
                                          frozenset(("forward", "backward"))],
                         ids=["first-choice", "forward-moved", "both-moved"])
@pytest.mark.parametrize("act", [None, "relu"])
@pytest.mark.parametrize("shape", [(4, 5, 6), (6, 6, 16)])
def test_batchnorm_either_kernel_matches_reference(shape, act, barrier_free, monkeypatch):
    """norm.BARRIER_FREE: training batch norm (and batch norm + ReLU) on oneDNN's first choice
    and on its barrier-free kernel, threaded, matches the float64 reference (outputs, input and
    parameter gradients, running statistics; the fused ReLU's mask written by one kernel and
    read by the other); a host whose first choice is ``bnorm_jit:avx512…`` runs
    ``bnorm_tbb_jit`` of that ISA in the passes named (AVX2: unmoved)."""
    from netdsl.runtime.kernels.onednn import common, norm
    monkeypatch.setattr(norm, "BARRIER_FREE", barrier_free)
    common.clear_cache()
    try:
        case = ("batchnorm", {}, shape)
        if act is None:
            test_kernel_matches_reference(case, True)
        else:
            test_fused_activation_matches_layer_then_activation(case, True, act, False)
        d = common.lib()
        full = (BATCH,) + shape
        fwd = d.impl_name(norm._fwd_pd(full, 1e-5, True, act is not None))
        bwd = d.impl_name(norm._bwd_pd(full, 1e-5, True, act is not None))
        monkeypatch.setattr(norm, "BARRIER_FREE", frozenset())
        common.clear_cache()
        first = d.impl_name(norm._fwd_pd(full, 1e-5, True, act is not None))
        if barrier_free and first.startswith("bnorm_jit:") and "avx512" in first:
            isa = first.split(":", 1)[1]
            assert fwd == "bnorm_tbb_jit:" + isa, fwd
            assert (bwd == "bnorm_tbb_jit:" + isa) == ("backward" in barrier_free), bwd
        elif not barrier_free:
            assert fwd == first, fwd
    finally:
        common.clear_cache()


@pytest.mark.parametrize("strided_jit", [False, True], ids=["first-choice", "jit"])
@pytest.mark.parametrize("case", [
    ("conv", {"filters": 32, "kernel": 3, "stride": 2, "pad": 1, "bias": False}, (8, 8, 16)),
    ("conv", {"filters": 32, "kernel": 1, "stride": 2, "bias": False}, (8, 8, 16)),
    ("conv", {"filters": 64, "kernel": 3, "stride": 2, "pad": 1}, (6, 6, 32)),
], ids=_case_id)
def test_strided_conv_backward_data_either_kernel(case, strided_jit, monkeypatch):
    """choices.strided_jit: a stride-2 conv on ≤ 32 input channels (ResNet-20's) runs
    backward-data on the jit kernel of oneDNN's first choice's ISA where that choice is
    brgconv_strided, and its numbers match the float64 reference either way (threaded)."""
    from netdsl.runtime.kernels.onednn import choices, common
    from netdsl.runtime.kernels.onednn.conv import impl_names
    monkeypatch.setattr(choices, "STRIDED_JIT", strided_jit)
    monkeypatch.setattr(common, "SMALL", 0)
    common.clear_cache()
    try:
        test_kernel_matches_reference(case, True)
        _, attrs, in_shape = case
        bound = bound_attrs(get("conv"), attrs)
        chosen = impl_names(bound, (BATCH,) + in_shape, attrs["filters"],
                            attrs.get("bias", True), None, True)["backward_data"]
        monkeypatch.setattr(choices, "STRIDED_JIT", False)
        common.clear_cache()
        first = impl_names(bound, (BATCH,) + in_shape, attrs["filters"],
                           attrs.get("bias", True), None, True)["backward_data"]
        if strided_jit and first.startswith("brgconv_strided:"):
            isa = first.split(":", 1)[1]
            want = ("jit_1x1:" if attrs["kernel"] == 1 else "jit:") + isa
            assert chosen == want, (chosen, first)
        else:
            assert chosen == first, (chosen, first)
    finally:
        common.clear_cache()
