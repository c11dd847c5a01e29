"""Every layer's backward agrees with finite differences (float64), inputs and parameters."""
import dataclasses

import numpy as np
import pytest

import netdsl.gradcheck as gradcheck
from netdsl.gradcheck import TOLERANCE, check_layer, numeric_grad, relative_error
from netdsl.layers import all_specs, get


def assert_grads_ok(errors, expect):
    assert set(errors) == set(expect), errors
    for name, err in errors.items():
        assert err < TOLERANCE, f"{name}: relative error {err:.2e}"


def expected_tensors(spec, n_inputs):
    names = [f"input{i}" for i in range(n_inputs)]
    return names + [k for k, ps in spec.params(gradcheck.bound_attrs(spec),
                                               spec.example["in_shapes"]).items()
                    if ps.trainable]


@pytest.mark.parametrize("spec", all_specs(), ids=lambda s: s.name)
def test_example_gradients(spec):
    errors = check_layer(spec.name)
    if spec.role == "source":
        assert errors == {}
        return
    assert_grads_ok(errors, expected_tensors(spec, len(spec.example["in_shapes"])))


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
