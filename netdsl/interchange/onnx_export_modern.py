"""ONNX exporters of the modern nets' layers (silu, relu6, hswish, hsigmoid, mul, gap with
keep=true, split, slice, shuffle), merged into onnx_export.EXPORTERS.

Every exporter has the signature ``(builder, rec, inputs, out, params)`` of onnx_export's and
writes NCHW (channels on axis 1, for maps and flat (N, C) vectors alike). The losses are never
exported (the file ends at the prediction), nor is OUTPUT.
"""
from __future__ import annotations

import numpy as np


def _silu(b, rec, ins, out, params):
    gate = b.node("Sigmoid", ins, f"{rec.name}.sigmoid", f"{rec.name}.sigmoid")
    b.node("Mul", [ins[0], gate], out, rec.name)


def _relu6(b, rec, ins, out, params):
    # Clip's bounds are inputs since opset 11
    b.node("Clip", [ins[0], b.init(f"{rec.name}.min", np.float32(0)),
                    b.init(f"{rec.name}.max", np.float32(6))], out, rec.name)


def _hsigmoid(b, rec, ins, out, params):
    b.node("HardSigmoid", ins, out, rec.name, alpha=1 / 6, beta=0.5)


def _hswish(b, rec, ins, out, params):
    if getattr(b, "opset", 13) >= 14:
        b.node("HardSwish", ins, out, rec.name)
        return
    gate = b.node("HardSigmoid", ins, f"{rec.name}.hsigmoid", f"{rec.name}.hsigmoid",
                  alpha=1 / 6, beta=0.5)
    b.node("Mul", [ins[0], gate], out, rec.name)


def _mul(b, rec, ins, out, params):
    # A flat (N, C) gate broadcasts by trailing axes in ONNX: made (N, C, 1, 1) for a map.
    ins = list(ins)
    for k, shape in enumerate(rec.in_shapes):
        other = rec.in_shapes[1 - k]
        if len(shape) == 1 and len(other) == 3:
            ins[k] = b.node("Unsqueeze", [ins[k], b.const_i64(f"{rec.name}.axes{k}", [2, 3])],
                            f"{rec.name}.gate{k}", f"{rec.name}.unsqueeze{k}")
    b.node("Mul", ins, out, rec.name)


def _gap(b, rec, ins, out, params):
    if not rec.attrs.get("keep"):
        pooled = b.node("GlobalAveragePool", ins, f"{rec.name}.pooled", rec.name)
        b.node("Flatten", [pooled], out, f"{rec.name}.flatten", axis=1)
        return
    b.node("GlobalAveragePool", ins, out, rec.name)   # N×C×1×1, as keep=true is


def split_outputs(out: str, parts: int) -> list[str]:
    """The ONNX tensor names of a split's outputs: port 0 is ``out``, port p ``out.p``."""
    return [out] + [f"{out}.{p}" for p in range(1, parts)]


def _split(b, rec, ins, out, params):
    parts = rec.attrs["parts"]
    width = rec.in_shapes[0][-1] // parts
    sizes = b.const_i64(f"{rec.name}.sizes", [width] * parts)
    b.nodes.append(b.onnx.helper.make_node("Split", [ins[0], sizes],
                                           split_outputs(out, parts), name=rec.name, axis=1))


def _slice(b, rec, ins, out, params):
    a = rec.attrs
    b.node("Slice", [ins[0], b.const_i64(f"{rec.name}.starts", [a["start"]]),
                     b.const_i64(f"{rec.name}.ends", [a["stop"]]),
                     b.const_i64(f"{rec.name}.axes", [1])], out, rec.name)


def _shuffle(b, rec, ins, out, params):
    # NCHW: (N, g, C/g, H, W) → swap the two channel axes → (N, C, H, W); 0 copies N.
    shape = rec.in_shapes[0]
    g, c = rec.attrs["groups"], shape[-1]
    space = list(shape[:2]) if len(shape) == 3 else []
    grid = b.node("Reshape", [ins[0], b.const_i64(f"{rec.name}.grid_shape", [0, g, c // g, *space])],
                  f"{rec.name}.grid", f"{rec.name}.reshape")
    perm = [0, 2, 1] + list(range(3, 3 + len(space)))
    swapped = b.node("Transpose", [grid], f"{rec.name}.swapped", f"{rec.name}.transpose",
                     perm=perm)
    b.node("Reshape", [swapped, b.const_i64(f"{rec.name}.shape", [0, c, *space])], out,
           rec.name)


MODERN_EXPORTERS = {"silu": _silu, "relu6": _relu6, "hsigmoid": _hsigmoid, "hswish": _hswish,
                    "mul": _mul, "gap": _gap, "split": _split, "slice": _slice,
                    "shuffle": _shuffle}
MULTI_OUTPUT = {"split": lambda rec: rec.attrs["parts"]}
"""Layers whose exporter writes several outputs, and how many (split_outputs names them)."""
