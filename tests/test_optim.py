"""Optimizers and learning-rate schedules against independently written reference recurrences."""
import math

import numpy as np
import pytest

from netdsl.core.errors import NetdslError
from netdsl.lang.train_config import TrainConfig
from netdsl.train.optim import SGD, Adam, make_optimizer
from netdsl.train.schedule import make_schedule

RNG = np.random.default_rng(1234)
P0 = {"inc3a/conv1": {"weight": RNG.normal(size=(2, 3)), "bias": RNG.normal(size=3)},
      "fc": {"weight": RNG.normal(size=(4,))}}
GRADS = [{node: {name: RNG.normal(size=a.shape) for name, a in p.items()} for node, p in P0.items()}
         for _ in range(5)]


def fresh_params():
    return {node: {name: a.copy() for name, a in p.items()} for node, p in P0.items()}


def run(opt, params, grads_seq, lrs=None):
    for i, grads in enumerate(grads_seq):
        opt.step(params, grads, lr=None if lrs is None else lrs[i])
    return params


def reference_sgd(p, gs, lr, mu=0.0, nesterov=False, wd=0.0):
    """Textbook PyTorch SGD on one array, written as a plain loop."""
    p = p.copy()
    buf = None
    for g in gs:
        d = g + wd * p
        if mu:
            buf = d.copy() if buf is None else mu * buf + d
            d = d + mu * buf if nesterov else buf
        p = p - lr * d
    return p


def reference_adam(p, gs, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0):
    """Adam in the paper's m-hat / v-hat form (PyTorch's form is algebraically equal)."""
    p = p.copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(gs, start=1):
        g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def assert_matches_reference(params, reference):
    for node, node_params in P0.items():
        for name, start in node_params.items():
            gs = [g[node][name] for g in GRADS]
            np.testing.assert_allclose(params[node][name], reference(start, gs), rtol=1e-12,
                                       atol=1e-14)


# --- hand-computed scalar sequences --------------------------------------------------------

def one(value):
    return {"w": {"x": np.array([value], dtype=np.float64)}}


def test_sgd_momentum_by_hand():
    # lr 0.1, mu 0.9, g = 1: b = 1, 1.9, 2.71 -> p = 1 - 0.1, - 0.19, - 0.271
    params, opt = one(1.0), SGD(0.1, momentum=0.9)
    seen = []
    for _ in range(3):
        opt.step(params, one(1.0))
        seen.append(params["w"]["x"][0])
    np.testing.assert_allclose(seen, [0.9, 0.71, 0.439], rtol=1e-12)


def test_sgd_nesterov_by_hand():
    # step 1: b = 1, d = 1 + 0.9 = 1.9; step 2: b = 1.9, d = 1 + 1.71 = 2.71
    params, opt = one(1.0), SGD(0.1, momentum=0.9, nesterov=True)
    opt.step(params, one(1.0))
    assert params["w"]["x"][0] == pytest.approx(0.81, rel=1e-12)
    opt.step(params, one(1.0))
    assert params["w"]["x"][0] == pytest.approx(0.539, rel=1e-12)


def test_sgd_weight_decay_by_hand():
    # g_eff = 0.5 + 0.1 * 2 = 0.7 -> p = 2 - 0.1 * 0.7 = 1.93
    params = one(2.0)
    SGD(0.1, weight_decay=0.1).step(params, one(0.5))
    assert params["w"]["x"][0] == pytest.approx(1.93, rel=1e-12)


def test_adam_first_step_is_lr_times_sign():
    # After one step m_hat = g and v_hat = g^2, so the update is lr * g / (|g| + eps).
    params = one(1.0)
    Adam(0.1).step(params, one(-0.5))
    assert params["w"]["x"][0] == pytest.approx(1.0 + 0.1 * 0.5 / (0.5 + 1e-8), rel=1e-12)


# --- multi-step sequences on small arrays --------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.8, nesterov=True),
    dict(lr=0.1, weight_decay=0.01),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
])
def test_sgd_matches_reference(kwargs):
    params = run(SGD(**kwargs), fresh_params(), GRADS)
    ref_kwargs = {"lr": kwargs["lr"], "mu": kwargs.get("momentum", 0.0),
                  "nesterov": kwargs.get("nesterov", False), "wd": kwargs.get("weight_decay", 0.0)}
    assert_matches_reference(params, lambda p, gs: reference_sgd(p, gs, **ref_kwargs))


@pytest.mark.parametrize("kwargs", [
    dict(lr=0.01),
    dict(lr=0.003, beta1=0.8, beta2=0.99, eps=1e-6),
    dict(lr=0.01, weight_decay=0.1),
])
def test_adam_matches_reference(kwargs):
    params = run(Adam(**kwargs), fresh_params(), GRADS)
    ref = {"lr": kwargs["lr"], "b1": kwargs.get("beta1", 0.9), "b2": kwargs.get("beta2", 0.999),
           "eps": kwargs.get("eps", 1e-8), "wd": kwargs.get("weight_decay", 0.0)}
    assert_matches_reference(params, lambda p, gs: reference_adam(p, gs, **ref))


def test_lr_override_applies_to_that_step_only():
    lrs = [0.1, 0.05, 0.02, 0.01, 0.005]
    opt = SGD(0.5, momentum=0.9)
    params = run(opt, fresh_params(), GRADS, lrs)
    assert opt.lr == 0.5
    expected = P0["fc"]["weight"].copy()
    buf = None
    for lr, g in zip(lrs, GRADS):
        buf = g["fc"]["weight"].copy() if buf is None else 0.9 * buf + g["fc"]["weight"]
        expected = expected - lr * buf
    np.testing.assert_allclose(params["fc"]["weight"], expected, rtol=1e-12)


@pytest.mark.parametrize("opt", [SGD(0.1, momentum=0.9, weight_decay=0.1), Adam(0.1, weight_decay=0.1)])
def test_updates_in_place_float32_and_leaves_grads_and_buffers_alone(opt):
    weight = np.ones((3, 3), dtype=np.float32)
    running_mean = np.full(3, 7.0, dtype=np.float32)
    params = {"bn/a": {"weight": weight, "running_mean": running_mean}}
    grad = np.full((3, 3), 0.5, dtype=np.float32)
    grads = {"bn/a": {"weight": grad}}   # buffers have no gradient
    view = weight[0]                     # the executor holds references like this one
    opt.step(params, grads)
    opt.step(params, grads)
    assert params["bn/a"]["weight"] is weight
    assert weight.dtype == np.float32
    assert np.all(view < 1.0)            # the update reached the original array
    np.testing.assert_array_equal(running_mean, 7.0)
    np.testing.assert_array_equal(grad, 0.5)


@pytest.mark.parametrize("make", [lambda: SGD(0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
                                  lambda: Adam(0.01, weight_decay=1e-3)])
def test_state_dict_round_trip_continues_like_uninterrupted_run(make):
    straight = run(make(), fresh_params(), GRADS)

    first = make()
    params = run(first, fresh_params(), GRADS[:2])
    state = first.state_dict()
    for value in state.values():
        assert isinstance(value, (np.ndarray, int, float, str))
    # The saved state is a snapshot: later steps of `first` must not change it.
    saved = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in state.items()}
    first.step(fresh_params(), GRADS[4])
    for key, value in saved.items():
        np.testing.assert_array_equal(state[key], value)

    second = make()
    second.load_state_dict(state)
    run(second, params, GRADS[2:])
    for node in straight:
        for name in straight[node]:
            np.testing.assert_array_equal(params[node][name], straight[node][name])


def test_state_dict_keys_are_flat_and_name_nodes_with_slashes():
    opt = Adam(0.01)
    run(opt, fresh_params(), GRADS[:3])
    state = opt.state_dict()
    assert state["t"] == 3 and state["optimizer"] == "adam"
    assert {"m/inc3a/conv1/weight", "v/inc3a/conv1/bias", "m/fc/weight"} <= set(state)


def test_loading_other_optimizers_state_is_a_user_error():
    sgd = SGD(0.1, momentum=0.9)
    run(sgd, fresh_params(), GRADS[:1])
    with pytest.raises(NetdslError, match="sgd"):
        Adam(0.01).load_state_dict(sgd.state_dict())


def test_loading_state_of_a_different_shape_is_a_user_error():
    opt = SGD(0.1, momentum=0.9)
    opt.load_state_dict({"optimizer": "sgd", "momentum_buffer/fc/weight": np.zeros(7)})
    with pytest.raises(NetdslError, match="shape"):
        opt.step(fresh_params(), GRADS[0])


def test_make_optimizer_from_config():
    sgd = make_optimizer(TrainConfig(lr=0.2, momentum=0.5, nesterov=True, weight_decay=1e-4))
    assert isinstance(sgd, SGD)
    assert (sgd.lr, sgd.momentum, sgd.nesterov, sgd.weight_decay) == (0.2, 0.5, True, 1e-4)
    adam = make_optimizer(TrainConfig(optimizer="adam", lr=1e-3, beta1=0.8, beta2=0.95))
    assert isinstance(adam, Adam)
    assert (adam.lr, adam.beta1, adam.beta2) == (1e-3, 0.8, 0.95)


@pytest.mark.parametrize("cfg", [TrainConfig(momentum=0.0, nesterov=True),
                                 TrainConfig(momentum=-0.1),
                                 TrainConfig(optimizer="adam", beta2=1.0),
                                 TrainConfig(weight_decay=-1.0)])
def test_bad_hyperparameters_are_user_errors(cfg):
    with pytest.raises(NetdslError):
        make_optimizer(cfg)


# --- schedules ------------------------------------------------------------------------------

def test_constant_schedule():
    lr_at = make_schedule(TrainConfig(lr=0.05, epochs=3), steps_per_epoch=7)
    assert [lr_at(s) for s in (0, 6, 7, 20)] == [0.05] * 4
    assert isinstance(lr_at(3), float)


def test_step_schedule_decays_at_epoch_boundaries():
    lr_at = make_schedule(TrainConfig(lr=0.1, epochs=6, schedule="step", step_size=2, gamma=0.1),
                          steps_per_epoch=10)
    # epochs 0-1 -> 0.1, epochs 2-3 -> 0.01, epochs 4-5 -> 0.001
    assert lr_at(0) == pytest.approx(0.1)
    assert lr_at(19) == pytest.approx(0.1)
    assert lr_at(20) == pytest.approx(0.01)
    assert lr_at(39) == pytest.approx(0.01)
    assert lr_at(40) == pytest.approx(0.001)


def test_cosine_schedule_start_midpoint_end():
    lr_at = make_schedule(TrainConfig(lr=0.2, epochs=4, schedule="cosine"), steps_per_epoch=25)
    assert lr_at(0) == pytest.approx(0.2)
    assert lr_at(50) == pytest.approx(0.1)                        # half-way: lr / 2
    assert lr_at(25) == pytest.approx(0.1 * (1 + math.sqrt(0.5)))  # a quarter: cos(pi/4)
    assert 0 < lr_at(99) < 1e-3                                   # last step: nearly 0
    values = [lr_at(s) for s in range(100)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_warmup_ramps_linearly_then_hands_over_to_cosine():
    lr_at = make_schedule(TrainConfig(lr=0.1, epochs=6, warmup=2, schedule="cosine"),
                          steps_per_epoch=10)
    assert lr_at(0) == pytest.approx(0.1 / 20)   # starts at lr / warmup_steps
    assert lr_at(9) == pytest.approx(0.05)
    assert lr_at(19) == pytest.approx(0.1)       # warm-up reaches lr on its last step
    assert lr_at(20) == pytest.approx(0.1)       # cosine starts from lr ...
    assert lr_at(40) == pytest.approx(0.05)      # ... and is half-way 20 of its 40 steps later
    ramp = [lr_at(s) for s in range(20)]
    assert np.allclose(np.diff(ramp), 0.1 / 20)


def test_warmup_then_step_schedule_counts_epochs_from_start():
    lr_at = make_schedule(TrainConfig(lr=1.0, epochs=6, warmup=1, schedule="step", step_size=3,
                                      gamma=0.5), steps_per_epoch=4)
    assert [lr_at(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_at(11) == pytest.approx(1.0)
    assert lr_at(12) == pytest.approx(0.5)


@pytest.mark.parametrize("cfg, steps", [(TrainConfig(epochs=3, warmup=4), 10),
                                        (TrainConfig(warmup=-1), 10),
                                        (TrainConfig(schedule="step", step_size=0), 10),
                                        (TrainConfig(), 0)])
def test_bad_schedule_settings_are_user_errors(cfg, steps):
    with pytest.raises(NetdslError):
        make_schedule(cfg, steps)


# --- GPU --------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_cupy_matches_numpy():
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception:
        pytest.skip("no CUDA device")
    for make in (lambda: SGD(0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
                 lambda: Adam(0.01, weight_decay=1e-3)):
        cpu = run(make(), fresh_params(), GRADS)
        gpu_params = {n: {k: cupy.asarray(a) for k, a in p.items()} for n, p in P0.items()}
        held = gpu_params["fc"]["weight"]
        opt = make()
        for grads in GRADS:
            opt.step(gpu_params, {n: {k: cupy.asarray(a) for k, a in p.items()}
                                  for n, p in grads.items()})
        assert gpu_params["fc"]["weight"] is held
        state = opt.state_dict()
        assert all(not hasattr(v, "device") for v in state.values())
        for node in cpu:
            for name in cpu[node]:
                np.testing.assert_allclose(gpu_params[node][name].get(), cpu[node][name],
                                           rtol=1e-10)


@pytest.mark.parametrize("kwargs", [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=5e-4),
])
@pytest.mark.parametrize("workers", [1, 2])
def test_sgd_blocked_threaded_is_bitwise_the_whole_array_update(kwargs, workers, monkeypatch):
    """Large float32 parameters are updated block by block, the blocks split over worker
    threads (optim.blocked): every element gets the operations of the whole-array update in
    the same order, so the result is bitwise the reference's, float32 rounding included."""
    from netdsl.core import workspace
    from netdsl.train import optim
    workspace.set_threads(workers)
    split = []
    real = workspace.parallel_for
    monkeypatch.setattr(workspace, "parallel_for",
                        lambda items, body: (split.append(len(items)), real(items, body)))
    rng = np.random.default_rng(7)
    n = 5 * optim.BLOCK + 17            # not a multiple of the block
    p0 = {"fc": {"weight": rng.normal(size=(n,)).astype(np.float32),
                 "bias": rng.normal(size=(3, 5)).astype(np.float32)}}
    grads = [{"fc": {k: rng.normal(size=a.shape).astype(np.float32) for k, a in p0["fc"].items()}}
             for _ in range(3)]
    params = {"fc": {k: a.copy() for k, a in p0["fc"].items()}}
    run(SGD(**kwargs), params, grads)
    # Python floats: NumPy casts each scalar to float32 where it meets a float32 array
    lr, mu, wd = kwargs["lr"], kwargs.get("momentum", 0.0), kwargs.get("weight_decay", 0.0)
    for name, p in p0["fc"].items():      # float32 throughout, PyTorch's order of roundings
        p, buf = p.copy(), None
        for g in grads:
            d = p * wd + g["fc"][name] if wd else g["fc"][name]
            if mu:
                buf = d.copy() if buf is None else buf * mu + d
                if kwargs.get("nesterov"):
                    p = p + d * -lr
                    p = p + buf * -(lr * mu)
                    continue
                d = buf
            p = p + d * -lr
        assert params["fc"][name].dtype == np.float32
        np.testing.assert_array_equal(params["fc"][name], p)
    assert (max(split, default=1) == 2) == (workers == 2 and workspace.workers(2) == 2)
