"""The layers of the classic-net zoo: values from their definitions, published sizes and
parameter counts, conventions, errors, and a two-output pool/unpool net through the executor."""
import dataclasses
import math

import numpy as np
import pytest

from netdsl.core import graph as G
from netdsl.cli.common import check_heads
from netdsl.core.errors import NetdslError, ShapeError
from netdsl.runtime.executor import Executor
from netdsl.tools.gradcheck import TOLERANCE, bound_attrs, check_layer, numeric_grad
from netdsl.layers import Ctx, bind_args, get, lookup
from netdsl.compile.verify import losses, verify
from netdsl.compile.shapes import infer_shapes

RNG = np.random.default_rng(3)


def fwd(name, inputs, attrs=None, params=None, labels=None):
    spec = get(name)
    bound = bind_args(spec, [], attrs or {})
    if spec.resolve is not None:
        bound = spec.resolve(bound, None)
    out, _ = spec.forward(Ctx(xp=np, labels=labels), bound, params or {}, inputs)
    return out


def shape(name, attrs, in_shapes):
    spec = get(name)
    bound = bind_args(spec, [], attrs)
    return spec.infer_shape(spec.resolve(bound, None) if spec.resolve else bound, in_shapes)


# LRN

@pytest.mark.parametrize("over_n", [True, False])
def test_lrn_values_both_conventions(over_n):
    x = np.array([1.0, 2.0, 3.0, -1.0]).reshape(1, 1, 1, 4)
    out = fwd("lrn", [x], {"size": 3, "alpha": 0.3, "beta": 0.75, "k": 2.0,
                           "alpha_over_n": over_n})
    a = 0.3 / 3 if over_n else 0.3
    sums = [1 + 4, 1 + 4 + 9, 4 + 9 + 1, 9 + 1]   # windows c−1 … c+1, clipped
    want = [v / (2 + a * s) ** 0.75 for v, s in zip([1, 2, 3, -1], sums)]
    np.testing.assert_allclose(out.ravel(), want, rtol=1e-12)


def test_lrn_even_window_is_pytorchs():
    # n = 4: channels c − 2 … c + 1 (PyTorch pads n//2 before and (n−1)//2 after).
    x = np.arange(1.0, 6.0).reshape(1, 1, 1, 5)
    out = fwd("lrn", [x], {"size": 4, "alpha": 4.0, "beta": 1.0, "k": 1.0})
    sq = x.ravel() ** 2
    sums = [sq[max(0, c - 2):c + 2].sum() for c in range(5)]
    np.testing.assert_allclose(out.ravel(), x.ravel() / (1 + np.array(sums)), rtol=1e-12)
    assert get("lrn").args[4].name == "alpha_over_n" and get("lrn").args[4].default is True


def test_reference_catches_a_convention_that_gradcheck_cannot(monkeypatch):
    """An LRN with the other α convention has consistent gradients but a wrong forward."""
    import netdsl.tools.gradcheck as gradcheck
    spec = get("lrn")

    def flip(attrs):
        return dict(attrs, alpha_over_n=not attrs["alpha_over_n"])
    wrong = dataclasses.replace(
        spec, forward=lambda ctx, attrs, p, i: spec.forward(ctx, flip(attrs), p, i),
        backward=lambda ctx, attrs, p, c, d: spec.backward(ctx, flip(attrs), p, c, d))
    monkeypatch.setattr(gradcheck, "get", lambda name: wrong)
    assert check_layer("lrn")["input0"] < TOLERANCE
    bound = bound_attrs(spec)
    x = RNG.normal(size=(2, 2, 3, 5))
    got, _ = wrong.forward(Ctx(xp=np), bound, {}, [x])
    assert not np.allclose(got, spec.reference(bound, {}, [x]), rtol=1e-6)


# Locally-connected

def test_local_deepface_l4_to_l6_params_and_macs():
    spec = get("local")
    shapes = [(63, 63, 16)]
    total = 0
    for kernel, stride, out_hw in ((9, 1, 55), (7, 2, 25), (5, 1, 21)):
        attrs = bind_args(spec, [], {"filters": 16, "kernel": kernel, "stride": stride})
        out = spec.infer_shape(attrs, shapes)
        assert out == (out_hw, out_hw, 16)
        params = spec.params(attrs, shapes)
        n = sum(math.prod(p.shape) for p in params.values())
        assert n == out_hw * out_hw * (kernel * kernel * 16 * 16 + 16)
        assert spec.macs(attrs, shapes, [out]) == out_hw * out_hw * 16 * kernel * kernel * 16
        total += n
        shapes = [out]
    assert total == 55 * 55 * 20752 + 25 * 25 * 12560 + 21 * 21 * 6416  # DeepFace L4–L6


def test_local_with_shared_weights_is_a_conv():
    x = RNG.normal(size=(2, 5, 6, 3))
    w = RNG.normal(size=(3, 3, 3, 4))
    attrs = {"filters": 4, "kernel": 3, "stride": 2, "pad": 1}
    conv = fwd("conv", [x], attrs, {"weight": w})
    tiled = np.broadcast_to(w, conv.shape[1:3] + w.shape).copy()
    local = fwd("local", [x], dict(attrs, bias=False), {"weight": tiled})
    np.testing.assert_allclose(local, conv, rtol=1e-12)


# Transposed convolution

def test_deconv_unet_upconv_and_exact_sizes():
    spec = get("deconv")
    attrs = bind_args(spec, [], {"filters": 512})  # up-conv 2×2, stride 2
    assert spec.infer_shape(attrs, [(28, 28, 1024)]) == (56, 56, 512)
    params = spec.params(attrs, [(28, 28, 1024)])
    assert sum(math.prod(p.shape) for p in params.values()) == 2 * 2 * 1024 * 512 + 512
    assert spec.macs(attrs, [(28, 28, 1024)], [(56, 56, 512)]) == 28 * 28 * 1024 * 4 * 512
    # 3×3/2 pad 1 maps both 7 and 8 to 4; output_padding picks which comes back.
    assert shape("deconv", {"filters": 1, "kernel": 3, "pad": 1}, [(4, 4, 1)]) == (7, 7, 1)
    assert shape("deconv", {"filters": 1, "kernel": 3, "pad": 1, "output_padding": 1},
                 [(4, 4, 1)]) == (8, 8, 1)
    for name in ("convtranspose", "upconv", "transposed_conv", "DECONV"):
        assert lookup(name).name == "deconv"


def test_deconv_errors_show_arithmetic():
    with pytest.raises(ShapeError, match="output_padding=2 must be smaller") as info:
        shape("deconv", {"filters": 1, "output_padding": 2}, [(4, 4, 1)])
    assert "max(2, 1) = 2" in info.value.detail and info.value.hint
    with pytest.raises(ShapeError, match="non-positive") as info:
        shape("deconv", {"filters": 1, "kernel": 1, "stride": 1, "pad": 1}, [(1, 1, 1)])
    assert "(1 − 1)·1 − 2·1 + 1·(1 − 1) + 0 + 1 = −1" in info.value.detail
    with pytest.raises(ShapeError, match="not divisible by groups=2"):
        shape("deconv", {"filters": 4, "groups": 2}, [(4, 4, 3)])


@pytest.mark.parametrize("attrs,hw", [
    ({"kernel": 3, "stride": 2, "pad": 1}, (7, 6)),
    ({"kernel": 2, "stride": 2, "pad": 0}, (6, 4)),
    ({"kernel": 3, "stride": 1, "pad": 2, "dilation": 2}, (5, 5)),
])
def test_deconv_is_the_adjoint_of_conv(attrs, hw):
    """<conv_W(x), y> = <x, deconv_Wᵀ(y)>: the definition of a transposed convolution."""
    c, f = 3, 2
    x = RNG.normal(size=(2,) + hw + (c,))
    w = RNG.normal(size=(attrs["kernel"], attrs["kernel"], c, f))
    y = fwd("conv", [x], dict(attrs, filters=f, bias=False), {"weight": w})
    r = RNG.normal(size=y.shape)
    # output_padding recovers the exact input size the strided conv forgot.
    full = shape("deconv", dict(attrs, filters=c), [y.shape[1:]])
    op = tuple(h - g for h, g in zip(hw, full[:2]))
    back = fwd("deconv", [r], dict(attrs, filters=c, bias=False, output_padding=op),
               {"weight": w.transpose(0, 1, 3, 2)})
    assert back.shape == x.shape
    assert np.sum(y * r) == pytest.approx(np.sum(x * back), rel=1e-12)


# Max pooling with switches and max-unpooling

def test_unpool_of_pool_keeps_the_maxima_in_place():
    x = RNG.permutation(2 * 4 * 6 * 3).reshape(2, 4, 6, 3).astype(float)
    values, switches = fwd("maxpool_switches", [x], {"size": 2})
    assert switches.dtype == np.int64 and values.shape == switches.shape == (2, 2, 3, 3)
    np.testing.assert_array_equal(values, fwd("maxpool", [x], {"size": 2}))
    out = fwd("maxunpool", [values, switches], {"size": 2})
    window_max = values.repeat(2, axis=1).repeat(2, axis=2)
    np.testing.assert_array_equal(out, np.where(x == window_max, x, 0))


def test_unpool_restores_an_odd_size_from_a_third_input_or_out():
    x = RNG.permutation(5 * 5).reshape(1, 5, 5, 1).astype(float)
    values, switches = fwd("maxpool_switches", [x], {"size": 2})
    assert values.shape == (1, 2, 2, 1)
    for inputs, attrs in (([values, switches, x], {}), ([values, switches], {"out": (5, 5)})):
        out = fwd("maxunpool", inputs, attrs)
        assert out.shape == (1, 5, 5, 1)
        assert np.count_nonzero(out) == 4 and set(out[out != 0]) == set(values.ravel())
        assert (out[0, 4, :, 0] == 0).all() and (out[0, :, 4, 0] == 0).all()  # never pooled
    assert shape("maxunpool", {}, [(2, 2, 1), (2, 2, 1)]) == (4, 4, 1)  # PyTorch's default


def test_unpool_errors():
    with pytest.raises(ShapeError, match="switches must have the values' shape 2×2×1, got 2×2×3"):
        shape("maxunpool", {}, [(2, 2, 1), (2, 2, 3)])
    with pytest.raises(ShapeError, match="asks for size 7") as info:
        shape("maxunpool", {"out": (7, 4)}, [(2, 2, 1), (2, 2, 1)])
    assert "⌊(7 − 2 + 2·0)/2⌋ + 1 = 3" in info.value.detail and info.value.hint
    values = np.ones((1, 2, 2, 1))
    with pytest.raises(NetdslError, match="switch points outside the 4×4 output"):
        fwd("maxunpool", [values, np.full((1, 2, 2, 1), 16)], {})
    assert get("maxpool_switches").output_names == ("out", "switches")


# Crop

def test_crop_unet_copy_and_crop():
    x = RNG.normal(size=(1, 64, 64, 2))
    out = fwd("crop", [x], {"size": 56})
    np.testing.assert_array_equal(out, x[:, 4:60, 4:60])   # U-Net: 64 → 56 cuts 4 per side
    like = np.zeros((1, 5, 6, 7))
    out = fwd("crop", [x[:, :8, :9], like])
    np.testing.assert_array_equal(out, x[:, 1:6, 1:7])     # odd surplus: extra row at bottom
    assert shape("crop", {}, [(64, 64, 2), (56, 56, 9)]) == (56, 56, 2)
    with pytest.raises(ShapeError, match="cannot cut 56×70 out of 64×64") as info:
        shape("crop", {"size": (56, 70)}, [(64, 64, 2)])
    assert info.value.detail == "70 > 64" and "skip" in info.value.hint
    with pytest.raises(ShapeError, match="needs a size or a second input"):
        shape("crop", {}, [(64, 64, 2)])


# Losses, activations, pooling divisor

def test_softmax_xent2d_is_the_mean_over_positions():
    logits = RNG.normal(size=(2, 3, 4, 5))
    labels = RNG.integers(0, 5, size=(2, 3, 4))
    out = fwd("softmax_xent2d", [logits], {"weight": 0.5}, labels=labels)
    flat = logits.reshape(-1, 5)
    logp = flat - np.log(np.exp(flat).sum(axis=1, keepdims=True))
    want = -0.5 * logp[np.arange(24), labels.ravel()].mean()
    assert float(out) == pytest.approx(want, rel=1e-12)
    with pytest.raises(NetdslError, match="label 5 is outside 0..4"):
        fwd("softmax_xent2d", [logits], labels=np.full((2, 3, 4), 5))
    with pytest.raises(NetdslError, match="one label per pixel"):
        fwd("softmax_xent2d", [logits], labels=np.zeros(2, dtype=int))
    with pytest.raises(ShapeError, match="H×W×K logits"):
        shape("softmax_xent2d", {}, [(10,)])


def test_svm_loss_matches_cs231n_loop():
    scores = np.array([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1]])
    labels = np.array([0, 1, 2])
    total = 0.0
    for s, y in zip(scores, labels):       # cs231n's worked example: losses 2.9, 0, 12.9
        total += sum(max(0.0, s[j] - s[y] + 1) for j in range(3) if j != y)
    assert total / 3 == pytest.approx((2.9 + 0 + 12.9) / 3)
    assert float(fwd("svm_loss", [scores], labels=labels)) == pytest.approx(total / 3, rel=1e-12)
    assert get("svm_loss").role == "loss" and lookup("hinge").name == "svm_loss"


def test_leakyrelu_and_softmax_values():
    x = np.array([[-2.0, -0.5, 0.0, 3.0]])
    np.testing.assert_allclose(fwd("leakyrelu", [x]), [[-0.02, -0.005, 0.0, 3.0]])
    np.testing.assert_allclose(fwd("leakyrelu", [x], {"slope": 0.2}), [[-0.4, -0.1, 0, 3.0]])
    maps = np.array([[[[1000.0, 1000.0, 0.0]]]])
    np.testing.assert_allclose(fwd("softmax", [maps]), [[[[0.5, 0.5, 0.0]]]], atol=1e-300)
    y = fwd("softmax", [x])
    np.testing.assert_allclose(y, np.exp(x) / np.exp(x).sum(), rtol=1e-12)
    assert get("softmax").role == "layer"


def test_avgpool_count_include_pad():
    x = np.ones((1, 2, 2, 1))
    attrs = {"size": 3, "stride": 1, "pad": 1}
    np.testing.assert_allclose(fwd("avgpool", [x], attrs), 4 / 9)       # default: counts pad
    np.testing.assert_allclose(fwd("avgpool", [x], dict(attrs, count_include_pad=False)), 1.0)


# A two-output pool and an unpool through ports, the executor and a per-pixel head

def build_segnet(classes=3):
    g = G.new_graph("segmini")

    def put(name, op, inputs, **args):
        G.add_node(g, G.Node(name, op, bind_args(get(op), [], args), inputs=inputs))
    put("x", "input", [], shape=(5, 4, 1))
    put("enc", "conv", [("x", 0)], filters=2, kernel=3)
    put("pool", "maxpool_switches", [("enc", 0)], size=2)
    put("mid", "conv", [("pool", 0)], filters=2, kernel=1)
    put("up", "maxunpool", [("mid", 0), ("pool", 1), ("enc", 0)], size=2)
    put("cat", "concat", [("up", 0), ("enc", 0)])
    put("head", "conv", [("cat", 0)], filters=classes, kernel=1)
    put("loss", "softmax_xent2d", [("head", 0)])
    G.node(g, "pool").attrs = get("maxpool_switches").resolve(G.node(g, "pool").attrs, None)
    G.node(g, "up").attrs = get("maxunpool").resolve(G.node(g, "up").attrs, None)
    infer_shapes(g)
    verify(g, "test")
    return g


def test_segnet_mini_gradients_through_switch_ports():
    g = build_segnet()
    assert G.node(g, "pool").out_shapes == ((2, 2, 2), (2, 2, 2))
    assert G.node(g, "up").out_shapes == ((5, 4, 2),)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 5, 4, 1)), rng.integers(0, 3, (2, 5, 4))
    ex = Executor(g, dtype=np.float64, seed=1)

    def loss():
        return float(ex.forward(x, y, training=True, keep=False).loss)

    ex.forward(x, y, training=True)
    grads = ex.backward()
    for node in ("head", "mid", "enc"):
        numeric = numeric_grad(loss, ex.params[node]["weight"])
        np.testing.assert_allclose(grads[node]["weight"], numeric, atol=1e-6, err_msg=node)


def test_check_heads_accepts_a_per_pixel_head_with_enough_channels():
    check_heads(build_segnet(classes=3), 3, "toy")
    with pytest.raises(NetdslError, match="3 channels per position .* 10 classes") as info:
        check_heads(build_segnet(classes=3), 10, "mnist")
    assert "kernel=1" in info.value.hint


TINY_UNET = """net tiny_unet
INPUT(12x12x1) -> e: CONV(4, pad=valid) -> LEAKYRELU -> POOL2 -> LRN(3, alpha_over_n=false)
  -> LOCAL(4, 1) -> up: DECONV(4, 2)
  -> concat { @up | crop { @e | @up } } -> CONV(3, 1) -> PIXEL_XENT
"""


def test_new_layers_written_in_the_language_compile_and_train_a_step():
    from netdsl.compile.compiler import compile_text
    g = compile_text(TINY_UNET, num_classes=3).graph
    local = G.node(g, "local1")
    assert local.out_shapes == ((5, 5, 4),) and local.n_params == 5 * 5 * (4 * 4 + 4)
    assert G.node(g, "up").out_shapes == ((10, 10, 4),)
    ex = Executor(g, dtype=np.float64, seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 12, 12, 1)), rng.integers(0, 3, (2, 10, 10))
    first = float(ex.forward(x, y, training=True).loss)
    assert math.isfinite(first) and first > 0
    grads = ex.backward()
    assert {"e", "local1", "up", "conv1"} <= set(grads)
    assert all(np.isfinite(v).all() for d in grads.values() for v in d.values())


def test_lrn_refuses_k_zero():
    with pytest.raises(ShapeError, match="k must be positive") as info:
        shape("lrn", {"k": 0.0}, [(4, 4, 8)])
    assert info.value.hint and info.value.detail


def test_diagram_names_the_switch_port():
    from netdsl.compile.draw import to_dot
    source = to_dot(build_segnet()).source
    assert '<td port="o1">switches: 2×2×2</td>' in source
    assert 'tailport=o1' in source.replace('"', "")   # the unpool reads the switches port


def test_language_doc_unet_example_compiles_with_its_stated_sizes():
    """The U-Net example of docs/language.md: the crop really cuts 24×24 to 20×20."""
    from pathlib import Path
    from netdsl.compile.compiler import compile_text
    doc = (Path(__file__).resolve().parents[1] / "docs" / "language.md").read_text()
    section = doc.split("### U-Net's up-conv and copy-and-crop")[1]
    g = compile_text(section.split("```")[1], num_classes=11).graph
    crop = G.node(g, "crop1")
    assert crop.in_shapes == ((24, 24, 16), (20, 20, 16)) and crop.out_shapes == ((20, 20, 16),)
    head = G.node(g, losses(g)[0].inputs[0][0])
    assert head.out_shapes == ((20, 20, 11),)


def test_netdsl_layers_lists_every_layer_and_the_switches_output(capsys):
    from netdsl.cli.app import main
    from netdsl.layers import all_specs
    assert main(["layers"]) == 0
    out = capsys.readouterr().out
    listed = {line.split(",")[0] for line in out.splitlines() if not line.startswith(" ")}
    assert listed == {spec.name for spec in all_specs()}
    assert "    outputs: 0 out, 1 switches" in out


def test_summary_of_a_net_beyond_any_memory_prints_without_a_plan(tmp_path, capsys):
    """Found by the fuzzer once the zoo layers joined its vocabulary: a transposed conv with a
    stride of 2^31 gives a tensor NumPy cannot describe; the summary says so instead of exit 70."""
    from netdsl.cli.app import main
    net = tmp_path / "huge.net"
    net.write_text("INPUT(12x12x1) -> DECONV(2, 7, 2147483648) -> FC\n")
    assert main(["summary", str(net)]) == 0
    assert "planned peak memory: not planned (deconv1's output for batch 1 exceeds 2^63 bytes)" \
        in capsys.readouterr().out
