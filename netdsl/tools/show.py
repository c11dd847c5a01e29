"""`netdsl show`: look inside a trained network — first-layer filters, feature maps of an image.

The network runs unoptimised (-O0) so that every layer of the program keeps its name and its
own output (a fused activation would hide the conv's output behind the ReLU's).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import NetdslError
from ..core.graph import nodes


def first_conv(g):
    """The first convolution of the program (in source order), or a NetdslError."""
    for rec in nodes(g):
        if rec.op == "conv":
            return rec
    raise NetdslError("the network has no convolution, so it has no filters to show")


def load_image(path: str, shape) -> np.ndarray:
    """An image file (PNG/JPEG via Pillow, or .npy H×W[×C]) as one example of ``shape``,
    resized, converted to the right channels, and standardised per channel (as the data loader
    standardises a data set; a single image stands in for its own statistics)."""
    h, w, c = shape
    if not Path(path).is_file():
        raise NetdslError(f"cannot read image '{path}': no such file")
    if path.endswith(".npy"):
        try:
            img = np.load(path, allow_pickle=False).astype(np.float64)
        except (OSError, ValueError) as err:
            raise NetdslError(f"cannot read image '{path}': {err}") from None
        if img.ndim == 2:
            img = img[..., None]
        if img.ndim != 3 or img.shape[:2] != (h, w):
            raise NetdslError(f"image '{path}' has shape {img.shape}, the network reads "
                              f"{h}×{w}×{c}", hint="save it at the network's input size")
    else:
        from ..data.images import decode_image
        from ..data.loader import resize_bilinear
        img = decode_image(path, c == 1) * 255      # the 0..255 scale show has always used
        if img.shape[:2] != (h, w):
            img = resize_bilinear(img[None].astype(np.float32), h, w)[0]
        img = img.astype(np.float64)
    if img.shape[2] != c:
        if img.shape[2] == 1:
            img = np.repeat(img, c, axis=2)
        else:
            raise NetdslError(f"image '{path}' has {img.shape[2]} channels, the network reads {c}")
    mean = img.mean(axis=(0, 1))
    std = img.std(axis=(0, 1))
    return ((img - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


def feature_maps(ex, x: np.ndarray, layer: str) -> np.ndarray:
    """The output of ``layer`` for the single example ``x`` (H×W×C), from an -O0 executor."""
    from ..layers import Ctx
    from ..runtime.plan import run_forward
    names = [st.node.name for st in ex.plan]
    if layer not in names:
        from ..core.errors import did_you_mean
        raise NetdslError(f"no layer named '{layer}'", hint=did_you_mean(layer, names)
                          or f"layers: {', '.join(names[:8])}...")
    xp = ex.xp
    ctx = Ctx(xp=xp, training=False, rng=ex.xp_rng, labels=None, dtype=ex.dtype)
    values = []
    for st in ex.plan:
        ins = [xp.asarray(x[None], dtype=ex.dtype)] if st.spec.role == "source" else \
            [values[j] if ex.plan[j].spec.outputs == 1 else values[j][p] for j, p in st.inputs]
        out, _ = run_forward(st, ctx, ex.params.get(st.node.name, {}), ins)
        values.append(out)
        if st.node.name == layer:
            from ..core.backend import to_numpy
            return to_numpy(out[0] if st.spec.outputs == 1 else out[0][0])
    raise AssertionError("unreachable: the layer is in the plan")
