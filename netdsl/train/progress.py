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
                 file=None, metric: str = "acc"):
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
            return f"loss={self.mean_loss:.4f} mae={self.accuracy:.4g}"
        return f"loss={self.mean_loss:.4f} {self._metric}={100.0 * self.accuracy:.2f}%"

    def update(self, n_examples: int, loss: float, acc: float) -> None:
        """Record a batch of ``n_examples`` with mean ``loss`` and accuracy ``acc`` (0..1)."""
        self._seen += n_examples
        self._loss_sum += float(loss) * n_examples
        self._correct_sum += float(acc) * n_examples
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
