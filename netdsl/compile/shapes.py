"""Compiler stages that give every node its concrete arguments and shapes.

Order (see docs/architecture.md): ``resolve_auto`` → ``infer_shapes`` (which also inserts
residual projection shortcuts). Each takes and returns the graph; nodes are annotated in place.
"""
from __future__ import annotations

import math

import networkx as nx

from ..core import graph as G
from ..core.errors import NetdslError
from ..layers import AUTO, bind_args, get, numel, shape_str
from ..layers.base import ROUNDING

DEFAULT_WIDTH = 64        # VGG: conv1 has 64 filters ...
DEFAULT_MAX_WIDTH = 512   # ... doubling after each pool, capped at 512
DEFAULT_HIDDEN = 512      # units of a bare hidden FC


def _setting(g, key, default):
    value = g.graph.get("params", {}).get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NetdslError(f"parameter {key} must be a positive whole number, got {value!r}")
    return value


def _fix_source(g, rec, override) -> None:
    """``--input`` replaces a written INPUT shape (with a note); a written shape of rank 2 gains
    its one channel; other ranks are refused at the INPUT."""
    attrs = rec.attrs
    if override is not None:
        new = _source_shape(rec, override, written=False)
        if attrs["shape"] is not AUTO and tuple(attrs["shape"]) != new:
            g.graph.setdefault("notes", []).append((
                f"--input {'x'.join(map(str, new))} replaces the file's INPUT("
                f"{'x'.join(map(str, attrs['shape']))})", rec.loc))
        attrs["shape"] = new
    elif attrs["shape"] is not AUTO:
        attrs["shape"] = _source_shape(rec, attrs["shape"], written=True)


def _rounding(g) -> str:
    """The file's default rounding of windowed layers: ``param ROUND = floor`` (or --set)."""
    value = g.graph.get("params", {}).get("ROUND", "cover")
    if not isinstance(value, str) or value.lower() not in ROUNDING:
        raise NetdslError(f"parameter ROUND must be one of {', '.join(ROUNDING)}, got {value!r}",
                          g.graph.get("param_locs", {}).get("ROUND"),
                          hint="ROUND says how windowed layers round a size that is not whole")
    return value.lower()


def _reaches_loss_without_weights(g, name) -> bool:
    """True when some path from ``name`` reaches a loss through layers that take no width
    argument: the FC right before a classifier's loss gets the number of classes."""
    stack, seen = list(g.successors(name)), set()
    while stack:
        cur = stack.pop()
        if cur in seen:
            continue
        seen.add(cur)
        rec = G.node(g, cur)
        spec = get(rec.op)
        if spec.role == "loss":
            return True
        if any(a.name in ("units", "filters") for a in spec.args):
            continue
        stack.extend(g.successors(cur))
    return False


def needs_input_shape(g: nx.DiGraph) -> bool:
    """True when some source layer's shape is not written (it comes from the dataset)."""
    return any(get(rec.op).role == "source" and rec.attrs.get("shape") is AUTO
               for rec in G.records(g))


def bare_classifiers(g: nx.DiGraph) -> list:
    """The nodes whose ``units`` will be the number of classes (a bare FC before a loss)."""
    return [rec for rec in G.nodes(g)
            if rec.attrs.get("units") is AUTO and _reaches_loss_without_weights(g, rec.name)]


def _source_shape(rec, shape, written: bool) -> tuple:
    """An input shape of rank 1 (flat, FC-only nets), 2 (H×W, one channel) or 3 (H×W×C)."""
    dims = tuple(int(d) for d in shape)
    if len(dims) == 2:
        return dims + (1,)
    if len(dims) in (1, 3):
        return dims
    where = "INPUT(...)" if written else "the input shape"
    raise NetdslError(f"{where} has {len(dims)} dimensions: {'x'.join(map(str, dims))}",
                      rec.loc, hint="write H×W×C (32x32x3), H×W for one channel (28x28), "
                                    "or one size for a flat input (784)")


def resolve_auto(g: nx.DiGraph, *, input_shape=None, num_classes: int = 10,
                 input_override=None, order=None) -> nx.DiGraph:
    """Fill every AUTO argument, by argument name so that future layers share the rules:

    * ``shape`` of a source layer: ``input_shape`` (the dataset's image shape or ``--input``);
    * ``filters``: the VGG width rule, WIDTH·2^(pooling layers before it), capped at MAX_WIDTH;
    * ``units``: the number of classes when the layer feeds a loss directly, else HIDDEN;
    * anything else: the spec's own ``resolve(attrs, info)`` hook.
    """
    rounding = _rounding(g)
    width = _setting(g, "WIDTH", DEFAULT_WIDTH)
    max_width = _setting(g, "MAX_WIDTH", DEFAULT_MAX_WIDTH)
    hidden = _setting(g, "HIDDEN", DEFAULT_HIDDEN)
    # ``order``: only these records, producers first, the rest resolved by earlier calls on
    # the same growing graph (netdsl.lang.prefix), whose pool counts the graph keeps.
    pools: dict[str, int] = {} if order is None else g.graph.setdefault("pools_before", {})
    for rec in G.nodes(g) if order is None else order:
        spec = get(rec.op)
        before = max((pools[src] for src, _ in rec.inputs), default=0)
        pools[rec.name] = before + (1 if spec.downsamples else 0)
        attrs = rec.attrs
        if spec.role == "source" and "shape" in attrs:
            _fix_source(g, rec, input_override)
        if not any(v is AUTO for v in attrs.values()):
            continue
        if attrs.get("shape") is AUTO and spec.role == "source":
            if input_shape is None:
                raise NetdslError("INPUT has no shape", rec.loc,
                                  hint="write it like INPUT(32x32x3), or pass --input HxWxC or --data")
            attrs["shape"] = _source_shape(rec, input_shape, written=False)
        if attrs.get("ceil") is True and attrs.get("round") not in (AUTO, "ceil"):
            raise NetdslError(f"{rec.op}: ceil=true and round={attrs['round']} disagree",
                              rec.loc, hint="ceil=true is round=ceil: keep one of them")
        if attrs.get("round") is AUTO:
            # The file's ROUND where the layer offers it (ROUND = ceil: pools round up, convs,
            # which offer no ceil, round down as in Caffe).
            choices = next(a.choices for a in spec.args if a.name == "round")
            attrs["round"] = rounding if rounding in choices else "floor"
        if attrs.get("filters") is AUTO:
            attrs["filters"] = min(width * 2 ** before, max_width)
        if attrs.get("units") is AUTO:
            attrs["units"] = num_classes if _reaches_loss_without_weights(g, rec.name) else hidden
        if spec.resolve is not None:
            info = {"pools_before": before, "num_classes": num_classes, "hidden": hidden,
                    "input_shape": input_shape}
            rec.attrs = attrs = spec.resolve(dict(attrs), info)
        left = [k for k, v in attrs.items() if v is AUTO]
        if left:
            raise NetdslError(f"{rec.op}: cannot choose a default for {', '.join(left)}", rec.loc,
                              hint=f"give {left[0]}=... explicitly")
    if order is None:
        _check_widths_read(g)
    return g


def _check_widths_read(g: nx.DiGraph) -> None:
    """A default width that a block's ``IN`` read during expansion (before the rest of the
    network existed) must be the width the whole network gives: a bare FC before a loss gets
    the class count, which was not known when IN read it."""
    for name, (key, early, where) in g.graph.get("widths_read", {}).items():
        if name in g and G.node(g, name).attrs.get(key) != early:
            rec = G.node(g, name)
            raise NetdslError(
                f"{name}: IN read its {key} as {early} at {where}, but the whole network gives "
                f"it {rec.attrs[key]}", rec.loc,
                hint=f"write the width explicitly, e.g. {rec.op.upper()}({rec.attrs[key]})")


def infer_shapes(g: nx.DiGraph, *, order=None) -> nx.DiGraph:
    """Annotate every node with input/output shapes, parameter specs and counts, MACs and
    activation counts. Shape rule failures become located errors at the node's source.
    ``order``: only these records, producers first, the others being shaped already (a graph
    that grows while a program is expanded, netdsl.lang.prefix).

    A ``residual { body }`` add whose body changed the shape gets its projection shortcut
    inserted here, on the way, because the add's own shape rule needs it.
    """
    try:
        for rec in G.nodes(g) if order is None else order:
            if rec.meta.get("residual") == "auto" and not rec.meta.get("projected"):
                _project_shortcut(g, rec)
            elif rec.meta.get("residual") == "identity":
                _check_identity(g, rec)
            _infer_node(g, rec)
    except NetdslError as err:
        if getattr(err, "rounding_error", None) and not getattr(err, "searched", False):
            _suggest_inputs(g, err)
        raise
    return g


# How far the search for a network input size that fits every layer looks, and how much work
# it may do: each try copies the graph and infers shapes up to the first misfit, so the number
# of tries shrinks as the graph grows (a 10,000-layer net gets a handful).
_SEARCH_SPAN = 64
_SEARCH_BUDGET = 100_000      # graph nodes copied over all tries


def _suggest_inputs(g: nx.DiGraph, err: NetdslError) -> None:
    """Replace a misfit's layer-level hint by the nearest network input sizes with which every
    layer fits (AlexNet at 224 → 227), when the network has one square spatial input."""
    err.searched = True
    sources = [r for r in G.nodes(g) if get(r.op).role == "source"]
    tries = min(2 * _SEARCH_SPAN, _SEARCH_BUDGET // max(1, g.number_of_nodes()))
    if len(sources) != 1 or tries < 2:
        return
    shape = sources[0].attrs.get("shape")
    if not isinstance(shape, tuple) or len(shape) != 3 or shape[0] != shape[1]:
        return
    found = {}
    for delta in range(1, _SEARCH_SPAN + 1):
        for side in (shape[0] - delta, shape[0] + delta):
            key = "below" if side < shape[0] else "above"
            if key in found or side < 1 or tries <= 0:
                continue
            tries -= 1
            trial = G.copy_graph(g)
            G.node(trial, sources[0].name).attrs["shape"] = (side, side, shape[2])
            try:
                for rec in G.nodes(trial):
                    if rec.meta.get("residual") == "auto" and not rec.meta.get("projected"):
                        _project_shortcut(trial, rec)
                    _infer_node(trial, rec)
            except NetdslError:
                continue
            found[key] = side
        if len(found) == 2:
            break
    if not found:
        return
    nearest_first = sorted(found.values(), key=lambda side: (abs(side - shape[0]), side))
    sizes = " or ".join(f"{s}×{s}×{shape[2]}" for s in nearest_first)
    err.hint = (f"the nearest network inputs that fit every layer are {sizes}; or round: add "
                "round=floor (PyTorch) to this layer, or 'param ROUND = floor' to the file")


def _infer_node(g: nx.DiGraph, rec: G.Node) -> None:
    spec = get(rec.op)
    problem = spec.input_count_problem(len(rec.inputs))
    if problem:
        raise NetdslError(problem, rec.loc)
    in_shapes = [G.node(g, src).out_shapes[port] for src, port in rec.inputs]
    try:
        out = spec.infer_shape(rec.attrs, in_shapes)
    except NetdslError as err:
        if err.loc is None:
            err.loc = rec.loc
        inputs = ", ".join(shape_str(s) for s in in_shapes)
        err.message = f"{rec.name}: {err.message}" + (f" (input {inputs})" if inputs else "")
        _add_call_sites(err, rec)
        raise
    rec.in_shapes = tuple(in_shapes)
    rec.out_shapes = tuple(tuple(o) for o in out) if spec.outputs > 1 else (tuple(out),)
    rec.param_specs = spec.params(rec.attrs, in_shapes)
    rec.n_params = sum(numel(p.shape) for p in rec.param_specs.values() if p.trainable)
    rec.macs = int(spec.macs(rec.attrs, in_shapes, rec.out_shapes))
    rec.activations = sum(numel(s) for s in rec.out_shapes)


def _check_identity(g: nx.DiGraph, rec: G.Node) -> None:
    """``residual?(cond) { body }`` adds the input itself: a body that changed the shape is an
    error at the residual (never a silent projection, which the user did not ask for)."""
    body = G.node(g, rec.inputs[0][0]).out_shapes[rec.inputs[0][1]]
    short = G.node(g, rec.inputs[1][0]).out_shapes[rec.inputs[1][1]]
    if body != short:
        raise NetdslError(
            f"{rec.name}: residual?(...) adds its input {shape_str(short)} to the body's output "
            f"{shape_str(body)}, which has another shape", rec.loc,
            detail="a conditional residual's shortcut is the identity; it is never projected",
            hint="make the condition false when the shape changes (e.g. residual?(stride == 1 "
                 "and IN.c == c)), or write residual { body } to project the shortcut")


def _add_call_sites(err: NetdslError, rec: G.Node) -> None:
    """A shape error inside a block names the call(s) it came through: the block's line alone
    does not say which of its instances failed."""
    calls = [f"in block '{f.block}', called at {f.called_at}" for f in reversed(rec.scope)
             if f.kind == "block" and f.called_at is not None]
    if calls and err.loc == rec.loc and "called at" not in (err.detail or ""):
        where = ", ".join(calls)
        err.detail = f"{err.detail}\n  {where}" if err.detail else where


def _unique(g, base: str) -> str:
    name, k = base, 2
    while name in g:
        name, k = f"{base}{k}", k + 1
    return name


def _project_shortcut(g: nx.DiGraph, rec: G.Node) -> None:
    """ResNet's option B: when the body of ``residual { body }`` changed the shape, put a 1×1
    conv (stride matching the spatial size, no bias) + batch norm on the shortcut."""
    rec.meta["projected"] = True
    body = G.node(g, rec.inputs[0][0]).out_shapes[rec.inputs[0][1]]
    short = G.node(g, rec.inputs[1][0]).out_shapes[rec.inputs[1][1]]
    if body == short:
        return
    if len(body) != 3 or len(short) != 3:
        raise NetdslError(f"residual: cannot project {shape_str(short)} onto {shape_str(body)}",
                          rec.loc, hint="write the shortcut explicitly: residual { body | shortcut }")
    stride = math.ceil(short[0] / body[0])
    got = ((short[0] - 1) // stride + 1, (short[1] - 1) // stride + 1)
    if got != tuple(body[:2]):
        raise NetdslError(
            f"residual: body output {shape_str(body)} is not a strided version of its input "
            f"{shape_str(short)}", rec.loc,
            detail=f"a 1×1 conv with stride {stride} gives {got[0]}×{got[1]}",
            hint="write the shortcut explicitly: residual { body | shortcut }")
    conv = G.Node(_unique(g, f"{rec.name}_proj"), "conv",
                  bind_args(get("conv"), [], {"filters": body[2], "kernel": 1, "stride": stride,
                                              "pad": 0, "bias": False}),
                  inputs=[rec.inputs[1]], loc=rec.loc, scope=rec.scope, meta={"projection": True})
    G.add_node(g, conv)
    _infer_node(g, conv)
    bn = G.Node(_unique(g, f"{rec.name}_proj_bn"), "batchnorm", bind_args(get("batchnorm"), [], {}),
                inputs=[(conv.name, 0)], loc=rec.loc, scope=rec.scope, meta={"projection": True})
    G.add_node(g, bn)
    _infer_node(g, bn)
    G.set_inputs(g, rec.name, [rec.inputs[0], (bn.name, 0)] + list(rec.inputs[2:]))
