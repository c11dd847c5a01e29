"""A per-epoch progress bar over tqdm: running loss, running accuracy, images/s and ETA.

The bar goes to stderr (stdout stays clean for results) and redraws at most every half second,
which keeps logs of non-interactive runs (CI, ``| tee``) short. It is shown unless explicitly
disabled: tqdm's ``disable=None`` auto-hiding on non-TTYs is deliberately not used, so that CI
logs still show training progress.
"""
from __future__ import annotations

import sys
import time

from tqdm import tqdm


class EpochBar:
    """Progress of one training epoch, counted in examples.

    ``epoch`` is shown as given (callers pass it 1-based), as ``epoch 3/10``.
    """

    def __init__(self, epoch: int, epochs: int, total_examples: int, disable: bool = False,
                 file=None, run: "RunProgress | None" = None, metric: str = "acc"):
        self.run = run            # the whole run's steps, ETA and held-out metric, shown after
        self._start = time.perf_counter()
        self._metric = metric     # "acc", "exact" (multi-label) or "mae" (regression)
        self._seen = 0
        self._loss_sum = 0.0      # sum over examples of the loss, for an example-weighted mean
        self._correct_sum = 0.0   # sum over examples of accuracy (i.e. number correct)
        self._bar = tqdm(total=total_examples, desc=f"epoch {epoch}/{epochs}", unit="img",
                         file=sys.stderr if file is None else file, mininterval=0.5,
                         disable=bool(disable), leave=True, dynamic_ncols=True)

    @property
    def mean_loss(self) -> float:
        """Example-weighted mean loss so far (nan before the first update)."""
        return self._loss_sum / self._seen if self._seen else float("nan")

    @property
    def accuracy(self) -> float:
        """Fraction of examples classified correctly so far (nan before the first update)."""
        return self._correct_sum / self._seen if self._seen else float("nan")

    @property
    def images_per_second(self) -> float:
        """Examples per second since the bar started."""
        elapsed = time.perf_counter() - self._start
        return self._seen / elapsed if elapsed > 0 else 0.0

    def postfix(self) -> str:
        """The text after the bar, e.g. ``loss=0.4321 acc=87.50%``."""
        if self._metric == "mae":   # the "accuracy" sum is one of mean absolute errors
            text = f"loss={self.mean_loss:.4f} mae={self.accuracy:.4g}"
        else:
            text = f"loss={self.mean_loss:.4f} {self._metric}={100.0 * self.accuracy:.2f}%"
        return f"{text} | {self.run.text()}" if self.run is not None else text

    def update(self, n_examples: int, loss: float, acc: float) -> None:
        """Record a batch of ``n_examples`` with mean ``loss`` and accuracy ``acc`` (0..1)."""
        self._seen += n_examples
        self._loss_sum += float(loss) * n_examples
        self._correct_sum += float(acc) * n_examples
        if self.run is not None:
            self.run.step()
        # refresh=False: tqdm redraws on its own schedule (mininterval), not once per batch.
        self._bar.set_postfix_str(self.postfix(), refresh=False)
        self._bar.update(n_examples)

    def close(self, summary: str | None = None) -> None:
        """Finish the bar; ``summary`` (e.g. validation results) is appended to its last line."""
        if summary:
            self._bar.set_postfix_str(f"{self.postfix()} {summary}" if self._seen else summary,
                                      refresh=False)
        self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def clock(seconds: float) -> str:
    """``seconds`` as H:MM:SS (or M:SS under an hour), as tqdm shows times."""
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


class RunProgress:
    """The whole run, shown after each epoch's bar: ``run 120/1600 steps, ETA 3:21,
    held-out 97.12%``. The ETA is the mean step time of this process (a resumed run counts
    from its own start) times the steps left; the held-out metric is the last epoch's."""

    def __init__(self, steps_done: int, total_steps: int, monitor: str = "acc"):
        self.done, self.total, self.monitor = steps_done, total_steps, monitor
        self._first = steps_done
        self._start = time.perf_counter()
        self.held_out: float | None = None

    def step(self) -> None:
        """One optimizer step done."""
        self.done += 1

    def eta(self) -> float | None:
        """Seconds left at this process's mean step time, None before its first step."""
        ran = self.done - self._first
        if ran <= 0:
            return None
        return (time.perf_counter() - self._start) / ran * max(self.total - self.done, 0)

    def text(self) -> str:
        """The run's part of the progress line."""
        eta = self.eta()
        parts = [f"run {self.done}/{self.total} steps",
                 f"ETA {clock(eta) if eta is not None else '?'}"]
        if self.held_out is not None:
            parts.append(f"held-out {100 * self.held_out:.2f}%" if self.monitor == "acc"
                         else f"held-out loss {self.held_out:.4f}")
        return ", ".join(parts)
