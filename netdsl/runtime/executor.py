"""Running a bound model: forward, reverse-mode autodiff, parameters.

The executor compiles its model's graph into a plan (netdsl/runtime/plan.py: one step per node, kernels
chosen per node, fused activations, per-layer recompute) and walks it once forward, keeping
each layer's cache, then once backward in reverse, summing gradients where a tensor fans out to
several consumers. A tensor is dropped as soon as its last reader has run, in training too:
what backward needs is held by the caches, so memory follows liveness (netdsl/runtime/memory.py plans
the same walk). The same code runs on NumPy and CuPy through ``xp``.
"""
from __future__ import annotations

from contextlib import nullcontext as _nothing
from dataclasses import dataclass, replace

import networkx as nx
import numpy as np

from ..core.backend import to_numpy
from ..core.errors import NetdslError
from ..layers import Ctx
from ..compile.model import BoundModel
from ..compile.verify import main_head
from ..core.workspace import Scratch, keep_freed_memory, single_threaded_blas
from .kernels import weights_changed
from .carve import ENABLED as ARENA, Carver
from .residual import FUSE_RESIDUAL, fuse_residual
from .plan import Step, add_input_grads, build_plan, run_backward, run_forward  # noqa: F401  (Step: public)


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

    def __init__(self, g, *, xp=np, dtype=np.float32, seed: int = 0, params=None,
                 passes=None, kernels: str = "auto"):
        """``g`` is a shape-annotated graph (weights drawn from ``seed`` unless ``params`` are
        given) or a :class:`BoundModel`. ``passes``: None runs the training pipeline on the
        executor's own copy of the graph, ``()`` or "O0" none, a list the named ones.
        ``kernels``: the provider asked of :func:`netdsl.runtime.kernels.select`: 'numpy', 'onednn',
        or 'auto' (onednn where ``netdsl.runtime.kernels.available('onednn')``, else numpy)."""
        if isinstance(g, BoundModel):
            model = g
        else:
            from ..core.graph import copy_graph
            g = copy_graph(g)   # passes rewrite it: the caller's graph stays as compiled
            model = (BoundModel(g, {n: dict(t) for n, t in params.items()}, xp=xp, dtype=dtype)
                     if params is not None else BoundModel.init(g, xp=xp, dtype=dtype, seed=seed))
        self.model = model
        self.xp, self.dtype = model.xp, model.dtype
        self.passes, self.kernels = passes, kernels
        self.pass_log = model.optimize("train", passes)
        self.plan = build_plan(model.graph, dtype=self.dtype, kernels=kernels, xp=self.xp)
        self.sources = [i for i, st in enumerate(self.plan) if st.spec.role == "source"]
        self.heads = [i for i, st in enumerate(self.plan) if st.spec.role == "loss"]
        if len(self.sources) != 1:
            raise ValueError(f"expected one INPUT, found {len(self.sources)}")
        if not self.heads:
            raise ValueError("the network has no loss head")
        main = main_head(model.graph).name
        self.main_head = next(i for i in self.heads if self.plan[i].node.name == main)
        # Independent streams: weights are drawn once from one; dropout masks come from a
        # stream the trainer re-seeds per step (reseed), so a resumed run replays them exactly.
        self.seed = seed
        self.xp_rng = None
        self.bn_sync = None   # sync_bn under data parallelism: batch sums over ranks (Ctx.sync)
        self.reseed(0)
        self.grads: dict = {}
        self._caches = None
        # One region for every kernel's temporaries (netdsl/core/workspace.py), reset per call.
        # NumPy only: CuPy's memory pool already recycles device memory.
        self.scratch = Scratch(np) if self.xp is np else None
        # Activations and gradients carved from the memory planner's arena (runtime/carve.py)
        self.carver = Carver(self.plan, np.dtype(self.dtype).itemsize) \
            if self.xp is np and ARENA else None
        self._carved = None   # the carver while a training forward's caches await backward
        if self.xp is np:
            keep_freed_memory()   # no page faults for memory freed and reused every step

    @property
    def graph(self) -> nx.DiGraph:
        return self.model.graph

    @property
    def params(self) -> dict:
        """``{node: {name: array}}``: every parameter and buffer (the bound model's)."""
        return self.model.params

    @params.setter
    def params(self, value: dict) -> None:
        self.model.params = value
        weights_changed()

    def reseed(self, step: int) -> None:
        """Make the dropout masks of the next forward a function of (seed, step) alone."""
        if hasattr(self.xp.random, "default_rng"):
            self.xp_rng = self.xp.random.default_rng(
                np.random.SeedSequence(self.seed, spawn_key=(1, step)).generate_state(1)[0])

    @property
    def input_shape(self):
        return self.plan[self.sources[0]].node.out_shape

    def trainable(self):
        """(node, name) pairs of the parameters the optimizer updates."""
        return self.model.trainable()

    def forward(self, x, labels=None, *, training: bool = False, keep: bool | None = None):
        """Run the network on a batch. With ``keep`` (default: when training with labels) the
        caches are kept for :meth:`backward`. Either way a tensor is dropped once its last
        reader has run (the caches keep what backward needs)."""
        xp = self.xp
        keep = training and labels is not None if keep is None else keep
        x = xp.asarray(x, dtype=self.dtype)
        if labels is not None and xp is not np and isinstance(labels, np.ndarray):
            self.check_labels(labels)   # on the host now: on the device it would sync
        # (a forward whose caches do not match its mode, e.g. an inference forward kept for
        # backward, runs kernels the planner's layouts do not describe: fresh arrays)
        arena = self.carver.start(len(x), keep) \
            if self.carver is not None and keep == training else None
        ctx = Ctx(xp=xp, training=training, rng=self.xp_rng,
                  labels=None if labels is None else xp.asarray(labels), dtype=self.dtype,
                  scratch=self.scratch, sync=self.bn_sync if training else None, arena=arena)
        try:
            with single_threaded_blas() if xp is np else _nothing():
                return self._forward(ctx, x, labels, keep)
        finally:
            self._settle_scratch()

    def _settle_scratch(self) -> None:
        """Grow the Scratch region now, at the end of a pass, if its last kernel call needed
        more (it grows only at a reset): the next step then allocates nothing."""
        if self.scratch is not None:
            self.scratch.reset()

    def _forward(self, ctx, x, labels, keep):
        plan, params = self.plan, self.params
        values: list = [None] * len(plan)
        remaining = [st.consumers for st in plan]
        caches = [None] * len(plan) if keep else None
        logits_at = self._logits_index()
        losses = {}
        arena = ctx.arena
        for i, st in enumerate(plan):
            if st.spec.role == "loss" and labels is None:
                continue
            if arena is not None:
                arena.at(i)
            if st.spec.role == "source":
                ins = [x]
            else:
                ins = [values[j] if plan[j].spec.outputs == 1 else values[j][p]
                       for j, p in st.inputs]
            out, cache = run_forward(st, ctx, params.get(st.node.name, {}), ins)
            if arena is not None and arena.probing:
                arena.check_forward(i, ins, out, cache)
            del ins
            values[i] = out
            if keep:
                caches[i] = cache
            del cache
            if st.spec.role == "loss":
                losses[st.node.name] = out
            for j, _ in st.inputs:  # drop what no later layer reads
                remaining[j] -= 1
                if remaining[j] == 0 and j != logits_at:
                    values[j] = None
        self._caches = caches
        self._carved = arena if keep else None
        if arena is not None and not keep:
            arena.finish()
        logits_src, logits_port = plan[self.main_head].inputs[0]
        logits = values[logits_src] if plan[logits_src].spec.outputs == 1 \
            else values[logits_src][logits_port]
        total = sum(losses.values()) if labels is not None else None
        return ForwardResult(total, losses, logits)

    def check_labels(self, labels: np.ndarray) -> None:
        """A NetdslError when a NumPy label is outside the classes of a softmax_xent head.
        Run on the host: :meth:`forward` calls it before uploading NumPy labels to a GPU (the
        loss checks only host labels, since a device check waits for the GPU every step), the
        trainer once for its whole dataset."""
        from ..layers.loss import check_label_range
        from ..layers.loss_targets import TARGET_LOSSES, target_problem
        for i in self.heads:
            st = self.plan[i]
            if st.spec.name in TARGET_LOSSES:
                problem = target_problem(st.spec.name, labels, st.node.in_shapes[0][0])
                if problem:
                    raise NetdslError(problem, st.node.loc,
                                      hint="the last FC needs one unit per target column")
            elif st.spec.name == "softmax_xent":
                if np.asarray(labels).dtype.kind == "f" or np.asarray(labels).ndim != 1:
                    raise NetdslError(
                        f"{st.node.name}: the data has float or N×k targets, not one class "
                        f"label per example", st.node.loc,
                        hint="end the net in MSE, L1 or SMOOTH_L1 (regression) or BCE "
                             "(multi-label): FC(k) -> MSE; for one-hot class labels save "
                             "y.argmax(axis=1) instead")
                check_label_range(labels, st.node.in_shapes[0][0])

    def _logits_index(self) -> int:
        return self.plan[self.main_head].inputs[0][0]

    def backward(self, on_grads=None) -> dict:
        """Gradients of the summed loss w.r.t. every trainable parameter, after a training
        forward with labels. Returns (and stores in ``self.grads``) ``{node: {name: grad}}``.
        ``on_grads(node, dparams)`` is called as soon as a layer's gradients are ready (data
        parallel training starts their all-reduce while the earlier layers' backward runs)."""
        if self._caches is None:
            raise RuntimeError("backward() needs a forward(..., labels, training=True) first")
        try:
            with single_threaded_blas() if self.xp is np else _nothing():
                return self._backward(on_grads)
        finally:
            self._settle_scratch()

    def _backward(self, on_grads=None) -> dict:
        xp, plan, caches, arena = self.xp, self.plan, self._caches, self._carved
        self._caches = self._carved = None
        ctx = Ctx(xp=xp, training=True, rng=self.xp_rng, dtype=self.dtype, scratch=self.scratch,
                  sync=self.bn_sync, arena=arena)
        # Layers that read only the data (the first conv) need not compute d(input).
        data_ctx = Ctx(xp=xp, training=True, rng=self.xp_rng, dtype=self.dtype, input_grad=False,
                       scratch=self.scratch, sync=self.bn_sync, arena=arena)
        # every step but the prediction's (the caller holds it) may overwrite its output
        own_ctx, own_data_ctx = (replace(c, overwrite_output=True) for c in (ctx, data_ctx))
        prediction = self._logits_index()
        douts: list = [None] * len(plan)
        for i in self.heads:
            douts[i] = xp.asarray(1.0, dtype=self.dtype)
        grads = {}
        for i in range(len(plan) - 1, -1, -1):
            st = plan[i]
            if douts[i] is None or st.spec.role == "source":
                caches[i] = None
                continue
            # dout: for several outputs a tuple, None where a port got no gradient. Handed over
            # in a list the step empties, so that nothing here keeps it (or the cache) alive.
            held = [caches[i], douts[i]]
            probe = douts[i] if arena is not None and arena.probing else None
            caches[i] = douts[i] = None
            if arena is not None:
                arena.at(i)
            if i == prediction:
                c = data_ctx if st.data_only else ctx
            else:
                c = own_data_ctx if st.data_only else own_ctx
            dins, dparams = run_backward(st, c, self.params.get(st.node.name, {}), held)
            if probe is not None:
                arena.check_backward(i, probe, dins)
                probe = None
            if dparams:
                grads[st.node.name] = dparams
                if on_grads is not None:
                    on_grads(st.node.name, dparams)
            add_input_grads(plan, douts, st, dins, arena)
            dins = None   # hold no gradient into the next step (a fused ReLU replaces it)
        self.grads = grads
        if arena is not None:
            arena.finish()
        weights_changed()   # the optimizer updates the weights next: prepacked copies are stale
        return grads

    def for_inference(self) -> "Executor":
        """An executor of the inference pipeline (dropout and auxiliary heads removed, batch
        norm folded into the current weights, activations fused) sharing the other weights."""
        ex = Executor(self.model.for_inference(self.passes), passes=(), kernels=self.kernels,
                      seed=self.seed)
        if FUSE_RESIDUAL:   # conv → add → relu as one oneDNN call (no backward needed here)
            fuse_residual(ex.plan)
        return ex

    def predict(self, x, batch_size: int = 256):
        """Class predictions of the main head for a whole array, batch by batch (NumPy out),
        computed by the inference pipeline on the current weights."""
        ex = self.for_inference()
        out = []
        for start in range(0, len(x), batch_size):
            logits = ex.forward(x[start:start + batch_size], training=False).logits
            out.append(to_numpy(self.xp.argmax(logits, axis=1)))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
