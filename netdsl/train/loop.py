"""The training loop behind `netdsl run`: epochs of shuffled mini-batches, evaluation,
atomic checkpoints and metrics each epoch, clean saving on Ctrl-C, resuming."""
from __future__ import annotations

import os
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


def evaluate(ex: Executor, x, y, batch_size: int = 256) -> float:
    """Accuracy of the main head on (x, y)."""
    if len(x) == 0:
        return float("nan")
    return float(np.mean(ex.predict(x, batch_size) == y))


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
        self.steps_per_epoch = max(1, -(-len(data.x_train) // cfg.batch_size))
        self.lr_at = make_schedule(cfg, self.steps_per_epoch)
        self.rng = np.random.default_rng(cfg.seed)
        self.epoch = 0          # epochs completed
        self.step = 0           # optimizer steps taken
        self.history: list[dict] = []

    # -- persistence ---------------------------------------------------------------------
    def resume(self, path: str) -> None:
        ck = load_checkpoint(path)
        _check_compatible(self.ex, ck["params"], path)
        xp = self.ex.xp
        for name, tensors in self.ex.params.items():
            for key in tensors:
                tensors[key][...] = xp.asarray(ck["params"][name][key])
        self.optimizer.load_state_dict(ck["optimizer_state"])
        self.epoch, self.step = int(ck["epoch"]), int(ck["step"])
        self.history = list(ck["metrics"].get("history", []))
        rng_state = ck["meta"].get("rng_state")
        if rng_state:
            self.rng.bit_generator.state = rng_state
        self.log(f"resumed from {path}: {self.epoch} epoch(s) done, step {self.step}")

    def save(self, interrupted: bool = False) -> str | None:
        if self.out_dir is None:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "checkpoint.npz"
        meta = dict(self.meta, rng_state=self.rng.bit_generator.state, interrupted=interrupted)
        metrics = {"history": self.history}
        save_checkpoint(str(path), params={n: {k: to_numpy(v) for k, v in t.items()}
                                           for n, t in self.ex.params.items()},
                        optimizer_state=self.optimizer.state_dict(), epoch=self.epoch,
                        step=self.step, metrics=metrics, meta=meta)
        write_json_atomic(str(self.out_dir / "metrics.json"),
                          {"network": self.meta.get("network"), "epochs_done": self.epoch,
                           "interrupted": interrupted, "history": self.history})
        return str(path)

    # -- training ------------------------------------------------------------------------
    def train_epoch(self) -> dict:
        cfg, ex, data = self.cfg, self.ex, self.data
        order = self.rng.permutation(len(data.x_train))
        bar = EpochBar(self.epoch + 1, cfg.epochs, len(order), disable=not self.show_progress)
        seen, loss_sum, correct, t0 = 0, 0.0, 0, time.perf_counter()
        try:
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                xb, yb = data.x_train[idx], data.y_train[idx]
                if cfg.augment != "none":
                    xb = augment_batch(xb, cfg.augment, self.rng)
                res = ex.forward(xb, yb, training=True)
                grads = ex.backward()
                self.optimizer.step(ex.params, grads, lr=self.lr_at(self.step))
                self.step += 1
                loss = float(res.loss)
                hits = int(to_numpy(ex.xp.sum(ex.xp.argmax(res.logits, axis=1) ==
                                              ex.xp.asarray(yb))))
                if not np.isfinite(loss):
                    raise NetdslError(f"the loss became {loss} at step {self.step}",
                                      hint="lower the learning rate (--lr) or add batch norm")
                seen += len(idx)
                loss_sum += loss * len(idx)
                correct += hits
                bar.update(len(idx), loss, hits / len(idx))
        finally:
            bar.close(None)
        self.epoch += 1
        elapsed = time.perf_counter() - t0
        return {"epoch": self.epoch, "loss": loss_sum / max(seen, 1),
                "train_acc": correct / max(seen, 1), "images_per_s": seen / max(elapsed, 1e-9),
                "lr": self.lr_at(max(self.step - 1, 0)), "seconds": elapsed}

    def run(self) -> dict:
        """Train up to cfg.epochs; evaluate and checkpoint after each epoch. Ctrl-C at any
        point saves a checkpoint (the epoch count says how many epochs were completed) and
        re-raises KeyboardInterrupt for the caller to exit."""
        if self.epoch >= self.cfg.epochs:
            self.log(f"nothing to train: {self.epoch} epoch(s) already done, --epochs is "
                     f"{self.cfg.epochs}; raise --epochs to continue")
        try:
            while self.epoch < self.cfg.epochs:
                row = self.train_epoch()
                row["test_acc"] = evaluate(self.ex, self.data.x_test, self.data.y_test)
                self.history.append(row)
                self.save()
                self.log(f"epoch {row['epoch']}/{self.cfg.epochs}: loss {row['loss']:.4f}, "
                         f"train acc {100 * row['train_acc']:.2f}%, "
                         f"{self.data.test_name} acc {100 * row['test_acc']:.2f}%, "
                         f"{row['images_per_s']:.0f} img/s")
        except KeyboardInterrupt:
            path = self.save(interrupted=True)
            if path:
                self.log(f"\ninterrupted after {self.epoch} complete epoch(s); checkpoint saved "
                         f"to {path} (continue with --resume {path})")
            else:
                self.log("\ninterrupted")
            raise
        final = evaluate(self.ex, self.data.x_test, self.data.y_test)
        return {"accuracy": final, "epochs": self.epoch, "history": self.history}


def default_out_dir(net_name: str) -> str:
    return os.path.join("runs", net_name)
