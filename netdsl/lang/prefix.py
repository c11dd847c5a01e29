"""Shapes while expanding: what ``IN.c`` (the shape of a block's input) reads.

Expansion builds the graph and shape inference runs after it, but a block that reads ``IN``
needs the shape of what feeds it before its body can be expanded. So the expander builds the
*prefix* — the nodes expanded so far that the block's input depends on — into a graph of its
own and hands it to a shape callback supplied by the compiler (lang comes before compile and
cannot call shape inference itself). The prefix is a copy: the real graph is shaped again,
whole, after expansion.
"""
from __future__ import annotations

from typing import Callable

from ..core.errors import Location, NetdslError
from ..core.graph import Node, new_graph
from .resolve import RefResolver

ShapeFn = Callable   # (graph of the prefix) -> None; annotates every node's out_shapes


def prefix_shape(expander, tensor, loc: Location | None, what: str) -> tuple:
    """The per-example shape of ``tensor`` (a (node, port) pair or a pending reference),
    inferred over the nodes it depends on. ``what`` names the reader for messages."""
    if expander.shapes is None:
        raise NetdslError(f"{what} needs shape inference, which this expansion was not given",
                          loc, hint="compile the program (netdsl.compile) instead of only "
                                    "expanding it")
    resolver = RefResolver(expander.refs, expander.nodes)
    try:
        name, port = resolver.tensor(tensor)
        keep: dict[str, list] = {}
        stack = [name]
        while stack:
            cur = stack.pop()
            if cur in keep:
                continue
            keep[cur] = [resolver.tensor(v) for v in expander.nodes[cur].inputs]
            stack.extend(src for src, _port in keep[cur])
    except NetdslError as err:
        raise NetdslError(f"{what}: the block's input depends on a reference that is not "
                          "expanded yet", loc, detail=err.message,
                          hint="a block reads IN only when what feeds it is written before "
                               "the call") from None
    g = new_graph(expander.graph_name, expander.source)
    g.graph.update(expander.graph_data())
    for node in expander.nodes.values():        # creation order, as in the real graph
        if node.name in keep:
            g.add_node(node.name, node=Node(node.name, node.op, dict(node.attrs),
                                            keep[node.name], node.loc, node.scope,
                                            dict(node.meta)))
    g.add_edges_from((src, dst) for dst, inputs in keep.items() for src, _port in inputs)
    try:
        expander.shapes(g)
    except NetdslError as err:
        err.calls = ()        # a mistake before the call, not inside the block being called
        raise
    return g.nodes[name]["node"].out_shapes[port]

