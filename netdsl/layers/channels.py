"""Channel plumbing of the modern nets: the ``mul`` join (squeeze-and-excitation's gate, a
per-channel vector broadcast over a map), ``split`` into equal channel groups (several outputs),
``slice`` of a channel range, and ShuffleNet's channel ``shuffle``.

Channels are the last axis (NHWC), so every one of these works on maps and flat vectors alike.
"""
from __future__ import annotations

from ..core.errors import ShapeError
from .base import Arg, LayerSpec, register, shape_str
from .footprint import Footprint, batch_bytes, in_bytes, out_bytes
from .structure import JOIN_STYLE, STRUCT_STYLE

# --------------------------------------------------------------------------------------------
# mul: element-wise product; a 1×1×C map or a C vector broadcasts over an H×W×C map


def _is_gate(shape, other) -> bool:
    """True when ``shape`` is a per-channel vector (C or 1×1×C) for the H×W×C map ``other``."""
    return len(other) == 3 and shape in ((other[2],), (1, 1, other[2])) and shape != other


def _mul_shape(attrs, in_shapes):
    a, b = (tuple(s) for s in in_shapes)
    if a == b and len(a) > 0:
        return a
    if _is_gate(b, a):
        return a
    if _is_gate(a, b):
        return b
    raise ShapeError(f"mul: {shape_str(a)} vs {shape_str(b)} (inputs must have equal shapes, "
                     "or one must be a per-channel vector of the other's channels)",
                     hint="a squeeze-and-excitation gate is GAP(keep=true) -> ... -> "
                          "CONV(c, 1) -> SIGMOID, with c the map's channels")


def _b_is_gate(a, b) -> bool:
    """Of two batches of different shapes, whether ``b`` is the per-channel gate: the flat
    one, else the one with a 1×1 map."""
    if b.ndim == 2 or a.ndim == 2:
        return b.ndim == 2
    return b.shape[1] * b.shape[2] < a.shape[1] * a.shape[2]


def _gated(xp, x, gate):
    """x (N, H, W, C) times gate (N, C) broadcast over H and W, as one fresh array. einsum
    rather than ``x * gate[:, None, None, :]``: NumPy's iterator buffers a broadcast operand
    (~32 KB a call), einsum makes only the result (_mul_footprint is exact)."""
    n, c = x.shape[0], x.shape[-1]
    return xp.einsum("nhc,nc->nhc", x.reshape(n, -1, c), gate.reshape(n, c)).reshape(x.shape)


def _gate_grad(xp, dout, x, gate_shape):
    """Σ over H, W of dout·x, shaped as the gate, with no full temporary (einsum). Its float32
    error is NumPy's sum's: 2.3e-6 of the largest sum on a 112×112 map (measured against
    float64), far inside the gradient checks'."""
    n, c = dout.shape[0], dout.shape[-1]
    return xp.einsum("nhc,nhc->nc", dout.reshape(n, -1, c),
                     x.reshape(n, -1, c)).reshape(gate_shape)


def _mul_forward(ctx, attrs, params, inputs):
    a, b = inputs
    if a.shape == b.shape:
        return a * b, (a, b)
    if _b_is_gate(a, b):
        return _gated(ctx.xp, a, b), (a, b)
    return _gated(ctx.xp, b, a), (a, b)


def _mul_backward(ctx, attrs, params, cache, dout):
    a, b = cache
    xp = ctx.xp
    if a.shape == b.shape:
        return [dout * b, dout * a], {}
    if _b_is_gate(a, b):
        return [_gated(xp, dout, b), _gate_grad(xp, dout, a, b.shape)], {}
    return [_gate_grad(xp, dout, b, a.shape), _gated(xp, dout, a)], {}


def _mul_footprint(st, n, it, training, scratch=True):
    """A fresh output; the cache holds both inputs. Backward: each input's gradient, nothing
    else (einsum makes no temporaries)."""
    a, b = in_bytes(st, n, it, 0), in_bytes(st, n, it, 1)
    return Footprint(out=out_bytes(st, n, it), keep_in=(0, 1), dx=(a, b))


register(LayerSpec(
    name="mul", doc="Element-wise product of two inputs; a per-channel vector (C or 1×1×C) "
    "broadcasts over an H×W×C map (squeeze-and-excitation).", aliases=("multiply", "prod"),
    args=(), infer_shape=_mul_shape, forward=_mul_forward, backward=_mul_backward,
    inputs=(2, 2), role="join", style=JOIN_STYLE,
    example={"attrs": {}, "in_shapes": [(3, 3, 2), (1, 1, 2)]},
    examples=({"attrs": {}, "in_shapes": [(3, 3, 2), (3, 3, 2)]},
              {"attrs": {}, "in_shapes": [(3, 2, 3), (3,)]},
              {"attrs": {}, "in_shapes": [(1, 1, 2), (2, 3, 2)]},
              {"attrs": {}, "in_shapes": [(5,), (5,)]}),
    footprint=_mul_footprint))


# --------------------------------------------------------------------------------------------
# split: equal channel groups, one output each

def _channels(op: str, in_shapes) -> tuple:
    shape = tuple(in_shapes[0])
    if len(shape) not in (1, 3):
        raise ShapeError(f"{op} works on H×W×C maps or flat vectors, got {shape_str(shape)}")
    return shape


def _split_shape(attrs, in_shapes):
    shape, parts = _channels("split", in_shapes), attrs["parts"]
    c = shape[-1]
    if c % parts:
        raise ShapeError(f"split: {c} channels do not divide into {parts} equal parts",
                         detail=f"{c} / {parts} = {c / parts:.4g}",
                         hint="use a channel count divisible by parts, or SLICE(start, stop)")
    return tuple(shape[:-1] + (c // parts,) for _ in range(parts))


def _split_forward(ctx, attrs, params, inputs):
    x = inputs[0]
    width = x.shape[-1] // attrs["parts"]
    # Contiguous copies: a view's strides would follow each part into every later kernel.
    return tuple(ctx.xp.ascontiguousarray(x[..., i * width:(i + 1) * width])
                 for i in range(attrs["parts"])), x.shape


def _split_backward(ctx, attrs, params, shape, dout):
    dx = ctx.xp.empty(shape, dtype=next(d for d in dout if d is not None).dtype)
    width = shape[-1] // attrs["parts"]
    for i, d in enumerate(dout):
        dx[..., i * width:(i + 1) * width] = 0 if d is None else d
    return [dx], {}


def _split_footprint(st, n, it, training, scratch=True):
    """One fresh array per part; backward: the gradient, assembled in place."""
    parts = tuple(batch_bytes(n, s, it) for s in st.node.out_shapes)
    return Footprint(out=sum(parts), outs=parts, dx=(in_bytes(st, n, it),))


register(LayerSpec(
    name="split", doc="Splits the channels into `parts` equal groups, one output each "
    "(read them as @s.0, @s.1, …).", aliases=("chunk",),
    args=(Arg("parts", "int", 2, doc="number of equal channel groups (outputs)", minimum=2),),
    infer_shape=_split_shape, forward=_split_forward, backward=_split_backward,
    outputs=2, outputs_arg="parts", label=("parts",), style=STRUCT_STYLE,
    example={"attrs": {}, "in_shapes": [(3, 3, 4)]},
    examples=({"attrs": {"parts": 3}, "in_shapes": [(2, 3, 6)]},
              {"attrs": {"parts": 2}, "in_shapes": [(6,)]}),
    footprint=_split_footprint))


# --------------------------------------------------------------------------------------------
# slice: channels start..stop−1

def _slice_shape(attrs, in_shapes):
    shape = _channels("slice", in_shapes)
    start, stop, c = attrs["start"], attrs["stop"], shape[-1]
    if not 0 <= start < stop <= c:
        raise ShapeError(f"slice: channels {start}..{stop} of {c}",
                         detail=f"need 0 ≤ start < stop ≤ {c}, got start={start} stop={stop}",
                         hint=f"stop is exclusive: SLICE(0, {c}) keeps every channel")
    return shape[:-1] + (stop - start,)


def _slice_forward(ctx, attrs, params, inputs):
    x = inputs[0]
    return ctx.xp.ascontiguousarray(x[..., attrs["start"]:attrs["stop"]]), x.shape


def _slice_backward(ctx, attrs, params, shape, dout):
    dx = ctx.xp.zeros(shape, dtype=dout.dtype)
    dx[..., attrs["start"]:attrs["stop"]] = dout
    return [dx], {}


def _slice_footprint(st, n, it, training, scratch=True):
    """A fresh output; backward: a zeroed gradient of the input's size."""
    return Footprint(out=out_bytes(st, n, it), dx=(in_bytes(st, n, it),))


register(LayerSpec(
    name="slice", doc="Channels start..stop−1 of its input (stop exclusive, as in Python).",
    aliases=("channel_slice",),
    args=(Arg("start", "int", doc="first channel kept", minimum=0),
          Arg("stop", "int", doc="one past the last channel kept", minimum=1)),
    infer_shape=_slice_shape, forward=_slice_forward, backward=_slice_backward,
    label=("start", "stop"), style=STRUCT_STYLE,
    example={"attrs": {"start": 1, "stop": 3}, "in_shapes": [(3, 3, 4)]},
    examples=({"attrs": {"start": 0, "stop": 2}, "in_shapes": [(5,)]},),
    footprint=_slice_footprint))


# --------------------------------------------------------------------------------------------
# shuffle: ShuffleNet's channel shuffle

def _shuffle_shape(attrs, in_shapes):
    shape, g = _channels("shuffle", in_shapes), attrs["groups"]
    if shape[-1] % g:
        raise ShapeError(f"shuffle: {shape[-1]} channels do not divide into {g} groups",
                         detail=f"{shape[-1]} / {g} = {shape[-1] / g:.4g}",
                         hint="groups must divide the channel count")
    return shape


def _permute(xp, x, groups: int):
    """Channel i·g + k of the result is channel k·(C/g) + i of x (reshape C → (g, C/g),
    transpose, flatten: ShuffleNet's and PyTorch's ChannelShuffle); one fresh array."""
    c = x.shape[-1]
    lead = x.shape[:-1]
    view = x.reshape(lead + (groups, c // groups))
    out = xp.empty_like(x)
    out.reshape(lead + (c // groups, groups))[...] = xp.swapaxes(view, -1, -2)
    return out


def _shuffle_forward(ctx, attrs, params, inputs):
    return _permute(ctx.xp, inputs[0], attrs["groups"]), None


def _shuffle_backward(ctx, attrs, params, cache, dout):
    # The inverse permutation is the shuffle with C/g groups.
    return [_permute(ctx.xp, dout, dout.shape[-1] // attrs["groups"])], {}


register(LayerSpec(
    name="shuffle", doc="Channel shuffle (ShuffleNet): channels as a groups×(C/groups) grid, "
    "transposed.", aliases=("channel_shuffle", "channelshuffle"),
    args=(Arg("groups", "int", doc="number of groups", minimum=1),),
    infer_shape=_shuffle_shape, forward=_shuffle_forward, backward=_shuffle_backward,
    compact=("groups",), label=("groups",), style=STRUCT_STYLE,
    example={"attrs": {"groups": 2}, "in_shapes": [(3, 3, 6)]},
    examples=({"attrs": {"groups": 3}, "in_shapes": [(6,)]},),
    footprint=_slice_footprint))
