"""Local response normalisation across channels (AlexNet, ZFNet, GoogLeNet's stem).

    b_c = a_c / (k + α' · Σ_{c' ∈ window(c)} a_{c'}²)^β,   window(c) = c − ⌊n/2⌋ … c + ⌊(n−1)/2⌋

clipped to the existing channels. Caffe and PyTorch use α' = α/n (the default here,
``alpha_over_n=true``); the AlexNet paper's formula is α' = α (``alpha_over_n=false``). The
window sums loop over the n channel offsets (n is 5 in every classic net), each a shifted slice of
the whole batch, never over pixels.
"""
from __future__ import annotations

from ..core.errors import ShapeError
from .base import Arg, LayerSpec, register, shape_str
from . import naive
from .footprint import Footprint, in_bytes

LRN_STYLE = {"shape": "box", "style": "filled", "fillcolor": "#ffe5d0"}


def _window_sum(xp, v, before: int, after: int):
    """s[..., c] = Σ v[..., c − before … c + after] over existing channels."""
    out = v.copy()
    c = v.shape[-1]
    for shift in range(1, before + 1):    # channels below c
        if shift < c:
            out[..., shift:] += v[..., :c - shift]
    for shift in range(1, after + 1):     # channels above c
        if shift < c:
            out[..., :c - shift] += v[..., shift:]
    return out


def _alpha(attrs) -> float:
    return attrs["alpha"] / attrs["size"] if attrs["alpha_over_n"] else attrs["alpha"]


def _lrn_shape(attrs, in_shapes):
    shape = tuple(in_shapes[0])
    if len(shape) not in (1, 3):
        raise ShapeError(f"lrn normalises across channels of an H×W×C map (or a vector), got "
                         f"{shape_str(shape)}")
    if attrs["k"] <= 0:
        # A window of zeros (common after ReLU) would divide 0 by 0^β.
        raise ShapeError(f"lrn: k must be positive, got {attrs['k']:g}",
                         detail="k + α·Σa² = 0 where all n channels are 0",
                         hint="use k=1 (Caffe, PyTorch) or k=2 (AlexNet)")
    return shape


def _lrn_forward(ctx, attrs, params, inputs):
    xp, x = ctx.xp, inputs[0]
    n = attrs["size"]
    scale = _window_sum(xp, x * x, n // 2, (n - 1) // 2)
    scale *= _alpha(attrs)
    scale += attrs["k"]
    out = scale ** -attrs["beta"]
    out *= x          # in place: scale and the output are the only arrays kept
    return out, (x, scale, out)


def _lrn_backward(ctx, attrs, params, cache, dout):
    xp = ctx.xp
    x, scale, out = cache
    n, beta = attrs["size"], attrs["beta"]
    # ∂b_c/∂a_j = δ_cj·scale_c^−β − 2α'β·a_c·a_j·scale_c^(−β−1) for j in window(c); summing over
    # the c whose window holds j swaps the window's two sides.
    # Three full arrays (t, the window sums, dx), each operation in place in one of them
    # (the planner's rule, _lrn_footprint, counts exactly these).
    t = dout * out
    t /= scale
    back = _window_sum(xp, t, (n - 1) // 2, n // 2)
    dx = scale ** -beta
    dx *= dout
    xp.multiply(x, 2 * _alpha(attrs) * beta, out=t)
    t *= back
    dx -= t
    return [dx.astype(dout.dtype, copy=False)], {}


def _lrn_random(rng):
    c = int(rng.integers(1, 9))
    return {"attrs": {"size": int(rng.integers(1, 8)), "alpha": float(rng.uniform(0.01, 2)),
                      "beta": float(rng.uniform(0.3, 1.5)), "k": float(rng.uniform(0.5, 3)),
                      "alpha_over_n": bool(rng.integers(0, 2))},
            "in_shapes": [(int(rng.integers(1, 5)), int(rng.integers(1, 5)), c)]}


def _lrn_footprint(st, n, it, training, scratch=True):
    """Forward: x² and its window sums (the scale, cached), then the output (cached) once x²
    is gone. Backward: t and its window sums beside the gradient."""
    x = in_bytes(st, n, it)
    return Footprint(out=x, cache=x, keep_in=(0,), keep_out=True, dx=(x,), bwd_tmp=2 * x)


register(LayerSpec(
    name="lrn", doc="Local response normalisation across channels: a / (k + α/n·Σ a²)^β over n "
    "neighbouring channels (alpha_over_n=false: the AlexNet paper's α·Σ a²).",
    aliases=("localresponsenorm", "local_response_norm", "localresponsenormalization"),
    args=(Arg("size", "int", 5, doc="channels in the window (n)", minimum=1),
          Arg("alpha", "float", 1e-4, doc="scale α of the sum of squares", minimum=0),
          Arg("beta", "float", 0.75, doc="exponent β", minimum=0),
          Arg("k", "float", 1.0, doc="additive constant (AlexNet: 2)", minimum=0),
          Arg("alpha_over_n", "bool", True, doc="divide α by n (Caffe, PyTorch); false: the "
              "AlexNet paper's formula")),
    infer_shape=_lrn_shape, forward=_lrn_forward, backward=_lrn_backward,
    compact=("size",), label=("size",), style=LRN_STYLE, reference=naive.lrn,
    example={"attrs": {"size": 3, "alpha": 0.5, "beta": 0.75, "k": 2.0}, "in_shapes": [(2, 3, 5)]},
    examples=({"attrs": {"size": 4, "alpha": 1.0, "alpha_over_n": False}, "in_shapes": [(2, 2, 6)]},
              {"attrs": {"size": 5, "alpha": 0.3, "k": 1.0}, "in_shapes": [(3,)]}),
    random_example=_lrn_random,
    footprint=_lrn_footprint))
