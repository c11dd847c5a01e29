"""Datasets ready for training: split, fitted to the network's input shape, normalised.

``load_dataset("mnist:data/mnist", input_shape=(32, 32, 1))`` reads the files (see
:mod:`netdsl.data.datasets`), keeps a hold-out set when the source has no test split, converts
channels, pads or resizes to the input shape and normalises every channel with the train
split's mean and standard deviation.
"""
from __future__ import annotations

import math

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import NetdslError, did_you_mean
from .datasets import (DIGITS_COUNT, Splits, cifar_files, mnist_files, npz_info,
                       read_cifar10, read_digits, read_mnist, read_npz)
from .idx import read_header
from .targets import as_label_array

KINDS = ("digits", "mnist", "cifar10", "npz")
_SPEC_FORMS = "digits, mnist:DIR, cifar10:DIR, npz:FILE"

# Zero-padding is LeCun's way of presenting 28×28 MNIST to a 32×32 LeNet: the strokes keep
# their pixel size. Past a 25% margin the digit would become a small blob in a big frame, so
# bigger changes resize instead.
PAD_LIMIT = 1.25
DEFAULT_HOLDOUT_FRACTION = 0.2
# ITU-R BT.601 luma weights: the standard weighted mean that turns RGB into grey.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass
class Dataset:
    """Train and evaluation arrays: float32 NHWC normalised images and int64 labels."""

    name: str
    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    num_classes: int
    native_shape: tuple          # (H, W, C) as stored in the files
    test_name: str               # "test split" or "held-out last N"
    mean: tuple = ()             # per-channel mean and std used to normalise (train split's),
    std: tuple = ()              # stored in checkpoints so that predict/eval can repeat it

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The (H, W, C) of one example as the network sees it."""
        return tuple(self.x_train.shape[1:])


def dataset_info(spec: str) -> tuple[tuple[int, int, int], int]:
    """(native (H, W, C), num_classes) of a data spec, reading headers rather than whole files
    where the format allows: digits → ((8,8,1),10), mnist:DIR → ((28,28,1),10) from the IDX
    header, cifar10:DIR → ((32,32,3),10), npz:FILE → x's stored shape and the labels."""
    facts = data_facts(spec)
    return facts.native_shape, facts.num_classes


def load_dataset(spec: str, *, input_shape: tuple[int, int, int] | None = None,
                 holdout: int = -1) -> Dataset:
    """Read ``spec``, split, fit to ``input_shape`` (native shape when None) and normalise.

    A source with a test split is evaluated on it and ``holdout`` is ignored. A source with one
    split keeps its last ``holdout`` examples (file order) for evaluation; -1 means 20%.
    """
    target = _check_input_shape(input_shape)
    splits = read_splits(spec)
    if splits.train is not None and splits.test is not None:
        (x_train, y_train), (x_test, y_test) = splits.train, splits.test
        test_name = "test split"
    else:
        x_all, y_all = splits.train if splits.train is not None else splits.test
        count = holdout_count(len(x_all), holdout, splits.name)
        cut = len(x_all) - count
        x_train, y_train, x_test, y_test = x_all[:cut], y_all[:cut], x_all[cut:], y_all[cut:]
        test_name = f"held-out last {count}"
    flat = target is not None and len(target) == 1     # INPUT(784): FC-only nets
    if flat:
        target = flat_image_shape(target[0], tuple(splits.native_shape), splits.name)
    if target is not None:
        x_train = fit_to_shape(x_train, target)
        x_test = fit_to_shape(x_test, target)
    # In place: these arrays were made by the reader for us alone, and CIFAR copies are big.
    mean, std = channel_stats(x_train)
    x_train = apply_normalisation(x_train, mean, std, in_place=True)
    x_test = apply_normalisation(x_test, mean, std, in_place=True)
    if flat:   # normalised per channel as images, then flattened in H, W, C order
        x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    return Dataset(splits.name, x_train, as_label_array(y_train), x_test,
                   as_label_array(y_test), splits.num_classes, tuple(splits.native_shape),
                   test_name, tuple(mean), tuple(std))


def holdout_count(total: int, holdout: int, name: str = "dataset") -> int:
    """How many final examples to hold out: ``holdout``, or 20% (rounded) when it is -1."""
    if total < 2:
        raise NetdslError(f"{name}: only {total} example{'s' if total != 1 else ''}, "
                          f"too few to split into training and evaluation sets")
    if holdout == -1:
        # Round half up (Python's round() would round 0.5 to even).
        count = max(1, int(np.floor(total * DEFAULT_HOLDOUT_FRACTION + 0.5)))
        return min(count, total - 1)
    if not 0 < holdout < total:
        raise NetdslError(f"holdout = {holdout} is not possible: {name} has no test split and "
                          f"{total} examples, so holdout must be between 1 and {total - 1}",
                          hint="use holdout = -1 for the default 20%")
    return holdout


def _check_input_shape(shape) -> tuple | None:
    if shape is None:
        return None
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        dims = ()
    if len(dims) not in (1, 3) or min(dims) < 1:
        raise NetdslError(f"input shape {shape!r} is not a positive H×W×C triple or flat size")
    return dims


def flat_image_shape(size: int, native: tuple, name: str = "the dataset") -> tuple:
    """The H×W×C image that a flat input of ``size`` features is made from: the native shape
    when it has that many values, else a square of the native channels or of one channel
    (784 from CIFAR's 32×32×3 is a 28×28 grey image)."""
    h, w, c = native
    if size == h * w * c:
        return native
    for channels in (c, 1):
        side = math.isqrt(size // channels)
        if side * side * channels == size:
            return (side, side, channels)
    raise NetdslError(f"a flat input of {size} values cannot be made from {name}'s "
                      f"{h}×{w}×{c} images",
                      hint=f"use {h * w * c} (the images flattened)"
                           + (f", {h * w} (one channel)" if c > 1 else "")
                           + ", another square size, or INPUT(HxWxC) -> ... -> FLATTEN")


# ---------------------------------------------------------------------------------------------
# Data specs: which reader a spec names.

def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``kind:PATH`` into (kind, path); a NetdslError for unknown kinds or missing paths."""
    text = str(spec).strip()
    kind, sep, arg = text.partition(":")
    kind = kind.strip().lower()
    arg = arg.strip()
    if kind not in KINDS:
        raise NetdslError(f"unknown dataset kind '{kind or text}' in data spec '{text}'",
                          detail=f"dataset kinds are: {_SPEC_FORMS}",
                          hint=did_you_mean(kind, KINDS))
    if kind == "digits" and sep:
        raise NetdslError(f"data spec '{text}': digits is built in and takes no path",
                          hint="write data = digits")
    if kind != "digits" and not arg:
        what = "FILE" if kind == "npz" else "DIR"
        raise NetdslError(f"data spec '{text}': {kind} needs a path",
                          hint=f"write it as {kind}:{what}")
    return kind, arg


def read_splits(spec: str) -> Splits:
    """Read every example the spec names."""
    kind, arg = parse_spec(spec)
    if kind == "digits":
        return read_digits()
    if kind == "mnist":
        return read_mnist(Path(arg).expanduser())
    if kind == "cifar10":
        return read_cifar10(Path(arg).expanduser())
    return read_npz(Path(arg).expanduser())


@dataclass(frozen=True)
class DataFacts:
    """What the settings are checked against before any data is loaded (see data_facts)."""

    kind: str                     # digits | mnist | cifar10 | npz
    native_shape: tuple           # (H, W, C) as stored
    num_classes: int
    single_split: int | None      # examples, when the source has one split (holdout applies)


def data_facts(spec: str) -> DataFacts:
    """The facts of a data spec, reading as little as possible: IDX headers, npz array headers
    plus labels; digits and cifar10 are fixed formats, only their files are checked."""
    kind, arg = parse_spec(spec)
    path = Path(arg).expanduser()
    if kind == "digits":
        return DataFacts(kind, (8, 8, 1), 10, DIGITS_COUNT)
    if kind == "mnist":
        splits = mnist_files(path)
        dims = read_header(next(iter(splits.values()))[0], "images")[1]   # the first split's
        return DataFacts(kind, (dims[1], dims[2], 1), 10, dims[0] if len(splits) == 1 else None)
    if kind == "cifar10":
        cifar_files(path)   # a one-split CIFAR's size needs the pickles: holdout checked on load
        return DataFacts(kind, (32, 32, 3), 10, None)
    native, classes, count = npz_info(path)
    return DataFacts(kind, native, classes, count)


# ---------------------------------------------------------------------------------------------
# Fitting images to the network's input: channels, then pad or resize.

def fit_to_shape(x: np.ndarray, target: tuple[int, int, int]) -> np.ndarray:
    """NHWC images converted to ``target`` (H, W, C): channels by repetition or luma, spatial
    size by centred zero padding (small growth) or bilinear resizing (anything else)."""
    th, tw, tc = target
    if tc > x.shape[3]:
        # Growing channels copies data: do it after the spatial step, on fewer pixels.
        return convert_channels(_fit_spatial(x, th, tw), tc)
    return _fit_spatial(convert_channels(x, tc), th, tw)


def should_pad(source: tuple[int, int], target: tuple[int, int]) -> bool:
    """True when ``target`` is at least ``source`` and at most 1.25× it in both dimensions."""
    return all(s <= t <= PAD_LIMIT * s for s, t in zip(source, target))


def _fit_spatial(x: np.ndarray, h: int, w: int) -> np.ndarray:
    if x.shape[1:3] == (h, w):
        return x
    if should_pad(x.shape[1:3], (h, w)):
        return pad_centred(x, h, w)
    return resize_bilinear(x, h, w)


def convert_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """1 → C by repetition, 3 → 1 by luma-weighted mean; other changes are an error."""
    have = x.shape[3]
    if have == channels:
        return x
    if have == 1:
        return np.repeat(x, channels, axis=3)
    if have == 3 and channels == 1:
        return (x @ LUMA_WEIGHTS)[..., None].astype(np.float32)
    raise NetdslError(f"cannot convert {have}-channel images to the {channels} channels the "
                      f"network's input asks for",
                      hint=f"declare the input with {have} channels")


def pad_centred(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Zero-pad NHWC images to h×w, centred (an odd extra pixel goes bottom/right)."""
    top, left = (h - x.shape[1]) // 2, (w - x.shape[2]) // 2
    out = np.zeros((x.shape[0], h, w, x.shape[3]), dtype=np.float32)
    out[:, top:top + x.shape[1], left:left + x.shape[2]] = x
    return out


def _bilinear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index along an axis: the two source indices and the second's weight.

    Half-pixel centres (output pixel i samples source position (i + 0.5)·src/dst − 0.5), as
    PIL, OpenCV and PyTorch's align_corners=False do; positions clamp at the borders.
    """
    pos = np.clip((np.arange(dst) + 0.5) * (src / dst) - 0.5, 0, src - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, src - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def resize_bilinear(x: np.ndarray, h: int, w: int, chunk: int = 4096) -> np.ndarray:
    """Bilinear resize of NHWC images to h×w: separable, vectorised over the whole batch."""
    rows_lo, rows_hi, row_w = _bilinear_taps(x.shape[1], h)
    cols_lo, cols_hi, col_w = _bilinear_taps(x.shape[2], w)
    row_w, col_w = row_w[None, :, None, None], col_w[None, None, :, None]
    out = np.empty((x.shape[0], h, w, x.shape[3]), dtype=np.float32)
    # Chunks bound the temporaries for large sets (CIFAR upsampled) without a per-image loop.
    for start in range(0, x.shape[0], chunk):
        part = x[start:start + chunk]
        part = part[:, rows_lo] * (1 - row_w) + part[:, rows_hi] * row_w
        out[start:start + chunk] = part[:, :, cols_lo] * (1 - col_w) + part[:, :, cols_hi] * col_w
    return out


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of NHWC images; a constant channel gets std 1
    rather than a division by 0."""
    means, stds = [], []
    for c in range(x.shape[3]):
        channel = x[..., c]
        # float64 sums: float32 accumulation drifts over millions of pixels.
        mean = channel.mean(dtype=np.float64)
        var = max(np.square(channel).mean(dtype=np.float64) - mean * mean, 0.0)
        means.append(float(mean))
        stds.append(float(np.sqrt(var)) if var > 1e-12 else 1.0)
    return means, stds


def apply_normalisation(x: np.ndarray, mean, std, *, in_place: bool = False) -> np.ndarray:
    """(x − mean)/std per channel, as float32; float32 input is overwritten when ``in_place``."""
    out = np.asarray(x, np.float32) if in_place else np.array(x, np.float32)
    for c, (m, s) in enumerate(zip(mean, std)):
        out[..., c] -= np.float32(m)
        out[..., c] /= np.float32(s)
    return out


def normalise(x_train: np.ndarray, x_test: np.ndarray, *,
              in_place: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Both sets standardised per channel with the TRAIN set's mean and std (test statistics
    must not leak into training). A constant channel keeps std 1 rather than dividing by 0.
    Float32 inputs are overwritten when ``in_place``; otherwise they stay untouched."""
    mean, std = channel_stats(np.asarray(x_train, np.float32))
    return (apply_normalisation(x_train, mean, std, in_place=in_place),
            apply_normalisation(x_test, mean, std, in_place=in_place))
