"""Graph → graph optimisation passes, run in a pipeline with a verifier between them.

A pass is a function ``pass_(g) -> bool`` that changes ``g`` in place and says whether it
changed anything. Passes must be idempotent (a second run reports no change) and must leave
the network's outputs *and* gradients unchanged in the mode they are run for (tests check both).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import networkx as nx

from . import graph as G
from .layers import get, lookup


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
            if not 0 <= port < get(G.node(g, src).op).outputs:
                fail(f"{name}: reads port {port} of {src}")
        if rec.out_shapes is not None:
            if len(rec.out_shapes) != spec.outputs:
                fail(f"{name}: {len(rec.out_shapes)} output shapes for {spec.outputs} outputs")
            for (src, port), shape in zip(rec.inputs, rec.in_shapes or ()):
                if G.node(g, src).out_shapes[port] != shape:
                    fail(f"{name}: input shape {shape} is stale (producer {src} now gives "
                         f"{G.node(g, src).out_shapes[port]})")
    if not G.losses(g):
        fail("the network has no loss head")
    sources = [n for n in g.nodes if get(G.node(g, n).op).role == "source"]
    if len(sources) != 1:
        fail(f"the network needs exactly one INPUT, found {len(sources)}: {sources}")


def eliminate_dead_nodes(g: nx.DiGraph) -> bool:
    """Remove nodes that no loss depends on; they cannot affect training or predictions."""
    live = set()
    for head in G.losses(g):
        live.add(head.name)
        live |= nx.ancestors(g, head.name)
    dead = [n for n in g.nodes if n not in live]
    for name in dead:
        rec = G.node(g, name)
        g.graph.setdefault("warnings", []).append(
            (f"{name} ({rec.op}) does not lead to any loss and was removed", rec.loc))
    g.remove_nodes_from(dead)
    return bool(dead)


def _bypass(g: nx.DiGraph, should_remove: Callable[[G.Node], bool]) -> bool:
    """Remove single-input, single-output nodes for which ``should_remove`` holds, wiring their
    consumers to their input."""
    changed = False
    for rec in G.nodes(g):
        if len(rec.inputs) == 1 and get(rec.op).outputs == 1 and should_remove(rec):
            G.remove_node(g, rec.name, replacement=rec.inputs[0])
            changed = True
    return changed


def remove_inference_dropout(g: nx.DiGraph) -> bool:
    """At inference a train-only layer (dropout) is the identity: drop it from the graph."""
    return _bypass(g, lambda rec: get(rec.op).train_only)


def remove_identities(g: nx.DiGraph) -> bool:
    """Identity layers (written as explicit branches, e.g. `concat{identity | @skip}`) do nothing."""
    return _bypass(g, lambda rec: rec.op == "identity")


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[[nx.DiGraph], bool]
    modes: tuple[str, ...]  # "train" and/or "infer": where the pass is valid


PIPELINE = (
    Pass("eliminate_dead_nodes", eliminate_dead_nodes, ("train", "infer")),
    Pass("remove_identities", remove_identities, ("train", "infer")),
    Pass("remove_inference_dropout", remove_inference_dropout, ("infer",)),
)


def run_passes(g: nx.DiGraph, mode: str = "train", passes=PIPELINE) -> list[tuple[str, bool]]:
    """Run the passes valid in ``mode`` in order, verifying after each. Returns (name, changed)."""
    log = []
    verify(g, "shape inference")
    for p in passes:
        if mode in p.modes:
            changed = p.run(g)
            verify(g, p.name)
            log.append((p.name, changed))
    return log
