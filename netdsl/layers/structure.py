"""Structural layers: input, identity, flatten, dropout, concat, add.

Also holds small helpers shared by the other layer modules (AUTO checks, the 3-D input check).
"""
from __future__ import annotations

from ..core.errors import NetdslError, ShapeError
from .base import AUTO, Arg, LayerSpec, fresh, numel, register, shape_str
from .footprint import Footprint, in_bytes, out_bytes, view_of_input

STRUCT_STYLE = {"shape": "box", "style": "rounded,filled", "fillcolor": "#e9ecef"}
SOURCE_STYLE = {"shape": "invhouse", "style": "filled", "fillcolor": "#adb5bd"}
JOIN_STYLE = {"shape": "circle", "style": "filled", "fillcolor": "#f8d7da", "fixedsize": "false"}


# --------------------------------------------------------------------------------------------
# Shared helpers

def require_set(op: str, attrs: dict, key: str, hint: str) -> None:
    """A NetdslError when ``attrs[key]`` is still AUTO at shape-inference time."""
    if attrs.get(key) is AUTO:
        raise NetdslError(f"{op}: '{key}' was not given and could not be worked out", hint=hint)


def require_spatial(op: str, shape, hint: str) -> tuple[int, int, int]:
    """The (H, W, C) of a 3-D per-example shape; a ShapeError naming the layer otherwise."""
    if shape is None or len(shape) != 3:
        raise ShapeError(f"{op} needs an H×W×C input, got {shape_str(shape)}", hint=hint)
    return tuple(int(d) for d in shape)


def as_pair(value):
    """(h, w) from a pair argument that may still be a bare int (e.g. set by a later stage);
    strings such as 'same' and AUTO pass through."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    return tuple(value) if isinstance(value, (tuple, list)) else value


def pair_attrs(attrs: dict, names) -> dict:
    """A copy of ``attrs`` with the named pair arguments normalised by :func:`as_pair`."""
    return {**attrs, **{name: as_pair(attrs[name]) for name in names}}


def one_input(in_shapes) -> tuple:
    return tuple(in_shapes[0])


def _passthrough_forward(ctx, attrs, params, inputs):
    return inputs[0], None


def _passthrough_backward(ctx, attrs, params, cache, dout):
    return [dout], {}


# --------------------------------------------------------------------------------------------
# input

def _input_shape(attrs, in_shapes):
    require_set("input", attrs, "shape",
                "write INPUT(32x32x3), or let the dataset set it (train { data: ... })")
    return tuple(attrs["shape"])


def _input_backward(ctx, attrs, params, cache, dout):
    return [], {}


def _dropout_footprint(st, n, it, training, scratch=True):
    """Training: the bool draw, then the mask (cached) and the output; inference (or a rate
    of 0): a view."""
    if not training or st.node.attrs.get("rate") == 0:
        return view_of_input(st, n, it, training)
    x = in_bytes(st, n, it)
    return Footprint(out=x, fwd_tmp=x // it, cache=x, dx=(x,))


def _join_footprint(st, n, it, training, scratch=True):
    """concat and add: a fresh output; each input's gradient is a view of the incoming one."""
    return Footprint(out=out_bytes(st, n, it), dx=(None,) * len(st.inputs))


register(LayerSpec(
    name="input", doc="The network's input: one example of the given shape (from the dataset).",
    args=(Arg("shape", "dims", AUTO, doc="H×W×C of one example"),),
    infer_shape=_input_shape, forward=_passthrough_forward, backward=_input_backward,
    inputs=(0, 0), role="source", label=("shape",), style=SOURCE_STYLE,
    example={"attrs": {"shape": (4, 4, 3)}, "in_shapes": []},
    footprint=view_of_input))


# --------------------------------------------------------------------------------------------
# identity

register(LayerSpec(
    name="identity", doc="Passes its input through unchanged.",
    args=(), infer_shape=lambda attrs, in_shapes: one_input(in_shapes),
    forward=_passthrough_forward, backward=_passthrough_backward, style=STRUCT_STYLE,
    example={"attrs": {}, "in_shapes": [(3, 3, 2)]},
    footprint=view_of_input))


# --------------------------------------------------------------------------------------------
# flatten

def _flatten_shape(attrs, in_shapes):
    shape = one_input(in_shapes)
    if len(shape) == 0:
        raise ShapeError("flatten needs a tensor input, got a scalar")
    return (numel(shape),)


def _flatten_forward(ctx, attrs, params, inputs):
    x = inputs[0]
    return x.reshape(x.shape[0], -1), x.shape


def _flatten_backward(ctx, attrs, params, cache, dout):
    return [dout.reshape(cache)], {}


register(LayerSpec(
    name="flatten", doc="Flattens H×W×C into one feature vector (row-major over H, W, C).",
    args=(), infer_shape=_flatten_shape, forward=_flatten_forward, backward=_flatten_backward,
    style=STRUCT_STYLE, example={"attrs": {}, "in_shapes": [(2, 3, 2)]},
    footprint=view_of_input))


# --------------------------------------------------------------------------------------------
# dropout

def _dropout_shape(attrs, in_shapes):
    rate = attrs["rate"]
    if rate >= 1:
        raise NetdslError(f"dropout: rate must be below 1, got {rate:g}",
                          hint="rate is the fraction of units dropped; 0.5 is the classic value")
    return one_input(in_shapes)


def _dropout_forward(ctx, attrs, params, inputs):
    x = inputs[0]
    rate = attrs["rate"]
    if not ctx.training or rate == 0:
        return x, None
    # Inverted dropout: scale the kept units at train time so inference is a plain identity.
    rng = ctx.rng if ctx.rng is not None else ctx.xp.random  # module-level RNG as a fallback
    keep = rng.random(x.shape, dtype=x.dtype) >= rate
    mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - rate))
    return x * mask, mask


def _dropout_backward(ctx, attrs, params, mask, dout):
    return [dout if mask is None else dout * mask], {}


register(LayerSpec(
    name="dropout", doc="Inverted dropout: zeroes a fraction `rate` of units while training.",
    args=(Arg("rate", "float", 0.5, doc="fraction of units dropped", minimum=0),),
    infer_shape=_dropout_shape, forward=_dropout_forward, backward=_dropout_backward,
    train_only=True, label=("rate",),
    style={"shape": "box", "style": "rounded,filled,dashed", "fillcolor": "#e9ecef"},
    example={"attrs": {"rate": 0.3}, "in_shapes": [(3, 3, 2)]},
    footprint=_dropout_footprint))


# --------------------------------------------------------------------------------------------
# concat / add

def _concat_shape(attrs, in_shapes):
    shapes = [tuple(s) for s in in_shapes]
    first = shapes[0]
    if len(first) not in (1, 3):
        raise ShapeError(f"concat joins H×W×C maps or flat vectors, got {shape_str(first)}")
    for other in shapes[1:]:
        if len(other) != len(first):
            raise ShapeError(f"concat: {shape_str(first)} vs {shape_str(other)} "
                             "(inputs must all be maps or all be vectors)",
                             hint="add FLATTEN or GAP to the spatial branch")
        if first[:-1] != other[:-1]:
            raise ShapeError(f"concat: {shape_str(first[:-1])} vs {shape_str(other[:-1])} "
                             "(spatial sizes must match)",
                             hint="give the branches the same strides and 'same' padding")
    return first[:-1] + (sum(s[-1] for s in shapes),)


def _concat_forward(ctx, attrs, params, inputs):
    shape = inputs[0].shape[:-1] + (sum(x.shape[-1] for x in inputs),)
    out = fresh(ctx, shape, ctx.xp.result_type(*inputs))
    return ctx.xp.concatenate(inputs, axis=-1, out=out), [x.shape[-1] for x in inputs]


def _concat_backward(ctx, attrs, params, widths, dout):
    grads, start = [], 0
    for width in widths:
        grads.append(dout[..., start:start + width])
        start += width
    return grads, {}


register(LayerSpec(
    name="concat", doc="Joins its inputs along channels (maps) or features (vectors).",
    aliases=("cat",), args=(), infer_shape=_concat_shape, forward=_concat_forward,
    backward=_concat_backward, inputs=(2, None), role="join", style=JOIN_STYLE,
    example={"attrs": {}, "in_shapes": [(3, 3, 2), (3, 3, 3)]},
    examples=({"attrs": {}, "in_shapes": [(3,), (2,), (4,)]},),
    footprint=_join_footprint))


def _add_shape(attrs, in_shapes):
    first = tuple(in_shapes[0])
    for other in in_shapes[1:]:
        if tuple(other) != first:
            raise ShapeError(f"add: {shape_str(first)} vs {shape_str(other)} "
                             "(inputs must have equal shapes)",
                             hint="use residual{...} for an automatic projection shortcut")
    return first


def _add_forward(ctx, attrs, params, inputs):
    a, b = inputs[0], inputs[1]
    out = ctx.xp.add(a, b, out=fresh(ctx, a.shape, ctx.xp.result_type(a, b))) \
        if a.shape == b.shape else a + b
    for x in inputs[2:]:
        out += x
    return out, len(inputs)


def _add_backward(ctx, attrs, params, count, dout):
    # The same (read-only) array for every input: no copies. The executor sums gradients
    # out of place (a + b), so shared buffers are safe.
    return [dout] * count, {}


register(LayerSpec(
    name="add", doc="Element-wise sum of inputs of equal shape (residual joins).",
    aliases=("sum",), args=(), infer_shape=_add_shape, forward=_add_forward,
    backward=_add_backward, inputs=(2, None), role="join", style=JOIN_STYLE,
    example={"attrs": {}, "in_shapes": [(3, 3, 2), (3, 3, 2)]},
    examples=({"attrs": {}, "in_shapes": [(4,)] * 3},),
    footprint=_join_footprint))
