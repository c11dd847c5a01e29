"""The regression and multi-label losses (mse, l1, smooth_l1, bce) against PyTorch's own
functions (skipped without torch) and float64 formulas written here; the inference-only end."""
from __future__ import annotations

import numpy as np
import pytest

from netdsl.core.errors import NetdslError
from netdsl.layers import Ctx, get
from netdsl.layers.loss_targets import target_problem

RNG = np.random.default_rng(3)


def _run(name, x, t, attrs=None):
    spec = get(name)
    bound = {a.name: a.default for a in spec.args} | (attrs or {})
    ctx = Ctx(xp=np, training=True, labels=t)
    loss, cache = spec.forward(ctx, bound, {}, [x])
    (dx,), _ = spec.backward(ctx, bound, {}, cache, np.asarray(1.0))
    return float(loss), dx


CASES = [("mse", "mse_loss", {}, {}), ("l1", "l1_loss", {}, {}),
         ("smooth_l1", "smooth_l1_loss", {}, {}),
         ("smooth_l1", "smooth_l1_loss", {"beta": 0.3}, {"beta": 0.3}),
         ("bce", "binary_cross_entropy_with_logits", {}, {})]


@pytest.mark.parametrize("name, torch_fn, attrs, kwargs", CASES)
@pytest.mark.parametrize("k", [1, 5])
def test_losses_match_pytorch(name, torch_fn, attrs, kwargs, k):
    torch = pytest.importorskip("torch")
    x = 3 * RNG.standard_normal((6, k))
    t = RNG.integers(0, 2, (6, k)).astype(float) if name == "bce" else RNG.standard_normal((6, k))
    loss, dx = _run(name, x, t if k > 1 else t[:, 0], dict(attrs, weight=0.7))
    tx = torch.tensor(x, requires_grad=True)
    want = 0.7 * getattr(torch.nn.functional, torch_fn)(tx, torch.tensor(t), **kwargs)
    want.backward()
    assert loss == pytest.approx(float(want.detach()), rel=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_bce_formula_and_extreme_logits():
    """−mean(t·log σ(x) + (1 − t)·log(1 − σ(x))) in float64, and no overflow at |x| = 500."""
    x = np.array([[-2.0, 0.5, 4.0]])
    t = np.array([[0.0, 1.0, 1.0]])
    s = 1 / (1 + np.exp(-x))
    want = -np.mean(t * np.log(s) + (1 - t) * np.log(1 - s))
    assert _run("bce", x, t)[0] == pytest.approx(want, rel=1e-12)
    loss, dx = _run("bce", np.array([[500.0, -500.0]]), np.array([[0.0, 1.0]]))
    assert loss == pytest.approx(500.0) and np.allclose(dx, [[0.5, -0.5]])


def test_target_checks():
    assert target_problem("mse", np.zeros(4), 1) is None
    assert "want N×3" in target_problem("mse", np.zeros((4, 2)), 3)
    assert "0 or 1" in target_problem("bce", np.array([[0.5]]), 1)
    assert "NaN" in target_problem("l1", np.array([np.nan]), 1)
    with pytest.raises(NetdslError, match="targets of shape"):
        _run("mse", np.zeros((2, 3)), np.zeros((2, 2)))


def test_output_is_no_loss():
    loss, dx = _run("output", np.ones((2, 3)), None)
    assert loss == 0 and not dx.any()
