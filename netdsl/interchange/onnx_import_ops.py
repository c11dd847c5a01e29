"""The ONNX operator handlers of ``netdsl import``: one function per ONNX op type, each
reading one node into netdsl layers (see :mod:`netdsl.interchange.onnx_import` for the layout kinds)."""
from __future__ import annotations

import numpy as np

from .onnx_import_shapes import SHAPE_HANDLERS
from .onnx_import_windows import Value, conv, conv_transpose, has_layer, needs, pool


def _fc_input(imp, node, index) -> tuple[int, tuple | None]:
    """(layer, chw) for an FC: a flattened map is read directly, rows permuted by the caller."""
    v = imp.values[node.input[0]]
    if v.kind == "chw":
        return v.layer, v.chw
    return imp.as_flat(node.input[0], node, index), None


def _rows_to_hwc(weight: np.ndarray, chw) -> np.ndarray:
    """(C·H·W, U) rows in ONNX Flatten order → netdsl's H·W·C order."""
    if chw is None:
        return weight
    c, h, w = chw
    return weight.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(c * h * w, -1)


def _fc_bias(imp, node, index, bias: np.ndarray, units: int) -> np.ndarray:
    """An FC bias of ``units`` values from a Gemm/Add constant, by ONNX's broadcasting rules
    against the (N, units) product: a scalar, (units,), (1, units) or (1, 1) broadcast alike;
    a bias with one row per sample (M, 1) or (M, units) is an FC bias only if its rows agree."""
    b = np.asarray(bias, np.float32)
    if b.ndim > 2:
        raise imp.error(f"adds a bias of shape {list(b.shape)} to an (N, {units}) product",
                        node, index)
    if b.ndim == 2 and b.shape[0] != 1:
        if not (b == b[:1]).all():
            raise imp.error(f"its bias of shape {list(b.shape)} differs between the rows (the "
                            "samples) of the batch; netdsl's FC adds one bias to every sample",
                            node, index)
        b = b[:1]
    row = b.reshape(b.shape[-1:] if b.ndim else (1,))
    if row.shape[0] not in (1, units):
        raise imp.error(f"its bias of shape {list(b.shape)} does not broadcast to (N, {units})",
                        node, index)
    return np.broadcast_to(row, (units,)).astype(np.float32)


def _rank2(imp, node, index, what: str) -> None:
    dims = imp.shapes.get(node.input[0])
    if dims is not None and len(dims) != 2:
        raise imp.error(f"multiplies a {len(dims)}-D tensor; netdsl imports {what} of an "
                        "(N, F) matrix by a constant (F, U) weight (an FC)", node, index)


def _gemm(imp, node, index, a):
    if a.get("transA", 0):
        raise imp.error("transposes its input (transA=1): the batch would be mixed", node,
                        index)
    src, chw = _fc_input(imp, node, index)
    b = imp.const(node.input[1], node, index, "the weight")
    w = (b.T if a.get("transB", 0) else b) * np.float32(a.get("alpha", 1.0))
    params = {"weight": _rows_to_hwc(np.ascontiguousarray(w, np.float32), chw)}
    if len(node.input) > 2 and node.input[2]:
        bias = imp.const(node.input[2], node, index, "the bias") * np.float32(a.get("beta", 1.0))
        params["bias"] = _fc_bias(imp, node, index, bias, w.shape[1])
    layer = imp.add("fc", {"units": w.shape[1], "bias": "bias" in params}, [src], params,
                    node.name)
    imp.values[node.output[0]] = Value(layer, "flat")


def _matmul(imp, node, index, a):
    _rank2(imp, node, index, "MatMul")
    src, chw = _fc_input(imp, node, index)
    w = imp.const(node.input[1], node, index, "the weight (second input)")
    if w.ndim != 2:
        raise imp.error(f"its weight has shape {list(w.shape)}; netdsl imports MatMul by a 2-D "
                        "constant (an FC)", node, index)
    params = {"weight": _rows_to_hwc(np.asarray(w, np.float32), chw)}
    layer = imp.add("fc", {"units": w.shape[1], "bias": False}, [src], params, node.name)
    imp.values[node.output[0]] = Value(layer, "flat")


def _add(imp, node, index, a):
    consts = [n for n in node.input if n in imp.consts]
    if consts:   # MatMul + Add(bias): the FC's bias
        other = [n for n in node.input if n not in imp.consts]
        v = imp.values[other[0]] if len(other) == 1 else None
        fc = imp.layers[v.layer] if v is not None and v.kind == "flat" else None
        if fc is None or fc.op != "fc":
            raise imp.error("adds a constant to something other than a MatMul or Gemm "
                            "(netdsl adds constants only as an FC's bias)", node, index)
        if imp.readers[other[0]] != 1:   # the product without the bias is read elsewhere
            raise imp.error(f"adds a bias to '{other[0]}', which other nodes also read "
                            "without it", node, index)
        bias = _fc_bias(imp, node, index, imp.consts[consts[0]], fc.args["units"])
        fc.params["bias"] = fc.params.get("bias", 0) + bias
        fc.args["bias"] = True
        imp.values[node.output[0]] = v
        return
    _join(imp, node, index, "add")


def _join(imp, node, index, op):
    vals = [imp.values[n] for n in node.input]
    if len(vals) == 1:   # a join of one input (a one-element torch.cat) passes it on
        imp.values[node.output[0]] = vals[0]
        return
    if op == "concat":
        axis = imp.attrs(node).get("axis", 1)
        rank = 4 if vals[0].kind in ("map", "chw") else 2
        if axis % rank != 1:
            raise imp.error(f"joins along axis {axis}; netdsl concatenates channels", node,
                            index)
    kinds = {v.kind for v in vals}
    if kinds == {"map"} or (op == "add" and len(kinds) == 1 and kinds <= {"chw"}
                            and len({v.chw for v in vals}) == 1):
        kind, ins = vals[0].kind, [v.layer for v in vals]
    else:
        kind, ins = "flat", [imp.as_flat(n, node, index) for n in node.input]
    layer = imp.add(op, {}, ins, hint=node.name)
    imp.values[node.output[0]] = Value(layer, kind, vals[0].chw if kind == "chw" else ())


def _elementwise(op: str):
    def handle(imp, node, index, a):
        v = imp.values[node.input[0]]   # commutes with flattening: apply it to the map
        layer = imp.add(op, {}, [v.layer], hint=node.name)
        imp.values[node.output[0]] = Value(layer, v.kind, v.chw)
    return handle


def _batchnorm(imp, node, index, a):
    v = imp.values[node.input[0]]
    if v.kind == "nhwc":
        raise imp.error("normalises a channel-last (transposed) map over its rows", node, index)
    if v.kind not in ("map", "flat"):
        v = Value(imp.as_flat(node.input[0], node, index), "flat")
    if a.get("training_mode", 0) or any(node.output[1:]):
        raise imp.error("normalises with the batch's own statistics (training_mode=1), which "
                        "inference with netdsl would not reproduce", node, index,
                        hint="export the model in eval mode (model.eval())")
    names = ("gamma", "beta", "running_mean", "running_var")
    params = {k: imp.const(n, node, index, k).astype(np.float32)
              for k, n in zip(names, node.input[1:5])}
    args = {"eps": float(a.get("epsilon", 1e-5)), "momentum": 1.0 - float(a.get("momentum", 0.9))}
    imp.values[node.output[0]] = Value(imp.add("batchnorm", args, [v.layer], params, node.name),
                                       v.kind, v.chw)


def _dropout(imp, node, index, a):
    rate = a.get("ratio", 0.5)
    if len(node.input) > 1 and node.input[1]:
        rate = float(imp.const(node.input[1], node, index, "the ratio"))
    v = imp.values[node.input[0]]
    layer = imp.add("dropout", {"rate": float(rate)}, [v.layer], hint=node.name)
    imp.values[node.output[0]] = Value(layer, v.kind, v.chw)


def _identity(imp, node, index, a):
    imp.values[node.output[0]] = imp.values[node.input[0]]


def _softmax(imp, node, index, a):
    v = imp.values[node.input[0]]
    dims = imp.shapes.get(node.input[0]) or [None] * (4 if v.kind in ("map", "nhwc") else 2)
    # Before opset 13, Softmax flattens from its axis (default 1) and normalises all of that.
    axis = a.get("axis", -1 if imp.opset >= 13 else 1) % len(dims)
    over_channels = axis == 1 and (
        v.kind in ("flat", "gap") or v.kind == "chw" and v.chw[1] * v.chw[2] == 1 or
        v.kind == "map" and (imp.opset >= 13 or dims[2:] == [1, 1]))
    if not over_channels:
        raise imp.error(f"normalises over axis {axis} of a {len(dims)}-D tensor (opset "
                        f"{imp.opset}); netdsl has a softmax over channels only", node, index)
    if node.output[0] in {o.name for o in imp.graph.output} and v.kind != "map":
        imp.values[node.output[0]] = v
        imp.notes.append(f"the final Softmax '{node.name}' was dropped: netdsl's loss applies "
                         "it, and predict prints probabilities")
        return
    if not has_layer("softmax"):
        raise imp.error("a softmax inside the network has no netdsl layer", node, index)
    layer = imp.add("softmax", {}, [v.layer], hint=node.name)
    imp.values[node.output[0]] = Value(layer, v.kind, v.chw)


def _leakyrelu(imp, node, index, a):
    needs(imp, node, index, "leakyrelu")
    v = imp.values[node.input[0]]
    layer = imp.add("leakyrelu", {"slope": float(a.get("alpha", 0.01))}, [v.layer],
                    hint=node.name)
    imp.values[node.output[0]] = Value(layer, v.kind, v.chw)


def _lrn(imp, node, index, a):
    needs(imp, node, index, "lrn")
    x = imp.as_map(node.input[0], node, index)
    if a["size"] % 2 == 0:
        raise imp.error(f"an LRN window of even size {a['size']} is centred differently in "
                        "netdsl", node, index)
    args = {"size": int(a["size"]), "alpha": float(a.get("alpha", 1e-4)),
            "beta": float(a.get("beta", 0.75)), "k": float(a.get("bias", 1.0))}
    imp.values[node.output[0]] = Value(imp.add("lrn", args, [x.layer], hint=node.name), "map")


def crop_slice(imp, node, index, a):
    """A centred crop of H and W (what netdsl's exporter writes for CROP)."""
    needs(imp, node, index, "crop")
    x = imp.as_map(node.input[0], node, index)
    starts, ends = (imp.const(n, node, index, "the slice bounds").tolist()
                    for n in node.input[1:3])
    axes = imp.const(node.input[3], node, index, "the axes").tolist() if len(node.input) > 3 \
        else list(range(len(starts)))
    steps = imp.const(node.input[4], node, index, "the steps").tolist() \
        if len(node.input) > 4 and node.input[4] else [1] * len(starts)
    _, h, w = imp.chw_of(node.input[0], node, index)
    box = {2: (0, h), 3: (0, w)}
    for ax, st, en, sp in zip(axes, starts, ends, steps):
        if ax % 4 not in box or sp != 1:
            raise imp.error("slices other than a crop of height and width have no netdsl "
                            "layer", node, index)
        n = box[ax % 4][1]
        box[ax % 4] = (max(0, st + n if st < 0 else st), min(n, en + n if en < 0 else en))
    (top, bottom), (left, right) = box[2], box[3]
    th, tw = bottom - top, right - left
    if (top, left) != ((h - th) // 2, (w - tw) // 2):
        raise imp.error(f"crops rows {top}:{bottom}, columns {left}:{right} of {h}×{w}; "
                        "netdsl's CROP takes the centre", node, index)
    layer = imp.add("crop", {"size": (th, tw)}, [x.layer], hint=node.name)
    imp.values[node.output[0]] = Value(layer, "map")


HANDLERS = {
    "Conv": conv, "MaxPool": pool("maxpool"), "AveragePool": pool("avgpool"),
    **SHAPE_HANDLERS, "Gemm": _gemm, "MatMul": _matmul, "Add": _add,
    "Sum": lambda imp, node, index, a: _join(imp, node, index, "add"),
    "Concat": lambda imp, node, index, a: _join(imp, node, index, "concat"),
    "Relu": _elementwise("relu"), "Tanh": _elementwise("tanh"),
    "Sigmoid": _elementwise("sigmoid"), "BatchNormalization": _batchnorm,
    "Dropout": _dropout, "Identity": _identity, "Softmax": _softmax,
    "LeakyRelu": _leakyrelu, "LRN": _lrn, "ConvTranspose": conv_transpose, "Slice": crop_slice,
}
