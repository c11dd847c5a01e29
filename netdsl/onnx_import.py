"""Import an ONNX model as a `.net` file and a checkpoint (``netdsl import``).

The ONNX graph is read node by node into a small list of netdsl layers (:class:`Layer`),
which :mod:`netdsl.net_writer` writes as readable chains. Covered: Conv (grouped, dilated,
symmetric padding), MaxPool/AveragePool (ceil mode, padding counted in averages), Global-
AveragePool, Gemm or MatMul(+Add) as FC, BatchNormalization (inference form), Relu, Tanh,
Sigmoid, Flatten/Reshape to (N, -1), Concat and Add/Sum, Dropout and Identity; a final
Softmax is dropped (the loss applies it).

Layout: ONNX tensors are NCHW, netdsl maps are HWC, and the two flatten a map in different
orders (C·H·W vs H·W·C). Each ONNX tensor is therefore tracked with a *kind*: ``map``, ``flat``
(netdsl order), ``chw`` (an ONNX Flatten of a map, not yet a netdsl node: an FC reading it gets
its weight rows permuted; element-wise layers apply to the map before it), ``gap`` (a global
pool's N×C×1×1) and ``nhwc`` (a Transpose to channel-last, which a Flatten turns into FLATTEN).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import NetdslError
from .onnx_export import require_onnx


@dataclass
class Layer:
    """One netdsl layer to write: op, arguments as they are written, inputs, weights."""

    op: str
    args: dict
    inputs: list
    params: dict = field(default_factory=dict)
    hint: str = ""                      # the ONNX node name, for the label


@dataclass
class Value:
    """An ONNX tensor as netdsl sees it: the layer producing it and its layout kind."""

    layer: int
    kind: str                           # map | flat | chw | gap | nhwc
    chw: tuple = ()                     # (C, H, W) of the map behind a chw/nhwc value


class _Importer:
    def __init__(self, model, path: str):
        onnx = require_onnx()
        self.path = path
        self.np = onnx.numpy_helper
        self.helper = onnx.helper
        g = model.graph
        self.consts = {t.name: self.np.to_array(t) for t in g.initializer}
        self.layers: list[Layer] = []
        self.values: dict[str, Value] = {}
        self.notes: list[str] = []
        inferred = require_onnx().shape_inference.infer_shapes(model).graph
        self.shapes = {vi.name: [d.dim_value if d.HasField("dim_value") else None
                                 for d in vi.type.tensor_type.shape.dim]
                       for vi in (*inferred.value_info, *inferred.input, *inferred.output)}
        inputs = [i for i in g.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise self.error(f"has {len(inputs)} data inputs; netdsl networks have one")
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in inputs[0].type.tensor_type.shape.dim]
        if len(dims) != 4 or None in dims[1:] or 0 in dims[1:]:
            raise self.error(f"input '{inputs[0].name}' has shape {dims}; netdsl imports "
                             "image models with a fixed N×C×H×W input",
                             hint="export the model with a fixed C, H and W")
        c, h, w = dims[1:]
        self.values[inputs[0].name] = Value(self.add("input", {"shape": (h, w, c)}, []), "map",
                                            (c, h, w))
        self.graph = g

    def error(self, message: str, node=None, index: int = -1, hint: str | None = None):
        where = f"node {index} '{node.name}' ({node.op_type}): " if node is not None else ""
        return NetdslError(f"{self.path}: {where}{message}" if where else
                           f"{self.path}: the model {message}", hint=hint)

    def add(self, op: str, args: dict, inputs: list, params=None, hint: str = "") -> int:
        self.layers.append(Layer(op, args, list(inputs), params or {}, hint))
        return len(self.layers) - 1

    # -- helpers for node handlers -------------------------------------------------------
    def const(self, name: str, node, index, what: str) -> np.ndarray:
        if name not in self.consts:
            raise self.error(f"{what} must be a constant (an initializer)", node, index)
        return self.consts[name]

    def as_map(self, name: str, node, index) -> Value:
        v = self.values[name]
        if v.kind != "map":
            raise self.error(f"expects an N×C×H×W map, got a {_KIND_WORDS[v.kind]}", node, index)
        return v

    def as_flat(self, name: str, node, index) -> int:
        """The layer whose output is this value in netdsl's flat order (adding FLATTEN when
        a C×1×1 map needs one); an error when ONNX's C·H·W order would differ."""
        v = self.values[name]
        if v.kind == "flat":
            return v.layer
        if v.kind == "gap":
            return v.layer
        if v.kind == "chw" and v.chw[1] * v.chw[2] == 1 or v.kind == "nhwc":
            return self.add("flatten", {}, [v.layer])
        raise self.error(f"reads a {_KIND_WORDS[v.kind]}, which netdsl flattens in another "
                         "order (H·W·C, not C·H·W)", node, index,
                         hint="only FC (Gemm/MatMul) may read a flattened map directly")

    def chw_of(self, name: str, node, index) -> tuple:
        """(C, H, W) of a 4-D ONNX tensor, from ONNX shape inference."""
        dims = self.shapes.get(name)
        if not dims or len(dims) != 4 or None in dims[1:]:
            raise self.error(f"the shape of '{name}' is not known", node, index,
                             hint="run onnx.shape_inference or export with fixed sizes")
        return tuple(dims[1:])

    def attrs(self, node) -> dict:
        return {a.name: self.helper.get_attribute_value(a) for a in node.attribute}

    def run(self) -> None:
        for index, node in enumerate(self.graph.node):
            handler = HANDLERS.get(node.op_type)
            if handler is None:
                raise self.error("has no netdsl layer", node, index,
                                 hint="netdsl imports: " + ", ".join(sorted(HANDLERS)))
            handler(self, node, index, self.attrs(node))


_KIND_WORDS = {"map": "map", "flat": "vector", "chw": "flattened map",
               "gap": "globally pooled N×C×1×1 map", "nhwc": "channel-last (transposed) map"}


def _pads(imp, node, index, a, kernel, default_zero=True) -> tuple:
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


def _pool(op: str):
    def handle(imp, node, index, a):
        x = imp.as_map(node.input[0], node, index)
        if any(d != 1 for d in a.get("dilations", [1, 1])) or len(node.output) > 1 and \
                node.output[1]:
            raise imp.error("dilated pooling and pooling indices have no netdsl layer", node,
                            index)
        kernel = tuple(a["kernel_shape"])
        pad = _pads(imp, node, index, a, kernel)
        if op == "avgpool" and pad != (0, 0) and not a.get("count_include_pad", 0):
            raise imp.error("averages without counting padding (count_include_pad=0)", node,
                            index, hint="netdsl's AVGPOOL divides by the padded window size")
        args = {"size": kernel, "stride": tuple(a.get("strides", [1, 1])), "pad": pad,
                "ceil": bool(a.get("ceil_mode", 0))}
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
    if len(shape) != 2 or not (shape[1] == -1 or shape[0] in (0, -1)):
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
        raise imp.error("a softmax inside the network has no netdsl layer", node, index)
    imp.values[node.output[0]] = imp.values[node.input[0]]
    imp.notes.append(f"the final Softmax '{node.name}' was dropped: netdsl's loss applies it, "
                     "and predict prints probabilities")


def _constant(imp, node, index, a):
    imp.consts[node.output[0]] = imp.np.to_array(a["value"]) if "value" in a else \
        np.asarray(next(iter(a.values())))


HANDLERS = {
    "Conv": _conv, "MaxPool": _pool("maxpool"), "AveragePool": _pool("avgpool"),
    "GlobalAveragePool": _global_pool, "Flatten": _flatten, "Reshape": _reshape,
    "Transpose": _transpose, "Gemm": _gemm, "MatMul": _matmul, "Add": _add,
    "Sum": lambda imp, node, index, a: _join(imp, node, index, "add"),
    "Concat": lambda imp, node, index, a: _join(imp, node, index, "concat"),
    "Relu": _elementwise("relu"), "Tanh": _elementwise("tanh"),
    "Sigmoid": _elementwise("sigmoid"), "BatchNormalization": _batchnorm,
    "Dropout": _dropout, "Identity": _identity, "Softmax": _softmax, "Constant": _constant,
}


def read_model(path: str):
    """The ONNX ModelProto at ``path``, or a NetdslError saying why it cannot be read."""
    onnx = require_onnx()
    try:
        model = onnx.load(path)
        onnx.checker.check_model(model)
    except FileNotFoundError:
        raise NetdslError(f"'{path}' does not exist") from None
    except Exception as exc:   # DecodeError, ValidationError, ...: not a valid ONNX model
        raise NetdslError(f"'{path}' is not a valid ONNX model ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return model


def import_model(model, path: str, name: str):
    """(.net text, params {node: {name: array}}, notes, layer count) for an ONNX model."""
    from .net_writer import write_net
    imp = _Importer(model, path)
    imp.run()
    outputs = list(imp.graph.output)
    if len(outputs) != 1:
        imp.notes.append(f"the model has {len(outputs)} outputs; only the first, "
                         f"'{outputs[0].name}', becomes the prediction")
    out = imp.values[outputs[0].name]
    if out.kind != "flat":
        fake = type("N", (), {"name": outputs[0].name, "op_type": "output"})()
        out = Value(imp.as_flat(outputs[0].name, fake, len(imp.graph.node)), "flat")
    header = (f"# Imported from {path} by netdsl import.\n"
              "# The loss (softmax cross-entropy) is implicit; weights are in the checkpoint.\n")
    text, labels = write_net(imp.layers, out.layer, name, header)
    params = {labels[i]: layer.params for i, layer in enumerate(imp.layers)
              if layer.params and i in labels}
    return text, params, imp.notes, imp.layers[0].args["shape"]


def import_file(model_path: str, net_path: str, weights_path: str, *, name=None) -> dict:
    """Write ``net_path`` (.net) and ``weights_path`` (checkpoint) for the ONNX model; the
    result is compiled and the weights bound before anything is written."""
    import re
    from pathlib import Path
    from .compiler import compile_text
    from .train.checkpoint import save_checkpoint
    from .trained import bind_params
    name = name or Path(net_path).stem
    name = re.sub(r"\W+", "_", name).strip("_") or "imported"
    if name[0].isdigit():
        name = "n" + name
    model = read_model(model_path)
    text, params, notes, input_shape = import_model(model, model_path, name)
    # Every width is written out, so num_classes fills nothing; it only spares a data lookup.
    c = compile_text(text, name=str(net_path), input_shape=input_shape, num_classes=2)
    bound = bind_params(c.graph, params, model_path)
    try:
        Path(net_path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise NetdslError(f"cannot write '{net_path}': {exc.strerror or exc}") from None
    from . import graph as G
    from .trained import main_head
    source = input_shape
    logits = int(G.node(c.graph, main_head(c.graph).inputs[0][0]).out_shape[0])
    record = {"data": f"onnx:{model_path}", "native_shape": list(source),
              "input_shape": list(source), "mean": [0.0] * source[2], "std": [1.0] * source[2],
              "classes": logits}
    save_checkpoint(weights_path, params=bound, optimizer_state={}, epoch=0, step=0,
                    metrics={}, meta={"network": name, "source": text, "params": {},
                                      "imported_from": str(model_path), "preprocess": record})
    notes.append("predict feeds images scaled to [0, 1] without normalisation: apply the "
                 "model's own preprocessing to .npy inputs if it had one")
    return {"layers": c.graph.number_of_nodes() - 2, "notes": notes, "text": text}
