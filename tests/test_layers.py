"""Layer registry entries: shape rules, forward values against naive references, errors."""
import math
import re

import numpy as np
import pytest

from netdsl.core.errors import NetdslError, ShapeError
from netdsl.tools.gradcheck import bound_attrs, layer_inputs, layer_labels
from netdsl.layers import AUTO, Ctx, ParamSpec, all_specs, bind_args, get, lookup
from netdsl.layers.init import init_param

RNG = np.random.default_rng(42)


def run(name, x, attrs=None, params=None, training=False, labels=None):
    """Forward of layer ``name`` (example attrs overlaid with ``attrs``) on x or a list of xs."""
    spec, bound = get(name), bound_attrs(get(name), attrs)
    inputs = x if isinstance(x, list) else [x]
    ctx = Ctx(xp=np, training=training, rng=np.random.default_rng(0), labels=labels)
    return spec.forward(ctx, bound, params or {}, inputs)


# Every spec: metadata and shape rule agreeing with forward

RANDOM_DRAWS = 8  # random valid argument sets per spec that has a generator


def all_cases():
    """(spec, example) for every registered layer: its examples, then random valid ones."""
    cases = []
    for spec in all_specs():
        for k, example in enumerate(spec.all_examples()):
            cases.append(pytest.param(spec, example, id=f"{spec.name}-ex{k}"))
        if spec.random_example is not None:
            rng = np.random.default_rng(sum(map(ord, spec.name)))
            for k in range(RANDOM_DRAWS):
                cases.append(pytest.param(spec, spec.random_example(rng),
                                          id=f"{spec.name}-random{k}"))
    return cases


CASES = all_cases()


def test_every_layer_is_covered_by_the_generic_tests():
    """100% coverage: every registered spec has examples that the generic tests run, every
    windowed layer draws random valid arguments and every reference is exercised."""
    covered = {case.values[0].name for case in CASES}
    assert covered == {spec.name for spec in all_specs()}
    for spec in all_specs():
        assert spec.all_examples(), spec.name
        assert set(spec.output_names) == set() or len(spec.output_names) == spec.outputs
    windowed = {"conv", "pool", "maxpool", "avgpool", "lrn", "local", "deconv",
                "maxpool_switches", "maxunpool", "crop"}
    assert windowed <= {s.name for s in all_specs() if s.random_example is not None}
    assert windowed <= {s.name for s in all_specs() if s.reference is not None}


@pytest.mark.parametrize("spec", all_specs(), ids=lambda s: s.name)
def test_spec_has_doc_example_style_label(spec):
    assert spec.doc and "\n" not in spec.doc
    for example in spec.all_examples():
        assert set(example) == {"attrs", "in_shapes"}
    assert spec.style.get("fillcolor", "").startswith("#")
    arg_names = {a.name for a in spec.args}
    assert set(spec.label) <= arg_names and set(spec.compact) <= arg_names


def _forward_case(spec, example, batch=2):
    """Bound attrs, in/out shapes, float64 params and the forward outputs of one case."""
    bound = bound_attrs(spec, example["attrs"])
    shapes = [tuple(s) for s in example["in_shapes"]]
    expected = spec.infer_shape(bound, shapes)
    rng = np.random.default_rng(7)
    if spec.role == "source":
        inputs = [rng.normal(size=(batch,) + tuple(bound["shape"]))]
    else:
        inputs = layer_inputs(spec, bound, shapes, rng, batch)
    params = {name: init_param(np, rng, ps, np.float64)
              for name, ps in spec.params(bound, shapes).items()}
    params = {k: v + 0.1 * rng.normal(size=v.shape) for k, v in params.items()}  # no zero bias
    labels = layer_labels(spec, shapes, rng, batch)
    ctx = Ctx(xp=np, training=True, rng=np.random.default_rng(0), labels=labels)
    out, _ = spec.forward(ctx, bound, params, inputs)
    return bound, shapes, expected, inputs, params, out


@pytest.mark.parametrize("spec,example", CASES)
def test_infer_shape_matches_forward(spec, example):
    bound, shapes, expected, inputs, params, out = _forward_case(spec, example)
    outs = out if spec.outputs > 1 else (out,)
    wants = expected if spec.outputs > 1 else (expected,)
    assert len(outs) == len(wants) == spec.output_count(bound)
    for o, want in zip(outs, wants):
        assert o.shape == (tuple(want) if spec.role == "loss" else (2,) + tuple(want))
    if spec.role == "source":
        assert out is inputs[0]


@pytest.mark.parametrize("spec,example", [c for c in CASES if c.values[0].reference is not None])
def test_forward_matches_naive_reference(spec, example):
    """The fast forward equals the spec's naive-loop definition (float64)."""
    bound, shapes, expected, inputs, params, out = _forward_case(spec, example)
    want = spec.reference(bound, params, inputs)
    outs, wants = (out, want) if spec.outputs > 1 else ((out,), (want,))
    for o, w in zip(outs, wants):
        assert o.shape == w.shape
        np.testing.assert_allclose(o, w, rtol=1e-10, atol=1e-12)


def test_aliases_and_compact_notation():
    assert get("Conv2D").name == "conv" and get("linear").name == "fc"
    assert lookup("bn").name == "batchnorm" and lookup("cross_entropy").name == "softmax_xent"
    assert get("conv").compact == ("kernel", "filters")
    assert get("pool").compact == ("size", "stride")
    with pytest.raises(NetdslError, match="did you mean 'maxpool'"):
        get("maxpoool")


# Convolution

def naive_conv(x, w, b, stride, pad, dilation, groups):
    """Direct convolution with explicit loops (NHWC, weight KH×KW×Cin/g×F)."""
    n, h, wd, c = x.shape
    kh, kw, cg, f = w.shape
    xp_ = np.zeros((n, h + 2 * pad[0], wd + 2 * pad[1], c))
    xp_[:, pad[0]:pad[0] + h, pad[1]:pad[1] + wd] = x
    ho = (h + 2 * pad[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wd + 2 * pad[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    fg = f // groups
    out = np.zeros((n, ho, wo, f))
    for b_ in range(n):
        for i in range(ho):
            for j in range(wo):
                for o in range(f):
                    g = o // fg
                    acc = b[o]
                    for a in range(kh):
                        for e in range(kw):
                            for ci in range(cg):
                                acc += (xp_[b_, i * stride[0] + a * dilation[0],
                                            j * stride[1] + e * dilation[1], g * cg + ci]
                                        * w[a, e, ci, o])
                    out[b_, i, j, o] = acc
    return out


@pytest.mark.parametrize("attrs,in_shape", [
    ({"filters": 3, "kernel": 3}, (5, 5, 2)),
    ({"filters": 2, "kernel": 3, "stride": 2, "pad": 1}, (6, 5, 3)),
    ({"filters": 2, "kernel": 3, "dilation": 2, "pad": "valid"}, (7, 6, 2)),
    ({"filters": 4, "kernel": 3, "groups": 2}, (4, 4, 4)),
    ({"filters": 3, "kernel": (2, 3), "stride": (1, 2), "pad": (1, 0)}, (4, 5, 2)),
    ({"filters": 2, "kernel": 1}, (3, 3, 3)),
    ({"filters": 2, "kernel": 3, "bias": False, "dilation": 2}, (5, 5, 1)),
])
def test_conv_matches_naive_loops(attrs, in_shape):
    spec = get("conv")
    bound = bind_args(spec, [], attrs)
    x = RNG.normal(size=(2,) + in_shape)
    specs = spec.params(bound, [in_shape])
    params = {k: RNG.normal(size=ps.shape) for k, ps in specs.items()}
    out, _ = run("conv", x, attrs, params)
    pad = bound["pad"]
    if pad == "same":
        pad = tuple(d * (k - 1) // 2 for k, d in zip(bound["kernel"], bound["dilation"]))
    elif pad == "valid":
        pad = (0, 0)
    bias = params.get("bias", np.zeros(bound["filters"]))
    want = naive_conv(x, params["weight"], bias, bound["stride"], pad, bound["dilation"],
                      bound["groups"])
    assert out.shape == want.shape == (2,) + spec.infer_shape(bound, [in_shape])
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-12)


def test_conv_keeps_float32():
    x = RNG.normal(size=(2, 5, 5, 3)).astype(np.float32)
    params = {"weight": RNG.normal(size=(3, 3, 3, 4)).astype(np.float32),
              "bias": np.zeros(4, np.float32)}
    out, cache = run("conv", x, {"filters": 4}, params)
    attrs = bound_attrs(get("conv"), {"filters": 4})
    dinputs, dparams = get("conv").backward(Ctx(xp=np), attrs, params, cache, np.ones_like(out))
    assert out.dtype == np.float32
    assert dinputs[0].dtype == np.float32 and dparams["weight"].dtype == np.float32


def test_conv_params_and_macs_vgg_conv1_1():
    spec = get("conv")
    attrs = bind_args(spec, [], {"filters": 64, "kernel": 3})
    assert spec.infer_shape(attrs, [(224, 224, 3)]) == (224, 224, 64)
    specs = spec.params(attrs, [(224, 224, 3)])
    assert specs["weight"].shape == (3, 3, 3, 64) and specs["bias"].shape == (64,)
    assert specs["weight"].fan_in == 27
    assert spec.macs(attrs, [(224, 224, 3)], [(224, 224, 64)]) == 224 * 224 * 64 * 3 * 3 * 3
    grouped = bind_args(spec, [], {"filters": 8, "groups": 4})
    assert spec.params(grouped, [(6, 6, 4)])["weight"].shape == (3, 3, 1, 8)
    assert spec.macs(grouped, [(6, 6, 4)], [(6, 6, 8)]) == 6 * 6 * 8 * 9 * 1


def test_conv_kernel_too_big_shows_arithmetic():
    spec = get("conv")
    attrs = bind_args(spec, [], {"filters": 8, "kernel": 7, "pad": "valid"})
    with pytest.raises(ShapeError) as info:
        spec.infer_shape(attrs, [(5, 5, 3)])
    err = info.value
    assert "conv k=7 on 5-wide input" in err.message
    assert "(5 − 7 + 2·0)/1 + 1" in err.detail
    assert re.search(r"= [−-]1$", err.detail)  # out_size prints an ASCII minus today
    assert err.hint


def test_conv_shape_errors():
    spec = get("conv")
    with pytest.raises(ShapeError, match="H×W×C input, got 120") as info:
        spec.infer_shape(bind_args(spec, [], {"filters": 4}), [(120,)])
    assert "FC" in info.value.hint
    with pytest.raises(ShapeError, match="even kernel") as info:
        spec.infer_shape(bind_args(spec, [], {"filters": 4, "kernel": 2}), [(8, 8, 3)])
    assert "pad" in info.value.hint
    assert spec.infer_shape(bind_args(spec, [], {"filters": 4, "kernel": 2, "pad": 0}),
                            [(8, 8, 3)]) == (7, 7, 4)
    with pytest.raises(ShapeError, match="6 input channels are not divisible by groups=4"):
        spec.infer_shape(bind_args(spec, [], {"filters": 8, "groups": 4}), [(8, 8, 6)])
    with pytest.raises(ShapeError, match="6 filters are not divisible by groups=4"):
        spec.infer_shape(bind_args(spec, [], {"filters": 6, "groups": 4}), [(8, 8, 4)])
    with pytest.raises(NetdslError, match="filters"):
        spec.infer_shape(bind_args(spec, [], {}), [(8, 8, 3)])
    assert bind_args(spec, [], {})["filters"] is AUTO


# Fully connected

def test_fc_flattens_row_major():
    x = RNG.normal(size=(3, 2, 2, 3))
    w, b = RNG.normal(size=(12, 5)), RNG.normal(size=5)
    out, _ = run("fc", x, {"units": 5}, {"weight": w, "bias": b})
    want = np.array([[sum(x[n, i, j, c] * w[(i * 2 + j) * 3 + c, u]
                          for i in range(2) for j in range(2) for c in range(3)) + b[u]
                      for u in range(5)] for n in range(3)])
    np.testing.assert_allclose(out, want, rtol=1e-12)
    spec, attrs = get("fc"), bind_args(get("fc"), [], {"units": 4096})
    assert spec.macs(attrs, [(7, 7, 512)], [(4096,)]) == 7 * 7 * 512 * 4096
    assert spec.params(attrs, [(7, 7, 512)])["weight"].shape == (25088, 4096)


# Pooling

def naive_pool(x, size, stride, pad, kind, ceil):
    """Caffe/PyTorch pooling with explicit loops (count_include_pad=True for avg)."""
    n, h, w, c = x.shape

    def outsize(i, k, s, p):
        o = (math.ceil if ceil else math.floor)((i + 2 * p - k) / s) + 1
        if ceil and (o - 1) * s >= i + p:
            o -= 1
        return o
    ho, wo = outsize(h, size[0], stride[0], pad[0]), outsize(w, size[1], stride[1], pad[1])
    out = np.zeros((n, ho, wo, c))
    for i in range(ho):
        for j in range(wo):
            h0, w0 = i * stride[0] - pad[0], j * stride[1] - pad[1]
            h1, w1 = min(h0 + size[0], h + pad[0]), min(w0 + size[1], w + pad[1])
            area = (h1 - h0) * (w1 - w0)
            window = x[:, max(h0, 0):min(h1, h), max(w0, 0):min(w1, w), :]
            if kind == "max":
                out[:, i, j, :] = window.max(axis=(1, 2))
            else:
                out[:, i, j, :] = window.sum(axis=(1, 2)) / area
    return out


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("size,stride,pad,ceil,hw", [
    ((2, 2), (2, 2), (0, 0), False, (4, 6)),
    ((2, 2), (2, 2), (0, 0), False, (5, 5)),
    ((3, 3), (2, 2), (1, 1), True, (6, 6)),
    ((3, 3), (2, 2), (0, 0), True, (6, 7)),
    ((3, 2), (1, 2), (1, 0), False, (4, 5)),
    ((3, 3), (1, 1), (0, 0), False, (5, 5)),
])
def test_pool_matches_naive_loops(kind, size, stride, pad, ceil, hw):
    x = RNG.normal(size=(2,) + hw + (3,))
    attrs = {"size": size, "stride": stride, "pad": pad, "ceil": ceil, "kind": kind}
    out, _ = run("pool", x, attrs)
    want = naive_pool(x, size, stride, pad, kind, ceil)
    np.testing.assert_allclose(out, want, rtol=1e-12)
    assert get("pool").infer_shape(bind_args(get("pool"), [], attrs),
                                   [hw + (3,)]) == want.shape[1:]


def test_maxpool_ties_route_gradient_to_first_max():
    spec = get("maxpool")
    attrs = bound_attrs(spec, {"size": 2})
    x = np.zeros((1, 2, 4, 1))  # ReLU output full of zeros: every window is a 4-way tie
    out, cache = spec.forward(Ctx(xp=np), attrs, {}, [x])
    dinputs, _ = spec.backward(Ctx(xp=np), attrs, {}, cache, np.ones_like(out))
    want = np.zeros((1, 2, 4, 1))
    want[0, 0, 0, 0] = want[0, 0, 2, 0] = 1  # top-left of each window only
    np.testing.assert_array_equal(dinputs[0], want)
    # Overlapping 2×3 windows at columns 0 and 1: each sends its gradient to its own top-left.
    attrs = bound_attrs(spec, {"size": (2, 3), "stride": 1})
    out, cache = spec.forward(Ctx(xp=np), attrs, {}, [x])
    dinputs, _ = spec.backward(Ctx(xp=np), attrs, {}, cache, np.array([[[[2.0], [5.0]]]]))
    want = np.zeros((1, 2, 4, 1))
    want[0, 0, 0, 0], want[0, 0, 1, 0] = 2.0, 5.0
    np.testing.assert_array_equal(dinputs[0], want)


def test_pool_stride_auto_and_resolve():
    spec = get("pool")
    attrs = bind_args(spec, [], {"size": 3})
    assert attrs["stride"] is AUTO
    assert spec.infer_shape(attrs, [(9, 9, 4)]) == (3, 3, 4)
    assert spec.resolve(attrs, None)["stride"] == (3, 3) and spec.downsamples
    assert get("maxpool").args[3].default == "max" and get("avgpool").args[3].default == "avg"


def test_pool_shape_errors():
    spec = get("maxpool")
    with pytest.raises(ShapeError, match="pad=2 is more than half the window size 3"):
        spec.infer_shape(bind_args(spec, [], {"size": 3, "pad": 2}), [(8, 8, 1)])
    with pytest.raises(ShapeError, match="maxpool k=3 on 2-wide input") as info:
        spec.infer_shape(bind_args(spec, [], {"size": 3}), [(2, 2, 1)])
    assert "(2 − 3 + 2·0)/3 + 1" in info.value.detail
    with pytest.raises(ShapeError, match="H×W×C"):
        spec.infer_shape(bind_args(spec, [], {}), [(10,)])


def test_gap_and_flatten():
    x = RNG.normal(size=(2, 3, 4, 5))
    np.testing.assert_allclose(run("gap", x)[0], x.mean(axis=(1, 2)))
    assert get("gap").infer_shape({}, [(7, 7, 512)]) == (512,)
    np.testing.assert_array_equal(run("flatten", x)[0][1], x[1].ravel())
    assert get("flatten").infer_shape({}, [(3, 4, 5)]) == (60,)


# Batch norm, dropout, activations

def bn_params(c):
    return {"gamma": RNG.normal(size=c), "beta": RNG.normal(size=c),
            "running_mean": np.zeros(c), "running_var": np.ones(c)}


@pytest.mark.parametrize("shape", [(4, 3, 3, 2), (6, 5)])
def test_batchnorm_training_normalises_and_updates_running_stats(shape):
    x = 3.0 + 2.0 * RNG.normal(size=shape)
    params = bn_params(shape[-1])
    gamma, beta = params["gamma"].copy(), params["beta"].copy()
    out, _ = run("batchnorm", x, {"momentum": 0.25}, params, training=True)
    flat = x.reshape(-1, shape[-1])
    mean, var = flat.mean(axis=0), flat.var(axis=0)
    np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + 1e-5) * gamma + beta, rtol=1e-10)
    np.testing.assert_allclose(params["running_mean"], 0.25 * mean, rtol=1e-12)
    np.testing.assert_allclose(params["running_var"], 0.75 + 0.25 * flat.var(axis=0, ddof=1),
                               rtol=1e-12)


def test_batchnorm_eval_uses_running_stats():
    x = RNG.normal(size=(4, 2, 2, 3))
    params = bn_params(3)
    params["running_mean"][:] = [1.0, -1.0, 0.5]
    params["running_var"][:] = [4.0, 0.25, 1.0]
    before = {k: v.copy() for k, v in params.items()}
    out, _ = run("batchnorm", x, {}, params, training=False)
    want = (x - before["running_mean"]) / np.sqrt(before["running_var"] + 1e-5)
    np.testing.assert_allclose(out, want * before["gamma"] + before["beta"], rtol=1e-12)
    for key in before:
        np.testing.assert_array_equal(params[key], before[key])
    specs = get("batchnorm").params(bound_attrs(get("batchnorm")), [(2, 2, 3)])
    assert not specs["running_mean"].trainable and specs["gamma"].trainable


def test_dropout_eval_identity_and_train_mean_preserving():
    x = np.ones((200, 50))
    out, _ = run("dropout", x, {"rate": 0.3}, training=False)
    assert out is x
    out, _ = run("dropout", x, {"rate": 0.3}, training=True)
    dropped = np.mean(out == 0)
    assert abs(dropped - 0.3) < 0.02
    np.testing.assert_allclose(out[out != 0], 1 / 0.7)
    assert abs(out.mean() - 1.0) < 0.03
    spec = get("dropout")
    assert spec.train_only
    with pytest.raises(NetdslError, match="below 1"):
        spec.infer_shape(bind_args(spec, [], {"rate": 1.0}), [(10,)])


def test_activations_values():
    x = np.array([[-1000.0, -2.0, 0.5, 3.0, 1000.0]])
    with np.errstate(over="raise"):
        sig, _ = run("sigmoid", x)
    np.testing.assert_allclose(sig, [[0.0, 1 / (1 + math.e ** 2), 1 / (1 + math.e ** -0.5),
                                      1 / (1 + math.e ** -3), 1.0]], rtol=1e-12, atol=1e-300)
    out, _ = run("relu", x)
    np.testing.assert_array_equal(out, [[0, 0, 0.5, 3.0, 1000.0]])
    out, _ = run("tanh", x)
    np.testing.assert_allclose(out, [[-1, math.tanh(-2), math.tanh(0.5), math.tanh(3), 1]])


# Joins and loss

def test_concat_and_add_values():
    a, b = RNG.normal(size=(2, 3, 3, 2)), RNG.normal(size=(2, 3, 3, 4))
    out, _ = run("concat", [a, b])
    np.testing.assert_array_equal(out[..., :2], a)
    np.testing.assert_array_equal(out[..., 2:], b)
    assert get("concat").infer_shape({}, [(3, 3, 2), (3, 3, 4), (3, 3, 1)]) == (3, 3, 7)
    assert get("concat").infer_shape({}, [(10,), (5,)]) == (15,)
    c = RNG.normal(size=(2, 3, 3, 2))
    out, _ = run("add", [a, c, a])
    np.testing.assert_allclose(out, 2 * a + c)


def test_join_mismatch_messages():
    with pytest.raises(ShapeError, match=r"concat: 28×28 vs 27×27 \(spatial sizes must match\)"):
        get("concat").infer_shape({}, [(28, 28, 64), (27, 27, 32)])
    with pytest.raises(ShapeError, match="concat: 28×28×64 vs 10"):
        get("concat").infer_shape({}, [(28, 28, 64), (10,)])
    with pytest.raises(ShapeError, match="add: 56×56×64 vs 28×28×128") as info:
        get("add").infer_shape({}, [(56, 56, 64), (28, 28, 128)])
    assert "residual{...}" in info.value.hint
    assert get("add").inputs == (2, None) and get("add").role == "join"


def test_softmax_xent_value_and_stability():
    logits = np.array([[0.0, 0.0, 0.0, 0.0], [1000.0, 0.0, -1000.0, 0.0]])
    labels = np.array([2, 0])
    out, _ = run("softmax_xent", logits, {"weight": 0.5}, labels=labels)
    # row 0: uniform → −log(1/4); row 1: the label holds all the mass → 0
    assert out.shape == () and float(out) == pytest.approx(0.5 * math.log(4) / 2, rel=1e-12)
    spec = get("softmax_xent")
    assert spec.infer_shape({}, [(10,)]) == () and spec.role == "loss"
    with pytest.raises(ShapeError, match="flat"):
        spec.infer_shape({}, [(7, 7, 10)])
    with pytest.raises(NetdslError, match="label 4 is outside 0..3"):
        run("softmax_xent", logits, labels=np.array([4, 0]))


# Initialisers

def test_initialisers_statistics():
    rng = np.random.default_rng(1)
    he = init_param(np, rng, ParamSpec((200, 300), "he", fan_in=200, fan_out=300))
    assert he.dtype == np.float32
    assert he.std() == pytest.approx(math.sqrt(2 / 200), rel=0.02)
    lecun = init_param(np, rng, ParamSpec((200, 300), "lecun", fan_in=200), np.float64)
    assert lecun.std() == pytest.approx(math.sqrt(1 / 200), rel=0.02)
    glorot = init_param(np, rng, ParamSpec((200, 300), "glorot", fan_in=200, fan_out=300))
    limit = math.sqrt(6 / 500)
    assert glorot.max() <= limit and glorot.min() >= -limit and glorot.max() > 0.98 * limit
    assert not init_param(np, rng, ParamSpec((3,), "zeros")).any()
    assert (init_param(np, rng, ParamSpec((3,), "ones")) == 1).all()
    with pytest.raises(NetdslError, match="unknown initialiser"):
        init_param(np, rng, ParamSpec((3,), "xavier"))


@pytest.mark.parametrize("spec,example", [c for c in CASES if c.values[0].role != "source"])
def test_float32_in_float32_out_and_gradients(spec, example):
    """Training runs in float32: no layer may silently promote to float64 (forward or back)."""
    bound = bound_attrs(spec, example["attrs"])
    shapes = [tuple(s) for s in example["in_shapes"]]
    rng = np.random.default_rng(5)
    inputs = [x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x
              for x in layer_inputs(spec, bound, shapes, rng, 2)]
    params = {name: init_param(np, rng, ps, np.float32)
              for name, ps in spec.params(bound, shapes).items()}
    ctx = Ctx(xp=np, training=True, rng=np.random.default_rng(0),
              labels=layer_labels(spec, shapes, rng, 2), dtype=np.float32)
    out, cache = spec.forward(ctx, bound, params, inputs)
    outs = out if spec.outputs > 1 else (out,)
    assert outs[0].dtype == np.float32
    douts = tuple(np.ones_like(o) if np.issubdtype(o.dtype, np.floating) else None for o in outs)
    dinputs, dparams = spec.backward(ctx, bound, params, cache,
                                     douts if spec.outputs > 1 else douts[0])
    for d in list(dinputs) + list(dparams.values()):
        assert d is None or d.dtype == np.float32
