"""Running a compiled graph: forward, reverse-mode autodiff, parameters.

The executor walks a flat plan (the graph in topological order) once forward, keeping each
layer's cache, then once backward in reverse, summing gradients where a tensor fans out to
several consumers. The same code runs on NumPy and CuPy through ``xp``.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from . import graph as G
from .layers import Ctx, get
from .layers.init import init_param


@dataclass
class Step:
    node: G.Node
    spec: object
    inputs: list          # [(producer index in plan, port)]
    consumers: int        # how many inputs read this step's outputs (for freeing memory)


@dataclass
class ForwardResult:
    loss: object          # total weighted loss (xp scalar) or None without labels
    losses: dict          # head name -> loss value
    logits: object        # input of the main head: the network's predictions


class Executor:
    """Forward/backward over a shape-annotated graph.

    ``params[node][name]`` holds every parameter and buffer; ``grads`` mirrors the trainable
    ones after :meth:`backward`.
    """

    def __init__(self, g: nx.DiGraph, *, xp=np, dtype=np.float32, seed: int = 0, params=None):
        self.graph = g
        self.xp = xp
        self.dtype = dtype
        order = G.nodes(g)
        index = {rec.name: i for i, rec in enumerate(order)}
        uses = {rec.name: 0 for rec in order}
        for rec in order:
            for src, _ in rec.inputs:
                uses[src] += 1
        self.plan = [Step(rec, get(rec.op), [(index[s], p) for s, p in rec.inputs], uses[rec.name])
                     for rec in order]
        self.sources = [i for i, st in enumerate(self.plan) if st.spec.role == "source"]
        self.heads = [i for i, st in enumerate(self.plan) if st.spec.role == "loss"]
        if len(self.sources) != 1:
            raise ValueError(f"expected one INPUT, found {len(self.sources)}")
        if not self.heads:
            raise ValueError("the network has no loss head")
        # The main head (predictions, accuracy) is the loss with the largest weight, the first
        # such in source order: GoogLeNet's 0.3-weighted auxiliary heads are not it.
        self.main_head = max(self.heads, key=lambda i: (self.plan[i].node.attrs.get("weight", 1.0),
                                                        -i))
        # Independent streams: weights are drawn once from one; dropout masks come from a
        # stream the trainer re-seeds per step (reseed), so a resumed run replays them exactly.
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.xp_rng = None
        self.reseed(0)
        self.params = params if params is not None else self._init_params()
        self.grads: dict = {}
        self._caches = None

    def reseed(self, step: int) -> None:
        """Make the dropout masks of the next forward a function of (seed, step) alone."""
        if hasattr(self.xp.random, "default_rng"):
            self.xp_rng = self.xp.random.default_rng(
                np.random.SeedSequence(self.seed, spawn_key=(1, step)).generate_state(1)[0])

    @property
    def input_shape(self):
        return self.plan[self.sources[0]].node.out_shape

    def _init_params(self) -> dict:
        params = {}
        for st in self.plan:
            specs = st.node.param_specs or {}
            if specs:
                params[st.node.name] = {k: init_param(self.xp, self.rng, ps, self.dtype)
                                        for k, ps in specs.items()}
        return params

    def trainable(self):
        """(node, name) pairs of the parameters the optimizer updates."""
        for st in self.plan:
            for k, ps in (st.node.param_specs or {}).items():
                if ps.trainable:
                    yield st.node.name, k

    def forward(self, x, labels=None, *, training: bool = False, keep: bool | None = None):
        """Run the network on a batch. With ``keep`` (default: when training with labels) the
        caches are kept for :meth:`backward`; otherwise tensors are freed once consumed."""
        xp = self.xp
        keep = training and labels is not None if keep is None else keep
        x = xp.asarray(x, dtype=self.dtype)
        ctx = Ctx(xp=xp, training=training, rng=self.xp_rng,
                  labels=None if labels is None else xp.asarray(labels), dtype=self.dtype)
        values: list = [None] * len(self.plan)
        remaining = [st.consumers for st in self.plan]
        caches = [None] * len(self.plan) if keep else None
        losses = {}
        for i, st in enumerate(self.plan):
            if st.spec.role == "loss" and labels is None:
                continue
            if i in self.sources:
                ins = [x]
            else:
                ins = [values[j] if st_out_is_single(self.plan[j]) else values[j][p]
                       for j, p in st.inputs]
            out, cache = st.spec.forward(ctx, st.node.attrs, self.params.get(st.node.name, {}), ins)
            values[i] = out
            if keep:
                caches[i] = cache
            if st.spec.role == "loss":
                losses[st.node.name] = out
            if not keep:
                for j, _ in st.inputs:  # free what no later layer reads (inference memory)
                    remaining[j] -= 1
                    if remaining[j] == 0 and j != self._logits_index():
                        values[j] = None
        self._caches = caches
        main = self.plan[self.main_head]
        logits_src, logits_port = main.inputs[0]
        logits = values[logits_src] if st_out_is_single(self.plan[logits_src]) \
            else values[logits_src][logits_port]
        total = None
        if labels is not None:
            total = sum(losses.values())
        return ForwardResult(total, losses, logits)

    def _logits_index(self) -> int:
        return self.plan[self.main_head].inputs[0][0]

    def backward(self) -> dict:
        """Gradients of the summed loss w.r.t. every trainable parameter, after a training
        forward with labels. Returns (and stores in ``self.grads``) ``{node: {name: grad}}``."""
        if self._caches is None:
            raise RuntimeError("backward() needs a forward(..., labels, training=True) first")
        xp = self.xp
        ctx = Ctx(xp=xp, training=True, rng=self.xp_rng, dtype=self.dtype)
        # Layers that read only the data (the first conv) need not compute d(input).
        data_ctx = Ctx(xp=xp, training=True, rng=self.xp_rng, dtype=self.dtype, input_grad=False)
        douts: list = [None] * len(self.plan)
        for i in self.heads:
            douts[i] = xp.asarray(1.0, dtype=self.dtype)
        grads = {}
        for i in range(len(self.plan) - 1, -1, -1):
            st = self.plan[i]
            if douts[i] is None or i in self.sources:
                continue
            dout = douts[i]  # for several outputs: a tuple, None where a port got no gradient
            reads_data_only = all(j in self.sources for j, _ in st.inputs)
            dins, dparams = st.spec.backward(data_ctx if reads_data_only else ctx, st.node.attrs, self.params.get(st.node.name, {}),
                                             self._caches[i], dout)
            self._caches[i] = None
            douts[i] = None
            if dparams:
                grads[st.node.name] = dparams
            for (j, port), d in zip(st.inputs, dins):
                if d is None:
                    continue
                if st_out_is_single(self.plan[j]):
                    douts[j] = d if douts[j] is None else douts[j] + d
                else:
                    slot = list(douts[j]) if douts[j] is not None else [None] * self.plan[j].spec.outputs
                    slot[port] = d if slot[port] is None else slot[port] + d
                    douts[j] = tuple(slot)
        self._caches = None
        self.grads = grads
        return grads

    def predict(self, x, batch_size: int = 256):
        """Class predictions of the main head for a whole array, batch by batch (NumPy out)."""
        out = []
        for start in range(0, len(x), batch_size):
            logits = self.forward(x[start:start + batch_size], training=False).logits
            out.append(_to_numpy(self.xp.argmax(logits, axis=1)))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def st_out_is_single(step: Step) -> bool:
    return step.spec.outputs == 1


def _to_numpy(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)
