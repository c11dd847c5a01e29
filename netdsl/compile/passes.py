"""Graph → graph optimisation passes, run in a pipeline with a verifier between them.

A pass is a function ``pass_(g) -> bool`` that changes ``g`` in place and says whether it
changed anything. Passes must be idempotent (a second run reports no change) and must leave
the network's outputs *and* gradients unchanged in the mode they are run for (tests check both).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import networkx as nx
import numpy as np

from ..core import graph as G
from ..layers import get
from .verify import losses, main_head, verify


def eliminate_dead_nodes(g: nx.DiGraph) -> bool:
    """Remove nodes that no loss depends on; they cannot affect training or predictions."""
    live = set()
    for head in losses(g):
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


def _uses(g: nx.DiGraph, name: str) -> int:
    """How many inputs (over all consumers) read any output of ``name``."""
    return sum(1 for c in g.successors(name) for src, _ in G.node(g, c).inputs if src == name)


def fuse_activations(g: nx.DiGraph) -> bool:
    """conv/fc/batchnorm/add → activation becomes one node that applies the activation to its
    own fresh output in place (``meta["act"]``): one buffer and one memory pass fewer, and the
    form a fused kernel takes (conv + bias + ReLU/tanh/sigmoid as oneDNN post-ops; the
    residual add + ReLU as one binary call). Which activations: those whose registry entry has
    an in-place form (``LayerSpec.inplace``: an element-wise activation differentiated from
    its output alone). Legal when the activation is the producer's only reader, and the
    producer does not cache its output (these four do not)."""
    changed = False
    for rec in G.nodes(g):
        if not fusable_activation(rec.op) or len(rec.inputs) != 1:
            continue
        src, port = rec.inputs[0]
        prod = G.node(g, src)
        if prod.op not in FUSABLE or prod.meta.get("act") or _uses(g, src) != 1:
            continue
        prod.meta["act"] = rec.op
        G.remove_node(g, rec.name, replacement=(src, port))
        changed = True
    return changed


def max_pool_first(g: nx.DiGraph) -> bool:
    """activation → max pooling becomes max pooling → activation, for an activation whose
    registry entry says they commute (``LayerSpec.commutes_with_max``: ReLU, max(relu(x)) =
    relu(max(x)), and where ties move a window's gradient the gradient is 0) and which only the
    pool reads: the same outputs and gradients, with the activation and its gradient on the
    pooled map (a quarter of the elements for 2×2 windows), and the map before the pool no
    longer kept for the activation's backward (oneDNN's max pooling keeps its indices). Run
    before ``fuse_activations`` in training; cs231n's step 39.6 → 39.0 ms, its peak 39.4 →
    28.5 MB (docs/performance.md). Not at inference, where the ReLU is a free conv post-op."""
    changed = False
    for pool in G.nodes(g):
        if pool.op not in ("pool", "maxpool") or pool.attrs.get("kind") != "max" \
                or len(pool.inputs) != 1 or len(pool.out_shapes or ()) != 1:
            continue
        act = G.node(g, pool.inputs[0][0])
        if not get(act.op).commutes_with_max or len(act.inputs) != 1 or act.meta.get("act") \
                or _uses(g, act.name) != 1:
            continue
        for reader in list(g.successors(pool.name)):     # they read the activation now
            G.set_inputs(g, reader, [(act.name, 0) if src == pool.name else (src, port)
                                     for src, port in G.node(g, reader).inputs])
        G.set_inputs(g, pool.name, list(act.inputs))
        G.set_inputs(g, act.name, [(pool.name, 0)])
        pool.in_shapes = act.in_shapes
        act.in_shapes = act.out_shapes = pool.out_shapes
        act.meta["after_pool"], pool.meta["before_act"] = pool.name, act.name   # (shown)
        changed = True
    return changed


FUSABLE = ("conv", "fc", "batchnorm", "add")
"""Producers whose output is a fresh array that no cache of theirs references (the add: the
residual join, whose ReLU after it then costs no memory pass of its own)."""


def fusable_activation(op: str) -> bool:
    """Whether ``op`` is an activation a producer may apply to its own output in place (the
    executor's ``act``): its registry entry has an in-place form (relu, tanh, sigmoid)."""
    return get(op).inplace is not None


def _prune_dead(g: nx.DiGraph) -> bool:
    live = set()
    for head in losses(g):
        live |= {head.name} | nx.ancestors(g, head.name)
    dead = [n for n in g.nodes if n not in live]
    g.remove_nodes_from(dead)
    return bool(dead)


def remove_aux_heads(g: nx.DiGraph) -> bool:
    """At inference only the main head's input (the predictions) is wanted: drop the other loss
    heads, then the branches that fed only them (so they are not computed). Silent, unlike
    ``eliminate_dead_nodes``: the user wrote these branches for training."""
    heads = losses(g)
    if len(heads) < 2:
        return False
    keep = main_head(g).name
    g.remove_nodes_from([h.name for h in heads if h.name != keep])
    _prune_dead(g)
    return True


def fold_batchnorm(model) -> bool:
    """Inference: batch norm after a conv/fc (its only reader) becomes part of that layer's
    weights. With s = γ/√(σ²+ε): W' = W·s per output channel, b' = (b − μ)·s + β; computed in
    float64, then cast. The conv/fc gains a bias if it had none."""
    g, params, changed = model.graph, model.params, False
    for rec in G.nodes(g):
        if rec.op != "batchnorm":
            continue
        src, port = rec.inputs[0]
        prod = G.node(g, src)
        if prod.op not in ("conv", "fc") or prod.meta.get("act") or _uses(g, src) != 1:
            continue
        bn = {k: _f64(v) for k, v in params[rec.name].items()}
        scale = bn["gamma"] / np.sqrt(bn["running_var"] + rec.attrs["eps"])
        w = params[src]["weight"]
        b = _f64(params[src]["bias"]) if "bias" in params[src] else 0.0
        xp = _xp_of(w)
        params[src] = {"weight": xp.asarray((_f64(w) * scale).astype(w.dtype)),
                       "bias": xp.asarray(((b - bn["running_mean"]) * scale + bn["beta"])
                                          .astype(w.dtype))}
        prod.attrs["bias"] = True
        prod.meta["folded"] = rec.name
        if rec.meta.get("act"):                 # BN+ReLU fused earlier: the ReLU moves along
            prod.meta["act"] = rec.meta["act"]
        G.remove_node(g, rec.name, replacement=(src, port))
        del params[rec.name]
        changed = True
    return changed


def _f64(a):
    return np.asarray(a.get() if hasattr(a, "get") else a, dtype=np.float64)


def _xp_of(a):
    if hasattr(a, "get"):  # a CuPy array: put the folded weights back on the device
        import cupy
        return cupy
    return np


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable          # (graph) -> bool, or (BoundModel) -> bool when ``weights``
    modes: tuple[str, ...]  # "train" and/or "infer": where the pass is valid
    weights: bool = False   # needs the bound model (rewrites weights), not just the graph


PIPELINE = (
    Pass("eliminate_dead_nodes", eliminate_dead_nodes, ("train", "infer")),
    Pass("remove_identities", remove_identities, ("train", "infer")),
    Pass("remove_inference_dropout", remove_inference_dropout, ("infer",)),
)
"""The graph-only passes the compiler driver runs before any weight exists (stage 5)."""

PASSES = {p.name: p for p in PIPELINE + (
    Pass("remove_aux_heads", remove_aux_heads, ("infer",)),
    Pass("fold_batchnorm", fold_batchnorm, ("infer",), weights=True),
    Pass("max_pool_first", max_pool_first, ("train",)),
    Pass("fuse_activations", fuse_activations, ("train", "infer")),
)}
"""Every pass by name: what ``--passes a,b`` may name."""

PIPELINES = {
    "train": ("eliminate_dead_nodes", "remove_identities", "max_pool_first", "fuse_activations"),
    "infer": ("eliminate_dead_nodes", "remove_identities", "remove_inference_dropout",
              "remove_aux_heads", "fold_batchnorm", "fuse_activations"),
}
"""The passes each kind of command runs on its bound model, in order. Batch norm is folded
before activations are fused so that conv → BN → ReLU ends as one conv with a ReLU."""


def select_passes(mode: str, passes=None) -> list[Pass]:
    """The passes to run in ``mode``: the pipeline when ``passes`` is None, none for ``()`` or
    "O0", else the named ones (a list or "a,b") that are valid in ``mode``, in pipeline order."""
    if passes is None:
        return [PASSES[n] for n in PIPELINES[mode]]
    if isinstance(passes, str):
        passes = () if passes.upper() == "O0" else [p.strip() for p in passes.split(",") if p.strip()]
    for name in passes:
        if name not in PASSES:
            from ..core.errors import NetdslError, did_you_mean
            raise NetdslError(f"unknown pass '{name}'",
                              hint=did_you_mean(name, list(PASSES)) or
                              f"the passes are: {', '.join(PASSES)}")
    order = list(PIPELINES[mode]) + [n for n in PASSES if n not in PIPELINES[mode]]
    return [PASSES[n] for n in order if n in passes and mode in PASSES[n].modes]


def run_model_passes(model, mode: str = "train", passes=None) -> list[tuple[str, bool]]:
    """Run the selected passes on a bound model in place, re-inferring shapes after a change and
    verifying graph and weights after each pass that changed them (as :func:`run_passes`: one
    that reports no change left the verified model as it was). Returns (name, changed) pairs."""
    log = []
    model.verify("binding")
    for p in select_passes(mode, passes):
        changed = p.run(model if p.weights else model.graph)
        if changed:
            for name in [n for n in model.params if n not in model.graph]:
                del model.params[name]  # weights of removed nodes go with them
            model.reinfer()
            model.verify(p.name)
        log.append((p.name, changed))
    return log


def run_passes(g: nx.DiGraph, mode: str = "train", passes=PIPELINE) -> list[tuple[str, bool]]:
    """Run the passes valid in ``mode`` in order, verifying after each that changed the graph
    (a pass that reports no change left the verified graph as it was: re-verifying a 60,000-node
    graph costs about a second). Returns (name, changed)."""
    log = []
    verify(g, "shape inference")
    for p in passes:
        if mode in p.modes:
            changed = p.run(g)
            if changed:
                verify(g, p.name)
            log.append((p.name, changed))
    return log
