"""``folder:DIR`` datasets: a folder of PNG/JPEG images with one sub-folder per class.

The layout of Keras' ``image_dataset_from_directory`` and torchvision's ``ImageFolder``::

    DIR/cat/001.png  DIR/dog/x.jpg  ...            one split: a hold-out set is kept
    DIR/train/cat/...  DIR/val/cat/...             or a train and a val split

Classes are the sub-folder names, sorted (label 0 is the first); the names travel in the
checkpoint so that ``predict`` and ``eval`` print them. Every image is decoded with Pillow
(:func:`netdsl.data.images.decode_image`: bit depth honoured, pixel limit checked), brought to
the network's grey or RGB channels and resized to INPUT's size with Pillow's bilinear filter,
exactly as ``predict`` shapes a new image file (:func:`netdsl.data.images.resize_image`).

Examples are ordered so that a hold-out set taken from the end mixes the classes in their
proportions: the i-th of a class's n files (sorted by name) sits at position (i + ½)/n.

A folder whose decoded images (float32) would take more than :func:`memory_limit` bytes is
not loaded whole: :class:`FolderImages` decodes the images of each mini-batch when it is
indexed, so memory holds one batch of images (plus the file list) instead of the set.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import NetdslError
from .images import convert_channels, decode_image, image_header, resize_image

EXTENSIONS = (".png", ".jpg", ".jpeg")
DEFAULT_MEMORY_LIMIT = 2 * 2 ** 30
"""Decoded float32 images up to 2 GiB are loaded whole; a bigger folder streams."""
MEMORY_ENV = "NETDSL_DATA_MEMORY"
"""The environment variable that sets the limit: bytes, or with a K, M or G suffix."""


def memory_limit() -> int:
    """The in-memory limit for folder datasets: $NETDSL_DATA_MEMORY (e.g. ``512M``) or 2 GiB."""
    text = os.environ.get(MEMORY_ENV, "").strip()
    if not text:
        return DEFAULT_MEMORY_LIMIT
    scale = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30}.get(text[-1].upper(), 1)
    number = text[:-1] if scale > 1 else text
    try:
        value = float(number) * scale
    except ValueError:
        value = -1
    if value < 0:
        raise NetdslError(f"{MEMORY_ENV}={text!r} is not a size",
                          hint=f"write bytes or a size such as 512M or 4G: {MEMORY_ENV}=512M")
    return int(value)


@dataclass(frozen=True)
class FolderLayout:
    """The class names and the (file, label) pairs of each split (val None: one split)."""

    classes: tuple
    train: list
    val: list | None


def _images_in(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in EXTENSIONS)


def _class_folders(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def _examples(root: Path, classes: tuple) -> list[tuple[str, int]]:
    """(file, label) pairs, classes interleaved in proportion (see the module's note)."""
    keyed = []
    for label, name in enumerate(classes):
        files = _images_in(root / name) if (root / name).is_dir() else []
        keyed += [((i + 0.5) / len(files), label, f) for i, f in enumerate(files)]
    return [(f, label) for _, label, f in sorted(keyed)]


def folder_layout(directory: Path) -> FolderLayout:
    """Read the folder structure (no image is decoded); errors say what the layout must be."""
    form = "one sub-folder of PNG/JPEG images per class (DIR/cat/1.png ...), or DIR/train/ " \
           "and DIR/val/ laid out so"
    if not directory.is_dir():
        raise NetdslError(f"folder dataset '{directory}' "
                          + ("is a file, not a directory" if directory.exists()
                             else "does not exist"), hint=f"folder:DIR needs {form}")
    split = (directory / "train").is_dir() and (directory / "val").is_dir()
    root = directory / "train" if split else directory
    folders = _class_folders(root)
    classes = tuple(p.name for p in folders if _images_in(p))
    if len(classes) < 2:
        raise NetdslError(f"folder dataset '{root}': {len(classes)} class folder(s) with "
                          "images; a classifier needs at least 2",
                          detail="found: " + (", ".join(p.name for p in folders) or "no folders"),
                          hint=f"folder:DIR needs {form}")
    val = None
    if split:
        extra = sorted(p.name for p in _class_folders(directory / "val")
                       if p.name not in classes and _images_in(p))
        if extra:
            raise NetdslError(f"folder dataset '{directory}': val/ has classes that train/ has "
                              f"not: {', '.join(extra)}",
                              hint="every class needs training images in train/")
        val = _examples(directory / "val", classes)
        if not val:
            raise NetdslError(f"folder dataset '{directory}': val/ holds no images")
    return FolderLayout(classes, _examples(root, classes), val)


def folder_native(layout: FolderLayout) -> tuple[int, int, int]:
    """(H, W, C) of the first training image, from its header: C is 1 for a grey file."""
    h, w, grey = image_header(layout.train[0][0])
    return h, w, 1 if grey else 3


def load_image(path: str, shape: tuple[int, int, int]) -> np.ndarray:
    """One image file as an H×W×C float32 array in [0, 1] of ``shape``: decoded (grey kept
    grey for a grey network, else RGB), channels converted by luma, resized by Pillow, as
    ``predict`` prepares a file."""
    h, w, c = shape
    a = decode_image(path, None if c == 1 else False)
    return convert_channels(resize_image(a, h, w)[None], c)[0]


class FolderImages:
    """The images of a list of files as a read-only N×H×W×C (or N×F when ``flat``) float32
    array whose elements are decoded when indexed: ``x[idx]`` with an index array or slice
    returns a normalised batch (``(x - mean) / std`` per channel once ``mean`` is set)."""

    dtype = np.dtype(np.float32)

    def __init__(self, files: list[str], shape: tuple[int, int, int], flat: bool = False):
        self.files, self.image_shape, self.flat = list(files), tuple(shape), flat
        self.mean = self.std = None

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple:
        """N×H×W×C, or N×F for a flat input."""
        per = (int(np.prod(self.image_shape)),) if self.flat else self.image_shape
        return (len(self.files), *per)

    @property
    def nbytes(self) -> int:
        """What the whole set would take decoded."""
        return int(np.prod(self.shape)) * 4

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        picks = range(len(self.files))[key] if isinstance(key, slice) else np.asarray(key)
        out = np.empty((len(picks), *self.image_shape), np.float32)
        for row, i in enumerate(picks):
            out[row] = load_image(self.files[int(i)], self.image_shape)
        if self.mean is not None:
            out -= np.asarray(self.mean, np.float32)
            out /= np.asarray(self.std, np.float32)
        return out.reshape(len(out), -1) if self.flat else out

    def __array__(self, dtype=None, copy=None):
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def channel_stats(self, batch: int = 64) -> tuple[list[float], list[float]]:
        """Per-channel mean and std over all images, ``batch`` images at a time (float64
        sums), as loader.channel_stats computes them on a loaded array."""
        c = self.image_shape[2]
        total, sums, squares = 0, np.zeros(c), np.zeros(c)
        mean, self.mean = self.mean, None   # raw pixels while measuring
        flat, self.flat = self.flat, False
        try:
            for start in range(0, len(self), batch):
                part = self[start:start + batch].reshape(-1, c)
                total += len(part)
                sums += part.sum(axis=0, dtype=np.float64)
                squares += np.square(part, out=part).sum(axis=0, dtype=np.float64)
        finally:
            self.mean, self.flat = mean, flat
        means = sums / max(total, 1)
        var = np.maximum(squares / max(total, 1) - means * means, 0.0)
        return [float(m) for m in means], [float(np.sqrt(v)) if v > 1e-12 else 1.0 for v in var]
