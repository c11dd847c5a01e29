"""CuPy runs the same code as NumPy: every layer, every GPU kernel and whole nets agree.

Marked ``gpu``: skipped without CuPy and a usable CUDA device (tests/conftest.py), so CI and the
CPU machines skip it. The reference is always NumPy in float64; CuPy in float64 must match it
tightly and CuPy in float32 to 1e-4 relative (‖a − b‖ / (‖a‖ + ‖b‖), per tensor), outputs and
gradients alike. Kernels of the ``cupy``/``cudnn`` providers (netdsl.runtime.kernels) are held to the
same bounds wherever their ``supports`` accepts the example.
"""
import importlib
import re

import numpy as np
import pytest

from netdsl.core.backend import to_numpy
from netdsl.tools.gradcheck import bound_attrs, distinct_values, relative_error
from netdsl.layers import Ctx, all_specs
from netdsl.layers.init import init_param

pytestmark = pytest.mark.gpu

BATCH = 3
TOL = {np.float64: 1e-10, np.float32: 1e-4}
NET_TOL = {np.float64: 1e-8, np.float32: 1e-4}   # a whole step sums many more rounding errors
GPU_PROVIDERS = ("cupy", "cudnn")


@pytest.fixture(scope="module")
def cp():
    return pytest.importorskip("cupy")


def _load_gpu_providers():
    """Import the GPU provider modules where they exist, so their kernels are registered."""
    for name in GPU_PROVIDERS:
        try:
            importlib.import_module(f"netdsl.runtime.kernels.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"netdsl.runtime.kernels.{name}":
                raise   # the module exists but needs something missing: that is a failure


def _examples(spec):
    """The spec's example and, where it has them, its further examples."""
    return [spec.example] + list(getattr(spec, "examples", ()) or ())


CASES = [pytest.param(spec, i, ex, id=f"{spec.name}-{i}")
         for spec in all_specs() for i, ex in enumerate(_examples(spec))]


def _as_tuple(out, spec):
    return tuple(out) if spec.outputs > 1 else (out,)


def _layer_run(xp, spec, forward, backward, bound, shapes, dtype, arrays, labels):
    """Forward then backward of one layer on ``xp``; NumPy float64 copies of every result."""
    to_np = (lambda a: to_numpy(a).astype(np.float64))
    conv = (lambda a: xp.asarray(a, dtype=dtype))
    rng = xp.random.default_rng(0) if hasattr(xp.random, "default_rng") else None
    # Train-only layers (dropout) draw masks from xp's own generator, which differs between
    # NumPy and CuPy: compare them as what they are outside training.
    training = not spec.train_only
    ctx = Ctx(xp=xp, training=training, rng=rng, dtype=dtype,
              labels=None if labels is None else xp.asarray(labels))
    inputs = [conv(a) for a in arrays["inputs"]]
    params = {k: conv(v) for k, v in arrays["params"].items()}
    out, cache = forward(ctx, bound, params, inputs)
    results = {f"out{i}": to_np(o) for i, o in enumerate(_as_tuple(out, spec))}
    if spec.role == "source":
        return results
    dout = tuple(conv(d) for d in arrays["douts"]) if spec.outputs > 1 else conv(arrays["douts"][0])
    dins, dparams = backward(ctx, bound, params, cache, dout)
    results.update({f"d_input{i}": to_np(d) for i, d in enumerate(dins) if d is not None})
    results.update({f"d_{k}": to_np(v) for k, v in dparams.items()})
    return results


def _layer_arrays(spec, bound, shapes, seed=0):
    rng = np.random.default_rng(seed)
    if spec.role == "source":
        inputs = [distinct_values(rng, (BATCH,) + tuple(bound["shape"]))]
    else:
        inputs = [distinct_values(rng, (BATCH,) + s) for s in shapes]
    params = {}
    for name, ps in spec.params(bound, shapes).items():
        value = init_param(np, rng, ps, np.float64)
        if ps.init == "ones":   # scales and variances not all one: a swapped tensor shows
            value = rng.uniform(0.5, 1.5, ps.shape)
        elif ps.init == "zeros":
            value = 0.5 * rng.normal(size=ps.shape)
        params[name] = value
    labels = None
    if spec.role == "loss":   # float targets for mse/l1/smooth_l1/bce (their make_labels)
        labels = (spec.make_labels(rng, shapes, BATCH) if spec.make_labels is not None
                  else rng.integers(0, shapes[0][-1], size=BATCH))
    outs = spec.infer_shape(bound, shapes)
    outs = outs if spec.outputs > 1 else (outs,)
    douts = [rng.normal(size=(() if len(s) == 0 else (BATCH,) + tuple(s))) for s in outs]
    return {"inputs": inputs, "params": params, "douts": douts}, labels


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("spec,index,example", CASES)
def test_every_layer_and_gpu_kernel_matches_numpy(cp, spec, index, example, dtype):
    _load_gpu_providers()
    from netdsl.runtime.kernels import kernels_for
    bound = bound_attrs(spec, example.get("attrs"))
    shapes = [tuple(s) for s in example.get("in_shapes", [])]
    arrays, labels = _layer_arrays(spec, bound, shapes)
    want = _layer_run(np, spec, spec.forward, spec.backward, bound, shapes, np.float64, arrays,
                      labels)
    impls = [("reference", spec.forward, spec.backward)]
    impls += [(p, k.forward, k.backward) for p, k in sorted(kernels_for(spec.name).items())
              if p in GPU_PROVIDERS and k.supports(bound, shapes, dtype)]
    for provider, forward, backward in impls:
        got = _layer_run(cp, spec, forward, backward, bound, shapes, dtype, arrays, labels)
        assert set(got) == set(want), (provider, sorted(got), sorted(want))
        for name, ref in want.items():
            err = relative_error(got[name], ref)
            assert err <= TOL[dtype], f"{spec.name} {provider} {name}: relative error {err:.2e}"


NETS = [("lenet5", None), ("resnet18", (64, 64, 3)), ("inception_small", None)]


def _net_graph(nets_dir, name, input_shape):
    from netdsl.compile.compiler import compile_text
    text = (nets_dir / f"{name}.net").read_text()
    # Dropout masks come from xp's own generator (NumPy's and CuPy's differ): take it out;
    # the per-layer test covers dropout.
    text = re.sub(r"->\s*DROPOUT\([^)]*\)\s*", "", text, flags=re.IGNORECASE)
    return compile_text(text, name=f"{name}.net", input_shape=input_shape, num_classes=10).graph


def _one_step(xp, g, dtype, params, x, y):
    """Loss, gradients and weights after one SGD-with-momentum step, as NumPy float64."""
    from netdsl.runtime.executor import Executor
    from netdsl.lang.train_config import TrainConfig
    from netdsl.train.optim import make_optimizer
    to_np = (lambda a: to_numpy(a).astype(np.float64))
    ex = Executor(g, xp=xp, dtype=dtype,
                  params={n: {k: xp.array(v, dtype=dtype) for k, v in t.items()}
                          for n, t in params.items()})
    res = ex.forward(xp.asarray(x, dtype=dtype), xp.asarray(y), training=True)
    grads = ex.backward()
    out = {"loss": np.array(float(res.loss))}
    out.update({f"grad {n}.{k}": to_np(v) for n, t in grads.items() for k, v in t.items()})
    make_optimizer(TrainConfig(lr=0.05, momentum=0.9)).step(ex.params, grads)
    out.update({f"after {n}.{k}": to_np(v) for n, t in ex.params.items() for k, v in t.items()})
    return out


_REFERENCE: dict = {}


def _reference(nets_dir, name, input_shape):
    """(graph, initial weights, batch, NumPy float64 step), computed once per net."""
    if name not in _REFERENCE:
        from netdsl.runtime.executor import Executor
        g = _net_graph(nets_dir, name, input_shape)
        ref = Executor(g, xp=np, dtype=np.float64, seed=0)
        params = {n: {k: np.array(v) for k, v in t.items()} for n, t in ref.params.items()}
        rng = np.random.default_rng(1)
        x = rng.standard_normal((4,) + tuple(ref.input_shape))
        y = rng.integers(0, 10, 4)
        _REFERENCE[name] = g, params, x, y, _one_step(np, g, np.float64, params, x, y)
    return _REFERENCE[name]


def _norm(a):
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,input_shape", NETS, ids=[n for n, _ in NETS])
def test_whole_net_training_step_matches_numpy(cp, nets_dir, name, input_shape, dtype):
    """Loss, every gradient and every updated weight after one step, against NumPy float64.

    Per tensor: ‖gpu − ref‖ ≤ tol·(‖gpu‖ + ‖ref‖) + floor·(largest reference norm of its kind).
    The floor covers tensors that are zero in exact arithmetic (a conv bias before batch norm),
    where any rounding is a 100% relative error. In float32, tol is also at least 10× NumPy's own
    float32 error on that tensor: a step through batch norm at batch 4 loses more than 1e-4
    relative on the CPU too, and the GPU is held to the CPU's float32 accuracy."""
    g, params, x, y, want = _reference(nets_dir, name, input_shape)
    got = _one_step(cp, g, dtype, params, x, y)
    cpu32 = _one_step(np, g, np.float32, params, x, y) if dtype == np.float32 else None
    floor = 1e-6 if dtype == np.float32 else 1e-13
    scale = {}
    for key, value in want.items():
        kind = key.split(" ")[0]
        scale[kind] = max(scale.get(kind, 0.0), _norm(value))
    assert set(got) == set(want)
    for key, value in want.items():
        tol = NET_TOL[dtype]
        if cpu32 is not None:
            tol = max(tol, 10 * relative_error(cpu32[key], value))
        diff = _norm(got[key] - value)
        bound = tol * (_norm(got[key]) + _norm(value)) + floor * scale[key.split(" ")[0]]
        assert diff <= bound, f"{name} {key}: ‖gpu − ref‖ = {diff:.2e} > {bound:.2e}"


def test_device_labels_are_not_checked_per_step_but_numpy_ones_are(cp):
    """The loss reads no min/max of device labels (that would wait for the GPU); NumPy labels
    given to a GPU executor are checked on the host before the upload."""
    from netdsl.compile.compiler import compile_text
    from netdsl.core.errors import NetdslError
    from netdsl.runtime.executor import Executor
    g = compile_text("INPUT(4x4x1) -> CONV(2, 3) -> RELU -> FC", num_classes=3).graph
    ex = Executor(g, xp=cp, dtype=np.float32, seed=0)
    x = np.zeros((2, 4, 4, 1), np.float32)
    with pytest.raises(NetdslError, match="label 3 is outside 0..2"):
        ex.forward(x, np.array([0, 3]), training=True)
    ex.forward(cp.asarray(x), cp.asarray([0, 2]), training=True)   # in range, on the device


def test_cupy_and_numpy_agree_on_a_mixed_net(cp):
    """Concat, residual, BN and both poolings in one small net, float64, tight."""
    from netdsl.compile.compiler import compile_text
    from netdsl.runtime.executor import Executor
    text = ("INPUT(8x8x3) -> CONV(8, 3) -> BN -> RELU"
            " -> concat { CONV(4, 1) | MAXPOOL(3, stride=1, pad=1) }"
            " -> residual { CONV(12, 3, stride=2) -> RELU } -> AVGPOOL(2) -> FC(5)")
    g = compile_text(text, input_shape=(8, 8, 3), num_classes=5).graph
    cpu = Executor(g, xp=np, dtype=np.float64, seed=0)
    gpu = Executor(g, xp=cp, dtype=np.float64, params={
        n: {k: cp.asarray(v) for k, v in t.items()} for n, t in cpu.params.items()})
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 8, 8, 3)), rng.integers(0, 5, 4)
    rc = cpu.forward(x, y, training=True)
    gc = cpu.backward()
    rg = gpu.forward(cp.asarray(x), cp.asarray(y), training=True)
    gg = gpu.backward()
    np.testing.assert_allclose(float(rg.loss), float(rc.loss), rtol=1e-10)
    for node, tensors in gc.items():
        for name, grad in tensors.items():
            np.testing.assert_allclose(to_numpy(gg[node][name]), grad, rtol=1e-8, atol=1e-10)
