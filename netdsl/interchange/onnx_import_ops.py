"""The ONNX operator handlers of ``netdsl import``: one function per ONNX op type, each
reading one node into netdsl layers (see :mod:`netdsl.interchange.onnx_import` for the layout kinds)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Value:
    """An ONNX tensor as netdsl sees it: the layer producing it and its layout kind."""

    layer: int
    kind: str                           # map | flat | chw | gap | nhwc
    chw: tuple = ()                     # (C, H, W) of the map behind a chw/nhwc value


def _pads(imp, node, index, a, kernel) -> tuple:
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "VALID":
        return (0, 0)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if any(k % 2 == 0 for k in kernel) or any(s != 1 for s in a.get("strides", [1, 1])):
            raise imp.error(f"auto_pad={auto} with this kernel/stride pads unevenly", node,
                            index, hint="netdsl pads the same on both sides")
        return tuple((k - 1) // 2 for k in kernel)
    p = list(a.get("pads", [0, 0, 0, 0]))
    if len(p) != 4 or p[0] != p[2] or p[1] != p[3]:
        raise imp.error(f"pads {p} are not the same on both sides", node, index,
                        hint="netdsl pads symmetrically; pad the input explicitly instead")
    return (int(p[0]), int(p[1]))


def _conv(imp, node, index, a):
    x = imp.as_map(node.input[0], node, index)
    w = imp.const(node.input[1], node, index, "the weight")
    f, cg, kh, kw = w.shape
    dil = tuple(a.get("dilations", [1, 1]))
    params = {"weight": np.transpose(w, (2, 3, 1, 0))}   # (F, C/g, KH, KW) → (KH, KW, C/g, F)
    if len(node.input) > 2 and node.input[2]:
        params["bias"] = imp.const(node.input[2], node, index, "the bias")
    args = {"filters": f, "kernel": (kh, kw), "stride": tuple(a.get("strides", [1, 1])),
            "pad": _pads(imp, node, index, a, (kh, kw)), "dilation": dil,
            "groups": int(a.get("group", 1)), "bias": "bias" in params}
    layer = imp.add("conv", args, [x.layer], params, node.name)
    imp.values[node.output[0]] = Value(layer, "map")


def _pool_rounding(imp, node, index, a, op, kernel, strides) -> tuple:
    """(pad, ceil) for netdsl that give the size ONNX computes. ONNX's ceil_mode has no
    last-window rule, and netdsl's exporter writes a max pool that needs one more window on
    one axis only as extra end padding; both are recognised by trying floor and ceil."""
    p = list(a.get("pads", [0, 0, 0, 0]))
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or len(p) != 4:
        return _pads(imp, node, index, a, kernel), bool(a.get("ceil_mode", 0))
    begin, extra = (p[0], p[1]), (p[2] - p[0], p[3] - p[1])
    if min(extra) < 0 or (max(extra) > 0 and op != "maxpool"):
        _pads(imp, node, index, a, kernel)   # the uneven-padding error
    sizes = imp.chw_of(node.input[0], node, index)[1:]
    want = imp.chw_of(node.output[0], node, index)[1:]
    for ceil in (bool(a.get("ceil_mode", 0)), not a.get("ceil_mode", 0)):
        got = []
        for n, k, s, b in zip(sizes, kernel, strides, begin):
            span = n + 2 * b - k
            out = (-(-span // s) if ceil else span // s) + 1
            if ceil and (out - 1) * s >= n + b:
                out -= 1
            got.append(out)
        # Extra end padding must only add the overhanging window ceil rounding gives.
        if got == list(want) and all(e < s for e, s in zip(extra, strides)) and \
                (ceil or max(extra) == 0):
            return begin, ceil
    raise imp.error(f"rounds its output to {list(want)} from {list(sizes)} in a way netdsl's "
                    "pooling cannot reproduce", node, index,
                    hint="netdsl pads evenly and rounds up only while a window starts inside "
                         "the input or its left padding")


def _pool(op: str):
    def handle(imp, node, index, a):
        x = imp.as_map(node.input[0], node, index)
        if any(d != 1 for d in a.get("dilations", [1, 1])) or len(node.output) > 1 and \
                node.output[1]:
            raise imp.error("dilated pooling and pooling indices have no netdsl layer", node,
                            index)
        kernel = tuple(a["kernel_shape"])
        strides = tuple(a.get("strides", [1, 1]))
        pad, ceil = _pool_rounding(imp, node, index, a, op, kernel, strides)
        args = {"size": kernel, "stride": strides, "pad": tuple(pad), "ceil": ceil}
        if op == "avgpool" and not a.get("count_include_pad", 0) and (pad != (0, 0) or ceil):
            if not _has_arg("avgpool", "count_include_pad"):
                raise imp.error("averages without counting padding (count_include_pad=0)",
                                node, index,
                                hint="netdsl's AVGPOOL divides by the padded window size")
            args["count_include_pad"] = False
        imp.values[node.output[0]] = Value(imp.add(op, args, [x.layer], hint=node.name), "map")
    return handle


def _global_pool(imp, node, index, a):
    x = imp.as_map(node.input[0], node, index)
    imp.values[node.output[0]] = Value(imp.add("gap", {}, [x.layer], hint=node.name), "gap")


def _flatten(imp, node, index, a):
    v = imp.values[node.input[0]]
    if a.get("axis", 1) != 1:
        raise imp.error(f"flattens from axis {a['axis']}; netdsl keeps the batch axis only",
                        node, index)
    _flatten_value(imp, node, index, v)


def _flatten_value(imp, node, index, v: Value):
    if v.kind == "map":
        imp.values[node.output[0]] = Value(v.layer, "chw", imp.chw_of(node.input[0], node, index))
    elif v.kind == "nhwc":
        imp.values[node.output[0]] = Value(imp.add("flatten", {}, [v.layer], hint=node.name),
                                           "flat")
    elif v.kind == "gap":
        imp.values[node.output[0]] = Value(v.layer, "flat")
    else:
        imp.values[node.output[0]] = v


def _reshape(imp, node, index, a):
    shape = [int(s) for s in imp.const(node.input[1], node, index, "the target shape")]
    dims = imp.shapes.get(node.input[0]) or []
    features = int(np.prod(dims[1:])) if dims and None not in dims[1:] else None
    if len(shape) != 2 or not (shape[1] in (-1, features) or shape[0] in (0, -1)):
        raise imp.error(f"reshapes to {shape}; netdsl imports only flattening reshapes "
                        "to (N, -1)", node, index)
    _flatten_value(imp, node, index, imp.values[node.input[0]])


def _transpose(imp, node, index, a):
    v = imp.as_map(node.input[0], node, index)
    if list(a.get("perm", [])) != [0, 2, 3, 1]:
        raise imp.error(f"transposes with perm {list(a.get('perm', []))}; netdsl imports only "
                        "the NCHW → NHWC transpose before a Flatten", node, index)
    imp.values[node.output[0]] = Value(v.layer, "nhwc", imp.chw_of(node.input[0], node, index))


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


def _gemm(imp, node, index, a):
    if a.get("transA", 0):
        raise imp.error("transposes its input (transA=1)", node, index)
    src, chw = _fc_input(imp, node, index)
    b = imp.const(node.input[1], node, index, "the weight")
    w = (b.T if a.get("transB", 0) else b) * np.float32(a.get("alpha", 1.0))
    params = {"weight": _rows_to_hwc(np.ascontiguousarray(w, np.float32), chw)}
    if len(node.input) > 2 and node.input[2]:
        bias = imp.const(node.input[2], node, index, "the bias") * np.float32(a.get("beta", 1.0))
        params["bias"] = np.broadcast_to(bias.reshape(-1), (w.shape[1],)).astype(np.float32)
    layer = imp.add("fc", {"units": w.shape[1], "bias": "bias" in params}, [src], params,
                    node.name)
    imp.values[node.output[0]] = Value(layer, "flat")


def _matmul(imp, node, index, a):
    src, chw = _fc_input(imp, node, index)
    w = imp.const(node.input[1], node, index, "the weight (second input)")
    params = {"weight": _rows_to_hwc(np.asarray(w, np.float32), chw)}
    layer = imp.add("fc", {"units": w.shape[1], "bias": False}, [src], params, node.name)
    imp.values[node.output[0]] = Value(layer, "flat")


def _add(imp, node, index, a):
    consts = [n for n in node.input if n in imp.consts]
    if consts:   # MatMul + Add(bias): the FC's bias
        other = [n for n in node.input if n not in imp.consts]
        v = imp.values[other[0]] if len(other) == 1 else None
        fc = imp.layers[v.layer] if v is not None else None
        if fc is None or fc.op != "fc" or fc.args["bias"]:
            raise imp.error("adds a constant to something other than a MatMul", node, index)
        fc.params["bias"] = np.broadcast_to(imp.consts[consts[0]].reshape(-1).astype(
            np.float32), (fc.args["units"],)).copy()
        fc.args["bias"] = True
        imp.values[node.output[0]] = v
        return
    _join(imp, node, index, "add")


def _join(imp, node, index, op):
    vals = [imp.values[n] for n in node.input]
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
    outputs = {o.name for o in imp.graph.output}
    if node.output[0] not in outputs:
        v = imp.values[node.input[0]]
        rank = 4 if v.kind in ("map", "chw") else 2
        if not _has_layer("softmax") or v.kind == "chw" or a.get("axis", -1) % rank != 1:
            raise imp.error("a softmax inside the network (other than over channels) has no "
                            "netdsl layer", node, index)
        layer = imp.add("softmax", {}, [v.layer], hint=node.name)
        imp.values[node.output[0]] = Value(layer, v.kind)
        return
    imp.values[node.output[0]] = imp.values[node.input[0]]
    imp.notes.append(f"the final Softmax '{node.name}' was dropped: netdsl's loss applies it, "
                     "and predict prints probabilities")


def _constant(imp, node, index, a):
    imp.consts[node.output[0]] = imp.np.to_array(a["value"]) if "value" in a else \
        np.asarray(next(iter(a.values())))


def _has_layer(op: str) -> bool:
    from ..layers import lookup
    return lookup(op) is not None


def _has_arg(op: str, arg: str) -> bool:
    from ..layers import lookup
    spec = lookup(op)
    return spec is not None and any(a.name == arg for a in spec.args)


def _needs(imp, node, index, op: str) -> None:
    if not _has_layer(op):
        raise imp.error("has no netdsl layer", node, index)


def _leakyrelu(imp, node, index, a):
    _needs(imp, node, index, "leakyrelu")
    v = imp.values[node.input[0]]
    layer = imp.add("leakyrelu", {"slope": float(a.get("alpha", 0.01))}, [v.layer],
                    hint=node.name)
    imp.values[node.output[0]] = Value(layer, v.kind, v.chw)


def _lrn(imp, node, index, a):
    _needs(imp, node, index, "lrn")
    x = imp.as_map(node.input[0], node, index)
    if a["size"] % 2 == 0:
        raise imp.error(f"an LRN window of even size {a['size']} is centred differently in "
                        "netdsl", node, index)
    args = {"size": int(a["size"]), "alpha": float(a.get("alpha", 1e-4)),
            "beta": float(a.get("beta", 0.75)), "k": float(a.get("bias", 1.0))}
    imp.values[node.output[0]] = Value(imp.add("lrn", args, [x.layer], hint=node.name), "map")


def _conv_transpose(imp, node, index, a):
    _needs(imp, node, index, "deconv")
    x = imp.as_map(node.input[0], node, index)
    w = imp.const(node.input[1], node, index, "the weight")
    c, fg, kh, kw = w.shape
    g = int(a.get("group", 1))
    if a.get("output_shape") or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise imp.error("sets output_shape or auto_pad; netdsl needs explicit pads", node,
                        index)
    # (C, F/g, KH, KW) → (KH, KW, C/g, F): inverse of the exporter's rearrangement.
    weight = w.reshape(g, c // g, fg, kh, kw).transpose(3, 4, 1, 0, 2).reshape(
        kh, kw, c // g, g * fg)
    params = {"weight": np.ascontiguousarray(weight)}
    if len(node.input) > 2 and node.input[2]:
        params["bias"] = imp.const(node.input[2], node, index, "the bias")
    args = {"filters": g * fg, "kernel": (kh, kw), "stride": tuple(a.get("strides", [1, 1])),
            "pad": _pads(imp, node, index, a, (kh, kw)),
            "output_padding": tuple(a.get("output_padding", [0, 0])),
            "dilation": tuple(a.get("dilations", [1, 1])), "groups": g, "bias": "bias" in params}
    layer = imp.add("deconv", args, [x.layer], params, node.name)
    imp.values[node.output[0]] = Value(layer, "map")


def _slice(imp, node, index, a):
    """A centred crop of H and W (what netdsl's exporter writes for CROP)."""
    _needs(imp, node, index, "crop")
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
    "Conv": _conv, "MaxPool": _pool("maxpool"), "AveragePool": _pool("avgpool"),
    "GlobalAveragePool": _global_pool, "Flatten": _flatten, "Reshape": _reshape,
    "Transpose": _transpose, "Gemm": _gemm, "MatMul": _matmul, "Add": _add,
    "Sum": lambda imp, node, index, a: _join(imp, node, index, "add"),
    "Concat": lambda imp, node, index, a: _join(imp, node, index, "concat"),
    "Relu": _elementwise("relu"), "Tanh": _elementwise("tanh"),
    "Sigmoid": _elementwise("sigmoid"), "BatchNormalization": _batchnorm,
    "Dropout": _dropout, "Identity": _identity, "Softmax": _softmax, "Constant": _constant,
    "LeakyRelu": _leakyrelu, "LRN": _lrn, "ConvTranspose": _conv_transpose, "Slice": _slice,
}
