"""Export a network's inference graph to ONNX (``netdsl export``).

What is exported: the layers the main prediction depends on (auxiliary heads and losses are
left out, dropout is already gone in inference mode), ending in one output ``logits`` (N, K).

Layout: ONNX convolutions are channel-first, netdsl is channel-last (NHWC). The file takes the
conventional NCHW input, so other tools (and the importer) see the usual layout: conv weights
are transposed from (KH, KW, C/g, F) to (F, C/g, KH, KW), and an FC that reads a map gets its
weight rows permuted from netdsl's H·W·C flattening order to ONNX Flatten's C·H·W order. An
explicit FLATTEN whose output feeds other layers keeps netdsl's order with a Transpose to NHWC
before the Flatten (no permutation can be folded into an arbitrary consumer).

Each op has one exporter in ``EXPORTERS``; a layer without one is a located error that names
the nearest layer that ONNX does have.
"""
from __future__ import annotations

import numpy as np

from ..core import graph as G
from ..core.errors import NetdslError
from ..core.files import atomic_write
from ..layers.structure import as_pair
from .onnx_export_modern import MODERN_EXPORTERS, MULTI_OUTPUT
from .trained import inference_nodes

OPSET = 17
MIN_OPSET = 13   # Softmax over one axis, Unsqueeze with an axes input
INPUT_NAME = "input"
PREPROCESS_KEY = "netdsl.preprocess"
OUTPUT_NAME = "logits"

# The layer to suggest when a layer has no ONNX operator.
NEAREST = {"local": "CONV (the same window, weights shared across positions)",
           "maxpool_switches": "MAXPOOL (ONNX MaxPool's indices count N·C·H·W positions)",
           "maxunpool": "DECONV (learned upsampling)"}


def require_onnx():
    """The ``onnx`` module, or a NetdslError saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise NetdslError("ONNX export needs the 'onnx' package, which is not installed",
                          hint="pip install 'netdsl[onnx]' (or: pip install onnx)") from None
    return onnx


class _Builder:
    """Collects ONNX nodes and initializers; names tensors after netdsl nodes."""

    def __init__(self, onnx):
        self.onnx = onnx
        self.nodes, self.inits = [], []

    def init(self, name: str, array) -> str:
        self.inits.append(self.onnx.numpy_helper.from_array(
            np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def const_i64(self, name: str, values) -> str:
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    def node(self, op: str, inputs, output: str, name: str, **attrs) -> str:
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [output], name=name,
                                                     **attrs))
        return output


def _pads(pad) -> list[int]:
    ph, pw = pad
    return [ph, pw, ph, pw]


def _conv(b, rec, ins, out, params):
    from ..layers.geometry import conv_padding
    a = rec.attrs
    w = b.init(f"{rec.name}.weight", np.transpose(params["weight"], (3, 2, 0, 1)))
    inputs = [ins[0], w]
    if "bias" in params:
        inputs.append(b.init(f"{rec.name}.bias", params["bias"]))
    b.node("Conv", inputs, out, rec.name, kernel_shape=list(as_pair(a["kernel"])),
           strides=list(as_pair(a["stride"])), dilations=list(as_pair(a["dilation"])),
           pads=_pads(conv_padding(a)), group=a["groups"])


def _pool_geometry(rec) -> tuple[list, list, list, int]:
    """kernel, strides, pads (ONNX order) and ceil_mode that give netdsl's output size.

    ONNX rounds up without the Caffe/PyTorch rule that drops a last window starting in the
    right padding, so ceil_mode is set only where netdsl's size is the plain rounded-up one;
    where it equals the rounded-down size, floor mode gives the same windows. A max pool that
    needs both (one axis each) gets extra end padding instead, which −inf padding allows."""
    a = rec.attrs
    size = as_pair(a["size"])
    stride = as_pair(a["stride"])
    stride = size if not isinstance(stride, tuple) else stride  # AUTO: the window size
    pad = as_pair(a["pad"])
    pads = [pad[0], pad[1], pad[0], pad[1]]
    want = rec.out_shape[:2]
    span = [n + 2 * p - k for n, p, k in zip(rec.in_shapes[0][:2], pad, size)]
    floor = [sp // s + 1 for sp, s in zip(span, stride)]
    ceil = [-(-sp // s) + 1 for sp, s in zip(span, stride)]
    if list(want) == floor:
        return list(size), list(stride), pads, 0
    if list(want) == ceil:
        return list(size), list(stride), pads, 1
    if a["kind"] != "max":   # extra end padding would change the divisor
        raise NetdslError(f"{rec.name}: ONNX cannot express this average pool's rounding "
                          f"(ceil on one axis, the last-window rule on the other)", rec.loc,
                          hint="use ceil=false, or an input size that both axes round alike")
    for axis in range(2):
        if want[axis] > floor[axis]:
            pads[axis + 2] += stride[axis] - span[axis] % stride[axis]   # one more window
    return list(size), list(stride), pads, 0


def _pool(b, rec, ins, out, params):
    kernel, strides, pads, ceil_mode = _pool_geometry(rec)
    common = dict(kernel_shape=kernel, strides=strides, pads=pads, ceil_mode=ceil_mode)
    if rec.attrs["kind"] == "max":
        b.node("MaxPool", ins, out, rec.name, **common)
    else:   # by default netdsl's divisor counts padding (PyTorch's count_include_pad=True)
        b.node("AveragePool", ins, out, rec.name,
               count_include_pad=int(bool(rec.attrs.get("count_include_pad", True))), **common)


def _fc(b, rec, ins, out, params):
    w = params["weight"]
    if len(rec.in_shapes[0]) == 3:
        # netdsl flattens a map as (H, W, C); ONNX Flatten of NCHW gives (C, H, W).
        h, wd, c = rec.in_shapes[0]
        w = w.reshape(h, wd, c, -1).transpose(2, 0, 1, 3).reshape(h * wd * c, -1)
        ins = [b.node("Flatten", ins, f"{rec.name}.flat", f"{rec.name}.flatten", axis=1)]
    inputs = [ins[0], b.init(f"{rec.name}.weight", w.T)]
    if "bias" in params:
        inputs.append(b.init(f"{rec.name}.bias", params["bias"]))
    b.node("Gemm", inputs, out, rec.name, transB=1)


def _flatten(b, rec, ins, out, params):
    shape = rec.in_shapes[0]
    src = ins[0]
    if len(shape) == 3 and shape[0] * shape[1] > 1:
        src = b.node("Transpose", [src], f"{rec.name}.nhwc", f"{rec.name}.to_nhwc",
                     perm=[0, 2, 3, 1])
    b.node("Flatten", [src], out, rec.name, axis=1)


def _batchnorm(b, rec, ins, out, params):
    names = [b.init(f"{rec.name}.{k}", params[k])
             for k in ("gamma", "beta", "running_mean", "running_var")]
    # ONNX momentum weighs the old running value; netdsl's weighs the batch.
    b.node("BatchNormalization", [ins[0], *names], out, rec.name,
           epsilon=float(rec.attrs["eps"]), momentum=1.0 - float(rec.attrs["momentum"]))


def _simple(op_type: str):
    def export(b, rec, ins, out, params):
        b.node(op_type, ins, out, rec.name)
    return export


def _concat(b, rec, ins, out, params):
    b.node("Concat", ins, out, rec.name, axis=1)   # channels (NCHW) or features (N, F)


def _add(b, rec, ins, out, params):
    b.node("Add" if len(ins) == 2 else "Sum", ins, out, rec.name)


def _softmax(b, rec, ins, out, params):
    b.node("Softmax", ins, out, rec.name, axis=1)


def _leakyrelu(b, rec, ins, out, params):
    b.node("LeakyRelu", ins, out, rec.name, alpha=float(rec.attrs["slope"]))


def _lrn(b, rec, ins, out, params):
    a = rec.attrs
    n = a["size"]
    if n % 2 == 0:   # netdsl's window is c−n/2 … c+n/2−1, ONNX's c−n/2+1 … c+n/2
        raise NetdslError(f"{rec.name}: an LRN window of even size {n} is centred differently "
                          "in ONNX", rec.loc, hint="use an odd size (AlexNet's is 5)")
    # ONNX divides alpha by the size, like netdsl's default alpha_over_n=true.
    alpha = a["alpha"] if a.get("alpha_over_n", True) else a["alpha"] * n
    if len(rec.in_shapes[0]) == 1:   # a vector: ONNX LRN wants N×C×D…, so add two axes
        ins = [b.node("Unsqueeze", [ins[0], b.const_i64(f"{rec.name}.axes", [2, 3])],
                      f"{rec.name}.map", f"{rec.name}.unsqueeze")]
        res = b.node("LRN", ins, f"{rec.name}.lrn", rec.name, size=n, alpha=float(alpha),
                     beta=float(a["beta"]), bias=float(a["k"]))
        b.node("Flatten", [res], out, f"{rec.name}.flatten", axis=1)
        return
    b.node("LRN", ins, out, rec.name, size=n, alpha=float(alpha), beta=float(a["beta"]),
           bias=float(a["k"]))


def _deconv(b, rec, ins, out, params):
    a = rec.attrs
    w = params["weight"]                        # (KH, KW, C/g, F)
    kh, kw, cg, f = w.shape
    g = a["groups"]
    # ONNX ConvTranspose: (C, F/g, KH, KW), input channel g·Cg + c feeding group g's filters.
    w = w.reshape(kh, kw, cg, g, f // g).transpose(3, 2, 4, 0, 1).reshape(g * cg, f // g, kh, kw)
    inputs = [ins[0], b.init(f"{rec.name}.weight", w)]
    if "bias" in params:
        inputs.append(b.init(f"{rec.name}.bias", params["bias"]))
    b.node("ConvTranspose", inputs, out, rec.name, kernel_shape=[kh, kw],
           strides=list(as_pair(a["stride"])), dilations=list(as_pair(a["dilation"])),
           pads=_pads(as_pair(a["pad"])), output_padding=list(as_pair(a["output_padding"])),
           group=g)


def _crop(b, rec, ins, out, params):
    (h, w, _), (th, tw, _) = rec.in_shapes[0], rec.out_shape
    top, left = (h - th) // 2, (w - tw) // 2    # a second input only gives the size
    b.node("Slice", [ins[0], b.const_i64(f"{rec.name}.starts", [top, left]),
                     b.const_i64(f"{rec.name}.ends", [top + th, left + tw]),
                     b.const_i64(f"{rec.name}.axes", [2, 3])], out, rec.name)


EXPORTERS = {
    "conv": _conv, "pool": _pool, "maxpool": _pool, "avgpool": _pool,
    "fc": _fc, "flatten": _flatten, "batchnorm": _batchnorm,
    "relu": _simple("Relu"), "tanh": _simple("Tanh"), "sigmoid": _simple("Sigmoid"),
    "identity": _simple("Identity"), "dropout": _simple("Identity"),
    "concat": _concat, "add": _add, "softmax": _softmax,
    "leakyrelu": _leakyrelu, "lrn": _lrn, "deconv": _deconv, "crop": _crop,
    **MODERN_EXPORTERS,   # silu, relu6, hswish, hsigmoid, mul, gap(keep), split, slice, shuffle
}


FUSED_ACTS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}


def _no_exporter(rec: G.Node) -> NetdslError:
    nearest = NEAREST.get(rec.op)
    return NetdslError(f"{rec.name} ({rec.op.upper()}) has no ONNX operator, so the network "
                       "cannot be exported", rec.loc,
                       hint=(f"the nearest layer ONNX has is {nearest}" if nearest else
                             "ONNX export supports: " + ", ".join(sorted(
                                 k for k in EXPORTERS if k not in ("identity", "dropout")))))


def to_onnx(g, params: dict, *, name: str | None = None, opset: int = OPSET,
            preprocess: dict | None = None):
    """The ONNX ModelProto of ``g``'s inference graph with ``params`` (NumPy arrays).
    ``preprocess`` (a checkpoint's record, see netdsl.data.preprocess) is kept in the model's
    metadata as JSON under ``netdsl.data.preprocess``: other tools can read how to prepare inputs,
    and ``netdsl import`` restores it."""
    onnx = require_onnx()
    helper = onnx.helper
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise NetdslError(f"--opset {opset} is not possible: netdsl writes opsets "
                          f"{MIN_OPSET}..{newest} (the installed onnx package's newest)",
                          hint=f"the default, {OPSET}, is read by most runtimes")
    order, (logits_node, logits_port) = inference_nodes(g)
    b = _Builder(onnx)
    b.opset = opset   # exporters may choose an operator by it (HardSwish needs 14)
    tensor = {}   # netdsl node name -> ONNX tensor name of its output
    source = None
    for rec in order:
        if rec.op == "input":
            source = rec
            tensor[rec.name] = INPUT_NAME
            continue
        if rec.op not in EXPORTERS:
            raise _no_exporter(rec)
        if any(port != 0 and G.node(g, s).op not in MULTI_OUTPUT for s, port in rec.inputs):
            raise NetdslError(f"{rec.name} reads a second output of a layer; ONNX export "
                              "handles single-output layers and SPLIT only", rec.loc)
        out = OUTPUT_NAME if rec.name == logits_node else rec.name
        tensor[rec.name] = out
        # A graph from the inference pipeline may carry an activation fused into its producer.
        act = rec.meta.get("act")
        if act and act not in FUSED_ACTS:
            raise NetdslError(f"{rec.name} has a fused {act} that ONNX export does not know",
                              rec.loc)
        first = f"{rec.name}.pre_{act}" if act else out
        # port p > 0 of a split is the tensor "<port 0's name>.p" (split_outputs)
        EXPORTERS[rec.op](b, rec, [tensor[s] if p == 0 else f"{tensor[s]}.{p}"
                                   for s, p in rec.inputs], first, params.get(rec.name, {}))
        if act:
            b.node(FUSED_ACTS[act], [first], out, f"{rec.name}.{act}")
    size = sum(len(t.raw_data) for t in b.inits)
    if size >= 2**31:   # protobuf's limit for one message; ONNX's external data is not used
        raise NetdslError(f"the weights take {size / 2**30:.1f} GiB; an ONNX file holds at "
                          "most 2 GiB", hint="export a smaller network (fewer FC units)")
    shape = source.out_shape
    in_dims = ["N", shape[2], shape[0], shape[1]] if len(shape) == 3 else ["N", *shape]
    k = G.node(g, logits_node).out_shapes[logits_port]
    k = (k[2], k[0], k[1]) if len(k) == 3 else k   # per-position logits are NCHW too
    graph = helper.make_graph(
        b.nodes, name or g.graph.get("name", "net"),
        [helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, in_dims)],
        [helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, ["N", *k])],
        initializer=b.inits)
    model = helper.make_model(graph, producer_name="netdsl",
                              opset_imports=[helper.make_opsetid("", opset)])
    if opset <= 17:
        model.ir_version = min(model.ir_version, 8)   # readable by older runtimes too
    if preprocess:
        import json
        helper.set_model_props(model, {PREPROCESS_KEY: json.dumps(preprocess)})
    onnx.checker.check_model(model)
    return model


def export_file(model, path: str) -> None:
    """Write ``model`` to ``path`` atomically; an unwritable path is a NetdslError."""
    data = model.SerializeToString()
    atomic_write(path, lambda f: f.write(data), "ONNX model")


def check_with_onnxruntime(model, trained, batch: int = 2, seed: int = 0) -> float:
    """max |onnxruntime − netdsl| / max |netdsl| of the logits on a random normal batch."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise NetdslError("--check needs onnxruntime, which is not installed",
                          hint="pip install 'netdsl[onnx]' (or: pip install onnxruntime)") from None
    shape = next(r for r in G.nodes(trained.graph) if r.op == "input").out_shape
    x = np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)
    ours = np.asarray(trained.executor().forward(x).logits, np.float64)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x_onnx = np.moveaxis(x, -1, 1) if x.ndim == 4 else x   # NHWC → NCHW; vectors as they are
    theirs = sess.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x_onnx)})[0]
    if theirs.ndim == 4:   # per-position logits come back NCHW
        theirs = np.moveaxis(theirs, 1, -1)
    return float(np.abs(theirs - ours).max() / max(np.abs(ours).max(), 1e-30))
