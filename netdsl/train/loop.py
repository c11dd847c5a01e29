"""The training loop behind `netdsl run`: epochs of shuffled mini-batches, evaluation,
atomic checkpoints and metrics each epoch, clean saving on Ctrl-C, exact resuming.

Why resuming is exact: every random draw is a function of (seed, epoch, step) — the epoch's
shuffle, each step's augmentation and each step's dropout masks get their own seeded stream —
so a checkpoint needs no random-generator state, only the epoch, the step and how many batches
of the current epoch were done. Ctrl-C, SIGTERM and SIGHUP only raise a flag that the loop
checks between steps, so an interrupted checkpoint never holds half an optimizer update.

Why the record is exact too: the checkpoint also carries the interrupted epoch's running sums
(examples seen, loss sum, correct predictions, batches), so the resumed epoch's loss and
accuracy are those of the whole epoch, not of its resumed part (timing fields excepted).
"""
from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..core.backend import to_numpy
from ..core.errors import NetdslError
from ..runtime.executor import Executor
from ..runtime.numerics import LossWatch, locate_nonfinite
from ..data.augment import augment_batch
from .checkpoint import (MAX_STEP, check_header, check_history, load_checkpoint,
                         save_checkpoint, write_json_atomic)
from ..lang.train_config import TrainConfig
from ..data.loader import Dataset
from .compat import check_compatible, check_same_graph, check_same_network  # noqa: F401
from .fingerprint import graph_fingerprint
from .metrics import METRIC_NAMES, describe, head_kind
from .metrics import evaluate as evaluate_metric
from .optim import make_optimizer
from .controls import clip_gradients, early_stopped, held_out, set_label_smoothing
from .keeper import Keeper
from .logs import RunLog
from .progress import EpochBar, RunProgress
from .schedule import check_plan, extend_plan, fresh_plan, planned_schedule
from .parallel import Single
from .signals import Interrupted, StopFlag

_SHUFFLE, _AUGMENT = 2, 3   # stream ids for SeedSequence spawn keys (executor: 1 = dropout)


def evaluate(ex: Executor, x, y, batch_size: int = 256) -> float:
    """The main head's metric on (x, y): accuracy for a classifier (train/metrics.py)."""
    return evaluate_metric(ex, x, y, batch_size)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each mini-batch. A last batch of one example is merged into the one
    before: batch statistics of a single example are degenerate (PyTorch refuses them)."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


# Settings whose change on resume is expected (more epochs) or does not change the steps
# (which weights are kept, when to stop).
_SILENT_CHANGES = ("epochs", "keep", "early_stop", "monitor")


@dataclass
class EpochSums:
    """The running totals of one epoch: what its loss/accuracy row is computed from.

    Kept in the checkpoint, so that an epoch interrupted and resumed reports the same numbers
    as one run straight through."""

    seen: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    batches: int = 0
    seconds: float = 0.0
    error_sum: float = 0.0     # regression heads: Σ per-example mean absolute error

    def add(self, n: int, loss: float, hits: int, error: float = 0.0) -> None:
        self.seen += n
        self.loss_sum += loss * n
        self.correct += hits
        self.error_sum += error
        self.batches += 1

    @classmethod
    def from_saved(cls, saved, path: str) -> "EpochSums":
        """Sums from a checkpoint's meta (absent in older checkpoints: zeros), validated."""
        if saved is None:
            return cls()
        try:
            sums = cls(**saved)
            ok = all(type(getattr(sums, k)) is int and 0 <= getattr(sums, k) <= MAX_STEP
                     for k in ("seen", "correct", "batches")) and \
                all(isinstance(getattr(sums, k), (int, float)) and
                    not isinstance(getattr(sums, k), bool) and
                    np.isfinite(getattr(sums, k)) and getattr(sums, k) >= 0
                    for k in ("loss_sum", "seconds", "error_sum")) and sums.correct <= sums.seen
        except (TypeError, ValueError, OverflowError):   # wrong keys, values, huge ints
            ok = False
        if not ok:
            raise NetdslError(f"checkpoint {path} is damaged: bad epoch sums {saved!r}")
        return sums

    def row(self, epoch: int, lr: float) -> dict:
        seen = max(self.seen, 1)
        return {"epoch": epoch, "loss": self.loss_sum / seen,
                "train_acc": (self.correct + self.error_sum) / seen,   # one of them is 0
                "images_per_s": self.seen / max(self.seconds, 1e-9), "lr": lr,
                "seconds": self.seconds, "step_time_s": self.seconds / max(self.batches, 1)}


class _Stopped(Exception):
    pass


def _warn(message: str) -> None:
    print(f"netdsl: warning: {message}", file=sys.stderr)


class Trainer:
    """Holds an executor, optimizer, schedule and data; runs epochs and saves checkpoints."""

    def __init__(self, ex: Executor, cfg: TrainConfig, data: Dataset, *, out_dir: str | None,
                 meta: dict | None = None, show_progress: bool = True, log=print, warn=_warn,
                 on_epoch=None, run_log: RunLog | None = None, parallel=None):
        self.ex, self.cfg, self.data = ex, cfg, data
        self.par = parallel or Single()   # parallel.py: alone, or one of N MPI ranks
        self.out_dir = Path(out_dir) if out_dir else None
        # meta["graph"]: the caller's fingerprint of the compiled graph (the CLI's), else the
        # executor's graph, as its passes rewrote it.
        self.meta = dict(meta or {}, config=asdict(cfg),
                         data={"name": data.name, "train": len(data.x_train),
                               "test": len(data.x_test)})
        self.meta.setdefault("graph", graph_fingerprint(ex.graph))
        self.log, self.warn = log, warn
        self.show_progress = show_progress
        # Labels checked once, here on the host: the loss does not check device labels per step.
        ex.check_labels(data.y_train)
        ex.check_labels(data.y_test)
        self.kind = head_kind(ex.graph)     # what train_acc/test_acc measure (metrics.py)
        self.optimizer = make_optimizer(cfg)
        self.bounds = batch_bounds(len(data.x_train), cfg.batch_size)
        self.plan = fresh_plan(cfg)   # the lr schedule's pieces, extended by --resume
        self.lr_at = planned_schedule(cfg, len(self.bounds), self.plan)
        set_label_smoothing(ex, cfg.label_smoothing)   # after the fingerprint: not the graph's
        self.keeper = Keeper(cfg.keep, cfg.monitor)    # best.npz and the best epoch's weights
        self.run_log = run_log or RunLog(None, "none")
        self.progress = None     # the whole run's progress, made by run()
        self.epoch = 0          # epochs completed
        self.step = 0           # optimizer steps taken
        self.batch = 0          # batches of the current epoch already done
        self.sums = EpochSums()  # running totals of the current epoch
        self.history: list[dict] = []
        self.changes: list[dict] = []   # settings changed on resume, with where
        self.on_epoch = on_epoch   # called with the trainer after each epoch's checkpoint
        self._stop = self.par.stop_flag(StopFlag())
        self._loss_watch = LossWatch(log)   # warns once on a finite blow-up

    # -- persistence ---------------------------------------------------------------------
    def resume(self, path: str, schedule_restart: bool = False) -> None:
        """Load ``path`` and continue where it stopped; every check runs before any state
        changes, so a refused checkpoint leaves the trainer as it was. Epochs added past the
        schedule's planned end continue at its final lr, or with ``schedule_restart`` run a new
        cycle of it (netdsl/train/schedule.py); one line says which."""
        ck = load_checkpoint(path)
        check_header(ck, path)
        meta = ck["meta"]
        check_same_graph(meta.get("graph"), self.meta["graph"], path)
        check_compatible(self.ex, ck["params"], path)
        epoch, step = ck["epoch"], ck["step"]
        history = check_history(ck["metrics"].get("history", []), epoch, path)
        sums = EpochSums.from_saved(meta.get("epoch_sums"), path)
        earlier = meta.get("changes", [])
        if not isinstance(earlier, list) or not all(isinstance(c, dict) for c in earlier):
            raise NetdslError(f"checkpoint {path} is damaged: its 'changes' are no list of "
                              f"records")
        batch = self._resume_batch(meta, sums, path)
        saved_cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
        plan = check_plan(meta.get("schedule_plan", [[saved_cfg.get("epochs", max(epoch, 1)),
                                                       "plan"]]), path)
        plan, said = extend_plan(plan, self.cfg.epochs, schedule_restart, self.cfg,
                                 len(self.bounds))
        lr_at = planned_schedule(self.cfg, len(self.bounds), plan)
        changes = self._setting_changes(meta.get("config"), meta.get("data"), epoch, step,
                                         path)
        regrouped = ("batch_size", "data", "holdout", "data_examples")
        if batch and any(c["setting"] in regrouped for c in changes):
            # Same shuffle (seed, epoch), other batches: continue at the first unseen example.
            starts = [a for a, _ in self.bounds]
            if sums.seen not in starts:
                raise NetdslError(f"checkpoint {path} stopped {sums.seen} examples into an "
                                  f"epoch, which is no batch boundary with these settings",
                                  hint="resume with the batch size and data it was trained "
                                       "with, at least until the epoch ends")
            batch = starts.index(sums.seen)
        elif batch >= len(self.bounds):
            raise NetdslError(f"checkpoint {path} stopped at batch {batch} of an epoch, but "
                              f"this data has {len(self.bounds)} batches per epoch",
                              hint="resume with the same data and batch size")
        elif "epoch_sums" in meta and sums.seen != self.bounds[batch][0]:
            raise NetdslError(f"checkpoint {path} is damaged: {sums.seen} examples seen in "
                              f"{batch} batch(es) of {self.cfg.batch_size}")
        xp = self.ex.xp
        for name, tensors in self.ex.params.items():
            for key in tensors:
                tensors[key][...] = xp.asarray(ck["params"][name][key])
        self.optimizer.load_state_dict(ck["optimizer_state"])
        self.epoch, self.step, self.batch, self.history = epoch, step, batch, history
        self.sums, self.changes = sums, earlier + changes
        self.plan, self.lr_at = plan, lr_at
        self.keeper.resume()
        where = f", {batch} batch(es) into epoch {epoch + 1}" if batch else ""
        self.log(f"resumed from {path}: {epoch} epoch(s) done{where}, step {step}")
        if said:
            self.log(said)

    @staticmethod
    def _resume_batch(meta: dict, sums: "EpochSums", path: str) -> int:
        """The checkpoint's batch_in_epoch, checked against its epoch sums when it has them."""
        batch = meta.get("batch_in_epoch", 0)
        if type(batch) is not int or batch < 0:
            raise NetdslError(f"checkpoint {path} is damaged: batch_in_epoch = {batch!r}")
        if "epoch_sums" in meta and sums.batches != batch:
            raise NetdslError(f"checkpoint {path} is damaged: {batch} batch(es) into the epoch "
                              f"but sums over {sums.batches}")
        return batch

    def _setting_changes(self, saved, meta_data, epoch: int, step: int,
                         path: str) -> list[dict]:
        """Settings that differ from the checkpoint's: warned about and recorded, not refused."""
        if saved is None:
            return []
        if not isinstance(saved, dict):
            raise NetdslError(f"checkpoint {path} is damaged: its training settings are "
                              f"{saved!r:.60}")
        changes = []
        now_settings = dict(asdict(self.cfg), data_examples=self.meta["data"])
        if isinstance(meta_data, dict):   # same data spec, other files: the sizes tell
            saved = dict(saved, data_examples=meta_data)
        for key, now in now_settings.items():
            if key in saved and key not in _SILENT_CHANGES and saved[key] != now:
                changes.append({"epoch": epoch, "step": step, "setting": key,
                                "from": saved[key], "to": now})
                self.warn(f"resuming with {key} = {now!r}, the checkpoint was trained with "
                          f"{saved[key]!r}; the run is no longer the same as one run straight "
                          f"through (recorded in metrics.json)")
        return changes

    def save(self, interrupted: bool = False, name: str = "checkpoint.npz") -> str | None:
        """Write ``DIR/name`` (the run's state) and metrics.json; None without a directory."""
        if self.out_dir is None:
            return None
        if not self.par.writes:   # rank 0 alone writes; the state is the same on every rank
            return str(self.out_dir / "checkpoint.npz")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / name
        meta = dict(self.meta, batch_in_epoch=self.batch, interrupted=interrupted,
                    epoch_sums=asdict(self.sums), changes=self.changes,
                    schedule_plan=self.plan)
        save_checkpoint(str(path), params={n: {k: to_numpy(v) for k, v in t.items()}
                                           for n, t in self.ex.params.items()},
                        optimizer_state=self.optimizer.state_dict(), epoch=self.epoch,
                        step=self.step, metrics={"history": self.history}, meta=meta)
        record = {"network": self.meta.get("network"), "epochs_done": self.epoch,
                  "interrupted": interrupted, "history": self.history}
        if self.changes:
            record["changes"] = self.changes
        write_json_atomic(str(self.out_dir / "metrics.json"), record)
        return str(path)

    # -- training ------------------------------------------------------------------------
    def train_epoch(self) -> dict:
        """Train the rest of the current epoch (all of it unless resumed mid-epoch) and return
        its row; the sums in ``self.sums`` make that row the whole epoch's."""
        cfg, ex, data, sums = self.cfg, self.ex, self.data, self.sums
        order = _rng(cfg.seed, _SHUFFLE, self.epoch).permutation(len(data.x_train))
        remaining = self.bounds[self.batch:]
        bar = EpochBar(self.epoch + 1, cfg.epochs, sum(b - a for a, b in remaining),
                       disable=not self.show_progress, run=self.progress,
                       metric={"values": "mae", "labels": "exact"}.get(self.kind, "acc"))
        t0 = time.perf_counter()
        try:
            for start, stop in remaining:
                if self._stop.hit:
                    raise _Stopped
                idx = order[start:stop]
                lo, hi = self.par.part(len(idx))   # this rank's rows of the global batch
                # Uploaded once (a no-op on the CPU): the loss and the hit count share it.
                xb, yb = data.x_train[idx[lo:hi]], ex.xp.asarray(data.y_train[idx[lo:hi]])
                if cfg.augment != "none":
                    xb = augment_batch(xb, cfg.augment, _rng(cfg.seed, _AUGMENT, self.step),
                                       part=(lo, len(idx)))
                ex.reseed(self.step)
                grads, loss, score = self.par.train_step(ex, xb, yb, lo, hi, len(idx),
                                                          self.kind)
                if not np.isfinite(loss):   # before the update: name the layer (numerics.py)
                    raise locate_nonfinite(ex, xb, yb, step=self.step, loss=loss)
                if cfg.clip_grad_norm:
                    clip_gradients(grads, cfg.clip_grad_norm, ex.xp)
                self._loss_watch.update(loss, self.step + 1)
                self.optimizer.step(ex.params, grads, lr=self.lr_at(self.step))
                self.step += 1
                self.batch += 1
                hits = 0 if self.kind == "values" else int(round(score))
                sums.add(len(idx), loss, hits, score - hits)
                bar.update(len(idx), loss, score / len(idx))
        finally:
            sums.seconds += time.perf_counter() - t0
            bar.close(None)
        self.epoch += 1
        self.batch, self.sums = 0, EpochSums()
        row = sums.row(self.epoch, self.lr_at(max(self.step - 1, 0)))
        if self.kind != "classes":
            row["metric"] = METRIC_NAMES[self.kind]
        return row

    def _where(self) -> str:
        return f"{self.epoch} complete epoch(s)" + (f" and {self.batch} batch(es)"
                                                     if self.batch else "")

    def run(self) -> dict:
        """Train up to cfg.epochs; evaluate and checkpoint after each epoch. Ctrl-C, SIGTERM
        or SIGHUP save a checkpoint at the next step boundary and raise :class:`Interrupted`
        (a KeyboardInterrupt) for the caller; a second signal stops at once without saving."""
        cfg = self.cfg
        stopped = early_stopped(self.history, cfg.monitor, cfg.early_stop)
        if self.epoch >= cfg.epochs or stopped:
            self.log(f"nothing to train: {self.epoch} epoch(s) already done, " +
                     ("stopped early (early_stop)" if stopped else
                      f"--epochs is {cfg.epochs}; raise --epochs to continue"))
        self.progress = RunProgress(self.step, cfg.epochs * len(self.bounds), cfg.monitor)
        self.par.start(self.ex)
        try:
            with self._stop:
                while self.epoch < cfg.epochs and not stopped:
                    row = self.train_epoch()
                    row.update(held_out(self.ex, self.data.x_test, self.data.y_test))
                    self.history.append(row)
                    self.save()
                    self.keeper.after_epoch(self)
                    self.run_log.write(self.history)
                    self.progress.held_out = row["test_" + cfg.monitor]
                    stopped = early_stopped(self.history, cfg.monitor, cfg.early_stop)
                    if self.on_epoch:
                        self.on_epoch(self)
                    self.log(f"epoch {row['epoch']}/{self.cfg.epochs}: loss {row['loss']:.4f}, "
                             f"train {describe(self.kind, row['train_acc'])}, "
                             f"{self.data.test_name} {describe(self.kind, row['test_acc'])}, "
                             f"{row['images_per_s']:.0f} img/s")
                    if stopped:
                        self.log(self.keeper.stop_line(self.history, cfg.early_stop))
                    if self._stop.hit:
                        raise _Stopped
        except _Stopped:
            signum = self._stop.signum
            path = self.save(interrupted=True)
            self.par.barrier("the interrupted run's checkpoint")   # no rank exits before it
            name = signal.Signals(signum).name if signum else "a signal"
            try:   # after SIGHUP the terminal may be gone; the checkpoint is what matters
                self.log(f"\ninterrupted by {name} after {self._where()}; checkpoint saved to "
                         f"{path} (continue with --resume {path} --out {self.out_dir})" if path
                         else f"\ninterrupted by {name} after {self._where()}")
            except OSError:
                pass
            raise Interrupted(signum) from None
        except KeyboardInterrupt:
            # A second signal, or Ctrl-C outside the main thread's handler: mid-step, so the
            # state may be half updated; the last checkpoint on disk is the one to keep.
            self.log("\nstopped at once; no checkpoint written for the unfinished step"
                     + (f" (the last one is in {self.out_dir})" if self.out_dir else ""))
            raise
        finally:
            self.run_log.close()
        kept = self.keeper.finish(self)   # keep = best: the best epoch's weights and row
        ran = self.history and self.history[-1]["epoch"] == self.epoch
        final = kept["test_acc"] if kept else self.history[-1]["test_acc"] if ran else \
            evaluate(self.ex, self.data.x_test, self.data.y_test)
        return {"accuracy": final, "epochs": self.epoch, "history": self.history,
                "kept_epoch": kept["epoch"] if kept else self.epoch}


def default_out_dir(net_name: str) -> str:
    return os.path.join("runs", net_name)
