"""The ONNX operators of the mobile nets for ``netdsl import``: Clip(0, 6) as RELU6,
HardSwish, HardSigmoid(1/6, 1/2), x·Sigmoid(x) as SILU (and x·HardSigmoid(x) as HSWISH), Mul
of a map by a per-channel gate (squeeze-and-excitation) as the ``mul`` join, Split and Slice
of channels as SLICE, and the Reshape–Transpose–Reshape channel shuffle as SHUFFLE. Each needs
its layer in the registry; without it the node is refused as having no netdsl layer."""
from __future__ import annotations

import numpy as np

from .onnx_import_ops import HANDLERS, crop_slice
from .onnx_import_windows import Value, has_layer, needs


def _activation(imp, node, index, op: str, v: Value | None = None) -> None:
    needs(imp, node, index, op)
    v = v or imp.values[node.input[0]]   # element-wise: commutes with every layout
    imp.values[node.output[0]] = Value(imp.add(op, {}, [v.layer], hint=node.name), v.kind,
                                       v.chw)


def clip(imp, node, index, a):
    """Clip(0, 6) → RELU6, Clip(0, ∞) → RELU; other bounds refused."""
    if imp.opset < 11:
        low, high = a.get("min", -np.inf), a.get("max", np.inf)
    else:
        low, high = (float(imp.const(node.input[k], node, index, "a bound").reshape(-1)[0])
                     if len(node.input) > k and node.input[k] else default
                     for k, default in ((1, -np.inf), (2, np.inf)))
    if (low, high) == (0.0, 6.0):
        _activation(imp, node, index, "relu6")
    elif low == 0.0 and high == np.inf:
        _activation(imp, node, index, "relu")
    else:
        raise imp.error(f"clips to [{low}, {high}]; netdsl has RELU6 (0 to 6) and RELU "
                        "(0 up)", node, index)


def hard_sigmoid(imp, node, index, a):
    """HardSigmoid(alpha=1/6, beta=1/2) → HSIGMOID (PyTorch's hard sigmoid)."""
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    if abs(alpha - 1 / 6) > 1e-6 or abs(beta - 0.5) > 1e-6:
        raise imp.error(f"has alpha={alpha:.7g}, beta={beta:.7g}; netdsl's HSIGMOID is "
                        "max(0, min(1, x/6 + 1/2))", node, index)
    _activation(imp, node, index, "hsigmoid")


def _gate_of(imp, name: str, x_layer: int, ops: tuple) -> str | None:
    """The layer op when ``name`` is ``op(x)`` for one of ``ops``, read by nothing else."""
    v = imp.values.get(name)
    if v is None or imp.readers[name] != 1:
        return None
    layer = imp.layers[v.layer]
    return layer.op if layer.op in ops and layer.inputs == [x_layer] else None


def mul(imp, node, index, a):
    """x·Sigmoid(x) → SILU, x·HardSigmoid(x) → HSWISH; a map times a map of the same shape
    or times a per-channel gate (N×C×1×1 or (N, C)) → ``mul { x | gate }``."""
    if any(n in imp.consts for n in node.input):
        raise imp.error("multiplies by a constant, which has no netdsl layer", node, index)
    first, second = (imp.values[n] for n in node.input)
    for x, name in ((first, node.input[1]), (second, node.input[0])):
        op = _gate_of(imp, name, x.layer, ("sigmoid", "hsigmoid"))
        if op is not None:
            _activation(imp, node, index, "silu" if op == "sigmoid" else "hswish", x)
            return
    needs(imp, node, index, "mul")
    dims = [imp.shapes.get(n) for n in node.input]
    out = imp.shapes.get(node.output[0])
    if None in dims or out is None or len(out) not in (2, 4):
        raise imp.error("multiplies tensors of unknown shapes", node, index)
    for d in dims:   # same shape, or one value per sample and channel
        gate = len(d) == len(out) and d[:2] == out[:2] and all(s == 1 for s in d[2:])
        if d != out and not gate:
            raise imp.error(f"multiplies {dims[0]} by {dims[1]}; netdsl multiplies maps of "
                            "one shape or a map by a per-channel gate (N×C×1×1)", node, index)
    if len(out) == 2:
        ins, kind = [imp.as_flat(n, node, index) for n in node.input], "flat"
    else:
        for n, v in zip(node.input, (first, second)):
            if v.kind not in ("map", "gap"):
                imp.as_map(n, node, index)   # the error: a 4-D value netdsl holds otherwise
        ins = [first.layer, second.layer]
        # netdsl's product is a map when either factor is one, else a C vector (N×C×1×1)
        kind = "map" if "map" in (first.kind, second.kind) else "gap"
    imp.values[node.output[0]] = Value(imp.add("mul", {}, ins, hint=node.name), kind)


def _channel_ranges(imp, node, index, a, channels: int) -> list[tuple[int, int]]:
    """The [start, stop) channel ranges of a Split's outputs."""
    if len(node.input) > 1 and node.input[1]:
        sizes = imp.const(node.input[1], node, index, "the split sizes").reshape(-1).tolist()
    elif "split" in a:
        sizes = list(a["split"])
    else:   # equal parts (the last one smaller, opset 18's num_outputs)
        parts = len(node.output)
        step = -(-channels // parts)
        sizes = [min(step, channels - k * step) for k in range(parts)]
    starts = np.cumsum([0] + sizes[:-1]).tolist()
    return [(int(s), int(s + n)) for s, n in zip(starts, sizes)]


def split(imp, node, index, a):
    """Split of channels → SPLIT(parts) when the parts are equal (output p read as
    ``@label.p``), else one SLICE(start, stop) per output."""
    x = imp.as_map(node.input[0], node, index)
    c = imp.chw_of(node.input[0], node, index)[0]
    if a.get("axis", 0) % 4 != 1:
        raise imp.error(f"splits axis {a.get('axis', 0)}; netdsl splits channels only", node,
                        index)
    ranges = _channel_ranges(imp, node, index, a, c)
    if len({stop - start for start, stop in ranges}) == 1 and has_layer("split") and \
            ranges[-1][1] == c:
        layer = imp.add("split", {"parts": len(ranges)}, [x.layer], hint=node.name)
        for p, name in enumerate(node.output):
            if name:
                imp.values[name] = Value(layer if p == 0 else
                                         imp.add("port", {"port": p}, [layer]), "map")
        return
    needs(imp, node, index, "slice")
    for name, (start, stop) in zip(node.output, ranges):
        if name:
            layer = imp.add("slice", {"start": start, "stop": stop}, [x.layer], hint=name)
            imp.values[name] = Value(layer, "map")


def slice_node(imp, node, index, a):
    """Slice of channels (axis 1, step 1) → SLICE; of H and W → CROP (a centred crop)."""
    if imp.opset >= 10 and len(node.input) > 3 and node.input[3] and has_layer("slice"):
        axes = [int(x) % 4 for x in imp.const(node.input[3], node, index, "the axes")]
        steps = imp.const(node.input[4], node, index, "the steps").tolist() \
            if len(node.input) > 4 and node.input[4] else [1]
        if axes == [1] and steps == [1]:
            x = imp.as_map(node.input[0], node, index)
            c = imp.chw_of(node.input[0], node, index)[0]
            start, stop = (int(imp.const(n, node, index, "the slice bounds").reshape(-1)[0])
                           for n in node.input[1:3])
            start, stop = (max(0, min(c, s + c if s < 0 else s)) for s in (start, stop))
            if stop <= start:
                raise imp.error(f"keeps no channel ({start}:{stop})", node, index)
            layer = imp.add("slice", {"start": start, "stop": stop}, [x.layer], hint=node.name)
            imp.values[node.output[0]] = Value(layer, "map")
            return
    crop_slice(imp, node, index, a)


ALL_HANDLERS = {**HANDLERS, "Clip": clip, "HardSigmoid": hard_sigmoid, "Mul": mul,
                "HardSwish": lambda imp, node, index, a: _activation(imp, node, index, "hswish"),
                "Split": split, "Slice": slice_node}
