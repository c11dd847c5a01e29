"""Logs of a run while it trains: ``DIR/log.csv`` and TensorBoard event files in ``DIR/tb/``,
one row per finished epoch: loss, accuracies, held-out loss, learning rate and step time.

Why a resumed run's log neither repeats nor loses a row: both logs are rebuilt from the run's
history (the records kept in the checkpoint, one per finished epoch) rather than appended to
blindly. The CSV is rewritten whole and atomically after every epoch (a few hundred bytes per
epoch); the event files, which TensorBoard only appends to, are replaced when a run (fresh or
resumed) writes its first row: the old ones are deleted and the history written into a new one.
A row written after the last checkpoint by a run killed with ``kill -9`` is therefore dropped
on resume together with the epoch it belonged to, which the resumed run trains again.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from ..core.errors import NetdslError
from ..core.files import write_text

LOGS = ("csv", "tensorboard", "none")
COLUMNS = ("epoch", "loss", "train_acc", "test_acc", "test_loss", "lr", "step_time_s",
           "images_per_s", "seconds")
# TensorBoard tag of each column (the epoch is TensorBoard's step)
TAGS = {"loss": "train/loss", "train_acc": "train/acc", "test_acc": "held_out/acc",
        "test_loss": "held_out/loss", "lr": "lr", "step_time_s": "time/step_s",
        "images_per_s": "time/images_per_s"}


def csv_text(history: list) -> str:
    """The CSV of ``history``: a header of COLUMNS, one line per epoch, '' for a missing value."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    for row in history:
        w.writerow(["" if row.get(c) is None else repr(row[c]) if isinstance(row[c], float)
                    else row[c] for c in COLUMNS])
    return out.getvalue()


class RunLog:
    """Writes ``history`` to the chosen log in ``out_dir`` after each epoch (see above)."""

    def __init__(self, out_dir, kind: str = "csv"):
        if kind not in LOGS:
            raise NetdslError(f"--log {kind!r} is not one of {', '.join(LOGS)}")
        self.out_dir = Path(out_dir) if out_dir else None
        self.kind = kind if out_dir else "none"
        self._writer = None       # the TensorBoard writer, opened at the first row
        self._written = 0         # history rows in the open event file
        if self.kind == "tensorboard":
            try:
                import tensorboardX  # noqa: F401  (checked before any training)
            except ImportError:
                raise NetdslError("--log tensorboard needs the tensorboardX package",
                                  hint="pip install 'netdsl[tensorboard]', or use --log csv"
                                  ) from None

    @property
    def path(self) -> str | None:
        """The CSV file or the event-file directory, None for --log none."""
        if self.kind == "csv":
            return str(self.out_dir / "log.csv")
        return str(self.out_dir / "tb") if self.kind == "tensorboard" else None

    def write(self, history: list) -> None:
        """Bring the log up to ``history`` (every finished epoch of the run)."""
        if self.kind == "csv":
            write_text(self.path, csv_text(history), "CSV log")
        elif self.kind == "tensorboard":
            self._tensorboard(history)

    def _tensorboard(self, history: list) -> None:
        from tensorboardX import SummaryWriter
        if self._writer is None:
            logdir = Path(self.path)
            logdir.mkdir(parents=True, exist_ok=True)
            for old in logdir.glob("events.out.tfevents.*"):   # rebuilt from the history
                old.unlink()
            self._writer = SummaryWriter(str(logdir))
        for row in history[self._written:]:
            for key, tag in TAGS.items():
                value = row.get(key)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(tag, value, row["epoch"])
        self._written = len(history)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file (nothing to do for the CSV)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
