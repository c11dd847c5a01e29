"""Image files read for predict and show, with their size checked before anything is decoded
and their bit depth honoured, and the preprocessing records that say how to shape them.

Why here and not in Pillow's defaults: Pillow decodes 16-bit grey PNGs and 32-bit TIFFs into
modes that ``convert("L")`` clips to 255 (a digit saved at 16 bits became a white square), its
decompression-bomb limit is a warning up to 179 megapixels, and its errors are exceptions of
several kinds; a record copied from a file (a checkpoint's meta, an ONNX model's metadata)
could ask for a native size of 10⁶×10⁶ pixels.
"""
from __future__ import annotations

import numpy as np

from ..core.errors import NetdslError

MAX_IMAGE_PIXELS = 64 * 2 ** 20
"""The most pixels (width × height) an image file may have: 64 megapixels, 256 MB as 8-bit
RGBA and 768 MB as float32 RGB while it is converted. Checked from the header alone."""

MAX_SIDE = 8192
"""The largest side a preprocessing record may ask for (as the IDX reader allows)."""

MAX_CHANNELS = 4096
"""The most channels a record may give its native images (an imported net's input may have
any number; 1 and 3 are the image files')."""

# ITU-R BT.601 luma weights: the standard weighted mean that turns RGB into grey.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)

_EIGHT_BIT = {"1", "L", "P", "LA", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


_GREY_MODES = {"1", "L", "LA", "P", "PA", "I", "F"} | _SIXTEEN_BIT


def decode_image(path: str, grey: bool | None) -> np.ndarray:
    """The image file at ``path`` as an H×W×C float32 array in [0, 1]: C = 1 when ``grey``,
    3 when False, the file's own (1 for grey and palette modes) when None. 8-bit images are
    divided by 255, 16-bit ones by 65535, float images kept when they lie in [0, 1];
    anything else is a NetdslError that says what the file holds."""
    try:
        from PIL import Image
    except ImportError:
        raise NetdslError("reading images needs Pillow, which is not installed",
                          hint="pip install 'netdsl[images]' (or: pip install pillow), or "
                               "pass an .npy batch") from None
    import warnings
    try:
        with warnings.catch_warnings():     # Pillow's bomb warning: we refuse those ourselves
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            _check_size(path, *img.size)
            img.load()
            return _to_unit_array(img, grey, path)
    except NetdslError:
        raise
    except Image.DecompressionBombError:    # Pillow refuses at open beyond 2× its own limit
        raise _too_large(path) from None
    except FileNotFoundError:
        raise NetdslError(f"image '{path}' does not exist") from None
    except IsADirectoryError:
        raise NetdslError(f"image '{path}' is a directory") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # OSError: not an image, truncated; ValueError: an oversized text chunk; SyntaxError:
        # a broken PNG
        raise NetdslError(f"cannot read image '{path}': {exc}",
                          hint="give a PNG or JPEG file, or an .npy batch") from None


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


def resize_image(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """H×W×C float → h×w×C with Pillow's bilinear filter, which averages when it shrinks (so
    thin strokes do not vanish, as they would with point sampling). Used by predict and by
    folder datasets, so that training and prediction shape an image file the same way."""
    if a.shape[:2] == (h, w):
        return a
    from PIL import Image
    a = np.ascontiguousarray(a, np.float32)
    return np.stack([np.asarray(Image.fromarray(a[..., c]).resize((w, h), Image.BILINEAR),
                                np.float32) for c in range(a.shape[2])], axis=-1)


def image_header(path: str) -> tuple[int, int, bool]:
    """(height, width, is grey) of an image file from its header, without decoding pixels."""
    try:
        from PIL import Image
        with Image.open(path) as img:
            return img.size[1], img.size[0], img.mode in _GREY_MODES
    except ImportError:
        raise NetdslError("reading images needs Pillow, which is not installed",
                          hint="pip install 'netdsl[images]' (or: pip install pillow)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise NetdslError(f"cannot read image '{path}': {exc}",
                          hint="give PNG or JPEG files") from None


def _too_large(path: str, w: int | None = None, h: int | None = None) -> NetdslError:
    size = f" is {w}×{h} = {w * h:,} pixels;" if w is not None else " is too large:"
    return NetdslError(f"image '{path}'{size} netdsl reads at most {MAX_IMAGE_PIXELS:,} pixels",
                       hint="scale it down first: the network reads a few thousand pixels")


def _check_size(path: str, w: int, h: int) -> None:
    if w * h > MAX_IMAGE_PIXELS:
        raise _too_large(path, w, h)


def _to_unit_array(img, grey: bool | None, path: str) -> np.ndarray:
    mode = img.mode
    if grey is None:
        grey = mode in _GREY_MODES
    if mode in _EIGHT_BIT:
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
            # transparent pixels count as black (the datasets' background), not as whatever
            # colour they happen to hold
            img = _on_black(img)
        a = np.asarray(img.convert("L" if grey else "RGB"), np.float32) / 255
    elif mode in _SIXTEEN_BIT or mode == "I":
        a = np.asarray(img, np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise NetdslError(f"image '{path}' holds 32-bit integer pixels "
                              f"({a.min()}..{a.max()}), beyond 16 bits",
                              hint="save it as 8- or 16-bit, or as an .npy batch in [0, 1]")
        a = a.astype(np.float32) / 65535
    elif mode == "F":
        a = np.asarray(img, np.float32)
        if not np.all(np.isfinite(a)) or (a.size and (a.min() < 0 or a.max() > 1)):
            raise NetdslError(f"image '{path}' holds float pixels "
                              f"{np.nanmin(a):g}..{np.nanmax(a):g}; netdsl reads float images "
                              "in [0, 1]", hint="scale it to [0, 1], or save it as 8 or 16 bit")
    else:
        raise NetdslError(f"image '{path}' has pixel mode {mode}, which netdsl does not read",
                          hint="save it as an 8- or 16-bit grey or RGB PNG")
    if a.ndim == 2:
        a = a[..., None]
    if grey and a.shape[2] != 1:
        a = a.mean(axis=2, keepdims=True)
    if not grey and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return a


def _on_black(img):
    """An image with alpha composited onto black, in RGB (or L for grey+alpha)."""
    from PIL import Image
    rgba = img.convert("RGBA")
    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(black, rgba).convert("RGB")


def check_record(record, where: str) -> dict:
    """A preprocessing record read from a file (a checkpoint's meta, an ONNX model's
    metadata), checked before anything is sized from it: the keys with the right types, sides
    1..MAX_SIDE, 1..MAX_CHANNELS channels, one finite mean and positive std per channel, an input
    shape (when there is one) of positive sides."""
    def bad(what):
        return NetdslError(f"{where}: its preprocessing record is malformed: {what}",
                           hint="use a checkpoint written by netdsl run, or train again")
    if not isinstance(record, dict):
        raise bad(f"expected a mapping, found {type(record).__name__}")
    native = record.get("native_shape")
    if not (isinstance(native, (list, tuple)) and len(native) == 3
            and all(isinstance(d, int) and not isinstance(d, bool) for d in native)):
        raise bad(f"native_shape should be [H, W, C] of whole numbers, found {native!r:.80}")
    if not all(1 <= d <= MAX_SIDE for d in native[:2]) or not 1 <= native[2] <= MAX_CHANNELS:
        raise bad(f"native_shape {native} is outside 1..{MAX_SIDE} per side and "
                  f"1..{MAX_CHANNELS} channels")
    shape = record.get("input_shape", [1])
    if not (isinstance(shape, (list, tuple)) and len(shape) in (1, 3)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
            and (len(shape) == 1 or max(shape[:2]) <= MAX_SIDE)):
        raise bad(f"input_shape should be [H, W, C] or [F] of positive whole numbers, found "
                  f"{shape!r:.80}")
    for key in ("mean", "std"):
        values = record.get(key)
        if not (isinstance(values, (list, tuple)) and len(values) == native[2]
                and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                        and np.isfinite(v) for v in values)):
            raise bad(f"{key} should be {native[2]} finite numbers, found {values!r:.80}")
    if any(v <= 0 for v in record["std"]):
        raise bad(f"std must be positive, found {record['std']}")
    names = record.get("class_names", [])
    if not (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)):
        raise bad(f"class_names should be a list of strings, found {names!r:.80}")
    return record
