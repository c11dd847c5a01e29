"""Centre crop (U-Net's "copy and crop"): to a given H×W, or to the spatial size of a second
input. The window starts at row ⌊(H − h)/2⌋ and column ⌊(W − w)/2⌋ (Caffe's and U-Net's
choice; when H − h is odd the extra row is cut at the bottom)."""
from __future__ import annotations

from ..core.errors import ShapeError
from .base import Arg, LayerSpec, register
from .geometry import crop_hw
from .structure import STRUCT_STYLE, require_spatial
from . import naive
from .footprint import Footprint, in_bytes


def _crop_shape(attrs, in_shapes):
    h, w, c = require_spatial("crop", in_shapes[0], "crop cuts the centre of an H×W×C map")
    if len(in_shapes) > 1:
        require_spatial("crop", in_shapes[1], "the second input gives the H×W to crop to")
    elif attrs["size"] == "like":
        raise ShapeError("crop needs a size or a second input",
                         hint="write CROP(size=56x56), or crop to the size of another tensor: "
                              "crop { @skip | @up }")
    th, tw = crop_hw(attrs, in_shapes)
    if th > h or tw > w:
        raise ShapeError(f"crop: cannot cut {th}×{tw} out of {h}×{w}",
                         detail=f"{th} > {h}" if th > h else f"{tw} > {w}",
                         hint="crop the larger tensor to the smaller one (the skip connection, "
                              "not the upsampled path)")
    return (th, tw, c)


def _crop_forward(ctx, attrs, params, inputs):
    x = inputs[0]
    _, h, w, _ = x.shape
    th, tw = crop_hw(attrs, [v.shape[1:] for v in inputs])
    top, left = (h - th) // 2, (w - tw) // 2
    return x[:, top:top + th, left:left + tw, :], (x.shape, top, left, len(inputs))


def _crop_backward(ctx, attrs, params, cache, dout):
    x_shape, top, left, n_inputs = cache
    dx = ctx.xp.zeros(x_shape, dtype=dout.dtype)
    dx[:, top:top + dout.shape[1], left:left + dout.shape[2], :] = dout
    return [dx] + [None] * (n_inputs - 1), {}


def _crop_random(rng):
    h, w = (int(v) for v in rng.integers(1, 8, size=2))
    th, tw = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
    c = int(rng.integers(1, 4))
    if rng.integers(0, 2):
        return {"attrs": {}, "in_shapes": [(h, w, c), (th, tw, int(rng.integers(1, 4)))]}
    return {"attrs": {"size": (th, tw)}, "in_shapes": [(h, w, c)]}


def _crop_footprint(st, n, it, training, scratch=True):
    """The output is a view of the first input; backward zero-fills a gradient of its shape."""
    x = in_bytes(st, n, it)
    return Footprint(out_alias=0, dx=(x,) + (0,) * (len(st.inputs) - 1))


register(LayerSpec(
    name="crop", doc="Centre crop to size=HxW, or to the H×W of a second input (U-Net's "
    "copy-and-crop).", aliases=("center_crop", "centercrop", "centre_crop", "crop2d"),
    args=(Arg("size", "pair", "like", doc="HxW to keep (default: the second input's H×W)",
              choices=("like",), minimum=1),),
    infer_shape=_crop_shape, forward=_crop_forward, backward=_crop_backward, inputs=(1, 2),
    style=STRUCT_STYLE, reference=naive.crop, random_example=_crop_random,  # shape says the size
    example={"attrs": {"size": (2, 3)}, "in_shapes": [(5, 4, 2)]},
    examples=({"attrs": {}, "in_shapes": [(6, 5, 2), (3, 4, 3)]},),
    footprint=_crop_footprint))
