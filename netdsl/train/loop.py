"""The training loop behind `netdsl run`: epochs of shuffled mini-batches, evaluation,
atomic checkpoints and metrics each epoch, clean saving on Ctrl-C, exact resuming.

Why resuming is exact: every random draw is a function of (seed, epoch, step) — the epoch's
shuffle, each step's augmentation and each step's dropout masks get their own seeded stream —
so a checkpoint needs no random-generator state, only the epoch, the step and how many batches
of the current epoch were done. Ctrl-C only raises a flag that the loop checks between steps,
so an interrupted checkpoint never holds half an optimizer update.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..backend import to_numpy
from ..errors import NetdslError
from ..executor import Executor
from .augment import augment_batch
from .checkpoint import load_checkpoint, save_checkpoint, write_json_atomic
from .config import TrainConfig
from .data import Dataset
from .optim import make_optimizer
from .progress import EpochBar
from .schedule import make_schedule

_SHUFFLE, _AUGMENT = 2, 3   # stream ids for SeedSequence spawn keys (executor: 1 = dropout)


def evaluate(ex: Executor, x, y, batch_size: int = 256) -> float:
    """Accuracy of the main head on (x, y)."""
    if len(x) == 0:
        return float("nan")
    return float(np.mean(ex.predict(x, batch_size) == y))


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each mini-batch. A last batch of one example is merged into the one
    before: batch statistics of a single example are degenerate (PyTorch refuses them)."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _check_compatible(ex: Executor, saved: dict, path: str) -> None:
    for name, tensors in ex.params.items():
        for key, value in tensors.items():
            if name not in saved or key not in saved[name]:
                raise NetdslError(f"checkpoint {path} has no parameter {name}/{key}",
                                  hint="resume with the same .net file and --set values it was "
                                       "trained with")
            if tuple(saved[name][key].shape) != tuple(value.shape):
                raise NetdslError(f"checkpoint {path}: {name}/{key} has shape "
                                  f"{tuple(saved[name][key].shape)}, the network needs "
                                  f"{tuple(value.shape)}",
                                  hint="resume with the same .net file and --set values")


class _StopFlag:
    """While active, the first Ctrl-C only sets ``hit`` (the loop stops at the next step
    boundary); a second one interrupts at once. Outside the main thread it does nothing."""

    def __init__(self):
        self.hit = False
        self._old = None

    def _handle(self, signum, frame):
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class _Stopped(Exception):
    pass


class Trainer:
    """Holds an executor, optimizer, schedule and data; runs epochs and saves checkpoints."""

    def __init__(self, ex: Executor, cfg: TrainConfig, data: Dataset, *, out_dir: str | None,
                 meta: dict | None = None, show_progress: bool = True, log=print):
        self.ex, self.cfg, self.data = ex, cfg, data
        self.out_dir = Path(out_dir) if out_dir else None
        self.meta = dict(meta or {}, config=asdict(cfg))
        self.log = log
        self.show_progress = show_progress
        self.optimizer = make_optimizer(cfg)
        self.bounds = batch_bounds(len(data.x_train), cfg.batch_size)
        self.lr_at = make_schedule(cfg, len(self.bounds))
        self.epoch = 0          # epochs completed
        self.step = 0           # optimizer steps taken
        self.batch = 0          # batches of the current epoch already done
        self.history: list[dict] = []
        self._stop = _StopFlag()

    # -- persistence ---------------------------------------------------------------------
    def resume(self, path: str) -> None:
        ck = load_checkpoint(path)
        _check_compatible(self.ex, ck["params"], path)
        try:
            epoch, step = int(ck["epoch"]), int(ck["step"])
            batch = int(ck["meta"].get("batch_in_epoch", 0))
            history = list(ck["metrics"].get("history", []))
        except (TypeError, ValueError, AttributeError, KeyError) as err:
            raise NetdslError(f"checkpoint {path} is damaged: {err}") from None
        if batch >= len(self.bounds):
            raise NetdslError(f"checkpoint {path} stopped at batch {batch} of an epoch, but "
                              f"this data has {len(self.bounds)} batches per epoch",
                              hint="resume with the same data and batch size")
        xp = self.ex.xp
        for name, tensors in self.ex.params.items():
            for key in tensors:
                tensors[key][...] = xp.asarray(ck["params"][name][key])
        self.optimizer.load_state_dict(ck["optimizer_state"])
        self.epoch, self.step, self.batch, self.history = epoch, step, batch, history
        where = f", {batch} batch(es) into epoch {epoch + 1}" if batch else ""
        self.log(f"resumed from {path}: {epoch} epoch(s) done{where}, step {step}")

    def save(self, interrupted: bool = False) -> str | None:
        if self.out_dir is None:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "checkpoint.npz"
        meta = dict(self.meta, batch_in_epoch=self.batch, interrupted=interrupted)
        save_checkpoint(str(path), params={n: {k: to_numpy(v) for k, v in t.items()}
                                           for n, t in self.ex.params.items()},
                        optimizer_state=self.optimizer.state_dict(), epoch=self.epoch,
                        step=self.step, metrics={"history": self.history}, meta=meta)
        write_json_atomic(str(self.out_dir / "metrics.json"),
                          {"network": self.meta.get("network"), "epochs_done": self.epoch,
                           "interrupted": interrupted, "history": self.history})
        return str(path)

    # -- training ------------------------------------------------------------------------
    def train_epoch(self) -> dict:
        """Train the rest of the current epoch (all of it unless resumed mid-epoch)."""
        cfg, ex, data = self.cfg, self.ex, self.data
        order = _rng(cfg.seed, _SHUFFLE, self.epoch).permutation(len(data.x_train))
        remaining = self.bounds[self.batch:]
        bar = EpochBar(self.epoch + 1, cfg.epochs, sum(b - a for a, b in remaining),
                       disable=not self.show_progress)
        seen, loss_sum, correct, t0 = 0, 0.0, 0, time.perf_counter()
        try:
            for start, stop in remaining:
                if self._stop.hit:
                    raise _Stopped
                idx = order[start:stop]
                xb, yb = data.x_train[idx], data.y_train[idx]
                if cfg.augment != "none":
                    xb = augment_batch(xb, cfg.augment, _rng(cfg.seed, _AUGMENT, self.step))
                ex.reseed(self.step)
                res = ex.forward(xb, yb, training=True)
                self.optimizer.step(ex.params, ex.backward(), lr=self.lr_at(self.step))
                self.step += 1
                self.batch += 1
                loss = float(res.loss)
                if not np.isfinite(loss):
                    raise NetdslError(f"the loss became {loss} at step {self.step}",
                                      hint="lower the learning rate (--lr) or add batch norm")
                hits = int(to_numpy((ex.xp.argmax(res.logits, axis=1) ==
                                     ex.xp.asarray(yb)).sum()))
                seen += len(idx)
                loss_sum += loss * len(idx)
                correct += hits
                bar.update(len(idx), loss, hits / len(idx))
        finally:
            bar.close(None)
        self.epoch += 1
        self.batch = 0
        elapsed = time.perf_counter() - t0
        return {"epoch": self.epoch, "loss": loss_sum / max(seen, 1),
                "train_acc": correct / max(seen, 1), "images_per_s": seen / max(elapsed, 1e-9),
                "lr": self.lr_at(max(self.step - 1, 0)), "seconds": elapsed}

    def run(self) -> dict:
        """Train up to cfg.epochs; evaluate and checkpoint after each epoch. Ctrl-C saves a
        checkpoint at the next step boundary and raises KeyboardInterrupt for the caller."""
        if self.epoch >= self.cfg.epochs:
            self.log(f"nothing to train: {self.epoch} epoch(s) already done, --epochs is "
                     f"{self.cfg.epochs}; raise --epochs to continue")
        try:
            with self._stop:
                while self.epoch < self.cfg.epochs:
                    row = self.train_epoch()
                    row["test_acc"] = evaluate(self.ex, self.data.x_test, self.data.y_test)
                    self.history.append(row)
                    self.save()
                    self.log(f"epoch {row['epoch']}/{self.cfg.epochs}: loss {row['loss']:.4f}, "
                             f"train acc {100 * row['train_acc']:.2f}%, "
                             f"{self.data.test_name} acc {100 * row['test_acc']:.2f}%, "
                             f"{row['images_per_s']:.0f} img/s")
                    if self._stop.hit:
                        raise _Stopped
        except (_Stopped, KeyboardInterrupt):
            path = self.save(interrupted=True)
            where = f"{self.epoch} complete epoch(s)" + (f" and {self.batch} batch(es)"
                                                          if self.batch else "")
            self.log(f"\ninterrupted after {where}; checkpoint saved to {path} "
                     f"(continue with --resume {path})" if path else "\ninterrupted")
            raise KeyboardInterrupt from None
        ran = self.history and self.history[-1]["epoch"] == self.epoch
        final = self.history[-1]["test_acc"] if ran else \
            evaluate(self.ex, self.data.x_test, self.data.y_test)
        return {"accuracy": final, "epochs": self.epoch, "history": self.history}


def default_out_dir(net_name: str) -> str:
    return os.path.join("runs", net_name)
