"""``keep = last | best | both``: which weights a run keeps, and its early-stopping message.

* ``last`` (default): ``DIR/checkpoint.npz``, the state after the last epoch, as always.
* ``best``: also ``DIR/best.npz``, rewritten whenever an epoch improves the held-out metric
  (``monitor = acc``: highest accuracy; ``loss``: lowest loss; the first such epoch on ties).
  When the run ends, the best epoch's weights are loaded back: the final accuracy printed,
  the filters drawn and the result returned are the best epoch's.
* ``both``: the same files, but the run ends with the last epoch's weights and names best.npz.

``checkpoint.npz`` stays the run's state for ``--resume`` under every choice (a best epoch
earlier than the last cannot be resumed exactly); ``best.npz`` has the same format, so
predict, eval, export and even ``--resume`` take it.
"""
from __future__ import annotations

from ..core.backend import to_numpy
from .checkpoint import load_checkpoint
from .controls import best_epoch


def _describe(row: dict, monitor: str) -> str:
    if monitor == "loss":
        return f"held-out loss {row.get('test_loss', float('nan')):.4f}"
    if row.get("metric") == "mae":          # a regression head (train/metrics.py)
        return f"held-out MAE {row['test_acc']:.4g}"
    return f"held-out {'exact-match ' if row.get('metric') else ''}accuracy " \
           f"{100 * row['test_acc']:.2f}%"


class Keeper:
    """Writes best.npz after improving epochs and restores the best weights at the end."""

    def __init__(self, keep: str, monitor: str):
        self.keep, self.monitor = keep, monitor
        self._best = None    # (epoch, {node: {name: array}}) of this process's best epoch

    def after_epoch(self, trainer) -> None:
        """Called after each epoch's checkpoint: save best.npz when this epoch is the best."""
        history = trainer.history
        if len(history) == 1 and trainer.out_dir is not None and trainer.par.writes:
            # a best.npz there now is another run's (--overwrite): replaced or removed, as the
            # first save replaces that run's checkpoint
            (trainer.out_dir / "best.npz").unlink(missing_ok=True)
        if self.keep == "last" or best_epoch(history, self.monitor) != history[-1]["epoch"]:
            return
        self._best = (history[-1]["epoch"], {n: {k: to_numpy(v).copy() for k, v in t.items()}
                                            for n, t in trainer.ex.params.items()})
        trainer.save(name="best.npz")

    def resume(self) -> None:
        """Nothing is held in memory after a resume: :meth:`finish` reads best.npz."""
        self._best = None

    def stop_line(self, history: list, patience: int) -> str:
        """The one line printed when early stopping ends the run."""
        at = best_epoch(history, self.monitor)
        if at is None:
            return f"early stop: no finite held-out value in {patience} epoch(s)"
        what = "loss" if self.monitor == "loss" else "accuracy"
        return (f"early stop: no better held-out {what} for {patience} epoch(s); the best was "
                f"epoch {at} ({_describe(history[at - 1], self.monitor)})")

    def finish(self, trainer) -> dict | None:
        """At the run's end: under keep = best, load the best epoch's weights into the executor
        and return its history row; otherwise None (the last epoch stands)."""
        history = trainer.history
        at = best_epoch(history, self.monitor) if self.keep != "last" else None
        if at is None:
            return None
        row = history[at - 1]
        where = f"{trainer.out_dir}/best.npz" if trainer.out_dir else "memory"
        if self.keep == "both":
            trainer.log(f"best epoch {at} ({_describe(row, self.monitor)}) kept in {where}")
            return None
        if self._best is not None and self._best[0] == at:
            params = self._best[1]
        elif trainer.out_dir is not None and (trainer.out_dir / "best.npz").exists():
            params = load_checkpoint(str(trainer.out_dir / "best.npz"))["params"]
        else:   # the best epoch came before keep = best was set (a resume changed it)
            trainer.log(f"keep = best: the best epoch {at} was trained without keep = best, so "
                        f"its weights were not saved; the last epoch's stand")
            return None
        xp = trainer.ex.xp
        for name, tensors in trainer.ex.params.items():
            for key in tensors:
                tensors[key][...] = xp.asarray(params[name][key])
        trainer.log(f"keep = best: epoch {at} ({_describe(row, self.monitor)}), in {where}")
        return row
