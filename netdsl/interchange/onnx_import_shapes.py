"""The shape operators of ``netdsl import``: global pooling (GlobalAveragePool, ReduceMean over
H and W), Flatten, Reshape, Squeeze, Unsqueeze and Transpose. netdsl has no general reshape;
these nodes only change a value's layout kind (see :mod:`netdsl.interchange.onnx_import`), and
any reshape that would move numbers between positions netdsl cannot name is refused."""
from __future__ import annotations

import numpy as np

from .onnx_import_windows import Value, needs


def global_pool(imp, node, index, a):
    """GlobalAveragePool → GAP (an N×C×1×1 value)."""
    x = imp.as_map(node.input[0], node, index)
    imp.values[node.output[0]] = Value(imp.add("gap", {}, [x.layer], hint=node.name), "gap")


def _axes(imp, node, index, a, rank: int) -> list | None:
    """The node's axes (attribute before opset 13/18, second input after), normalised."""
    if "axes" in a:
        axes = list(a["axes"])
    elif len(node.input) > 1 and node.input[1]:
        axes = imp.const(node.input[1], node, index, "the axes").reshape(-1).tolist()
    else:
        return None
    return sorted(int(x) % rank for x in axes)


def reduce_mean(imp, node, index, a):
    """ReduceMean over H and W → GAP (the mean of each channel), with or without keepdims."""
    dims = imp.shapes.get(node.input[0]) or []
    axes = _axes(imp, node, index, a, max(len(dims), 1))
    if len(dims) != 4 or axes != [2, 3]:
        raise imp.error(f"averages over axes {axes if axes is not None else 'all'} of a "
                        f"{len(dims)}-D tensor; netdsl imports only the mean over H and W of "
                        "an N×C×H×W map (global average pooling)", node, index)
    x = imp.as_map(node.input[0], node, index)
    layer = imp.add("gap", {}, [x.layer], hint=node.name)
    imp.values[node.output[0]] = Value(layer, "gap" if a.get("keepdims", 1) else "flat")


def flatten(imp, node, index, a):
    """Flatten from axis 1: a layout change (see flatten_value)."""
    v = imp.values[node.input[0]]
    if a.get("axis", 1) % max(len(imp.shapes.get(node.input[0]) or [0, 0]), 1) != 1:
        raise imp.error(f"flattens from axis {a['axis']}; netdsl keeps the batch axis only",
                        node, index)
    flatten_value(imp, node, index, v)


def flatten_value(imp, node, index, v: Value):
    """Record ``node``'s output as the (N, features) flattening of value ``v``."""
    if v.kind == "map":
        imp.values[node.output[0]] = Value(v.layer, "chw", imp.chw_of(node.input[0], node, index))
    elif v.kind == "nhwc":
        imp.values[node.output[0]] = Value(imp.add("flatten", {}, [v.layer], hint=node.name),
                                           "flat")
    elif v.kind == "gap":
        imp.values[node.output[0]] = Value(v.layer, "flat")
    else:
        imp.values[node.output[0]] = v


def _target(imp, node, index, dims: list, shape: list, allowzero: bool) -> list:
    """The sizes after the batch axis that Reshape gives, or a refusal when the batch axis
    does not stay the first axis of its own (a reshape that mixes samples)."""
    if allowzero and 0 in shape:
        raise imp.error(f"reshapes to {shape} with allowzero=1 (an empty tensor)", node, index)
    target = shape
    shape = [dims[i] if s == 0 and i < len(dims) else s for i, s in enumerate(shape)]
    features = int(np.prod(dims[1:]))
    rest = shape[1:]
    if shape[0] == -1:
        keeps = -1 not in rest and int(np.prod(rest)) == features
    else:   # the batch copied (0), or the batch size the model was exported with
        keeps = (target[:1] == [0] or shape[0] == dims[0] and dims[0] is not None) and \
            rest.count(-1) <= 1
        if keeps and -1 in rest:
            known = int(np.prod([s for s in rest if s != -1]))
            keeps = known > 0 and features % known == 0
            rest = [features // known if s == -1 else s for s in rest]
        keeps = keeps and int(np.prod(rest)) == features
    if not keeps or not shape:
        raise imp.error(f"reshapes {dims} to {target}, which mixes samples of the batch; netdsl "
                        "imports only reshapes that keep the batch axis first", node, index)
    return [int(s) for s in rest]


def reshape(imp, node, index, a):
    """Reshape: a flatten to (N, F), N×C×1×1 ↔ (N, C), no change, or the two reshapes of a
    channel shuffle (N, g, C/g, H, W), transposed, back to (N, C, H, W) → SHUFFLE(g);
    anything else refused."""
    shape = [int(s) for s in imp.const(node.input[1], node, index, "the target shape")]
    dims = imp.shapes.get(node.input[0]) or []
    if not dims or None in dims[1:]:
        raise imp.error(f"the shape of '{node.input[0]}' is not known", node, index,
                        hint="run onnx.shape_inference or export with fixed sizes")
    v = imp.values[node.input[0]]
    rest = _target(imp, node, index, dims, shape, bool(a.get("allowzero", 0)))
    if rest == list(dims[1:]):
        imp.values[node.output[0]] = v
    elif len(rest) == 1:
        flatten_value(imp, node, index, v)
    elif len(rest) == 3 and rest[1:] == [1, 1] and len(dims) == 2:
        imp.values[node.output[0]] = Value(imp.as_flat(node.input[0], node, index), "gap")
    elif v.kind == "map" and len(rest) == 4 and rest[2:] == list(dims[2:]) and len(dims) == 4:
        # a channel shuffle begins: the channels seen as a g × C/g grid
        imp.values[node.output[0]] = Value(v.layer, "grid", (rest[0],))
    elif v.kind == "grid_t" and len(rest) == 3 and rest == [dims[1] * dims[2], *dims[3:]]:
        needs(imp, node, index, "shuffle")   # ... and ends, the grid transposed
        layer = imp.add("shuffle", {"groups": v.chw[0]}, [v.layer], hint=node.name)
        imp.values[node.output[0]] = Value(layer, "map")
    else:
        raise imp.error(f"reshapes {dims} to {shape}; netdsl imports only reshapes that "
                        "flatten to (N, -1) or add or remove 1×1 spatial axes", node, index)


def squeeze(imp, node, index, a):
    """Squeeze of the 1×1 spatial axes of an N×C×1×1 value: a flatten."""
    dims = imp.shapes.get(node.input[0]) or []
    axes = _axes(imp, node, index, a, max(len(dims), 1))
    if len(dims) != 4 or dims[2:] != [1, 1] or axes not in ([2, 3], None) or \
            axes is None and dims[0] == 1:
        raise imp.error(f"squeezes axes {axes if axes is not None else 'of size 1'} of a "
                        f"{dims} tensor; netdsl imports only the squeeze of the 1×1 spatial "
                        "axes of an N×C×1×1 value", node, index)
    flatten_value(imp, node, index, imp.values[node.input[0]])


def unsqueeze(imp, node, index, a):
    """Unsqueeze of an (N, C) vector to N×C×1×1."""
    dims = imp.shapes.get(node.input[0]) or []
    axes = _axes(imp, node, index, a, len(dims) + 2)
    if len(dims) != 2 or axes != [2, 3]:
        raise imp.error(f"unsqueezes axes {axes} of a {len(dims)}-D tensor; netdsl imports "
                        "only (N, C) → N×C×1×1", node, index)
    imp.values[node.output[0]] = Value(imp.as_flat(node.input[0], node, index), "gap")


def transpose(imp, node, index, a):
    """Transpose NCHW → NHWC, as written before a Flatten."""
    v = imp.values[node.input[0]]
    if v.kind == "grid" and list(a.get("perm", [])) == [0, 2, 1, 3, 4]:
        imp.values[node.output[0]] = Value(v.layer, "grid_t", v.chw)   # see reshape
        return
    if v.kind == "gap" and list(a.get("perm", [])) == [0, 2, 3, 1]:
        imp.values[node.output[0]] = v      # N×C×1×1 → N×1×1×C: the same numbers in order
        return
    v = imp.as_map(node.input[0], node, index)
    if list(a.get("perm", [])) != [0, 2, 3, 1]:
        raise imp.error(f"transposes with perm {list(a.get('perm', []))}; netdsl imports only "
                        "the NCHW → NHWC transpose before a Flatten", node, index)
    imp.values[node.output[0]] = Value(v.layer, "nhwc", imp.chw_of(node.input[0], node, index))


SHAPE_HANDLERS = {
    "GlobalAveragePool": global_pool, "ReduceMean": reduce_mean, "Flatten": flatten,
    "Reshape": reshape, "Squeeze": squeeze, "Unsqueeze": unsqueeze, "Transpose": transpose,
}
