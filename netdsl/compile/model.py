"""The bound model: a shape-annotated graph together with its weights and training state.

Why one object: a pass that folds batch norm into a convolution must rewrite weights *and* the
graph at once, the executor runs the graph with the weights, a checkpoint saves both and an
exporter reads both. Keeping them apart (a graph here, a ``params`` dict in the executor) made
weight-aware passes impossible. ``BoundModel`` holds

* ``graph``  — the NetworkX DAG after shape inference (netdsl/core/graph.py);
* ``params`` — ``{node: {name: array}}``, every parameter *and* buffer (BN running statistics are
  parameters with ``trainable=False``);
* ``state``  — everything else a run carries along (optimizer slots, step counters), a free-form
  dict that checkpoints save beside the weights.

Passes change a model through :meth:`reinfer` (shape inference again after a rewrite) and are
checked by :meth:`verify`, which adds the weight invariants to the graph verifier: every node has
exactly the parameters its spec computes from its attributes and input shapes, with those shapes.
"""
from __future__ import annotations

import networkx as nx
import numpy as np

from ..core import graph as G
from ..layers.init import init_param
from .verify import verify, verify_params


class BoundModel:
    """Graph + weights + state. Build one with :meth:`init` (fresh weights) or the constructor
    (weights you already have)."""

    def __init__(self, graph: nx.DiGraph, params: dict, *, xp=np, dtype=np.float32,
                 state: dict | None = None):
        self.graph = graph
        self.params = params
        self.xp = xp
        self.dtype = dtype
        self.state = state if state is not None else {}

    @classmethod
    def init(cls, graph: nx.DiGraph, *, xp=np, dtype=np.float32, seed: int = 0) -> "BoundModel":
        """Fresh weights drawn from one NumPy stream seeded with ``seed``, in topological order
        (the order the executor always used, so a seed still gives the same network)."""
        rng = np.random.default_rng(seed)
        params = {}
        for rec in G.nodes(graph):
            if rec.param_specs:
                params[rec.name] = {k: init_param(xp, rng, ps, dtype)
                                    for k, ps in rec.param_specs.items()}
        return cls(graph, params, xp=xp, dtype=dtype)

    # ------------------------------------------------------------------------------------------
    def copy(self, *, share_weights: bool = False) -> "BoundModel":
        """A model whose graph can be rewritten without touching this one. Weights are copied
        unless ``share_weights`` (a pass then must replace, never modify, the arrays it changes)."""
        params = {n: dict(t) if share_weights else {k: v.copy() for k, v in t.items()}
                  for n, t in self.params.items()}
        return BoundModel(G.copy_graph(self.graph), params, xp=self.xp, dtype=self.dtype,
                          state=dict(self.state))

    def reinfer(self) -> None:
        """Shape inference again over the whole graph: a pass that changed attributes (a conv
        that gained a bias) or wiring calls this so that shapes and parameter specs are current."""
        from .shapes import infer_shapes
        infer_shapes(self.graph)

    def verify(self, stage: str = "?") -> None:
        """The graph invariants plus the weight invariants; VerifyError names the stage."""
        verify(self.graph, stage)
        verify_params(self.graph, self.params, stage)

    def node(self, name: str) -> G.Node:
        return G.node(self.graph, name)

    def trainable(self):
        """(node, name) pairs of the parameters the optimizer updates, in topological order."""
        for rec in G.nodes(self.graph):
            for k, ps in (rec.param_specs or {}).items():
                if ps.trainable:
                    yield rec.name, k

    def optimize(self, mode: str = "train", passes=None) -> list[tuple[str, bool]]:
        """Run the ``mode`` pipeline (or the named ``passes``) on this model in place."""
        from .passes import run_model_passes
        return run_model_passes(self, mode, passes)

    def for_inference(self, passes=None) -> "BoundModel":
        """A copy rewritten by the inference pipeline: dropout and auxiliary heads gone, batch
        norm folded into the weights before it, activations fused. Weights the pipeline does
        not rewrite are shared with this model (inference never writes them)."""
        m = self.copy(share_weights=True)
        m.optimize("infer", passes)
        return m
