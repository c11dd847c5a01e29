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
from .checkpoint import (MAX_STEP, check_header, check_history, load_checkpoint, load_header,
                         save_checkpoint, write_json_atomic)
from ..lang.train_config import TrainConfig
from ..data.loader import Dataset
from .fingerprint import diff_fingerprints, graph_fingerprint, well_formed
from .optim import make_optimizer
from .parallel import Single
from .progress import EpochBar
from .schedule import make_schedule
from .signals import Interrupted, StopFlag

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


def check_compatible(ex: Executor, saved: dict, path: str) -> None:
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


def check_same_network(g, path: str) -> None:
    """Refuse, with a diff, to resume ``path`` into another network than the one it was
    trained with; reads only the checkpoint's header (called before any data is loaded)."""
    meta = load_header(path).get("meta", {})
    _check_same_graph(meta.get("graph"), graph_fingerprint(g), path)


def _check_same_graph(saved, current: dict, path: str) -> None:
    """Refuse another architecture, listing what changed; old checkpoints have no fingerprint."""
    if saved is None:
        return
    if not well_formed(saved):
        raise NetdslError(f"checkpoint {path} is damaged: its graph fingerprint is malformed")
    if saved.get("hash") == current["hash"]:
        return
    changes = diff_fingerprints(saved, current)
    raise NetdslError(f"checkpoint {path} was trained with a different network",
                      detail="changed since the checkpoint:\n    " + "\n    ".join(changes),
                      hint="resume with the same .net file and --set values it was trained "
                           "with, or start a fresh run with another --out")


# Settings whose change on resume is expected (more epochs) or only affects later steps.
_SILENT_CHANGES = ("epochs",)


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

    def add(self, n: int, loss: float, hits: int) -> None:
        self.seen += n
        self.loss_sum += loss * n
        self.correct += hits
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
                    for k in ("loss_sum", "seconds")) and sums.correct <= sums.seen
        except (TypeError, ValueError, OverflowError):   # wrong keys, values, huge ints
            ok = False
        if not ok:
            raise NetdslError(f"checkpoint {path} is damaged: bad epoch sums {saved!r}")
        return sums

    def row(self, epoch: int, lr: float) -> dict:
        seen = max(self.seen, 1)
        return {"epoch": epoch, "loss": self.loss_sum / seen, "train_acc": self.correct / seen,
                "images_per_s": self.seen / max(self.seconds, 1e-9), "lr": lr,
                "seconds": self.seconds}


class _Stopped(Exception):
    pass


def _warn(message: str) -> None:
    print(f"netdsl: warning: {message}", file=sys.stderr)


class Trainer:
    """Holds an executor, optimizer, schedule and data; runs epochs and saves checkpoints."""

    def __init__(self, ex: Executor, cfg: TrainConfig, data: Dataset, *, out_dir: str | None,
                 meta: dict | None = None, show_progress: bool = True, log=print, warn=_warn,
                 on_epoch=None, parallel=None):
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
        self.optimizer = make_optimizer(cfg)
        self.bounds = batch_bounds(len(data.x_train), cfg.batch_size)
        self.lr_at = make_schedule(cfg, len(self.bounds))
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
    def resume(self, path: str) -> None:
        """Load ``path`` and continue where it stopped; every check runs before any state
        changes, so a refused checkpoint leaves the trainer as it was."""
        ck = load_checkpoint(path)
        check_header(ck, path)
        meta = ck["meta"]
        _check_same_graph(meta.get("graph"), self.meta["graph"], path)
        check_compatible(self.ex, ck["params"], path)
        epoch, step = ck["epoch"], ck["step"]
        history = check_history(ck["metrics"].get("history", []), epoch, path)
        sums = EpochSums.from_saved(meta.get("epoch_sums"), path)
        earlier = meta.get("changes", [])
        if not isinstance(earlier, list) or not all(isinstance(c, dict) for c in earlier):
            raise NetdslError(f"checkpoint {path} is damaged: its 'changes' are no list of "
                              f"records")
        batch = self._resume_batch(meta, sums, path)
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
        where = f", {batch} batch(es) into epoch {epoch + 1}" if batch else ""
        self.log(f"resumed from {path}: {epoch} epoch(s) done{where}, step {step}")

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

    def save(self, interrupted: bool = False) -> str | None:
        if self.out_dir is None:
            return None
        if not self.par.writes:   # rank 0 alone writes; the state is the same on every rank
            return str(self.out_dir / "checkpoint.npz")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "checkpoint.npz"
        meta = dict(self.meta, batch_in_epoch=self.batch, interrupted=interrupted,
                    epoch_sums=asdict(self.sums), changes=self.changes)
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
                       disable=not self.show_progress)
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
                grads, loss, hits = self.par.train_step(ex, xb, yb, lo, hi, len(idx))
                if not np.isfinite(loss):   # before the update: name the layer (numerics.py)
                    raise locate_nonfinite(ex, xb, yb, step=self.step, loss=loss)
                self._loss_watch.update(loss, self.step + 1)
                self.optimizer.step(ex.params, grads, lr=self.lr_at(self.step))
                self.step += 1
                self.batch += 1
                sums.add(len(idx), loss, hits)
                bar.update(len(idx), loss, hits / len(idx))
        finally:
            sums.seconds += time.perf_counter() - t0
            bar.close(None)
        self.epoch += 1
        self.batch, self.sums = 0, EpochSums()
        return sums.row(self.epoch, self.lr_at(max(self.step - 1, 0)))

    def _where(self) -> str:
        return f"{self.epoch} complete epoch(s)" + (f" and {self.batch} batch(es)"
                                                     if self.batch else "")

    def run(self) -> dict:
        """Train up to cfg.epochs; evaluate and checkpoint after each epoch. Ctrl-C, SIGTERM
        or SIGHUP save a checkpoint at the next step boundary and raise :class:`Interrupted`
        (a KeyboardInterrupt) for the caller; a second signal stops at once without saving."""
        if self.epoch >= self.cfg.epochs:
            self.log(f"nothing to train: {self.epoch} epoch(s) already done, --epochs is "
                     f"{self.cfg.epochs}; raise --epochs to continue")
        self.par.start(self.ex)
        try:
            with self._stop:
                while self.epoch < self.cfg.epochs:
                    row = self.train_epoch()
                    row["test_acc"] = evaluate(self.ex, self.data.x_test, self.data.y_test)
                    self.history.append(row)
                    self.save()
                    if self.on_epoch:
                        self.on_epoch(self)
                    self.log(f"epoch {row['epoch']}/{self.cfg.epochs}: loss {row['loss']:.4f}, "
                             f"train acc {100 * row['train_acc']:.2f}%, "
                             f"{self.data.test_name} acc {100 * row['test_acc']:.2f}%, "
                             f"{row['images_per_s']:.0f} img/s")
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
        ran = self.history and self.history[-1]["epoch"] == self.epoch
        final = self.history[-1]["test_acc"] if ran else \
            evaluate(self.ex, self.data.x_test, self.data.y_test)
        return {"accuracy": final, "epochs": self.epoch, "history": self.history}


def default_out_dir(net_name: str) -> str:
    return os.path.join("runs", net_name)
