"""Max pooling that remembers where each maximum was (its *switches*), and max-unpooling that
puts values back there (Zeiler & Fergus's deconvnet, SegNet's decoder).

Switches follow PyTorch's ``return_indices``: for every pooled value, the flat index r·W + c of
its input pixel within its channel plane, as int64, shape (N, Ho, Wo, C). ``maxunpool`` takes
(values, switches) and optionally a third tensor whose H×W is the size to restore (SegNet and
odd sizes need it: 2×2 pooling maps both 4 and 5 to 2); otherwise ``out=HxW`` or PyTorch's
default (Ho − 1)·S − 2P + K. Positions no switch points at are zero; where overlapping windows
share a maximum the values add up (the adjoint of max pooling's gradient routing).
"""
from __future__ import annotations

from ..core.errors import NetdslError, ShapeError
from .base import AUTO, Arg, LayerSpec, out_size, register, shape_str
from .pooling import (POOL_STYLE, pool_args, pool_backward, pool_footprint, pool_forward,
                      pool_geometry, pool_shape_rule, random_pool_example, resolve_pool)
from .geometry import unpool_attrs, unpool_out_hw
from .structure import as_pair, require_spatial
from . import naive
import copy

from .footprint import Footprint, batch_bytes


# --------------------------------------------------------------------------------------------
# maxpool_switches

def _switch_forward(ctx, attrs, params, inputs):
    xp, x = ctx.xp, inputs[0]
    attrs = dict(attrs, kind="max")
    values, (x_shape, offset) = pool_forward(ctx, attrs, params, inputs)
    size, stride, pad, (ho, wo), _ = pool_geometry(attrs, x.shape)
    # Window offset (row-major a·KW + b) → input row and column → flat index in the plane:
    # (i·S − P + a)·W + j·S − P + b = corner(i, j) + step[offset], with step[a·KW + b] =
    # a·W + b. One int64 array (the switches) is all this allocates: the pool's cache keeps
    # its own small offsets (_unpool_footprint).
    width = x.shape[2]
    k = xp.arange(size[0] * size[1], dtype=xp.int64)
    step = (k // size[1]) * width + k % size[1]
    corner = ((xp.arange(ho, dtype=xp.int64) * stride[0] - pad[0])[:, None] * width
              + xp.arange(wo, dtype=xp.int64) * stride[1] - pad[1])[None, :, :, None]
    switches = step[offset]    # (a take() would first copy the offsets as intp)
    switches += corner
    return (values, switches), (x_shape, offset)


def _switch_backward(ctx, attrs, params, cache, dout):
    dvalues = dout[0] if isinstance(dout, tuple) else dout
    if dvalues is None:  # only the switches are used downstream: they carry no gradient
        return [None], {}
    return pool_backward(ctx, dict(attrs, kind="max"), params, cache, dvalues)


def _switch_shape(attrs, in_shapes):
    out = pool_shape_rule("maxpool_switches")(dict(attrs, kind="max"), in_shapes)
    return (out, out)


def _switch_random(rng):
    ex = random_pool_example(rng, ("max",))
    ex["attrs"] = {k: v for k, v in ex["attrs"].items() if k not in ("kind", "count_include_pad")}
    return ex


def _switches_footprint(st, n, it, training, scratch=True):
    """The max pooling's own footprint (its kernel is the pool's), and the switches: one
    int64 array made after the pool's temporaries are gone, output with the values."""
    as_max = copy.copy(st)
    as_max.node = copy.copy(st.node)
    as_max.node.attrs = dict(st.node.attrs, kind="max")
    fp = pool_footprint(as_max, n, it, training)
    switches = 8 * batch_bytes(n, st.node.out_shapes[1], 1)
    fp.outs = (fp.out, switches)     # the values and the switches live apart
    fp.out += switches
    fp.fwd_tmp = max(fp.fwd_tmp - switches, 0)
    return fp


register(LayerSpec(
    name="maxpool_switches", doc="Max pooling with two outputs: the maxima and their switches "
    "(flat input positions, for maxunpool).",
    aliases=("maxpool_with_switches", "pool_switches", "maxpool_indices", "switch_pool"),
    args=tuple(a for a in pool_args("max") if a.name not in ("kind", "count_include_pad")),
    infer_shape=_switch_shape, forward=_switch_forward, backward=_switch_backward,
    outputs=2, output_names=("out", "switches"), compact=("size", "stride"),
    label=("size", "stride"), style=POOL_STYLE, downsamples=True, resolve=resolve_pool,
    reference=naive.pool_switches,
    random_example=_switch_random,
    example={"attrs": {"size": 2}, "in_shapes": [(4, 5, 2)]},
    examples=({"attrs": {"size": 3, "stride": 2, "pad": 1, "ceil": True},
               "in_shapes": [(6, 5, 2)]},
              {"attrs": {"size": 3, "stride": 1}, "in_shapes": [(4, 4, 1)]}),
              footprint=_switches_footprint))


# --------------------------------------------------------------------------------------------
# maxunpool

def _unpool_shape(attrs, in_shapes):
    values = require_spatial("maxunpool", in_shapes[0], "maxunpool takes a pooled H×W×C map")
    if len(in_shapes) < 2 or tuple(in_shapes[1]) != values:
        got = shape_str(in_shapes[1]) if len(in_shapes) > 1 else "nothing"
        raise ShapeError(f"maxunpool: the switches must have the values' shape "
                         f"{shape_str(values)}, got {got}",
                         hint="pass the second output of the maxpool_switches that made them")
    if len(in_shapes) > 2:
        require_spatial("maxunpool", in_shapes[2], "the third input gives the output H×W")
    for k, p in zip(as_pair(attrs["size"]), as_pair(attrs["pad"])):
        if p > k // 2:
            raise ShapeError(f"maxunpool: pad={p} is more than half the window size {k}",
                             detail=f"pad must be ≤ {k}//2 = {k // 2}", hint="use the pool's pad")
    h, w = unpool_out_hw(attrs, in_shapes)
    if h < 1 or w < 1:
        raise ShapeError(f"maxunpool: output size {h}×{w} is not positive",
                         hint="give out=HxW or the pooled tensor as a third input")
    return (h, w, values[2])


def _unpool_forward(ctx, attrs, params, inputs):
    xp = ctx.xp
    values, switches = inputs[0], inputs[1]
    n, ho, wo, c = values.shape
    h, w = unpool_out_hw(attrs, [v.shape[1:] for v in inputs])
    switches = switches.astype(xp.int64, copy=False)
    if switches.size and (int(switches.min()) < 0 or int(switches.max()) >= h * w):
        raise NetdslError(f"maxunpool: a switch points outside the {h}×{w} output",
                          detail=f"switch values {int(switches.min())}..{int(switches.max())}, "
                                 f"the plane has {h * w} positions",
                          hint="unpool with the geometry of the pool that made the switches")
    # Flat position in the (N, H·W, C) output of every pooled value (one int64 array, made in
    # place; the cache keeps the switches themselves, not this).
    index = switches + xp.arange(n, dtype=xp.int64)[:, None, None, None] * (h * w)
    index *= c
    index += xp.arange(c, dtype=xp.int64)
    a = unpool_attrs(attrs)
    if all(s >= k for s, k in zip(a["stride"], a["size"])):
        # Disjoint windows: every switch is a different pixel, plain writes.
        out = xp.zeros((n, h, w, c), dtype=values.dtype)
        out.reshape(-1)[index.ravel()] = values.ravel()
    else:   # overlapping windows may share a maximum: the values add up
        out = xp.bincount(index.ravel(), weights=values.ravel(), minlength=n * h * w * c)
        out = out.astype(values.dtype, copy=False).reshape(n, h, w, c)
    return out, (switches, len(inputs))


def _unpool_backward(ctx, attrs, params, cache, dout):
    switches, n_inputs = cache
    xp = ctx.xp
    n, _, _, c = switches.shape
    # Each pooled value moved to one place: read it back. The incoming gradient may be a
    # strided view (a conv's d(input) is a slice of its padded one): index its memory by
    # element offsets (row · stride + column · stride + ...) instead of a flat copy of it.
    # Two int64 arrays (row, column) and the result are all this allocates.
    step = [s // dout.itemsize for s in dout.strides]
    rows, cols = xp.divmod(switches, dout.shape[2])
    rows *= step[1]
    cols *= step[2]
    rows += cols
    del cols
    rows += (xp.arange(n, dtype=xp.int64) * step[0])[:, None, None, None]
    rows += xp.arange(c, dtype=xp.int64) * step[3]
    span = 1 + sum((d - 1) * s for d, s in zip(dout.shape, step))
    memory = xp.lib.stride_tricks.as_strided(dout, shape=(span,), strides=(dout.itemsize,))
    return [memory[rows]] + [None] * (n_inputs - 1), {}


def _unpool_make_inputs(rng, attrs, in_shapes, batch):
    """Values with no ties and switches from a real max pooling of the restored size."""
    import numpy as np
    from .base import Ctx
    h, w = unpool_out_hw(attrs, in_shapes)
    c = in_shapes[0][2]
    pool_attrs = unpool_attrs(attrs)
    ceil = out_size(h, pool_attrs["size"][0], pool_attrs["stride"][0], pool_attrs["pad"][0],
                    what="maxunpool") != in_shapes[0][0] or \
        out_size(w, pool_attrs["size"][1], pool_attrs["stride"][1], pool_attrs["pad"][1],
                 what="maxunpool") != in_shapes[0][1]
    x = rng.permutation(batch * h * w * c).reshape(batch, h, w, c).astype(np.float64)
    (_, switches), _ = _switch_forward(
        Ctx(xp=np), {"size": pool_attrs["size"], "stride": pool_attrs["stride"],
                     "pad": pool_attrs["pad"], "ceil": ceil}, {}, [x])
    values = rng.permutation(switches.size).reshape(switches.shape) / switches.size - 0.5
    extra = [rng.normal(size=(batch,) + tuple(s)) for s in in_shapes[2:]]
    return [values, switches] + extra


def _unpool_random(rng):
    ex = random_pool_example(rng, ("max",))
    h, w, c = ex["in_shapes"][0]
    a = ex["attrs"]
    ceil = a["ceil"]
    pooled = tuple(out_size(i, k, s, p, ceil=ceil, what="maxunpool")
                   for i, k, s, p in zip((h, w), a["size"], a["stride"], a["pad"]))
    attrs = {"size": a["size"], "stride": a["stride"], "pad": a["pad"]}
    shapes = [pooled + (c,), pooled + (c,)]
    mode = int(rng.integers(0, 3))
    if mode == 0:
        shapes.append((h, w, int(rng.integers(1, 3))))
    elif mode == 1:
        attrs["out"] = (h, w)
    elif not ceil:
        pass  # PyTorch's default size: (Ho − 1)·S − 2P + K
    else:
        shapes.append((h, w, 1))
    return {"attrs": attrs, "in_shapes": shapes}


def _unpool_footprint(st, n, it, training, scratch=True):
    """Forward: the flat index (int64) and the output; overlapping windows go through
    bincount (float64 weights and counts, then the cast). The cache keeps the switches (the
    second input)."""
    pooled = batch_bytes(n, st.node.in_shapes[0], 1)     # elements of the values
    out_e = batch_bytes(n, st.node.out_shapes[0], 1)
    a = unpool_attrs(st.node.attrs)
    if all(s >= k for s, k in zip(a["stride"], a["size"])):
        tmp = 8 * pooled
    else:
        tmp = 8 * pooled + max(8 * pooled + 8 * out_e, 8 * out_e + out_e * it) - out_e * it
    # backward: row and column (int64) at once, then the offsets (in the row array) and the
    # gathered values
    return Footprint(out=out_e * it, fwd_tmp=tmp, keep_in=(1,),
                     dx=(pooled * it,) + (0,) * (len(st.inputs) - 1),
                     bwd_tmp=max(16 * pooled, 8 * pooled + pooled * it) - pooled * it)


register(LayerSpec(
    name="maxunpool", doc="Max-unpooling: puts each value back where its switch says, zeros "
    "elsewhere; inputs values, switches [, a tensor of the size to restore].",
    aliases=("unpool", "max_unpool", "maxunpool2d", "unpooling"),
    args=(Arg("size", "pair", (2, 2), doc="the pool's window size", minimum=1),
          Arg("stride", "pair", AUTO, doc="the pool's stride (default: the size)", minimum=1),
          Arg("pad", "pair", (0, 0), doc="the pool's padding", minimum=0),
          Arg("out", "pair", "auto", doc="output HxW (default: the third input's, or "
              "(Ho−1)·S − 2P + K)", choices=("auto",), minimum=1)),
    infer_shape=_unpool_shape, forward=_unpool_forward, backward=_unpool_backward,
    inputs=(2, 3), compact=("size", "stride"), label=("size", "stride"), style=POOL_STYLE,
    resolve=resolve_pool, reference=naive.maxunpool, make_inputs=_unpool_make_inputs,
    example={"attrs": {"size": 2}, "in_shapes": [(2, 2, 2), (2, 2, 2), (5, 4, 1)]},
    examples=({"attrs": {"size": 2}, "in_shapes": [(2, 3, 2), (2, 3, 2)]},
              {"attrs": {"size": 3, "stride": 2, "pad": 1, "out": (6, 5)},
               "in_shapes": [(4, 3, 1), (4, 3, 1)]},
              {"attrs": {"size": 3, "stride": 1}, "in_shapes": [(2, 3, 2), (2, 3, 2)]}),
    random_example=_unpool_random,
    footprint=_unpool_footprint))
