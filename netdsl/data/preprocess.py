"""Preprocessing new inputs exactly as training did, from a record kept in the checkpoint.

Training (netdsl.data.loader) turns a source's images, scaled to [0, 1], into the network's
input in three steps: channel conversion (1→C by repetition, RGB→grey by luma), centred
zero-padding or bilinear resizing from the source's native size to INPUT's, and per-channel
standardisation with the train split's mean and std. ``netdsl run`` stores what those steps
need as ``meta["preprocess"]`` in every checkpoint::

    {"data": "digits", "native_shape": [8, 8, 1], "input_shape": [32, 32, 1],
     "mean": [0.30], "std": [0.37], "classes": 10}

A new image is first brought to the native size (so that it is padded or resized to INPUT
the way training images were), then goes through the same steps.
"""
from __future__ import annotations

import numpy as np

from ..core.errors import NetdslError
from .loader import apply_normalisation, convert_channels, fit_to_shape, resize_bilinear


def make_record(data, input_shape) -> dict:
    """The preprocessing record of a loaded :class:`~netdsl.data.loader.Dataset`."""
    return {"data": data.name, "native_shape": [int(d) for d in data.native_shape],
            "input_shape": [int(d) for d in input_shape], "mean": list(data.mean),
            "std": list(data.std), "classes": int(data.num_classes),
            **({"class_names": list(data.class_names)} if data.class_names else {})}


def record_for(meta: dict, input_shape, path: str = "checkpoint") -> dict:
    """The checkpoint's record; for a checkpoint written before records existed, rebuilt by
    reading the training data again (same spec, same split, same statistics)."""
    record = meta.get("preprocess")
    if record:   # the network's input wins (a --input given now may differ from training's)
        from .images import check_record
        return dict(check_record(record, path), input_shape=[int(d) for d in input_shape])
    config = meta.get("config") or {}
    if not config.get("data"):
        raise NetdslError(f"'{path}' does not say how its training images were preprocessed",
                          hint="use a checkpoint written by netdsl run")
    from .loader import load_dataset
    data = load_dataset(config["data"], input_shape=input_shape,
                        holdout=int(config.get("holdout", -1)))
    return make_record(data, input_shape)


def prepare(x: np.ndarray, record: dict) -> np.ndarray:
    """NHWC images in [0, 1] → the network's normalised input, as in training."""
    nh, nw, nc = record["native_shape"]
    x = convert_channels(np.asarray(x, np.float32), nc)
    if x.shape[1:3] != (nh, nw):
        x = resize_bilinear(x, nh, nw)
    target = tuple(record["input_shape"])
    if len(target) == 1:   # a flat INPUT(F): fitted and normalised as an image, then flattened
        from .loader import flat_image_shape
        image = flat_image_shape(target[0], (nh, nw, nc), record.get("data", "the data"))
        x = apply_normalisation(fit_to_shape(x, image), record["mean"], record["std"])
        return x.reshape(len(x), -1)
    x = fit_to_shape(x, target)
    return apply_normalisation(x, record["mean"], record["std"])


def _unit_range(a: np.ndarray, where: str) -> np.ndarray:
    """Integer pixels scaled to [0, 1] by their type's range; floats must already be there."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255
    if a.dtype.kind in "ui":
        top = 255 if a.size and a.max() <= 255 else 65535
        return a.astype(np.float32) / top
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise NetdslError(f"{where}: holds NaN or infinite values")
    if a.size and (a.min() < 0 or a.max() > 1):
        raise NetdslError(f"{where}: float pixels must lie in [0, 1], found "
                          f"{a.min():g}..{a.max():g}",
                          hint="scale the images to [0, 1] as the data readers do")
    return a


def crop_ink(a: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """An H×W×C image in [0, 1] cut to the bounding box of its ink (pixels above
    ``threshold`` of the brightest), centred in a square of background: how the UCI digits
    (scikit-learn's ``digits``) were made, so a digit drawn small in a big frame (MNIST, a
    photo) fills the 8×8 grid as the training digits do. A blank image is returned as is."""
    ink = a.max(axis=2) if a.size else a
    rows, cols = np.nonzero(ink > threshold * ink.max()) if ink.max() > 0 else ((), ())
    if len(rows) == 0:
        return a
    box = a[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    h, w, c = box.shape
    n = max(h, w)
    out = np.zeros((n, n, c), np.float32)
    out[(n - h) // 2:(n - h) // 2 + h, (n - w) // 2:(n - w) // 2 + w] = box
    return out


def _resize_image(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """H×W×C float → h×w×C: Pillow's averaging bilinear filter (images.resize_image, as folder
    datasets are shaped in training); without Pillow (an .npy batch) the training resize."""
    import importlib.util
    if importlib.util.find_spec("PIL") is None:
        return resize_bilinear(a[None], h, w)[0] if a.shape[:2] != (h, w) else a
    from .images import resize_image
    return resize_image(a, h, w)


def read_image(path: str, record: dict) -> np.ndarray:
    """One image file as an H×W×C float array in [0, 1] (grey when the training data was)."""
    from .images import decode_image
    # a grey file stays grey for a grey network; anything else is read as RGB and converted
    # by luma as the training data was (convert_channels)
    return decode_image(path, None if record["native_shape"][2] == 1 else False)


def read_npy(path: str) -> np.ndarray:
    """An .npy batch N×H×W×C or N×H×W (one image H×W×C is not accepted: ambiguous)."""
    try:
        a = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise NetdslError(f"'{path}' does not exist") from None
    except (OSError, ValueError) as exc:
        raise NetdslError(f"cannot read '{path}' as a NumPy array: {exc}") from None
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4 or a.dtype.kind not in "uif":
        raise NetdslError(f"'{path}' holds a {a.dtype} array of shape {a.shape}; expected a "
                          "batch of images N×H×W×C or N×H×W",
                          hint="for one image, save it as x[None] (a batch of one)")
    if 0 in a.shape:
        raise NetdslError(f"'{path}' holds an empty batch of shape {a.shape}",
                          hint="save at least one image with non-empty sides")
    return _unit_range(a, path)


def load_inputs(paths: list[str], record: dict, *, invert: bool = False,
                ink: bool = False):
    """(names, normalised NHWC batch) for image files and .npy batches, in the given order.
    ``invert``: dark ink on light paper; ``ink``: crop each image to its ink first."""
    names, images = [], []
    for path in paths:
        if str(path).lower().endswith(".npy"):
            batch = read_npy(path)
            names += [f"{path}[{i}]" for i in range(len(batch))]
            images += list(batch)
        else:
            names.append(str(path))
            images.append(read_image(path, record))
    nh, nw, _ = record["native_shape"]
    prepared = []
    for a in images:
        if invert:   # dark ink on white paper → the datasets' light-on-dark convention
            a = 1 - a
        if ink:
            a = crop_ink(a)
        # To the training data's native size first, so that prepare() then pads or resizes
        # it to INPUT exactly as training did.
        prepared.append(prepare(_resize_image(a, nh, nw)[None], record))
    return names, np.concatenate(prepared)
