"""Reading image-classification data sets from disk, with errors a user can act on.

Each reader returns :class:`Splits`: images as float32 NHWC scaled to [0, 1], labels as int64,
and whichever of the train/test splits the source has. Splitting off a hold-out set, resizing
and normalising happen later, in :mod:`netdsl.data.loader`.

Readers: :func:`read_digits` (scikit-learn's bundled 8×8 digits), :func:`read_mnist` (IDX
files), :func:`read_cifar10` (the python pickle batches), :func:`read_npz` (arrays x and y).
"""
from __future__ import annotations

import math
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import NetdslError
from .idx import read_idx
from .targets import is_targets, read_targets


DIGITS_COUNT = 1797      # scikit-learn's bundled digits
MAX_CLASSES = 100_000   # ImageNet-21k has 21,841; a label past this is a code, not a class id


@dataclass
class Splits:
    """What a reader found: a train split and/or a test split, each ``(x, y)`` or None."""

    name: str
    train: tuple[np.ndarray, np.ndarray] | None
    test: tuple[np.ndarray, np.ndarray] | None
    native_shape: tuple[int, int, int]
    num_classes: int


# ---------------------------------------------------------------------------------------------
# Shared checks.

def check_labels(y: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """Labels as int64 in 0..num_classes-1; a NetdslError naming the first bad one."""
    y = np.asarray(y).astype(np.int64, copy=False)
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        i = int(bad[0])
        kind = "negative" if y[i] < 0 else "out of range"
        raise NetdslError(f"{where}: label {kind}: example {i} has label {int(y[i])}, "
                          f"labels must be 0..{num_classes - 1}",
                          detail=f"{bad.size} of {y.size} labels are outside 0..{num_classes - 1}")
    return y


def _require_dir(directory: Path, kind: str) -> None:
    if not directory.exists():
        raise NetdslError(f"{kind} data directory '{directory}' does not exist",
                          hint=f"give the folder holding the {kind} files: {kind}:DIR")
    if not directory.is_dir():
        raise NetdslError(f"{kind} data path '{directory}' is a file, not a directory",
                          hint=f"give the folder that holds it: {kind}:{directory.parent}")


# ---------------------------------------------------------------------------------------------
# digits: scikit-learn ships these 1797 real 8×8 scans inside the package, no download needed.

def read_digits() -> Splits:
    """scikit-learn's 8×8 handwritten digits (values 0..16), one split in file order."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]
    return Splits("digits", (x, bunch.target.astype(np.int64)), None, (8, 8, 1), 10)


# ---------------------------------------------------------------------------------------------
# MNIST: IDX files, big-endian header of a magic number and one uint32 per dimension.

_MNIST_STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _idx_names(stem: str) -> list[str]:
    # Some mirrors spell the files 'train-images.idx3-ubyte'; accept both, zipped or not.
    dotted = stem.replace("-idx", ".idx")
    return [stem, stem + ".gz", dotted, dotted + ".gz"]


def _find_first(directory: Path, names: list[str]) -> Path | None:
    for name in names:
        if (directory / name).is_file():
            return directory / name
    return None


def mnist_files(directory: Path) -> dict[str, tuple[Path, Path]]:
    """{split: (images path, labels path)} for the splits present; errors name what is missing."""
    _require_dir(directory, "mnist")
    found = {}
    for split, (img_stem, lbl_stem) in _MNIST_STEMS.items():
        images = _find_first(directory, _idx_names(img_stem))
        labels = _find_first(directory, _idx_names(lbl_stem))
        if images and labels:
            found[split] = (images, labels)
        elif images or labels:
            present, missing = (images, lbl_stem) if images else (labels, img_stem)
            raise NetdslError(f"mnist: found {present} but not its partner in '{directory}'",
                              detail="looked for: " + ", ".join(_idx_names(missing)))
    if not found:
        looked = [n for pair in _MNIST_STEMS.values() for s in pair for n in _idx_names(s)[:2]]
        raise NetdslError(f"mnist: no IDX files in '{directory}'",
                          detail="looked for: " + ", ".join(looked)
                          + " (also with '.idx' instead of '-idx')")
    return found


def read_mnist(directory: Path) -> Splits:
    """MNIST-format IDX files in ``directory``: train and/or t10k, each optionally gzipped."""
    loaded = {}
    for split, (img_path, lbl_path) in mnist_files(directory).items():
        x = read_idx(img_path, "images")
        y = read_idx(lbl_path, "labels")
        if len(x) != len(y):
            raise NetdslError(f"mnist: image/label count mismatch: {img_path} has {len(x)} "
                              f"images but {lbl_path} has {len(y)} labels")
        y = check_labels(y, 10, str(lbl_path))
        loaded[split] = ((x.astype(np.float32) / 255.0)[..., None], y, img_path)
    sizes = {str(path): "×".join(map(str, x.shape[1:3])) for x, _, path in loaded.values()}
    if len(set(sizes.values())) > 1:
        raise NetdslError("mnist: image sizes differ: " + ", ".join(f"{p} has {s}"
                                                                   for p, s in sizes.items()))
    some = next(iter(loaded.values()))[0]
    train, test = (loaded[s][:2] if s in loaded else None for s in ("train", "test"))
    return Splits(f"mnist:{directory}", train, test, (some.shape[1], some.shape[2], 1), 10)


# ---------------------------------------------------------------------------------------------
# CIFAR-10: pickled dicts {b'data': N×3072 uint8 (channel planes), b'labels': [ints]}.

class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickling can run arbitrary code; a CIFAR batch only needs numpy's array rebuilders."""

    _ALLOWED = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}

    def find_class(self, module, name):
        if module == "_codecs" and name == "encode":  # how protocol-2 pickles store bytes
            return super().find_class(module, name)
        if module.split(".")[0] == "numpy" and name in self._ALLOWED:
            # Batches pickled by NumPy 1 name numpy.core, which NumPy 2 renamed numpy._core.
            if module.startswith("numpy.core") and hasattr(np, "_core"):
                module = "numpy._core" + module[len("numpy.core"):]
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def cifar_files(directory: Path) -> tuple[list[Path], Path | None]:
    """(train batch paths, test batch path) in ``directory`` or its cifar-10-batches-py/."""
    _require_dir(directory, "cifar10")
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for base in (directory, directory / "cifar-10-batches-py"):
        train = [base / n for n in names[:5] if (base / n).is_file()]
        test = base / "test_batch"
        if train or test.is_file():
            return train, (test if test.is_file() else None)
    raise NetdslError(f"cifar10: no CIFAR-10 batches in '{directory}'",
                      detail="looked for " + ", ".join(names) + f" in '{directory}' and "
                      f"'{directory / 'cifar-10-batches-py'}'",
                      hint="unpack cifar-10-python.tar.gz there")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch as (uint8 N×32×32×3, int64 labels)."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise NetdslError(f"cannot read {path}: {e.strerror or e}") from None
    except Exception as e:  # a damaged pickle can fail in many ways; all mean the same here
        raise NetdslError(f"{path}: bad pickle, not a CIFAR-10 python batch ({e})",
                          hint="download cifar-10-python.tar.gz again") from None
    batch = ({k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
             if isinstance(batch, dict) else {})
    if "data" not in batch or "labels" not in batch:
        raise NetdslError(f"{path}: bad pickle: expected a dict with 'data' and 'labels'",
                          detail="entries found: " + (", ".join(map(str, batch)) or "none"))
    try:
        data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"])
    except (ValueError, TypeError, OverflowError) as e:  # ragged lists, odd objects
        raise NetdslError(f"{path}: bad pickle: 'data' and 'labels' must be arrays or lists of "
                          f"numbers ({e})", hint="download cifar-10-python.tar.gz again") from None
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise NetdslError(f"{path}: data must be N×3072 uint8 (32×32×3 images), "
                          f"found {'×'.join(map(str, data.shape))} {data.dtype}")
    if len(data) == 0:
        raise NetdslError(f"{path}: empty dataset: the batch holds no images")
    if labels.ndim != 1 or len(labels) != len(data) or labels.dtype.kind not in "iu":
        raise NetdslError(f"{path}: image/label count mismatch: {len(data)} images but "
                          f"labels of shape {labels.shape} ({labels.dtype})")
    # Rows store the R, G and B planes one after another: N×3×32×32 → NHWC.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, check_labels(labels, 10, str(path))


def read_cifar10(directory: Path) -> Splits:
    """CIFAR-10 python batches: data_batch_1..5 and/or test_batch."""
    train_paths, test_path = cifar_files(directory)

    def load(paths):
        parts = [read_cifar_batch(p) for p in paths]
        x = np.concatenate([p[0] for p in parts]).astype(np.float32)
        x /= 255.0  # in place: CIFAR's train set is 600 MB as float32, no second copy
        return x, np.concatenate([p[1] for p in parts])

    return Splits(f"cifar10:{directory}", load(train_paths) if train_paths else None,
                  load([test_path]) if test_path else None, (32, 32, 3), 10)


# ---------------------------------------------------------------------------------------------
# npz: arrays x (N×H×W, N×H×W×C or N×C×H×W) and y (N integer labels).

def npz_layout(shape: tuple, path: Path) -> tuple[bool, tuple[int, int, int]]:
    """(is channels-first, native (H, W, C)) for an x array of ``shape``."""
    if len(shape) in (3, 4) and 0 in shape[1:]:
        raise NetdslError(f"{path}: x holds empty images: shape {'×'.join(map(str, shape))}",
                          hint="every image needs at least one pixel and one channel")
    if len(shape) == 3:
        return False, (shape[1], shape[2], 1)
    if len(shape) == 4:
        # Channels-first only when axis 1 looks like channels and the last axis does not:
        # a 3×3×3 image stays NHWC, as most image files are stored.
        if shape[1] in (1, 3) and shape[3] not in (1, 3):
            return True, (shape[2], shape[3], shape[1])
        return False, (shape[1], shape[2], shape[3])
    raise NetdslError(f"{path}: x must be N×H×W, N×H×W×C or N×C×H×W, "
                      f"found shape {'×'.join(map(str, shape))}")


def _open_npz(path: Path):
    if not path.exists():
        raise NetdslError(f"npz file '{path}' does not exist")
    if path.is_dir():
        raise NetdslError(f"npz path '{path}' is a directory, not a file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise NetdslError(f"{path}: not a readable .npz archive ({e})",
                          hint="save it with np.savez(FILE, x=images, y=labels)") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise NetdslError(f"{path}: is a single .npy array, not an .npz archive",
                          hint="save it with np.savez(FILE, x=images, y=labels)")
    missing = [k for k in ("x", "y") if k not in archive.files]
    if missing:
        archive.close()
        raise NetdslError(f"{path}: npz is missing array {' and '.join(missing)}",
                          detail="arrays found: " + (", ".join(archive.files) or "none"),
                          hint="save it with np.savez(FILE, x=images, y=labels)")
    return archive


def _npz_array(archive, key: str, path: Path) -> np.ndarray:
    """Array ``key``, after checking that its header's shape fits the bytes stored: a header
    that promises more than the file holds would otherwise allocate it all before failing."""
    header = _npz_header(path, key)
    if header is not None:
        shape, dtype, stored = header
        want = math.prod(shape) * dtype.itemsize
        if want != stored:
            raise NetdslError(f"{path}: array {key} is damaged: its header says "
                              f"{'×'.join(map(str, shape)) or 'a scalar'} {dtype} = {want:,} "
                              f"bytes, the archive holds {stored:,}",
                              hint="save it again with np.savez(FILE, x=images, y=labels)")
    try:
        return archive[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise NetdslError(f"{path}: cannot read array {key} ({e})") from None


def _npz_labels(y: np.ndarray, count: int, path: Path) -> tuple[np.ndarray, int]:
    """Checked int64 labels and the class count (largest label + 1); or float32 targets and
    their column count (targets.py)."""
    if is_targets(y):
        return read_targets(y, count, path)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise NetdslError(f"{path}: y must be one integer label per example, found shape "
                          f"{'×'.join(map(str, y.shape))}",
                          hint="for one-hot labels save y.argmax(axis=1)")
    if y.dtype.kind in "iuf" and y.size and not (np.abs(y) < MAX_CLASSES).all():
        i = int(np.flatnonzero(~(np.abs(y) < MAX_CLASSES))[0])
        raise NetdslError(f"{path}: example {i} has label {y[i]}: netdsl trains at most "
                          f"{MAX_CLASSES:,} classes (labels 0..{MAX_CLASSES - 1:,})",
                          hint="labels must be class ids 0, 1, 2, ... (not raw codes)")
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)  # whole numbers saved as floats are still labels
    if y.dtype.kind not in "iub":
        raise NetdslError(f"{path}: y must hold integer class ids, found {y.dtype}")
    if len(y) != count:
        raise NetdslError(f"{path}: image/label count mismatch: x has {count} examples, "
                          f"y has {len(y)}")
    if count == 0:
        raise NetdslError(f"{path}: empty dataset: x and y hold no examples")
    # Classes are 0..max, so the only labels check_labels can reject here are negative ones.
    num_classes = int(y.max()) + 1
    return check_labels(y, num_classes, str(path)), num_classes


def _npz_header(path: Path, key: str) -> tuple | None:
    """(shape, dtype, bytes after the header) of an npz member, without reading its data;
    None when unknown (the array read then reports the problem)."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(
                               np.lib.format.read_magic(f))
            if read_header:
                shape, _, dtype = read_header(f)
                stored = zf.getinfo(f"{key}.npy").file_size - f.tell()
                return (shape, dtype, stored) if not dtype.hasobject else None
    except Exception:  # any oddity: fall back to reading the array, which reports it properly
        pass
    return None


def npz_info(path: Path) -> tuple[tuple[int, int, int], int, int]:
    """(native H, W, C), num_classes, examples) reading x's header and the labels only."""
    with _open_npz(path) as archive:
        header = _npz_header(path, "x")
        consistent = header and math.prod(header[0]) * header[1].itemsize == header[2]
        shape = header[0] if consistent else None   # else the full read reports the damage
        if shape is None:
            shape = _npz_array(archive, "x", path).shape
        _, native = npz_layout(shape, path)
        _, num_classes = _npz_labels(_npz_array(archive, "y", path), shape[0], path)
    return native, num_classes, shape[0]


def _to_unit_range(x: np.ndarray, path: Path) -> np.ndarray:
    """float32 in [0, 1]: 8-bit ranges by /255, floats already in [0, 1] kept, others min-max."""
    if x.dtype.kind not in "iubf":
        raise NetdslError(f"{path}: x must hold numbers, found {x.dtype}")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise NetdslError(f"{path}: x contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if x.dtype.kind == "f" and lo >= 0 and hi <= 1:
        return x.astype(np.float32)
    if lo >= 0 and hi <= 255:
        return x.astype(np.float32) / 255.0
    # Anything else (e.g. already standardised data): map its range onto [0, 1].
    return ((x.astype(np.float32) - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)


def read_npz(path: Path) -> Splits:
    """An .npz archive with x and y: one split, file order."""
    with _open_npz(path) as archive:
        x = _npz_array(archive, "x", path)
        y = _npz_array(archive, "y", path)
    channels_first, native = npz_layout(x.shape, path)
    y, num_classes = _npz_labels(y, len(x), path)
    if channels_first:
        x = x.transpose(0, 2, 3, 1)
    x = _to_unit_range(x, path).reshape(len(x), *native)
    return Splits(f"npz:{path}", (np.ascontiguousarray(x), y), None, native, num_classes)
