"""The windowed ONNX operators of ``netdsl import`` (Conv, ConvTranspose, the pools) and
their padding rules, with the :class:`Value` every handler produces (see
:mod:`netdsl.interchange.onnx_import` for the layout kinds)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Value:
    """An ONNX tensor as netdsl sees it: the layer producing it and its layout kind."""

    layer: int
    kind: str                           # map | flat | chw | gap | nhwc
    chw: tuple = ()                     # (C, H, W) of the map behind a chw/nhwc value


def has_layer(op: str) -> bool:
    """Whether this netdsl has a layer named ``op``."""
    from ..layers import lookup
    return lookup(op) is not None


def has_arg(op: str, arg: str) -> bool:
    """Whether layer ``op`` takes argument ``arg``."""
    from ..layers import lookup
    spec = lookup(op)
    return spec is not None and any(a.name == arg for a in spec.args)


def needs(imp, node, index, op: str) -> None:
    """Refuse the node when this netdsl has no layer ``op``."""
    if not has_layer(op):
        raise imp.error("has no netdsl layer", node, index)


def explicit_pads(imp, node, index, a, kernel) -> list:
    """ONNX's [top, left, bottom, right] for a node, SAME_UPPER/SAME_LOWER worked out from the
    input size as ONNX defines them: output ceil(n / stride), the odd pixel at the end (UPPER)
    or at the start (LOWER)."""
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "VALID":
        return [0, 0, 0, 0]
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        sizes = imp.chw_of(node.input[0], node, index)[1:]
        strides = a.get("strides", [1, 1])
        dilations = a.get("dilations", [1, 1])
        begin, end = [], []
        for n, k, st, d in zip(sizes, kernel, strides, dilations):
            total = max((-(-n // st) - 1) * st + (k - 1) * d + 1 - n, 0)
            small = total // 2
            begin.append(small if auto == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
        return [*begin, *end]
    return [int(v) for v in a.get("pads", [0, 0, 0, 0])]


def pads(imp, node, index, a, kernel) -> tuple:
    """netdsl's symmetric (pad H, pad W) for a node's pads/auto_pad, or a located refusal."""
    p = explicit_pads(imp, node, index, a, kernel)
    if len(p) != 4 or p[0] != p[2] or p[1] != p[3]:
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        why = f"auto_pad={auto} on this input size works out as pads {p}, which are" \
            if auto != "NOTSET" else f"pads {p} are"
        raise imp.error(f"{why} not the same on both sides", node, index,
                        hint="netdsl pads symmetrically; pad the input explicitly instead")
    return (int(p[0]), int(p[1]))


def conv(imp, node, index, a):
    """Conv → CONV (weights to KH×KW×C/g×F)."""
    x = imp.as_map(node.input[0], node, index)
    w = imp.const(node.input[1], node, index, "the weight")
    f, cg, kh, kw = w.shape
    dil = tuple(a.get("dilations", [1, 1]))
    params = {"weight": np.transpose(w, (2, 3, 1, 0))}   # (F, C/g, KH, KW) → (KH, KW, C/g, F)
    if len(node.input) > 2 and node.input[2]:
        params["bias"] = imp.const(node.input[2], node, index, "the bias")
    args = {"filters": f, "kernel": (kh, kw), "stride": tuple(a.get("strides", [1, 1])),
            "pad": pads(imp, node, index, a, (kh, kw)), "dilation": dil,
            "groups": int(a.get("group", 1)), "bias": "bias" in params}
    layer = imp.add("conv", args, [x.layer], params, node.name)
    imp.values[node.output[0]] = Value(layer, "map")


def pool_rounding(imp, node, index, a, op, kernel, strides) -> tuple:
    """(pad, ceil) for netdsl that give the size ONNX computes. ONNX's ceil_mode has no
    last-window rule, and netdsl's exporter writes a max pool that needs one more window on
    one axis only as extra end padding; both are recognised by trying floor and ceil."""
    p = explicit_pads(imp, node, index, a, kernel)
    if len(p) != 4:
        return pads(imp, node, index, a, kernel), bool(a.get("ceil_mode", 0))
    begin, extra = (p[0], p[1]), (p[2] - p[0], p[3] - p[1])
    if min(extra) < 0 or (max(extra) > 0 and op != "maxpool"):
        pads(imp, node, index, a, kernel)   # the uneven-padding error
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


def pool(op: str):
    """The handler of MaxPool or AveragePool (``op`` is the netdsl layer)."""
    def handle(imp, node, index, a):
        x = imp.as_map(node.input[0], node, index)
        if any(d != 1 for d in a.get("dilations", [1, 1])) or len(node.output) > 1 and \
                node.output[1]:
            raise imp.error("dilated pooling and pooling indices have no netdsl layer", node,
                            index)
        kernel = tuple(a["kernel_shape"])
        strides = tuple(a.get("strides", [1, 1]))
        pad, ceil = pool_rounding(imp, node, index, a, op, kernel, strides)
        args = {"size": kernel, "stride": strides, "pad": tuple(pad), "ceil": ceil}
        if op == "avgpool" and not a.get("count_include_pad", 0) and (pad != (0, 0) or ceil):
            if not has_arg("avgpool", "count_include_pad"):
                raise imp.error("averages without counting padding (count_include_pad=0)",
                                node, index,
                                hint="netdsl's AVGPOOL divides by the padded window size")
            args["count_include_pad"] = False
        imp.values[node.output[0]] = Value(imp.add(op, args, [x.layer], hint=node.name), "map")
    return handle


def conv_transpose(imp, node, index, a):
    """ConvTranspose → DECONV."""
    needs(imp, node, index, "deconv")
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
            "pad": pads(imp, node, index, a, (kh, kw)),
            "output_padding": tuple(a.get("output_padding", [0, 0])),
            "dilation": tuple(a.get("dilations", [1, 1])), "groups": g, "bias": "bias" in params}
    layer = imp.add("deconv", args, [x.layer], params, node.name)
    imp.values[node.output[0]] = Value(layer, "map")
