"""Training-time data augmentation on NHWC batches: random crops and horizontal flips.

``crop`` is the CIFAR recipe (pad by an eighth of the side with zeros, take a random crop of
the original size); ``flip`` mirrors a random half of the images left-right. Both are
vectorised over the batch with index arrays, so a batch costs a few NumPy calls.
"""
from __future__ import annotations

import numpy as np

from ..errors import NetdslError, did_you_mean

MODES = ("none", "crop", "flip", "crop+flip", "flip+crop")


def crop_padding(size: int) -> int:
    """Zero padding (and largest shift) used by ``crop`` for a side of ``size`` pixels."""
    return max(1, size // 8)


def augment_batch(x: np.ndarray, mode: str, rng: np.random.Generator) -> np.ndarray:
    """A new, augmented copy of the NHWC batch ``x``; ``x`` itself is not modified.

    ``mode`` is one of none, crop, flip, crop+flip, flip+crop (the last two are the same: a
    crop then a flip, which commute in distribution).
    """
    if mode not in MODES:
        raise NetdslError(f"unknown augmentation '{mode}'; choose one of {', '.join(MODES)}",
                          hint=did_you_mean(str(mode), MODES))
    if x.ndim != 4:
        raise NetdslError(f"augmentation needs NHWC image batches, got an array of shape "
                          f"{x.shape}", hint="use augment = none for flat inputs")
    if "crop" in mode:
        pad_h, pad_w = crop_padding(x.shape[1]), crop_padding(x.shape[2])
        dy = rng.integers(0, 2 * pad_h + 1, size=len(x))
        dx = rng.integers(0, 2 * pad_w + 1, size=len(x))
        out = crop_at(x, dy, dx, pad_h, pad_w)    # fancy indexing: already a new array
    else:
        out = x.copy()
    if "flip" in mode:
        flip = rng.random(len(x)) < 0.5
        out[flip] = out[flip, :, ::-1]
    return out


def crop_at(x: np.ndarray, dy: np.ndarray, dx: np.ndarray, pad_h: int, pad_w: int) -> np.ndarray:
    """Zero-pad ``x`` by (pad_h, pad_w) and cut image i's original-size window at (dy[i], dx[i])
    of the padded image; dy = pad_h, dx = pad_w gives the image back unchanged."""
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (pad_h, pad_h), (pad_w, pad_w), (0, 0)))
    rows = np.asarray(dy)[:, None] + np.arange(h)          # (N, H) source row per output row
    cols = np.asarray(dx)[:, None] + np.arange(w)          # (N, W)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
