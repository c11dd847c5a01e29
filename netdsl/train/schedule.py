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
