"""`netdsl lr-find`: the learning-rate range test of Smith (2017, "Cyclical learning rates for
training neural networks", section 3.3), as fastai's ``lr_find`` runs it.

From the network's seeded initial weights, train ``steps`` mini-batches (shuffled as a run
would, no augmentation) with the file's optimizer while the lr grows exponentially from
``start`` to ``end``; record the loss of each step, smoothed by an exponential moving average
(beta 0.98, bias-corrected), and stop early once the smoothed loss exceeds 4× its minimum or
is not finite (the lr has become too large).

Two suggestions are computed from the smoothed curve:

* **steepest**: the lr where the smoothed loss falls fastest against log(lr) (the steepest
  negative slope, by central differences), before its minimum. This is the suggestion printed
  first and returned as ``suggested``: a rate at which the loss still improves quickly.
* **min/10**: a tenth of the lr at the smoothed minimum (fastai's ``lr_min``), printed too.
"""
from __future__ import annotations

import math

import numpy as np

from ..core.errors import NetdslError
from ..train.optim import make_optimizer


def lr_range_test(ex, cfg, x, y, *, start: float = 1e-6, end: float = 1.0, steps: int = 100,
                  beta: float = 0.98, diverge: float = 4.0) -> dict:
    """Run the range test on executor ``ex`` (its weights change) with ``cfg``'s optimizer
    and batch size on (x, y). Returns ``{"lr", "loss", "smoothed", "suggested", "steepest",
    "min_over_10", "stopped_early"}`` (lists of the steps taken)."""
    if not 0 < start < end or not math.isfinite(end):
        raise NetdslError(f"lr-find needs 0 < --start-lr < --end-lr, got {start:g} and {end:g}")
    if steps < 5:
        raise NetdslError(f"lr-find needs at least 5 steps, got {steps}")
    optimizer = make_optimizer(cfg)
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(2, 0)))
    order = np.zeros(0, dtype=np.int64)
    lrs, losses, smoothed = [], [], []
    avg, best, stopped = 0.0, math.inf, False
    for i in range(steps):
        if len(order) < cfg.batch_size:   # a new shuffled pass over the data
            order = np.concatenate([order, rng.permutation(len(x))])
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        lr = start * (end / start) ** (i / (steps - 1))
        ex.reseed(i)
        res = ex.forward(x[idx], ex.xp.asarray(y[idx]), training=True)
        grads, loss = ex.backward(), float(res.loss)
        avg = beta * avg + (1 - beta) * loss
        smooth = avg / (1 - beta ** (i + 1))
        if not math.isfinite(smooth) or (i > 0 and smooth > diverge * best):
            stopped = True
            break
        lrs.append(lr)
        losses.append(loss)
        smoothed.append(smooth)
        best = min(best, smooth)
        optimizer.step(ex.params, grads, lr=lr)
    if len(lrs) < 5:
        raise NetdslError(f"lr-find: the loss diverged after {len(lrs)} step(s), already at "
                          f"lr {lrs[-1] if lrs else start:g}", hint="give a smaller --start-lr")
    s = np.asarray(smoothed)
    at_min = int(np.argmin(s))
    slope = np.gradient(s, np.log(lrs))
    # the steepest fall before the minimum; the first steps are skipped (the average's bias)
    lo = min(len(s) // 10, max(at_min - 1, 0))
    steep = lo + int(np.argmin(slope[lo:at_min + 1]))
    return {"lr": lrs, "loss": losses, "smoothed": smoothed, "suggested": lrs[steep],
            "steepest": lrs[steep], "min_over_10": lrs[at_min] / 10, "lr_at_min": lrs[at_min],
            "stopped_early": stopped}


def plot_range_test(result: dict, path: str, configured_lr: float | None = None) -> str:
    """The smoothed loss against the lr (log axis), the suggestions marked; written with
    plots.write_figure (atomically). Returns the path."""
    from .plots import pyplot, write_figure
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        ax.plot(result["lr"], result["loss"], color="0.8", lw=0.8, label="loss per step")
        ax.plot(result["lr"], result["smoothed"], color="C0", label="smoothed loss")
        ax.axvline(result["steepest"], color="C1", ls="--",
                   label=f"steepest descent {result['steepest']:.3g} (suggested)")
        ax.axvline(result["min_over_10"], color="C2", ls=":",
                   label=f"minimum / 10 = {result['min_over_10']:.3g}")
        if configured_lr:
            ax.axvline(configured_lr, color="0.4", lw=0.8, label=f"file's lr {configured_lr:g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        top = min(max(result["smoothed"]), 2 * result["smoothed"][0])
        ax.set_ylim(min(result["smoothed"]) * 0.9, top * 1.05)
        ax.set_title("learning-rate range test")
        ax.legend(fontsize=8)
        return write_figure(fig, path, "lr-find plot", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
