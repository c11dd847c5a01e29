"""The compiler's invariants, checked between stages: the graph verifier, the bound model's
weight verifier, and the loss heads both read (which heads there are, which one predicts).

A failed check is a ``VerifyError``: a bug in a compiler stage or pass, never the user's input
(that is a ``NetdslError`` raised earlier, with its source location).
"""
from __future__ import annotations

import networkx as nx

from ..core import graph as G
from ..layers import get, lookup


class VerifyError(AssertionError):
    """The graph broke an invariant: a bug in a compiler stage, not in the user's program."""


def verify(g: nx.DiGraph, stage: str = "?") -> None:
    """Check the invariants every stage must keep; raise VerifyError naming the stage."""
    def fail(msg):
        raise VerifyError(f"after {stage}: {msg}")

    if not nx.is_directed_acyclic_graph(g):
        fail(f"graph has a cycle: {nx.find_cycle(g)}")
    for name in g.nodes:
        rec = g.nodes[name].get("node")
        if rec is None or rec.name != name:
            fail(f"node {name!r} has no matching Node record")
        spec = lookup(rec.op)
        if spec is None:
            fail(f"{name}: unknown op {rec.op!r}")
        problem = spec.input_count_problem(len(rec.inputs))
        if problem:
            fail(f"{name}: {problem}")
        if set(src for src, _ in rec.inputs) != set(g.predecessors(name)):
            fail(f"{name}: inputs {rec.inputs} disagree with edges {list(g.predecessors(name))}")
        for src, port in rec.inputs:
            producer = G.node(g, src)
            if not 0 <= port < get(producer.op).output_count(producer.attrs):
                fail(f"{name}: reads port {port} of {src}")
        if rec.out_shapes is not None:
            if len(rec.out_shapes) != spec.output_count(rec.attrs):
                fail(f"{name}: {len(rec.out_shapes)} output shapes for "
                     f"{spec.output_count(rec.attrs)} outputs")
            for (src, port), shape in zip(rec.inputs, rec.in_shapes or ()):
                if G.node(g, src).out_shapes[port] != shape:
                    fail(f"{name}: input shape {shape} is stale (producer {src} now gives "
                         f"{G.node(g, src).out_shapes[port]})")
    if not losses(g):
        fail("the network has no loss head")
    sources = [n for n in g.nodes if get(G.node(g, n).op).role == "source"]
    if len(sources) != 1:
        fail(f"the network needs exactly one INPUT, found {len(sources)}: {sources}")


def verify_params(g: nx.DiGraph, params: dict, stage: str = "?") -> None:
    """Every node holds exactly the parameters its spec computes from the node's attributes and
    input shapes *now* (not the specs stored at the last shape inference), with those shapes."""
    for rec in G.records(g):
        specs = get(rec.op).params(rec.attrs, list(rec.in_shapes or ()))
        if set(specs) != set(rec.param_specs or {}):
            raise VerifyError(f"after {stage}: {rec.name}'s stored parameter specs "
                              f"{sorted(rec.param_specs or {})} are stale: its attributes give "
                              f"{sorted(specs)} (a pass must call reinfer())")
        have = params.get(rec.name, {})
        if set(have) != set(specs):
            raise VerifyError(f"after {stage}: {rec.name} holds parameters {sorted(have)} but its "
                              f"spec asks for {sorted(specs)}")
        for k, ps in specs.items():
            if tuple(have[k].shape) != tuple(ps.shape):
                raise VerifyError(f"after {stage}: {rec.name}.{k} has shape {have[k].shape}, the "
                                  f"spec computes {tuple(ps.shape)} from its attributes")
    extra = set(params) - set(g.nodes)
    if extra:
        raise VerifyError(f"after {stage}: weights for nodes not in the graph: {sorted(extra)}")


def losses(g: nx.DiGraph) -> list[G.Node]:
    """The loss heads of the network, in insertion (source) order (no topological sort: the
    verifier asks after every pass, and sorting 100,000 nodes takes half a second)."""
    return [rec for rec in G.records(g) if get(rec.op).role == "loss"]


def main_head(g: nx.DiGraph) -> G.Node:
    """The head whose input is the network's prediction: the loss with the largest weight, the
    first such in topological order (GoogLeNet's 0.3-weighted auxiliary heads are not it)."""
    heads = losses(g)
    if not heads:
        raise VerifyError("the network has no loss head")
    if len(heads) > 1:   # ties go to the first in topological order
        heads = [rec for rec in G.nodes(g) if get(rec.op).role == "loss"]
    best = max(range(len(heads)), key=lambda i: (heads[i].attrs.get("weight", 1.0), -i))
    return heads[best]
