"""Constant folding for ``netdsl import``: the nodes of an ONNX graph that compute constants
(an Identity of an initializer, where the exporter merged equal folded BN biases; Constant
nodes; Shape→Gather→Add→Div chains of sizes that are fixed, as ``torch.chunk`` exports) are
evaluated with onnx's reference implementation before any layer is made. When their values
decide shapes ONNX's shape inference could not know (a Slice whose bounds were computed),
shapes are inferred again with the folded values as constants."""
from __future__ import annotations

import numpy as np


def shapes_of(graph) -> dict:
    """{tensor name: dims (None where unknown)} from an inferred graph."""
    return {vi.name: [d.dim_value if d.HasField("dim_value") else None
                      for d in vi.type.tensor_type.shape.dim]
            for vi in (*graph.value_info, *graph.input, *graph.output)}


def fold_node(imp, node, index) -> bool:
    """Evaluate ``node`` when it computes constants, making its outputs constants of ``imp``.
    True when it was folded."""
    ins = [n for n in node.input if n]
    feeds = {}
    if node.op_type == "Shape" and ins and ins[0] not in imp.consts:
        dims = imp.shapes.get(ins[0])
        if not dims or None in dims:
            return False
        # Only the shape is read: a zero-strided array of that shape costs nothing.
        feeds[ins[0]] = np.broadcast_to(np.float32(0), dims)
    elif not (node.op_type == "Constant" or ins and all(n in imp.consts for n in ins)) \
            or node.op_type.startswith("Random") or node.domain not in ("", "ai.onnx"):
        return False
    feeds.update({n: imp.consts[n] for n in ins if n in imp.consts})
    from onnx.reference import ReferenceEvaluator
    try:
        outs = ReferenceEvaluator(node, opsets={"": imp.opset}).run(None, feeds)
    except Exception as exc:   # whatever the reference evaluator refuses: the file's problem
        raise imp.error(f"computes constants netdsl could not evaluate "
                        f"({type(exc).__name__}: {str(exc)[:200]})", node, index) from None
    for name, value in zip(node.output, outs):
        if name:
            imp.consts[name] = np.asarray(value)
    return True


def prefold(imp, model) -> None:
    """Fold every node that computes constants (``imp.folded`` gets their indices), and infer
    shapes again while folding made some known that were not."""
    nodes = imp.graph.node
    for _ in range(8):
        before = len(imp.folded)
        for index, node in enumerate(nodes):
            if index not in imp.folded and fold_node(imp, node, index):
                imp.folded.add(index)
        unknown = any(o and (imp.shapes.get(o) is None or None in imp.shapes[o][1:])
                      for i, n in enumerate(nodes) if i not in imp.folded for o in n.output)
        if not unknown or len(imp.folded) == before:
            return
        imp.shapes.update({k: v for k, v in _reinfer(imp, model).items()
                           if None not in v[1:] or k not in imp.shapes})


def _reinfer(imp, model) -> dict:
    """Shapes inferred for the graph without its folded nodes (their outputs are constants)."""
    try:
        return shapes_of(infer_light(model, imp.consts, imp.folded, strict=False))
    except Exception:   # the first inference's shapes stand; a node needing more says so
        return {}


def infer_light(model, consts: dict, skip=(), strict: bool = True):
    """ONNX shape inference of ``model`` without its weights' bytes: constants of up to 4096
    values stay initializers (shape inference reads such values: Reshape targets, axes),
    larger ones become typed inputs, as only their shapes matter. Serialising a VGG's 500 MB
    of weights for onnx's checker would take longer than the import itself. The nodes whose
    indices are in ``skip`` (folded to constants) are left out."""
    import onnx
    h, g = onnx.helper, model.graph
    inits, typed = [], []
    for name, value in consts.items():
        if value.size <= 4096:
            inits.append(onnx.numpy_helper.from_array(np.asarray(value, order="C"), name))
        else:
            elem = h.np_dtype_to_tensor_dtype(value.dtype)
            typed.append(h.make_tensor_value_info(name, elem, list(value.shape)))
    data = [i for i in g.input if i.name not in consts]
    graph = h.make_graph([n for i, n in enumerate(g.node) if i not in skip], g.name,
                         data + typed, list(g.output), initializer=inits,
                         value_info=list(g.value_info))
    light = h.make_model(graph, opset_imports=list(model.opset_import),
                         ir_version=model.ir_version)
    return onnx.shape_inference.infer_shapes(light, strict_mode=strict).graph
