"""Every layer's backward agrees with finite differences (float64), inputs and parameters."""
import dataclasses

import numpy as np
import pytest

import netdsl.tools.gradcheck as gradcheck
from netdsl.tools.gradcheck import TOLERANCE, check_layer, numeric_grad, relative_error
from netdsl.layers import all_specs, get


def assert_grads_ok(errors, expect):
    assert set(errors) == set(expect), errors
    for name, err in errors.items():
        assert err < TOLERANCE, f"{name}: relative error {err:.2e}"


def expected_tensors(spec, example):
    """input{i} for every float input (switch indices are not differentiable), then each
    trainable parameter."""
    bound = gradcheck.bound_attrs(spec, example["attrs"])
    shapes = [tuple(s) for s in example["in_shapes"]]
    inputs = gradcheck.layer_inputs(spec, bound, shapes, np.random.default_rng(0))
    names = [f"input{i}" for i, x in enumerate(inputs) if np.issubdtype(x.dtype, np.floating)]
    return names + [k for k, ps in spec.params(bound, shapes).items() if ps.trainable]


RANDOM_GRADCHECKS = 3  # random valid argument sets per spec with a generator (kept small: time)


def gradient_cases():
    cases = []
    for spec in all_specs():
        for k, example in enumerate(spec.all_examples()):
            cases.append(pytest.param(spec, example, id=f"{spec.name}-ex{k}"))
        if spec.random_example is not None:
            rng = np.random.default_rng(1000 + sum(map(ord, spec.name)))
            for k in range(RANDOM_GRADCHECKS):
                cases.append(pytest.param(spec, spec.random_example(rng),
                                          id=f"{spec.name}-random{k}"))
    return cases


@pytest.mark.parametrize("spec,example", gradient_cases())
def test_example_gradients(spec, example):
    """Float64 finite differences of every float input and trainable parameter, for every
    example of every layer (groups > 1, dilation, ceil pooling, unpool switches, transposed
    conv with output_padding are among them) and random valid arguments."""
    errors = check_layer(spec.name, example["attrs"], example["in_shapes"])
    if spec.role == "source":
        assert errors == {}
        return
    assert_grads_ok(errors, expected_tensors(spec, example))


def test_gradient_cases_cover_the_brief():
    """The special cases the registry-wide check must include are among the examples."""
    def has(name, **want):
        return any(all(ex["attrs"].get(k) == v for k, v in want.items())
                   for ex in get(name).all_examples())
    assert has("conv", groups=2) and has("conv", dilation=2)
    assert has("pool", ceil=True) and has("maxpool_switches", ceil=True)
    assert has("deconv", output_padding=1) and has("deconv", groups=2)
    assert get("maxunpool").make_inputs is not None and len(get("maxunpool").all_examples()) >= 3


@pytest.mark.parametrize("name,attrs,in_shapes,expect", [
    ("conv", {"filters": 3, "stride": 2, "pad": 1}, [(5, 6, 2)], ["input0", "weight", "bias"]),
    ("conv", {"filters": 2, "dilation": 2}, [(6, 6, 2)], ["input0", "weight", "bias"]),
    ("conv", {"filters": 4, "groups": 2}, [(4, 4, 4)], ["input0", "weight", "bias"]),
    ("conv", {"filters": 3, "bias": False}, [(4, 4, 2)], ["input0", "weight"]),
    ("conv", {"filters": 3, "kernel": 1}, [(3, 3, 2)], ["input0", "weight", "bias"]),
    ("conv", {"filters": 2, "kernel": (2, 3), "pad": (1, 0), "stride": (1, 2)}, [(5, 6, 2)],
     ["input0", "weight", "bias"]),
    ("maxpool", {"size": 3, "stride": 2, "pad": 1, "ceil": True}, [(6, 6, 2)], ["input0"]),
    ("avgpool", {"size": 3, "stride": 2, "pad": 1, "ceil": True}, [(6, 6, 2)], ["input0"]),
    ("avgpool", {"size": 3, "stride": 1}, [(5, 5, 2)], ["input0"]),
    ("avgpool", {"size": 2}, [(4, 6, 2)], ["input0"]),
    ("maxpool", {"size": 3, "stride": 1}, [(4, 4, 2)], ["input0"]),
    ("batchnorm", {}, [(5,)], ["input0", "gamma", "beta"]),
    ("fc", {"units": 4}, [(6,)], ["input0", "weight", "bias"]),
    ("concat", {}, [(2, 2, 1), (2, 2, 2), (2, 2, 3)], ["input0", "input1", "input2"]),
    ("concat", {}, [(3,), (2,)], ["input0", "input1"]),
    ("add", {}, [(2, 2, 3)] * 3, ["input0", "input1", "input2"]),
    ("softmax_xent", {"weight": 0.3}, [(5,)], ["input0"]),
    ("dropout", {"rate": 0.5}, [(4, 4, 2)], ["input0"]),
])
def test_extra_cases(name, attrs, in_shapes, expect):
    assert_grads_ok(check_layer(name, attrs, in_shapes), expect)


def test_batchnorm_eval_mode_gradients():
    assert_grads_ok(check_layer("batchnorm", training=False), ["input0", "gamma", "beta"])


def test_numeric_grad_of_known_function():
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    grad = numeric_grad(lambda: float(np.sum(x ** 3) + x[0, 1] * x[1, 0]), x)
    want = 3 * np.array([[1.0, 4.0], [0.25, 9.0]]) + np.array([[0, 0.5], [-2.0, 0]])
    np.testing.assert_allclose(grad, want, rtol=1e-8)
    np.testing.assert_array_equal(x, [[1.0, -2.0], [0.5, 3.0]])  # restored


def test_relative_error_is_scale_free():
    assert relative_error([1.0, 2.0], [1.0, 2.0]) == 0
    assert relative_error([2e-9, 0.0], [0.0, 0.0]) == pytest.approx(0.2)
    assert relative_error([1.0, 2.0], [1.0, 2.1]) > 1e-2


def test_check_layer_catches_a_wrong_backward(monkeypatch):
    """The check must be able to fail: break conv's weight gradient and look."""
    conv = get("conv")

    def bad_backward(ctx, attrs, params, cache, dout):
        dinputs, grads = conv.backward(ctx, attrs, params, cache, dout)
        grads["weight"] = grads["weight"] * 1.001
        return dinputs, grads

    monkeypatch.setattr(gradcheck, "get", lambda name: dataclasses.replace(
        conv, backward=bad_backward))
    errors = check_layer("conv")
    assert errors["weight"] > 1e-4 and errors["input0"] < TOLERANCE
