"""`netdsl convert --fc-to-conv`: fully connected layers rewritten as convolutions.

An FC on an H×W×C map computes the same sums as a convolution with an H×W kernel and no padding
(both flatten row-major over H, W, C, so the (H·W·C, U) weight *is* the (H, W, C, U) kernel);
each later FC, on the 1×1×U map that leaves, becomes a 1×1 convolution. The converted network
then slides over a larger image in one pass and answers a grid of class scores (VGG-16 at 384:
a 6×6 grid). A FLATTEN before the loss keeps the original size trainable (1×1×K → K).

The converter writes the compiled graph back as a program, one layer per line of a chain, so it
handles chains (VGG, LeNet, the cs231n pattern); a branching network is refused.
"""
from __future__ import annotations

import numpy as np

from ..core import graph as G
from ..core.errors import NetdslError
from ..compile.verify import losses
from ..lang.values import as_identifier
from ..layers import AUTO, get


def _written(value) -> str:
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _call(op: str, attrs: dict) -> str:
    spec = get(op)
    names = [a.name for a in spec.args]
    args = ", ".join(f"{k}={_written(attrs[k])}" for k in names
                     if k in attrs and attrs[k] is not AUTO and attrs[k] is not None)
    return f"{op}({args})" if args else op


def _train_block(g) -> str:
    """The original program's train { ... } section, copied as written (or '')."""
    import re
    src = g.graph.get("source")
    m = re.search(r"^train\s*\{.*?^\}", getattr(src, "text", "") or "", re.M | re.S)
    return "\n" + m.group(0) + "\n" if m else ""


def fc_to_conv(g, input_shape=None) -> tuple[str, dict]:
    """The program text of the converted chain ``g`` (a compiled graph), reading
    ``input_shape`` (default: the original's), and for each converted FC the conv kernel shape
    its weight is reshaped to: {name: (H, W, C, U)}."""
    recs = [r for r in G.nodes(g) if get(r.op).role != "loss"]
    heads = losses(g)
    for r in recs:
        if len(r.inputs) > 1 or len(list(g.successors(r.name))) > 1 + sum(
                1 for h in heads if h.inputs[0][0] == r.name):
            raise NetdslError(f"convert handles chains of layers; {r.name} branches or joins",
                              r.loc, hint="convert a network without concat/add/@ branches")
    if len(heads) > 1:
        raise NetdslError("convert handles one loss head; this network has "
                          f"{len(heads)}", heads[1].loc)
    lines, kernels, spatial = [], {}, False
    for r in recs:
        spec = get(r.op)
        if spec.role == "source":
            lines.append(f"INPUT({_written(tuple(input_shape or r.out_shapes[0]))})")
            continue
        shape_in = tuple(r.in_shapes[0])
        if r.op == "flatten":
            continue                      # the FC after it reads the map itself
        if r.op == "fc":
            if len(shape_in) == 3:
                h, w, c = shape_in
            elif spatial:                 # after a converted FC: a 1×1×U map
                h, w, c = 1, 1, shape_in[0]
            else:
                raise NetdslError(f"{r.name} reads a flat vector ({shape_in[0]}) that no "
                                  "convolution can slide over", r.loc,
                                  hint="only FCs on a spatial map (or after such an FC) convert")
            units = r.attrs["units"]
            kernels[r.name] = (h, w, c, units)
            attrs = {"filters": units, "kernel": (h, w), "pad": "valid",
                     "bias": r.attrs.get("bias", True)}
            if r.attrs.get("init") not in (None, AUTO):
                attrs["init"] = r.attrs["init"]
            lines.append(f"{r.name}: {_call('conv', attrs)}")
            spatial = True
            continue
        if len(shape_in) == 3 and len(r.out_shapes[0]) != 3 and r.op != "fc":
            raise NetdslError(f"{r.name} ({r.op}) turns the map into a vector, so the net "
                              "cannot slide", r.loc)
        lines.append(f"{r.name}: {_call(r.op, r.attrs)}")
    if spatial:
        lines.append("flatten")
    name = as_identifier(g.graph["name"])
    text = (f"# {name} with its FC layers as convolutions (netdsl convert --fc-to-conv)\n"
            f"net {name}_conv\n\n" + "\n  -> ".join(lines) + "\n" + _train_block(g))
    return text, kernels


def convert_weights(params: dict, kernels: dict) -> dict:
    """Checkpoint parameters with each converted FC's weight reshaped to its kernel."""
    out = {}
    for name, tensors in params.items():
        out[name] = dict(tensors)
        if name in kernels:
            w = np.asarray(tensors["weight"])
            out[name]["weight"] = w.reshape(kernels[name])
    return out
