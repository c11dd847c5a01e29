"""Learning-rate schedules: the lr for each global step (0-based), as plain Python floats.

* ``constant``: ``lr`` throughout.
* ``step``: ``lr * gamma ** (epoch // step_size)``, with ``epoch = step // steps_per_epoch``
  counted from the start of training (warm-up epochs included), as ``torch.optim.lr_scheduler.StepLR``
  stepped once per epoch.
* ``cosine``: a half cosine from ``lr`` down to 0 over the steps after the warm-up, updated every
  step (``CosineAnnealingLR`` with ``eta_min = 0`` and ``T_max`` = those steps).

With ``warmup = W`` epochs the first ``W * steps_per_epoch`` steps ramp linearly from
``lr / warmup_steps`` up to ``lr`` (step ``i`` gets ``lr * (i + 1) / warmup_steps``), and the
schedule takes over afterwards.
"""
from __future__ import annotations

import math
from typing import Callable

from ..core.errors import NetdslError
from ..lang.train_config import TrainConfig


def make_schedule(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """A function from the global step (0-based) to the learning rate for that step."""
    if steps_per_epoch < 1:
        raise NetdslError(f"an epoch must have at least one step, got {steps_per_epoch}",
                          hint="the training set is empty or smaller than expected")
    if cfg.warmup < 0:
        raise NetdslError(f"train setting warmup must not be negative, got {cfg.warmup}")
    if cfg.warmup > cfg.epochs:
        raise NetdslError(f"train setting warmup = {cfg.warmup} epochs is longer than the whole "
                          f"run (epochs = {cfg.epochs})",
                          hint=f"use warmup <= {cfg.epochs}")
    if cfg.schedule == "step":
        if cfg.step_size < 1:
            raise NetdslError(f"train setting step_size must be at least 1, got {cfg.step_size}")
        if cfg.gamma <= 0:
            raise NetdslError(f"train setting gamma must be positive, got {cfg.gamma}")

    base_lr = float(cfg.lr)
    warmup_steps = cfg.warmup * steps_per_epoch
    total_steps = cfg.epochs * steps_per_epoch
    decay_steps = total_steps - warmup_steps   # steps the cosine spans

    def after_warmup(step: int) -> float:
        if cfg.schedule == "step":
            epoch = step // steps_per_epoch
            return base_lr * cfg.gamma ** (epoch // cfg.step_size)
        if cfg.schedule == "cosine":
            if decay_steps <= 0:
                return base_lr
            # Past the planned end (e.g. a resumed run with more epochs) the lr stays at 0.
            progress = min(1.0, (step - warmup_steps) / decay_steps)
            return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        return base_lr

    def lr_at(step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if step < warmup_steps:
            return base_lr * (step + 1) / warmup_steps
        return float(after_warmup(step))

    return lr_at


# -- the schedule of a run that --resume extended ----------------------------------------------
# A run's plan is a list of [end_epoch, mode]: the first entry, mode "plan", is the schedule the
# run was started with (its own epochs, warm-up included); each --resume that raised --epochs
# past the plan's end appends [new_end, "hold"] (continue at the final lr) or
# [new_end, "restart"] (--schedule-restart: the schedule once more over the added epochs, no
# warm-up). The plan is kept in the checkpoint, so the lr of every step is that of the run as
# it was planned, whatever --epochs a later resume gives.

def fresh_plan(cfg: TrainConfig) -> list:
    """The plan of a run started with ``cfg``."""
    return [[cfg.epochs, "plan"]]


def check_plan(plan, path: str) -> list:
    """A checkpoint's schedule plan, validated (a NetdslError naming ``path`` otherwise)."""
    ok = isinstance(plan, list) and len(plan) >= 1 and all(
        isinstance(p, list) and len(p) == 2 and type(p[0]) is int and 1 <= p[0] <= 10**9 and
        p[1] in ("plan", "hold", "restart") for p in plan) and plan[0][1] == "plan" and \
        all(a[0] < b[0] and b[1] != "plan" for a, b in zip(plan, plan[1:]))
    if not ok:
        raise NetdslError(f"checkpoint {path} is damaged: bad schedule plan {plan!r:.80}")
    return [list(p) for p in plan]


def planned_schedule(cfg: TrainConfig, steps_per_epoch: int, plan: list) -> Callable[[int], float]:
    """The lr of each global step under ``plan`` (see above); past its end the last piece goes
    on (a cosine stays at 0, a held lr stays)."""
    from dataclasses import replace
    first = make_schedule(replace(cfg, epochs=plan[0][0]), steps_per_epoch)
    pieces = [(plan[0][0] * steps_per_epoch, first)]
    for (prev_end, _), (end, mode) in zip(plan, plan[1:]):
        start = prev_end * steps_per_epoch
        if mode == "restart":
            again = make_schedule(replace(cfg, epochs=end - prev_end, warmup=0), steps_per_epoch)
            piece = (lambda s, again=again, start=start: again(s - start))
        else:
            final = lr_of(pieces, start - 1)
            piece = (lambda s, final=final: final)
        pieces.append((end * steps_per_epoch, piece))

    def lr_at(step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return lr_of(pieces, step)

    return lr_at


def lr_of(pieces: list, step: int) -> float:
    """The lr at ``step`` of ``[(end_step, fn)]`` pieces in order: the first piece whose end is
    past ``step``, else the last."""
    for end, fn in pieces:
        if step < end:
            return float(fn(step))
    return float(pieces[-1][1](step))


def extend_plan(plan: list, epochs: int, restart: bool, cfg: TrainConfig,
                steps_per_epoch: int) -> tuple[list, str]:
    """``plan`` extended to ``epochs`` (unchanged when it already reaches them), and the one
    line that says what the added epochs do ('' when none were added)."""
    end = plan[-1][0]
    if epochs <= end:
        return plan, ("--schedule-restart ignored: no epochs added to the planned "
                      f"{end}" if restart else "")
    added = epochs - end
    if restart:
        return plan + [[epochs, "restart"]], (
            f"schedule: {added} epoch(s) added after the planned {end}; --schedule-restart: "
            f"a new {cfg.schedule} cycle from lr {cfg.lr:g} over them")
    final = planned_schedule(cfg, steps_per_epoch, plan)(end * steps_per_epoch - 1)
    return plan + [[epochs, "hold"]], (
        f"schedule: {added} epoch(s) added after the planned {end}; the lr stays at its final "
        f"{final:.3g} (--schedule-restart for a new {cfg.schedule} cycle over them)")
