"""Training-time data augmentation on NHWC batches: random crops, flips, small affine warps.

``crop`` is the CIFAR recipe (pad by an eighth of the side with zeros, take a random crop of
the original size); ``flip`` mirrors a random half of the images left-right; ``affine`` warps
each image by a small random rotation (±10°), scale (±10%) and shift (±1/16 of the side), the
distortions that help handwriting (Simard et al., 2003). All are vectorised over the batch with
index arrays, so a batch costs a few NumPy calls. Modes combine with '+', e.g. crop+flip.
"""
from __future__ import annotations

import numpy as np

from ..core.errors import NetdslError, did_you_mean

KINDS = ("crop", "flip", "affine")


def parse_mode(mode: str) -> set[str]:
    """The set of augmentation kinds in ``mode`` ('none', or kinds joined by '+')."""
    if mode == "none":
        return set()
    kinds = set(str(mode).split("+"))
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise NetdslError(f"unknown augmentation '{mode}'; use none or a '+'-joined combination "
                          f"of {', '.join(KINDS)}", hint=did_you_mean(bad[0] if bad else "", KINDS))
    return kinds


def crop_padding(size: int) -> int:
    """Zero padding (and largest shift) used by ``crop`` for a side of ``size`` pixels."""
    return max(1, size // 8)


def augment_batch(x: np.ndarray, mode: str, rng: np.random.Generator,
                  part: tuple[int, int] | None = None) -> np.ndarray:
    """A new, augmented copy of the NHWC batch ``x``; ``x`` itself is not modified.

    ``mode`` is one of none, crop, flip, crop+flip, flip+crop (the last two are the same: a
    crop then a flip, which commute in distribution). With ``part = (lo, total)``, ``x`` is rows
    lo:lo+len(x) of a batch of ``total``: the draws are made for the whole batch and these rows
    taken, so each example gets the warp it gets in the whole batch (data-parallel ranks).
    """
    lo, total = part if part is not None else (0, len(x))
    rows = slice(lo, lo + len(x))
    kinds = parse_mode(mode)
    if x.ndim != 4:
        raise NetdslError(f"augmentation needs NHWC image batches, got an array of shape "
                          f"{x.shape}", hint="use augment = none for flat inputs")
    if "affine" in kinds:
        x = affine_warp(x, *(a[rows] for a in random_affine(total, x.shape[1], x.shape[2], rng)))
    if "crop" in kinds:
        pad_h, pad_w = crop_padding(x.shape[1]), crop_padding(x.shape[2])
        dy = rng.integers(0, 2 * pad_h + 1, size=total)[rows]
        dx = rng.integers(0, 2 * pad_w + 1, size=total)[rows]
        out = crop_at(x, dy, dx, pad_h, pad_w)    # fancy indexing: already a new array
    else:
        out = x.copy() if "affine" not in kinds else x
    if "flip" in kinds:
        flip = rng.random(total)[rows] < 0.5
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


def random_affine(n: int, h: int, w: int, rng: np.random.Generator, max_degrees: float = 10.0,
                  max_scale: float = 0.1, max_shift: float = 1 / 16):
    """Per-image (angle in radians, scale, shift_y, shift_x in pixels) drawn uniformly."""
    angle = np.deg2rad(rng.uniform(-max_degrees, max_degrees, n))
    scale = rng.uniform(1 - max_scale, 1 + max_scale, n)
    shift_y = rng.uniform(-max_shift, max_shift, n) * h
    shift_x = rng.uniform(-max_shift, max_shift, n) * w
    return angle, scale, shift_y, shift_x


def affine_warp(x: np.ndarray, angle, scale, shift_y, shift_x) -> np.ndarray:
    """Image i rotated by angle[i] and scaled by scale[i] about its centre, then shifted;
    bilinear sampling, with the nearest border pixel outside the image (its background)."""
    n, h, w, _ = x.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy, xx = np.meshgrid(np.arange(h) - cy, np.arange(w) - cx, indexing="ij")
    cos, sin = (np.cos(angle) / scale)[:, None, None], (np.sin(angle) / scale)[:, None, None]
    # Inverse map: for each output pixel, where it comes from in the input.
    oy = yy[None] - shift_y[:, None, None]
    ox = xx[None] - shift_x[:, None, None]
    src_y = np.clip(cos * oy - sin * ox + cy, 0, h - 1)
    src_x = np.clip(sin * oy + cos * ox + cx, 0, w - 1)
    y0 = np.minimum(np.floor(src_y).astype(np.intp), h - 2) if h > 1 else np.zeros_like(src_y, np.intp)
    x0 = np.minimum(np.floor(src_x).astype(np.intp), w - 2) if w > 1 else np.zeros_like(src_x, np.intp)
    fy = (src_y - y0)[..., None].astype(x.dtype)
    fx = (src_x - x0)[..., None].astype(x.dtype)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    img = np.arange(n)[:, None, None]
    top = x[img, y0, x0] * (1 - fx) + x[img, y0, x1] * fx
    bottom = x[img, y1, x0] * (1 - fx) + x[img, y1, x1] * fx
    return top * (1 - fy) + bottom * fy
