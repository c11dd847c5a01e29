"""Optional: the zoo layers against PyTorch (outputs, input and parameter gradients, float32
within 1e-4). Skipped when PyTorch is not installed."""
import numpy as np
import pytest

from netdsl.layers import Ctx, bind_args, get

torch = pytest.importorskip("torch")
F = torch.nn.functional
RNG = np.random.default_rng(11)
TOL = 1e-4


def close(ours, theirs):
    """Within 1e-4 of PyTorch, relative to the size of PyTorch's values."""
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    assert ours.shape == theirs.shape
    scale = max(1.0, float(np.abs(theirs).max()))
    np.testing.assert_allclose(ours, theirs, rtol=TOL, atol=TOL * scale)


def run(name, attrs, inputs, params=None):
    """Our float32 forward and backward with dout = R; returns (out, dinputs, dparams, R)."""
    spec = get(name)
    bound = bind_args(spec, [], attrs)
    if spec.resolve is not None:
        bound = spec.resolve(bound, None)
    params = {k: v.astype(np.float32) for k, v in (params or {}).items()}
    ctx = Ctx(xp=np, dtype=np.float32)
    out, cache = spec.forward(ctx, bound, params, inputs)
    first = out[0] if isinstance(out, tuple) else out
    r = RNG.normal(size=first.shape).astype(np.float32)
    dout = (r,) + (None,) * (len(out) - 1) if isinstance(out, tuple) else r
    dinputs, dparams = spec.backward(ctx, bound, params, cache, dout)
    return out, dinputs, dparams, r


def nchw(x):
    return torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), requires_grad=True)


def nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1) if t.dim() == 4 else t.detach().numpy()


def backprop(out_t, r):
    """Σ out·R, backwards; R is given NHWC."""
    (out_t * torch.tensor(np.ascontiguousarray(r.transpose(0, 3, 1, 2)))).sum().backward()


@pytest.mark.parametrize("size,over_n", [(5, True), (4, True), (3, False)])
def test_lrn(size, over_n):
    x = RNG.normal(size=(2, 3, 4, 7)).astype(np.float32) * 2
    attrs = {"size": size, "alpha": 0.3, "beta": 0.75, "k": 2.0, "alpha_over_n": over_n}
    out, (dx,), _, r = run("lrn", attrs, [x])
    xt = nchw(x)
    # PyTorch divides α by n; the paper's convention is PyTorch's with α·n.
    yt = F.local_response_norm(xt, size, alpha=0.3 if over_n else 0.3 * size, beta=0.75, k=2.0)
    backprop(yt, r)
    close(out, nhwc(yt))
    close(dx, nhwc(xt.grad))


@pytest.mark.parametrize("attrs,in_shape", [
    ({"filters": 4, "kernel": 2, "stride": 2}, (3, 4, 6)),
    ({"filters": 3, "kernel": 3, "stride": 2, "pad": 1, "output_padding": 1}, (4, 3, 2)),
    ({"filters": 4, "kernel": 3, "stride": 1, "pad": 1, "dilation": 2, "groups": 2}, (3, 3, 4)),
    ({"filters": 2, "kernel": (3, 2), "stride": (3, 1), "output_padding": (2, 0)}, (2, 3, 3)),
])
def test_transposed_conv(attrs, in_shape):
    spec = get("deconv")
    bound = bind_args(spec, [], attrs)
    x = RNG.normal(size=(2,) + in_shape).astype(np.float32)
    params = {k: RNG.normal(size=ps.shape) for k, ps in spec.params(bound, [in_shape]).items()}
    out, (dx,), grads, r = run("deconv", attrs, [x], params)
    kh, kw, cg, f = params["weight"].shape
    groups = bound["groups"]
    # Ours weight[a, b, c, g·Fg + f] is PyTorch's weight[g·Cg + c, f, a, b].
    wt = params["weight"].reshape(kh, kw, cg, groups, f // groups).transpose(3, 2, 4, 0, 1)
    wt = torch.tensor(wt.reshape(groups * cg, f // groups, kh, kw).astype(np.float32),
                      requires_grad=True)
    bt = torch.tensor(params["bias"].astype(np.float32), requires_grad=True)
    xt = nchw(x)
    yt = F.conv_transpose2d(xt, wt, bt, stride=bound["stride"], padding=bound["pad"],
                            output_padding=bound["output_padding"], groups=groups,
                            dilation=bound["dilation"])
    backprop(yt, r)
    close(out, nhwc(yt))
    close(dx, nhwc(xt.grad))
    gw = wt.grad.numpy().reshape(groups, cg, f // groups, kh, kw).transpose(3, 4, 1, 0, 2)
    close(grads["weight"], gw.reshape(kh, kw, cg, f))
    close(grads["bias"], bt.grad)


@pytest.mark.parametrize("size,stride,pad,hw", [(2, 2, 0, (4, 6)), (3, 3, 1, (7, 8)),
                                                 (2, 2, 0, (5, 5))])
def test_max_unpool(size, stride, pad, hw):
    """Non-overlapping windows: where overlapping windows share a maximum PyTorch keeps one of
    the values (undefined which), netdsl adds them (the adjoint of max pooling)."""
    x = RNG.permutation(2 * hw[0] * hw[1] * 3).reshape((2,) + hw + (3,)).astype(np.float32)
    attrs = {"size": size, "stride": stride, "pad": pad}
    (values, switches), _, _, _ = run("maxpool_switches", attrs, [x])
    vt, it = F.max_pool2d(torch.tensor(x.transpose(0, 3, 1, 2)), size, stride, pad,
                          return_indices=True)
    close(values, nhwc(vt))
    np.testing.assert_array_equal(switches, nhwc(it))
    vals = RNG.normal(size=values.shape).astype(np.float32)
    out, (dv, _), _, r = run("maxunpool", dict(attrs, out=hw), [vals, switches])
    vtt = nchw(vals)
    yt = F.max_unpool2d(vtt, it, size, stride, pad, output_size=hw)
    backprop(yt, r)
    close(out, nhwc(yt))
    close(dv, nhwc(vtt.grad))


def test_crop_and_concat():
    skip = RNG.normal(size=(2, 9, 8, 3)).astype(np.float32)
    up = RNG.normal(size=(2, 5, 6, 2)).astype(np.float32)
    cropped, (dskip, _), _, r = run("crop", {}, [skip, up])
    joined, (dc, du), _, r2 = run("concat", {}, [cropped, up])
    st, ut = nchw(skip), nchw(up)
    top, left = (9 - 5) // 2, (8 - 6) // 2
    jt = torch.cat([st[:, :, top:top + 5, left:left + 6], ut], dim=1)
    backprop(jt, r2)
    close(joined, nhwc(jt))
    # Chain our two backwards: concat's gradient for the crop, then crop's own.
    ctx = Ctx(xp=np)
    crop, bound = get("crop"), bind_args(get("crop"), [], {})
    _, cache = crop.forward(ctx, bound, {}, [skip, up])
    (dskip, _), _ = crop.backward(ctx, bound, {}, cache, dc)
    close(dskip, nhwc(st.grad))
    close(du, nhwc(ut.grad))


@pytest.mark.parametrize("kernel,stride,pad", [(3, 1, 0), (2, 2, 1), ((3, 2), (1, 2), (1, 0))])
def test_locally_connected_as_unfold_einsum(kernel, stride, pad):
    spec = get("local")
    attrs = {"filters": 3, "kernel": kernel, "stride": stride, "pad": pad}
    bound = bind_args(spec, [], attrs)
    in_shape = (5, 6, 2)
    x = RNG.normal(size=(2,) + in_shape).astype(np.float32)
    params = {k: RNG.normal(size=ps.shape) for k, ps in spec.params(bound, [in_shape]).items()}
    out, (dx,), grads, r = run("local", attrs, [x], params)
    ho, wo, kh, kw, c, f = params["weight"].shape
    # unfold's rows are ordered (c, a, b); ours (a, b, c).
    wt = params["weight"].transpose(0, 1, 4, 2, 3, 5).reshape(ho * wo, c * kh * kw, f)
    wt = torch.tensor(wt.astype(np.float32), requires_grad=True)
    bt = torch.tensor(params["bias"].astype(np.float32), requires_grad=True)
    xt = nchw(x)
    cols = F.unfold(xt, bound["kernel"], padding=bound["pad"], stride=bound["stride"])
    yt = torch.einsum("nkl,lkf->nlf", cols, wt).reshape(2, ho, wo, f) + bt
    (yt * torch.tensor(r)).sum().backward()
    close(out, yt)
    close(dx, nhwc(xt.grad))
    gw = wt.grad.numpy().reshape(ho, wo, c, kh, kw, f).transpose(0, 1, 3, 4, 2, 5)
    close(grads["weight"], gw)
    close(grads["bias"], bt.grad)


def test_switches_on_ties_are_pytorchs_first_maximum():
    """ReLU outputs are full of equal zeros: both pick the first maximum in window order."""
    x = np.maximum(RNG.normal(size=(2, 6, 6, 3)), 0).astype(np.float32)
    x[0, :2, :2, 0] = 0.0
    (_, switches), _, _, _ = run("maxpool_switches", {"size": 3, "stride": 2, "pad": 1}, [x])
    _, it = F.max_pool2d(torch.tensor(x.transpose(0, 3, 1, 2)), 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(switches, nhwc(it))


def test_transposed_conv_fans_are_pytorchs():
    spec = get("deconv")
    bound = bind_args(spec, [], {"filters": 6, "kernel": 3, "groups": 2})
    ps = spec.params(bound, [(5, 5, 4)])["weight"]
    layer = torch.nn.ConvTranspose2d(4, 6, 3, groups=2)
    fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(layer.weight)
    assert (ps.fan_in, ps.fan_out) == (fan_in, fan_out)
