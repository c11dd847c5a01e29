"""Import an ONNX model as a `.net` file and a checkpoint (``netdsl import``).

The ONNX graph is read node by node into a small list of netdsl layers (:class:`Layer`),
which :mod:`netdsl.interchange.net_writer` writes as readable chains; the operator handlers are in
:mod:`netdsl.interchange.onnx_import_ops` (docs/interchange.md lists them). A final Softmax is dropped
(the loss applies it).

Layout: ONNX tensors are NCHW, netdsl maps are HWC, and the two flatten a map in different
orders (C·H·W vs H·W·C). Each ONNX tensor is therefore tracked with a *kind*: ``map``, ``flat``
(netdsl order), ``chw`` (an ONNX Flatten of a map, not yet a netdsl node: an FC reading it gets
its weight rows permuted; element-wise layers apply to the map before it), ``gap`` (a global
pool's N×C×1×1) and ``nhwc`` (a Transpose to channel-last, which a Flatten turns into FLATTEN).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import NetdslError
from ..lang.values import as_identifier, source_comment
from .onnx_export import require_onnx
from .onnx_import_fold import infer_light, prefold, shapes_of
from .onnx_import_modern import ALL_HANDLERS as HANDLERS
from .onnx_import_windows import Value, has_arg


@dataclass
class Layer:
    """One netdsl layer to write: op, arguments as they are written, inputs, weights."""

    op: str
    args: dict
    inputs: list
    params: dict = field(default_factory=dict)
    hint: str = ""                      # the ONNX node name, for the label
    where: str = ""                     # "node 3 'name' (Op)", for errors found later


class _Importer:
    def __init__(self, model, path: str):
        onnx = require_onnx()
        self.path = path
        self.np = onnx.numpy_helper
        self.helper = onnx.helper
        g = model.graph
        self.consts = {}
        for tensor in g.initializer:
            try:   # the raw bytes may not hold what the dims say (a damaged file), or the
                # data type is no ONNX type (KeyError from onnx's table)
                self.consts[tensor.name] = self.np.to_array(tensor)
            except (ValueError, TypeError, KeyError) as exc:
                why = f"data type {exc.args[0]} is no ONNX type" if isinstance(exc, KeyError) \
                    else str(exc)[:120]
                raise NetdslError(f"{path}: initializer '{tensor.name[:60]}' is damaged: {why}",
                                  hint="export the model again") from None
        for key, value in self.consts.items():   # a STRING weight passes onnx.checker
            if value.dtype.kind not in "biuf":
                raise NetdslError(f"{path}: initializer '{key[:60]}' holds {value.dtype} "
                                  "values, not numbers",
                                  hint="weights must be float or integer tensors")
        self.layers: list[Layer] = []
        self.where = "the graph input"
        self.kept: dict = {}
        self.values: dict[str, Value] = {}
        self.notes: list[str] = []
        try:   # strict: a weight that does not fit its input is the file's error, said here
            inferred = infer_light(model, self.consts)
        except Exception as exc:   # onnx's InferenceError and friends
            raise NetdslError(f"{path}: the model's tensor shapes do not fit together: "
                              f"{str(exc).strip().splitlines()[-1][:300]}") from None
        self.shapes = shapes_of(inferred)
        inputs = [i for i in g.input if i.name not in self.consts]
        if len(inputs) != 1:
            message = f"has {len(inputs)} data inputs; netdsl networks have one"
            if g.node and not inputs:   # a model of constants: told at its first node
                raise self.error("the model " + message, g.node[0], 0)
            raise self.error(message)
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in inputs[0].type.tensor_type.shape.dim]
        if len(dims) not in (2, 4) or None in dims[1:] or 0 in dims[1:]:
            # told at the node that reads it: a 3-D input is that operator's case too
            index, node = next(((i, n) for i, n in enumerate(g.node)
                                if inputs[0].name in n.input), (-1, None))
            raise self.error(f"reads the model input '{inputs[0].name}' of shape {dims}; "
                             "netdsl imports models with a fixed N×C×H×W (or N×F) input",
                             node, index, hint="export the model with fixed sizes but the batch")
        elem = inputs[0].type.tensor_type.elem_type
        if elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
            index, node = next(((i, n) for i, n in enumerate(g.node)
                                if inputs[0].name in n.input), (-1, None))
            raise self.error(f"reads the model input '{inputs[0].name}' of type "
                             f"{onnx.TensorProto.DataType.Name(elem).lower()}; netdsl computes "
                             "in float32", node, index)
        if len(dims) == 2:   # a vector input: INPUT(F) (needs a netdsl with flat inputs)
            self.values[inputs[0].name] = Value(self.add("input", {"shape": (dims[1],)}, []),
                                                "flat")
        else:
            c, h, w = dims[1:]
            self.values[inputs[0].name] = Value(self.add("input", {"shape": (h, w, c)}, []),
                                                "map", (c, h, w))
        self.graph = g
        # How many nodes (and graph outputs) read each tensor: a bias may join an FC only
        # when nothing else reads the product without it.
        self.readers = Counter([n for node in g.node for n in node.input if n] +
                               [o.name for o in g.output])
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          17)
        self.folded: set = set()   # indices of the nodes that compute constants
        prefold(self, model)

    def error(self, message: str, node=None, index: int = -1, hint: str | None = None):
        where = f"node {index} '{node.name}' ({node.op_type}): " if node is not None else ""
        return NetdslError(f"{self.path}: {where}{message}" if where else
                           f"{self.path}: the model {message}", hint=hint)

    def add(self, op: str, args: dict, inputs: list, params=None, hint: str = "") -> int:
        self.layers.append(Layer(op, args, list(inputs), params or {}, hint, self.where))
        return len(self.layers) - 1

    # -- helpers for node handlers -------------------------------------------------------
    def const(self, name: str, node, index, what: str) -> np.ndarray:
        if name not in self.consts:
            raise self.error(f"{what} must be a constant (an initializer)", node, index)
        return self.consts[name]

    def as_map(self, name: str, node, index) -> Value:
        v = self.values[name]
        pooled = self.layers[v.layer]
        if v.kind == "gap" and pooled.op == "gap" and has_arg("gap", "keep"):
            # A pooled N×C×1×1 read as a map (squeeze-and-excitation's 1×1 convolutions):
            # the same pooling, keeping the 1×1×C map, once per pooled value.
            key = ("keep", v.layer)
            if key not in self.kept:
                self.kept[key] = self.add("gap", {"keep": True}, pooled.inputs, hint=pooled.hint)
            return Value(self.kept[key], "map")
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
            if index in self.folded:
                continue
            handler = HANDLERS.get(node.op_type)
            self.where = f"node {index} '{node.name}' ({node.op_type})"
            if handler is None:
                raise self.error("has no netdsl layer", node, index,
                                 hint="netdsl imports: " + ", ".join(sorted(HANDLERS)))
            try:
                handler(self, node, index, self.attrs(node))
            except KeyError as exc:   # an input no earlier node produced as a netdsl value
                raise self.error(f"reads '{exc.args[0]}', which netdsl cannot represent (a "
                                 "constant used as data, or a second graph input)", node,
                                 index) from None
            except (ValueError, IndexError, TypeError) as exc:
                # Arrays of a foreign file that do not have the shapes its node implies (the
                # handlers reshape and index them): the file's problem, told at the node.
                raise self.error(f"its weights or attributes do not fit its input "
                                 f"({type(exc).__name__}: {exc})", node, index) from None


_KIND_WORDS = {"map": "map", "flat": "vector", "chw": "flattened map",
               "gap": "globally pooled N×C×1×1 map", "nhwc": "channel-last (transposed) map",
               "grid": "map reshaped to N×g×C/g×H×W",
               "grid_t": "transposed N×C/g×g×H×W grid (half a channel shuffle)"}


def read_model(path: str):
    """The ONNX ModelProto at ``path``, or a NetdslError saying why it cannot be read."""
    import os
    onnx = require_onnx()
    if not os.path.isfile(path):
        raise NetdslError(f"'{path}' does not exist")
    try:
        # checked from the file: checking the loaded model would serialise it again
        onnx.checker.check_model(path)
        model = onnx.load(path)
    except FileNotFoundError:
        raise NetdslError(f"'{path}' does not exist") from None
    except Exception as exc:   # DecodeError, ValidationError, ...: not a valid ONNX model
        raise NetdslError(f"'{path}' is not a valid ONNX model ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return model


def import_model(model, path: str, name: str):
    """(.net text, params {node: {name: array}}, notes, input shape, origin) for an ONNX
    model; ``origin(error)`` retells an error found in the written text at its ONNX node."""
    from .net_writer import write_net
    imp = _Importer(model, path)
    imp.run()
    outputs = list(imp.graph.output)
    if len(outputs) != 1:
        imp.notes.append(f"the model has {len(outputs)} outputs; only the first, "
                         f"'{outputs[0].name}', becomes the prediction")
    if not outputs:
        raise NetdslError(f"'{path}' has no graph output: nothing to predict")
    out = imp.values.get(outputs[0].name)
    if out is None:   # a constant, or a tensor no operator makes from the input
        raise NetdslError(f"'{path}': the model's output '{outputs[0].name[:60]}' does not "
                          "depend on its input (a constant, or an initializer), so it is no "
                          "network netdsl can write",
                          hint="export the network whose output is computed from the input")
    if out.kind != "flat":   # told at the node that makes the output
        index, node = next((i, n) for i, n in enumerate(imp.graph.node)
                           if outputs[0].name in n.output)
        out = Value(imp.as_flat(outputs[0].name, node, index), "flat")
    header = (f"# Imported from {source_comment(path)} by netdsl import.\n"
              "# The loss (softmax cross-entropy) is implicit; weights are in the checkpoint.\n")
    text, labels, spans = write_net(imp.layers, out.layer, name, header)
    params = {labels[i]: layer.params for i, layer in enumerate(imp.layers)
              if layer.params and i in labels}

    def origin(exc: NetdslError) -> NetdslError:
        layer = None
        if exc.loc is not None and exc.loc.line > 0:
            offset = sum(len(s) + 1 for s in text.split("\n")[:exc.loc.line - 1]) + \
                max(exc.loc.col - 1, 0)
            inside = [(e - s, i) for s, e, i in spans if s <= offset < e]
            layer = imp.layers[min(inside)[1]] if inside else None
        where = f"{layer.where}: its netdsl layer {layer.op.upper()} is invalid" if layer \
            else "the network netdsl writes for it does not compile"
        return NetdslError(f"{path}: {where}: {exc.message}", detail=exc.detail,
                           hint=exc.hint)

    return text, params, imp.notes, imp.layers[0].args["shape"], origin


def import_file(model_path: str, net_path: str, weights_path: str, *, name=None) -> dict:
    """Write ``net_path`` (.net) and ``weights_path`` (checkpoint) for the ONNX model; the
    result is compiled and the weights bound before anything is written."""
    from pathlib import Path
    from ..compile.compiler import compile_text
    from ..core.files import write_together
    from ..train.checkpoint import checkpoint_writer
    from .trained import bind_params
    name = as_identifier(name or Path(net_path).stem, "imported")
    model = read_model(model_path)
    text, params, notes, input_shape, origin = import_model(model, model_path, name)
    # Every width is written out, so num_classes fills nothing; it only spares a data lookup.
    try:
        c = compile_text(text, name=str(net_path), input_shape=input_shape, num_classes=2)
    except NetdslError as exc:   # told at the ONNX node: the user never saw the .net text
        raise origin(exc) from None
    bound = bind_params(c.graph, params, model_path)
    from ..core import graph as G
    from ..compile.verify import main_head
    source = input_shape
    logits = int(G.node(c.graph, main_head(c.graph).inputs[0][0]).out_shape[0])
    record = _stored_record(model)
    if record is None:
        native = list(source) if len(source) == 3 else [source[0], 1, 1]
        record = {"data": f"onnx:{model_path}", "native_shape": native,
                  "input_shape": list(source), "mean": [0.0] * native[2],
                  "std": [1.0] * native[2], "classes": logits}
        notes.append("predict feeds images scaled to [0, 1] without normalisation: apply the "
                     "model's own preprocessing to .npy inputs if it had one")
    else:
        notes.append(f"the preprocessing netdsl export stored (data {record.get('data')}) is "
                     "kept: predict prepares images as that training did")
    weights = checkpoint_writer(params=bound, optimizer_state={}, epoch=0, step=0, metrics={},
                                meta={"network": name, "source": text, "params": {},
                                      "imported_from": str(model_path), "preprocess": record})
    data = text.encode("utf-8")
    # both files new, or both as they were: a .net without its weights does not load
    write_together([(net_path, lambda f: f.write(data)), (weights_path, weights)],
                   "the imported network")
    return {"layers": c.graph.number_of_nodes() - 2, "notes": notes, "text": text}


def _stored_record(model) -> dict | None:
    """The preprocessing record netdsl export keeps in the model's metadata, if well formed."""
    import json
    from .onnx_export import PREPROCESS_KEY
    for prop in model.metadata_props:
        if prop.key == PREPROCESS_KEY:
            try:
                record = json.loads(prop.value)
            except ValueError:
                return None
            from ..data.images import check_record
            try:    # sizes are read from it later: a malformed one is dropped, not trusted
                return check_record(record, "the model") if isinstance(record, dict) \
                    and "input_shape" in record else None
            except NetdslError:
                return None
    return None
