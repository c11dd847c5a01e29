"""Training memory: everything one training step holds, and the largest batch a budget allows.

The step's own buffers (activations and caches kept for backward, workspace, parameter
gradients) come from the memory planner (netdsl/runtime/memory.py), which walks the executor's plan.
Around them live, for the whole run:

* the weights: trainable parameters and buffers (batch-norm running statistics);
* the optimizer's per-parameter arrays, as netdsl/train/optim.py allocates them: SGD keeps one
  step scratch (+ a momentum buffer when momentum > 0), Adam keeps m, v and one scratch; a
  weight decay adds one more scratch (the decayed gradient).

The peak of a step is then weights + optimizer arrays + the planned step peak.
"""
from __future__ import annotations

import re

import numpy as np

from ..core.errors import NetdslError
from ..core.graph import nodes
from ..layers import numel

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
          "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(text: str) -> int:
    """'8GB' → 8·10⁹, '512MiB' → 512·2²⁰, '2G' → 2·2³⁰ (a bare letter is binary), '1000' bytes."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS or float(m.group(1)) <= 0:
        raise NetdslError(f"--memory expects a size like 8GB, 512MiB or 2G, got '{text}'")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def optimizer_arrays(optimizer: str, momentum: float = 0.0, weight_decay: float = 0.0) -> int:
    """How many parameter-sized arrays the optimizer keeps (state and reused scratch): the
    run-safety estimate's rule (netdsl/runtime/memory_estimate.py), so both reports agree."""
    from ..runtime.memory_estimate import optimizer_copies
    if optimizer not in ("sgd", "adam"):
        raise NetdslError(f"unknown optimizer '{optimizer}'", hint="use sgd or adam")
    return optimizer_copies(optimizer, momentum, weight_decay)


class TrainMemory:
    """The step plan of a graph, reusable across batch sizes (the plan does not depend on it)."""

    def __init__(self, g, *, optimizer: str, momentum: float = 0.0, weight_decay: float = 0.0,
                 dtype=np.float32, passes=None, kernels: str = "auto"):
        from ..core.graph import copy_graph
        from ..runtime.memory import placeholder_params
        from ..compile.model import BoundModel
        from ..runtime.plan import build_plan
        self.itemsize = np.dtype(dtype).itemsize
        recs = [r for r in nodes(g) if r.param_specs]
        trainable = sum(numel(p.shape) for r in recs for p in r.param_specs.values() if p.trainable)
        buffers = sum(numel(p.shape) for r in recs for p in r.param_specs.values()
                      if not p.trainable)
        self.weights = (trainable + buffers) * self.itemsize
        self.optimizer = optimizer
        self.optimizer_state = (optimizer_arrays(optimizer, momentum, weight_decay) * trainable
                                * self.itemsize)
        model = BoundModel(copy_graph(g), placeholder_params(g, dtype), dtype=dtype)
        model.optimize("train", passes)
        self.plan = build_plan(model.graph, dtype=dtype, kernels=kernels)   # as `run` builds it

    def report(self, batch: int) -> dict:
        """Bytes of each part for ``batch`` examples, and the step's peak."""
        from ..runtime.memory import plan_memory
        mp = plan_memory(self.plan, batch, itemsize=self.itemsize, training=True)
        return {"batch": batch, "optimizer": self.optimizer, "weights": self.weights,
                "gradients": mp.gradients, "optimizer_state": self.optimizer_state,
                "activations_kept": mp.kept, "step_peak": mp.peak, "step_peak_at": mp.at,
                "peak": self.weights + self.optimizer_state + mp.peak}

    def largest_batch(self, budget: int, limit: int = 1 << 24) -> int:
        """The largest batch whose peak fits ``budget`` bytes (0 if not even one example)."""
        if self.report(1)["peak"] > budget:
            return 0
        lo, hi = 1, 2
        while hi <= limit and self.report(hi)["peak"] <= budget:
            lo, hi = hi, hi * 2
        hi = min(hi, limit + 1)
        while hi - lo > 1:          # peak grows with the batch: bisect the last one that fits
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.report(mid)["peak"] <= budget else (lo, mid)
        return lo


def format_report(r: dict, budget: int | None = None, fits: int | None = None) -> str:
    """The training-memory block `netdsl summary` prints."""
    from ..compile.summary import human_bytes
    rows = [("weights (parameters and buffers)", r["weights"]),
            ("parameter gradients", r["gradients"]),
            (f"optimizer state ({r['optimizer']}, with scratch)", r["optimizer_state"]),
            ("activations kept for backward", r["activations_kept"]),
            (f"peak of a training step (at {r['step_peak_at']})", r["peak"])]
    width = max(len(k) for k, _ in rows)
    out = [f"training memory, batch {r['batch']}, float32:"]
    out += [f"  {k.ljust(width)}  {human_bytes(v):>11}" for k, v in rows]
    out.append("  (the peak adds weights and optimizer state to the step's own planned peak, "
               "which holds the gradients)")
    if budget is not None:
        out.append(f"largest batch that fits {human_bytes(budget)}: "
                   + (f"{fits:,}" if fits else "none (not even one example)"))
    return "\n".join(out)
