"""Naive-loop reference forwards, one per windowed layer (``LayerSpec.reference``).

Each is the textbook definition written as explicit loops over positions, in float64 NumPy:
short enough to check by eye, independent of the fast im2col/strided code. The generic tests
compare every fast forward against its reference, so a consistently wrong convention (a
flipped kernel, α not divided by n, an off-by-one crop) cannot hide behind a gradient check
that only proves forward and backward agree with each other.
"""
from __future__ import annotations

import math

import numpy as np

from .base import AUTO
from .geometry import conv_padding, crop_hw, deconv_out_hw, unpool_out_hw
from .structure import as_pair


def _padded(x, ph, pw, fill=0.0):
    n, h, w, c = x.shape
    out = np.full((n, h + 2 * ph, w + 2 * pw, c), fill)
    out[:, ph:ph + h, pw:pw + w] = x
    return out


def conv(attrs, params, inputs):
    """out[n,i,j,f] = b[f] + Σ_{a,b,c} xpad[n, i·s + a·d, j·s + b·d, g·Cg + c] · W[a,b,c,f]."""
    x = np.asarray(inputs[0], dtype=np.float64)
    w = params["weight"]
    kh, kw, cg, f = w.shape
    (sh, sw), (dh, dw) = as_pair(attrs["stride"]), as_pair(attrs["dilation"])
    ph, pw = conv_padding(attrs)
    xp = _padded(x, ph, pw)
    ho = (xp.shape[1] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[2] - dw * (kw - 1) - 1) // sw + 1
    fg = f // attrs["groups"]
    out = np.zeros((x.shape[0], ho, wo, f))
    for i in range(ho):
        for j in range(wo):
            for o in range(f):
                g = o // fg
                for a in range(kh):
                    for b in range(kw):
                        pix = xp[:, i * sh + a * dh, j * sw + b * dw, g * cg:(g + 1) * cg]
                        out[:, i, j, o] += pix @ w[a, b, :, o]
    return out + params.get("bias", 0.0)


def pool(attrs, params, inputs):
    """Max or average of each window, clipped to the input (max) or to the padded input
    (avg, count_include_pad) or to the real pixels (avg, count_include_pad=false)."""
    x = np.asarray(inputs[0], dtype=np.float64)
    n, h, w, c = x.shape
    size, pad = as_pair(attrs["size"]), as_pair(attrs["pad"])
    stride = size if attrs["stride"] is AUTO else as_pair(attrs["stride"])

    def outsize(i, k, s, p):
        o = (math.ceil if attrs["ceil"] else math.floor)((i + 2 * p - k) / s) + 1
        return o - 1 if attrs["ceil"] and (o - 1) * s >= i + p else o
    ho, wo = outsize(h, size[0], stride[0], pad[0]), outsize(w, size[1], stride[1], pad[1])
    out = np.zeros((n, ho, wo, c))
    for i in range(ho):
        for j in range(wo):
            h0, w0 = i * stride[0] - pad[0], j * stride[1] - pad[1]
            h1, w1 = min(h0 + size[0], h + pad[0]), min(w0 + size[1], w + pad[1])
            window = x[:, max(h0, 0):min(h1, h), max(w0, 0):min(w1, w), :]
            if attrs.get("kind", "max") == "max":
                out[:, i, j] = window.max(axis=(1, 2))
            elif attrs.get("count_include_pad", True):
                out[:, i, j] = window.sum(axis=(1, 2)) / ((h1 - h0) * (w1 - w0))
            else:
                out[:, i, j] = window.mean(axis=(1, 2))
    return out


def pool_switches(attrs, params, inputs):
    """(max values, flat index r·W + c of the first maximum of each window in the input)."""
    x = np.asarray(inputs[0], dtype=np.float64)
    n, h, w, c = x.shape
    values = pool(dict(attrs, kind="max"), params, inputs)
    size, pad = as_pair(attrs["size"]), as_pair(attrs["pad"])
    stride = size if attrs["stride"] is AUTO else as_pair(attrs["stride"])
    switches = np.zeros(values.shape, dtype=np.int64)
    for b in range(n):
        for i in range(values.shape[1]):
            for j in range(values.shape[2]):
                for ch in range(c):
                    best = None
                    for a in range(size[0]):        # window order: row-major, first max wins
                        for e in range(size[1]):
                            r, q = i * stride[0] - pad[0] + a, j * stride[1] - pad[1] + e
                            inside = 0 <= r < h and 0 <= q < w
                            if inside and (best is None or x[b, r, q, ch] > best[0]):
                                best = (x[b, r, q, ch], r * w + q)
                    switches[b, i, j, ch] = best[1]
    return values, switches


def maxunpool(attrs, params, inputs):
    """out[n, s // W, s % W, c] += values[n, i, j, c] for s = switches[n, i, j, c]."""
    values, switches = np.asarray(inputs[0], dtype=np.float64), inputs[1]
    n, ho, wo, c = values.shape
    h, w = unpool_out_hw(attrs, [v.shape[1:] for v in inputs])
    out = np.zeros((n, h, w, c))
    for b in range(n):
        for i in range(ho):
            for j in range(wo):
                for ch in range(c):
                    s = int(switches[b, i, j, ch])
                    out[b, s // w, s % w, ch] += values[b, i, j, ch]
    return out


def lrn(attrs, params, inputs):
    """b_c = a_c / (k + α' Σ_{c' = c−⌊n/2⌋}^{c+⌊(n−1)/2⌋} a_{c'}²)^β, α' = α/n or α."""
    x = np.asarray(inputs[0], dtype=np.float64)
    size, c = attrs["size"], x.shape[-1]
    alpha = attrs["alpha"] / size if attrs["alpha_over_n"] else attrs["alpha"]
    out = np.zeros_like(x)
    for ch in range(c):
        lo, hi = max(0, ch - size // 2), min(c - 1, ch + (size - 1) // 2)
        total = sum(x[..., q] ** 2 for q in range(lo, hi + 1))
        out[..., ch] = x[..., ch] / (attrs["k"] + alpha * total) ** attrs["beta"]
    return out


def local(attrs, params, inputs):
    """out[n,i,j,f] = b[i,j,f] + Σ_{a,b,c} xpad[n, i·s + a, j·s + b, c] · W[i,j,a,b,c,f]."""
    x = np.asarray(inputs[0], dtype=np.float64)
    w = params["weight"]
    ho, wo, kh, kw, c, f = w.shape
    (sh, sw), (ph, pw) = as_pair(attrs["stride"]), as_pair(attrs["pad"])
    xp = _padded(x, ph, pw)
    out = np.zeros((x.shape[0], ho, wo, f))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, i * sh:i * sh + kh, j * sw:j * sw + kw, :]
            for o in range(f):
                out[:, i, j, o] = np.einsum("nabc,abc->n", patch, w[i, j, :, :, :, o])
    return out + params.get("bias", 0.0)


def deconv(attrs, params, inputs):
    """Every input pixel (i, j) adds x·W[a, b] at (i·s − p + a·d, j·s − p + b·d) of the output."""
    x = np.asarray(inputs[0], dtype=np.float64)
    w = params["weight"]
    n, h, wd, c = x.shape
    kh, kw, cg, f = w.shape
    groups = attrs["groups"]
    fg = f // groups
    (sh, sw), (ph, pw), (dh, dw) = (as_pair(attrs[k]) for k in ("stride", "pad", "dilation"))
    ho, wo = deconv_out_hw(attrs, (h, wd))
    out = np.zeros((n, ho, wo, f))
    for i in range(h):
        for j in range(wd):
            for a in range(kh):
                for b in range(kw):
                    r, q = i * sh - ph + a * dh, j * sw - pw + b * dw
                    if 0 <= r < ho and 0 <= q < wo:
                        for g in range(groups):
                            out[:, r, q, g * fg:(g + 1) * fg] += (
                                x[:, i, j, g * cg:(g + 1) * cg] @ w[a, b, :, g * fg:(g + 1) * fg])
    return out + params.get("bias", 0.0)


def crop(attrs, params, inputs):
    """The centre (h, w) window: rows ⌊(H − h)/2⌋ … , columns ⌊(W − w)/2⌋ … ."""
    x = np.asarray(inputs[0], dtype=np.float64)
    h, w = crop_hw(attrs, [v.shape[1:] for v in inputs])
    top, left = (x.shape[1] - h) // 2, (x.shape[2] - w) // 2
    return np.array([[[x[b, top + i, left + j] for j in range(w)] for i in range(h)]
                     for b in range(x.shape[0])])
