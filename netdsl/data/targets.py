"""Float targets in npz datasets, for regression and multi-label nets.

An npz ``y`` is read as **targets** rather than class labels when it is N×k with k > 1 (one
column per output: regression values, or 0/1 per label for a multi-label net) or when it holds
floats that are not whole numbers (one regression value per example). Targets stay float32 of
shape (N, k); the dataset's "class count" is then k, the outputs a bare FC gets. A 1-D y of
whole numbers is still class labels; a regression head reads it as one value per example.
Which loss the targets suit is checked against the net's head when `run` starts
(Executor.check_labels).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import NetdslError


def is_targets(y: np.ndarray) -> bool:
    """Whether an npz ``y`` holds targets (see the module docstring) rather than class ids."""
    if y.ndim == 2 and y.shape[1] > 1:
        return True
    if y.dtype.kind == "f" and y.ndim in (1, 2) and y.size:
        finite = np.isfinite(y)
        return not finite.all() or not np.all(y == np.round(y))
    return False


def read_targets(y: np.ndarray, count: int, path: Path) -> tuple[np.ndarray, int]:
    """(float32 targets of shape (N, k), k), checked."""
    if y.ndim == 1:
        y = y[:, None]
    if y.dtype.kind not in "iubf":
        raise NetdslError(f"{path}: y must hold numbers, found {y.dtype}")
    if len(y) != count:
        raise NetdslError(f"{path}: image/target count mismatch: x has {count} examples, "
                          f"y has {len(y)}")
    if not np.all(np.isfinite(y)):
        i = int(np.flatnonzero(~np.isfinite(y).all(axis=1))[0])
        raise NetdslError(f"{path}: example {i} has a NaN or infinite target",
                          hint="regression targets must be finite numbers")
    return np.ascontiguousarray(y, dtype=np.float32), int(y.shape[1])


def as_label_array(y: np.ndarray) -> np.ndarray:
    """Class labels as int64; float targets as they are (float32)."""
    return y if y.dtype.kind == "f" else y.astype(np.int64)
