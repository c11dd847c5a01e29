"""Shapes while expanding: what ``IN.c`` (the shape of a block's input) reads.

Expansion builds the graph and shape inference runs after it, but a block that reads ``IN``
needs the shape of what feeds it before its body can be expanded. So the expander builds the
*prefix* — the nodes expanded so far that the block's input depends on — into a graph of its
own and hands it to a shape callback supplied by the compiler (lang comes before compile and
cannot call shape inference itself). The prefix is a copy, kept and grown from call to call (each
call shapes only its new nodes); the real graph is shaped again, whole, after expansion.
"""
from __future__ import annotations

from typing import Callable

from ..core.errors import Location, NetdslError
from ..core.graph import Node, new_graph
from ..layers import AUTO
from .resolve import RefResolver

ShapeFn = Callable   # (prefix graph, new Node records producers first) -> None: shapes them


def prefix_shape(expander, tensor, loc: Location | None, what: str) -> tuple:
    """The per-example shape of ``tensor`` (a (node, port) pair or a pending reference),
    inferred over the nodes it depends on. ``what`` names the reader for messages."""
    if expander.shapes is None:
        raise NetdslError(f"{what} needs shape inference, which this expansion was not given",
                          loc, hint="compile the program (netdsl.compile) instead of only "
                                    "expanding it")
    g = expander.prefix_graph
    if g is None:
        g = expander.prefix_graph = new_graph(expander.graph_name, expander.source)
        g.graph.update(expander.graph_data())
    resolver = RefResolver(expander.refs, expander.nodes)
    try:
        name, port = resolver.tensor(tensor)
        order = _new_ancestors(name, expander.nodes, resolver, g, expander.prefix_failed)
    except NetdslError as err:
        if err in expander.prefix_failed.values():
            raise                   # shaping this part failed before: the same error again
        new = NetdslError(f"{what}: the block's input depends on a reference that is not "
                          "expanded yet", loc, detail=err.message,
                          hint="a block reads IN only when what feeds it is written before "
                               "the call")
        new.calls = ()              # located at the call already
        raise new from None
    # The nodes shaped by earlier calls stay (with any projection shortcut inserted for them),
    # so each call shapes only what is new: the cost stays linear in the network's size.
    copies = [Node(n.name, n.op, dict(n.attrs), inputs, n.loc, n.scope, dict(n.meta))
              for n, inputs in order]
    g.add_nodes_from((c.name, {"node": c}) for c in copies)
    g.add_edges_from((src, c.name) for c in copies for src, _port in c.inputs)
    try:
        expander.shapes(g, copies)
    except NetdslError as err:
        err.calls = ()        # a mistake before the call, not inside the block being called
        # Nodes that could not be shaped leave the prefix; a later call that depends on them
        # gets this error again (reported once) instead of shaping them again.
        failed = [c.name for c in copies if c.out_shapes is None]
        g.remove_nodes_from(failed)
        expander.prefix_failed.update(dict.fromkeys(failed, err))
        raise
    # A width chosen by default here must be the one the full compile chooses: a bare FC's
    # units depend on what follows it (the class count before a loss), which is not expanded
    # yet. The compiler compares them (netdsl.compile.shapes.resolve_auto).
    for n, c in zip((n for n, _inputs in order), copies):
        for key in ("units", "filters"):
            if n.attrs.get(key) is AUTO:
                expander.widths_read[n.name] = (key, c.attrs[key], loc)
    return g.nodes[name]["node"].out_shapes[port]



def _new_ancestors(name: str, nodes: dict, resolver: RefResolver, g, failed: dict) -> list:
    """``[(node, resolved inputs), ...]`` for ``name`` and the nodes it depends on that ``g``
    lacks, producers first (a depth-first post-order, without recursion); the error of a
    node in ``failed`` when it depends on one."""
    order, seen, stack, inputs_of = [], set(), [(name, False)], {}
    while stack:
        cur, done = stack.pop()
        if done:
            order.append((nodes[cur], inputs_of[cur]))
            continue
        if cur in seen or cur in g:
            continue
        if cur in failed:
            # Everything on the way depends on it too: later walks stop at the first of them.
            failed.update(dict.fromkeys(seen, failed[cur]))
            raise failed[cur].with_traceback(None)   # re-raised as often as it is met
        seen.add(cur)
        inputs_of[cur] = [resolver.tensor(v) for v in nodes[cur].inputs]
        stack.append((cur, True))
        stack.extend((src, False) for src, _port in reversed(inputs_of[cur]))
    return order
