"""float32 training-step gradients against a float64 run of the same net, weights and batch.

The net is nets/resnet20.net (He et al. 2016 §4.2) on random CIFAR-sized batches of 8 and 32.
The measure is, over every trainable tensor, ||g32 − g64|| / ||g64||.

Why two float64 references. A ReLU's derivative jumps at 0: a pre-activation within float32
rounding of zero (~1e-6 relative after a dozen layers) can be on one side in float32 and on the
other in float64. One such "flipped" unit changes one gradient element by its whole value,
≈ 1/√(units) ≈ 3e-3 of a 64-channel BN's γ/β gradient: no float32 arithmetic, PyTorch's
included, avoids it (the optional PyTorch test measures its error the same way). So:

* **same-branch**: the float64 run uses the float32 run's ReLU on/off pattern, i.e. it is the
  exact gradient of the linear piece the float32 step is on. This isolates the arithmetic (sums,
  products, reductions). Asserted ≤ 1e-5 at both batch sizes: with pairwise reductions it is
  3.2e-6 at both; the sequential batch-norm sums they replaced gave 3.3e-5 (batch 8) and 8.6e-5
  (batch 32), PyTorch 2.13 CPU gives 1.2e-5 and 3.8e-5 (measured by the tests below).
* **plain**: the ordinary float64 run. Asserted ≤ 1e-4 when no ReLU flipped (batch 8: 3.2e-6;
  it was 1.7e-2 before, with 2 flips). At batch 32, 3 units flip (12 before: a more accurate
  forward flips fewer) and the plain error is 8e-3, PyTorch's 7.6e-3.
"""
import dataclasses

import numpy as np
import pytest

from conftest import NETS
from netdsl.compile.compiler import compile_file
from netdsl.runtime.executor import Executor
from netdsl.runtime.numerics import run_step

TOL = 1e-4          # plain float64 reference, when no ReLU flipped
BRANCH_TOL = 1e-5   # same-branch reference


@pytest.fixture(scope="module")
def graph():
    return compile_file(str(NETS / "resnet20.net"), input_shape=(32, 32, 3), num_classes=10).graph


def _batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 32, 32, 3)).astype(np.float32), rng.integers(0, 10, n)


def _cast(params, dtype):
    return {n: {k: v.astype(dtype) for k, v in t.items()} for n, t in params.items()}


def _relu_key(ex, st):
    """The ReLU a plan step applies, named by the node that feeds it (the ReLU node itself is
    gone where a pass fused it into its producer), or None."""
    if st.node.op == "relu":
        return ex.plan[st.inputs[0][0]].node.name
    if st.act == "relu" or st.meta.get("relu") or st.node.meta.get("act") == "relu":
        return st.node.name
    return None


def _record_relus(ex) -> dict:
    """Make every ReLU of ``ex``'s plan record ``out > 0`` when it runs; returns the dict that
    fills, {feeding node: mask}. The kernels and their arithmetic are untouched: the masks are
    those of the very forward whose gradients the test compares (a second executor's could
    differ, with other threads, BLAS kernels or passes)."""
    masks = {}
    for st in ex.plan:
        key = _relu_key(ex, st)
        if key is None:
            continue

        def forward(ctx, attrs, params, ins, _run=st.forward, _key=key):
            out, cache = _run(ctx, attrs, params, ins)
            # a fused st.act is applied after this, in place: pre-activation > 0 is its mask
            masks[_key] = np.asarray(out > 0)
            return out, cache
        st.forward = forward
    return masks


def _relu_masks(ex, x, y):
    """({feeding node: out > 0} of every ReLU, gradients) of a training step of ``ex``."""
    masks = {}

    def record(st, outs, ins):
        key = _relu_key(ex, st)
        if key is not None:
            masks[key] = outs[0] > 0
    grads = run_step(ex, x, y, on_forward=record)
    return masks, grads


def _locked_relus(ex, masks):
    """Plan steps for ``run_step(replace=...)``: each ReLU switched by a fixed on/off pattern
    (``ex`` runs no passes, so every ReLU is a step of its own); ``masks`` by feeding node."""
    def forward(mask):
        return lambda ctx, attrs, params, ins: (ins[0] * mask, mask)

    def backward(ctx, attrs, params, mask, dout):
        return [dout * mask], {}
    return {i: dataclasses.replace(st, forward=forward(masks[_relu_key(ex, st)].astype(np.float64)),
                                   backward=backward)
            for i, st in enumerate(ex.plan) if _relu_key(ex, st) is not None}


def _max_rel(grads, ref):
    return max(np.linalg.norm(grads[n][k] - ref[n][k]) / np.linalg.norm(ref[n][k])
               for n in ref for k in ref[n])


_CACHE = {}


def _errors(graph, batch, kernels="numpy"):
    """(same-branch error, plain error, flipped ReLU units, plain float64 gradients) of a float32
    step of the executor with ``kernels``; computed once per case for the tests below."""
    if (batch, kernels) in _CACHE:
        return _CACHE[batch, kernels]
    x, y = _batch(batch)
    ex32 = Executor(graph, dtype=np.float32, seed=0, kernels=kernels)
    p64 = _cast(ex32.params, np.float64)
    m32 = _record_relus(ex32)        # the pattern of the step whose gradients are compared
    ex32.forward(x, y, training=True)
    g32 = ex32.backward()
    # The references run without passes: every ReLU a step of its own.
    plain = Executor(graph, dtype=np.float64, params=_cast(p64, np.float64), passes=())
    m64, g64 = _relu_masks(plain, x.astype(np.float64), y)
    assert set(m32) == set(m64) and m32      # the same ReLUs, fused or not
    flips = sum(int((m32[k] != m64[k]).sum()) for k in m32)
    locked = Executor(graph, dtype=np.float64, params=_cast(p64, np.float64), passes=())
    g_locked = run_step(locked, x.astype(np.float64), y, replace=_locked_relus(locked, m32))
    if flips == 0:   # then both references are the same function: a check on the locked one
        assert _max_rel(g_locked, g64) < 1e-12
    _CACHE[batch, kernels] = _max_rel(g32, g_locked), _max_rel(g32, g64), flips, g64
    return _CACHE[batch, kernels]


@pytest.mark.parametrize("batch", [8, 32])
def test_float32_gradients_match_float64(graph, batch):
    """The NumPy reference kernels: pairwise reductions, held to 1e-5."""
    same_branch, plain, flips, _ = _errors(graph, batch)
    assert same_branch <= BRANCH_TOL, f"batch {batch}: same-branch error {same_branch:.2e}"
    if flips == 0:
        assert plain <= TOL, f"batch {batch}: plain error {plain:.2e}"
    print(f"batch {batch}: same-branch {same_branch:.2e}, plain {plain:.2e}, {flips} flipped")


@pytest.mark.parametrize("batch", [8, 32])
def test_float32_gradients_match_float64_with_onednn(graph, batch):
    """oneDNN's kernels (the default where the library loads) reduce in their own order: their
    same-branch error is PyTorch's order (3e-5 / 9e-5 measured), held to the issue's 1e-4."""
    from netdsl.runtime import kernels
    if not kernels.available("onednn"):
        pytest.skip("oneDNN does not load here")
    same_branch, plain, flips, _ = _errors(graph, batch, "onednn")
    assert same_branch <= TOL, f"batch {batch}: same-branch error {same_branch:.2e}"
    if flips == 0:
        assert plain <= TOL, f"batch {batch}: plain error {plain:.2e}"


# ---------------------------------------------------------------------------------------------
# PyTorch's float32-vs-float64 error on the same net, weights and batch, for context.

def _torch_grads(torch, ex, x, y, dtype, masks=None, record=None):
    """Gradients of a training step of ``ex``'s plan run with PyTorch ops (NCHW inside)."""
    import torch.nn.functional as F
    from netdsl.layers.geometry import conv_padding
    P = {n: {k: torch.tensor(np.asarray(v), dtype=dtype, requires_grad=True)
             for k, v in t.items()} for n, t in ex.params.items()}
    vals = {}
    for i, st in enumerate(ex.plan):
        op, a, p = st.node.op, st.node.attrs, P.get(st.node.name, {})
        ins = [vals[j] for j, _ in st.inputs]
        if op == "input":
            out = torch.tensor(x, dtype=dtype).permute(0, 3, 1, 2)
        elif op == "conv":
            out = F.conv2d(ins[0], p["weight"].permute(3, 2, 0, 1), p.get("bias"),
                           stride=a["stride"], padding=conv_padding(a), dilation=a["dilation"],
                           groups=a["groups"])
        elif op == "batchnorm":
            out = F.batch_norm(ins[0], None, None, p["gamma"], p["beta"], training=True,
                               eps=a["eps"])
        elif op == "relu":
            out = F.relu(ins[0]) if masks is None else ins[0] * masks[i]
            if record is not None:
                record[i] = (out > 0).to(torch.float64)
        elif op == "add":
            out = sum(ins)
        elif op == "gap":
            out = ins[0].mean(dim=(2, 3))
        elif op == "fc":
            out = ins[0] @ p["weight"] + p["bias"]
        elif op == "softmax_xent":
            out = a["weight"] * F.cross_entropy(ins[0], torch.tensor(y))
        else:
            raise NotImplementedError(op)
        vals[i] = out
    sum(vals[i] for i in ex.heads).backward()
    return {n: {k: t.grad.numpy() for k, t in tt.items() if t.grad is not None}
            for n, tt in P.items() if any(t.grad is not None for t in tt.values())}


@pytest.mark.parametrize("batch", [8, 32])
def test_float32_error_within_pytorchs(graph, batch):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    ex = Executor(graph, dtype=np.float32, seed=0, passes=())   # every ReLU a step of its own
    x, y = _batch(batch)
    masks = {}
    t32 = _torch_grads(torch, ex, x, y, torch.float32, record=masks)
    t64 = _torch_grads(torch, ex, x, y, torch.float64)
    t_locked = _torch_grads(torch, ex, x, y, torch.float64, masks=masks)
    ours_branch, ours_plain, _, g64 = _errors(graph, batch)
    assert _max_rel(t64, g64) < 1e-10          # the PyTorch translation is the same network
    torch_branch, torch_plain = _max_rel(t32, t_locked), _max_rel(t32, t64)
    print(f"batch {batch}: netdsl {ours_branch:.2e} same-branch / {ours_plain:.2e} plain; "
          f"PyTorch {torch_branch:.2e} / {torch_plain:.2e}")
    assert ours_branch <= max(10 * torch_branch, TOL)
    assert ours_plain <= max(10 * torch_plain, TOL)
