"""Training settings: the keys a `.net` file's `train { ... }` section and the CLI may set.

Precedence, lowest first: these defaults, the file's train section, CLI flags / ``--set``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from ..core.errors import NetdslError, did_you_mean


@dataclass(frozen=True)
class TrainConfig:
    data: str = "digits"          # dataset spec: digits | mnist:DIR | cifar10:DIR | npz:FILE
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"        # sgd | adam
    lr: float = 0.05
    momentum: float = 0.9         # sgd only
    nesterov: bool = False        # sgd only
    beta1: float = 0.9            # adam only
    beta2: float = 0.999          # adam only
    weight_decay: float = 0.0     # L2 added to the gradient (Caffe/PyTorch 'weight_decay')
    schedule: str = "constant"    # constant | step | cosine
    step_size: int = 10           # step schedule: epochs between decays
    gamma: float = 0.1            # step schedule: decay factor
    warmup: int = 0               # epochs of linear warm-up before the schedule
    augment: str = "none"         # none, or crop / flip / affine joined by '+'; never flip digits
    holdout: int = -1             # examples kept out when the data has no test split; -1 = 20%
    seed: int = 0
    keep: str = "last"            # last | best | both: the weights kept (best: held-out metric)
    early_stop: int = 0           # stop after this many epochs without a better held-out metric
    monitor: str = "acc"          # acc | loss: the held-out metric of keep = best and early_stop
    clip_grad_norm: float = 0.0   # rescale the gradients to this global L2 norm at most; 0 = off
    label_smoothing: float = 0.0  # softmax_xent targets (1 - e) one-hot + e / K; 0 = off
    sync_bn: bool = False         # data-parallel ranks: batch norm over the global batch

    def __post_init__(self):
        from ..data.augment import parse_mode
        parse_mode(self.augment)
        choices = {"optimizer": ("sgd", "adam"), "schedule": ("constant", "step", "cosine"),
                   "keep": ("last", "best", "both"), "monitor": ("acc", "loss")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise NetdslError(f"train setting {key} = {getattr(self, key)!r} is not one of "
                                  f"{', '.join(allowed)}",
                                  hint=did_you_mean(str(getattr(self, key)), allowed))
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise NetdslError(f"train setting {key} must be at least 1, got {getattr(self, key)}")
        for key in ("lr", "momentum", "beta1", "beta2", "weight_decay", "gamma",
                    "clip_grad_norm", "label_smoothing"):
            if not math.isfinite(getattr(self, key)):
                raise NetdslError(f"train setting {key} must be a finite number, "
                                  f"got {getattr(self, key)}")
        if self.lr <= 0:
            raise NetdslError(f"train setting lr must be positive, got {self.lr}")
        if self.holdout < -1 or self.holdout == 0:
            raise NetdslError(f"train setting holdout = {self.holdout} keeps no examples for "
                              f"evaluation", hint="use holdout = -1 for the default 20%")
        if self.early_stop < 0 or self.clip_grad_norm < 0:
            key = "early_stop" if self.early_stop < 0 else "clip_grad_norm"
            raise NetdslError(f"train setting {key} must be 0 (off) or more, "
                              f"got {getattr(self, key)}")
        if not 0 <= self.label_smoothing < 1:
            raise NetdslError(f"train setting label_smoothing must be in [0, 1), got "
                              f"{self.label_smoothing}", hint="0.1 is the usual value")
        if self.seed < 0:
            raise NetdslError(f"train setting seed must be 0 or more, got {self.seed}")


SETTING_TYPES = {f.name: f.type if isinstance(f.type, str) else f.type.__name__
          for f in fields(TrainConfig)}


def train_keys() -> list[str]:
    """Every key a train section may set."""
    return list(SETTING_TYPES)


def coerce_setting(key: str, value, loc=None):
    """Check that ``key`` is a train setting and convert ``value`` to its type."""
    if key not in SETTING_TYPES:
        raise NetdslError(f"unknown train setting '{key}'", loc,
                          hint=did_you_mean(key, train_keys()) or
                          f"settings are: {', '.join(train_keys())}")
    kind = SETTING_TYPES[key]
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false"):
                    raise ValueError
                return value.lower() == "true"
            return bool(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind == "float":
            return float(value)
        return str(value).lower() if key != "data" else str(value)
    except (TypeError, ValueError):
        raise NetdslError(f"train setting {key} must be of type {kind}, got {value!r}", loc) from None


def make_config(file_settings: dict, overrides: dict) -> TrainConfig:
    """Build the config from the file's section ``{key: (value, loc)}`` then CLI ``{key: value}``."""
    values = {}
    for key, (value, loc) in file_settings.items():
        values[key] = coerce_setting(key, value, loc)
        try:  # check each file value alone, so that an error can point at its line
            replace(TrainConfig(), **{key: values[key]})
        except NetdslError as err:
            err.loc = err.loc or loc
            raise
    for key, value in overrides.items():
        if value is not None:
            values[key] = coerce_setting(key, value)
    return replace(TrainConfig(), **values)


def _loc(g, cfg: TrainConfig, key: str):
    """Where ``key`` was set in the file, when the value in force is the file's (not the CLI's)."""
    value, loc = g.graph.get("train", {}).get(key, (None, None))
    try:
        return loc if value is not None and coerce_setting(key, value) == getattr(cfg, key) else None
    except NetdslError:
        return None


def check_with_data(g, cfg: TrainConfig, facts) -> None:
    """The settings that depend on the data, checked before any data is loaded, by `check` and
    `run` alike: holdout against the examples of a one-split source (a located error), and a
    flip augmentation on digits (a warning added to the graph's warnings).

    ``facts`` is a :class:`netdsl.data.loader.DataFacts`.
    """
    from ..data.augment import parse_mode
    if "flip" in parse_mode(cfg.augment) and facts.kind in ("digits", "mnist"):
        g.graph.setdefault("warnings", []).append((
            f"augment = {cfg.augment} mirrors images, which turns digits into other shapes "
            "(a mirrored 2 is no 2); consider augment = affine+crop", _loc(g, cfg, "augment")))
    total = facts.single_split
    if total is not None and cfg.holdout != -1 and not 0 < cfg.holdout < total:
        raise NetdslError(f"holdout = {cfg.holdout} is not possible: {cfg.data} has no test split "
                          f"and {total:,} examples", _loc(g, cfg, "holdout"),
                          detail=f"holdout must be between 1 and {total - 1:,}",
                          hint="use holdout = -1 for the default 20%")
