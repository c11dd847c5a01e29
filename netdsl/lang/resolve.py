"""After every statement is expanded: resolve references, build the graph, find cycles, and
append the implicit loss."""
from __future__ import annotations

import networkx as nx

from ..core.errors import Location, NetdslError, did_you_mean
from ..core.graph import Node
from ..layers import bind_args, get
from . import ast
from .scope import Namer, PendingRef, Scope


class RefResolver:
    """Looks up each pending reference once: its label (innermost scope outwards), else a node
    by its full name (``@enc_2``, ``@inc3a/conv1``)."""

    def __init__(self, refs: list[tuple[ast.Ref, Scope]], nodes: dict[str, Node]):
        self.refs = refs
        self.nodes = nodes
        self._done: dict[int, tuple] = {}

    def tensor(self, value) -> tuple:
        return self.resolve(value.index) if isinstance(value, PendingRef) else value

    def resolve(self, index: int, chain: tuple[int, ...] = ()) -> tuple:
        if index in self._done:
            return self._done[index]
        ref, scope = self.refs[index]
        if index in chain:  # labels that only alias references to each other
            names = [f"@{self.refs[i][0].name}" for i in chain[chain.index(index):]]
            raise NetdslError(f"cycle: {' → '.join(names + [names[0]])}", ref.loc)
        target = scope.find(ref.name)
        if target is None:
            if ref.name not in self.nodes:
                known = scope.visible_labels() + list(self.nodes)
                raise NetdslError(f"undefined reference '@{ref.name}'", ref.loc,
                                  hint=did_you_mean(ref.name, known)
                                  or f"label an element with '{ref.name}: ...' to refer to it")
            target = (ref.name, 0)
        elif isinstance(target, PendingRef):
            target = self.resolve(target.index, chain + (index,))
        if ref.port is not None:
            target = self._port(ref, target)
        self._done[index] = target
        return target

    def _port(self, ref: ast.Ref, target: tuple) -> tuple:
        """``@p1.switches`` / ``@p1.1``: another output of the layer ``target`` names, by the
        spec's ``output_names`` or by index."""
        name, port = target
        node = self.nodes[name]
        spec = get(node.op)
        written = f"@{ref.name}.{ref.port}"
        if port != 0:
            raise NetdslError(f"{written}: @{ref.name} already names output {port} of {name}",
                              ref.loc, hint=f"write @{ref.name} alone")
        names = [str(n) for n in getattr(spec, "output_names", ())]
        count = spec.output_count(node.attrs)
        listed = (f"{spec.name} has {count} outputs: "
                  + ", ".join(f"{i} ({n})" if n else str(i)
                              for i, n in enumerate(names + [""] * (count - len(names)))))
        if spec.outputs == 1:
            raise NetdslError(f"{written}: {name} ({spec.name}) has only one output", ref.loc,
                              hint=f"write @{ref.name}")
        if ref.port.isdigit():
            index = int(ref.port)
            if index >= count:
                raise NetdslError(f"{written}: {name} has no output {index}", ref.loc,
                                  hint=listed)
            return (name, index)
        lowered = [n.lower() for n in names]
        if ref.port.lower() not in lowered:
            raise NetdslError(f"{written}: {spec.name} has no output named '{ref.port}'",
                              ref.loc, hint=did_you_mean(ref.port, names) or listed)
        return (name, lowered.index(ref.port.lower()))


def build_graph(g: nx.DiGraph, nodes: dict[str, Node], refs: list[tuple[ast.Ref, Scope]],
                namer: Namer, first_output, first_loc: Location | None) -> nx.DiGraph:
    """Fill ``g`` with ``nodes`` (resolving their pending inputs), refuse cycles, and give the
    first chain statement a softmax_xent loss when it does not end in a loss already."""
    resolver = RefResolver(refs, nodes)
    for index in range(len(refs)):   # also the tensor arguments that a block never reads
        resolver.resolve(index)
    via_ref: dict[tuple[str, str], Location] = {}   # edge -> the reference that made it
    for n in nodes.values():
        inputs = []
        for value in n.inputs:
            tensor = resolver.tensor(value)
            if isinstance(value, PendingRef):
                via_ref.setdefault((tensor[0], n.name), refs[value.index][0].loc)
            inputs.append(tensor)
        n.inputs = inputs
    # Every node first, then the edges, so that the graph's node order is the file's order.
    g.add_nodes_from((n.name, {"node": n}) for n in nodes.values())
    g.add_edges_from((src, n.name) for n in nodes.values() for src, _port in n.inputs)
    _refuse_cycles(g, via_ref)
    if first_output is not None:
        _add_implicit_loss(g, namer, resolver.tensor(first_output), first_loc)
    return g


def _refuse_cycles(g: nx.DiGraph, via_ref: dict) -> None:
    # The common case first: find_cycle visits edges through slow views (seconds on 60,000
    # layers); the acyclicity test is a quick topological pass.
    if nx.is_directed_acyclic_graph(g):
        return
    try:
        edges = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        return
    path = [u for u, _v in edges] + [edges[0][0]]
    loc = next((via_ref[(u, v)] for u, v in edges if (u, v) in via_ref), None)
    if loc is None:
        loc = g.nodes[path[0]]["node"].loc
    raise NetdslError(f"cycle: {' → '.join(path)}", loc,
                      hint="a reference may only point to an element that does not depend on it")


def _add_implicit_loss(g: nx.DiGraph, namer: Namer, tensor: tuple, loc: Location | None) -> None:
    last = g.nodes[tensor[0]]["node"]
    if get(last.op).role == "loss":
        return
    spec = get("softmax_xent")
    name = namer.fresh("loss", loc)
    node = Node(name, spec.name, bind_args(spec, [], {}), [tensor], loc, (), {"implicit": True})
    g.add_node(name, node=node)
    g.add_edge(tensor[0], name)
