"""The convolution bias gradient two ways (netdsl/runtime/kernels/onednn/conv_bias.py): oneDNN's
backward-weights primitive asked for ``diff_bias`` too, against the same primitive without it
plus the bias as one matrix product ``ones(1, M) @ dout(M, F)`` on ``gemm:jit``, for
cs231n's convolutions at batch 64 (3×3, stride 1, same padding).

Usage: PYTHONPATH=. python tests/bench/bias_grad_probe.py   (ONEDNN_MAX_CPU_ISA=AVX2 for the cap)
Each line: the conv, then median ms of 15 calls: backward-weights with diff_bias, without it,
and the matrix product; before every call 64 MB are touched and then the output gradient
written, as in a training step (the ReLU's backward has just written it; the layer's input
comes from memory).
"""
import time

import numpy as np

from netdsl.runtime.kernels.onednn import capi as L
from netdsl.runtime.kernels.onednn import common, conv_bias
from netdsl.runtime.kernels.onednn.conv_geometry import d_dims, descs, geometry

SHAPES = [(3, 32, 32), (32, 32, 32), (32, 64, 16), (64, 64, 16), (64, 128, 8), (128, 128, 8)]
_BIG = np.ones(16 * 2**20, np.float32)


def _median_ms(call, dout, reps: int = 15) -> float:
    call()
    times = []
    for _ in range(reps):
        np.add(_BIG, 1, out=_BIG)          # the caches hold something else ...
        np.multiply(dout, 1.0, out=dout)   # ... but the gradient just written
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def _bwd_weights(geo, bias: bool, dout):
    d = common.lib()
    src, _, b, dst, st, dl, pl, pr, _ = descs(geo)
    fwd = d.pd("dnnl_convolution_forward_primitive_desc_create", d.engine, L.FORWARD_TRAINING,
               L.CONV_DIRECT, src, d.md_any(d_dims(geo)), b if bias else None, dst, st, dl, pl,
               pr, d.attr())
    pd = d.pd("dnnl_convolution_backward_weights_primitive_desc_create", d.engine,
              L.CONV_DIRECT, src, d.md_any(d_dims(geo)), b if bias else None, dst, st, dl, pl,
              pr, fwd, d.attr())
    args = ("src", "diff_dst", "diff_weights") + (("diff_bias",) if bias else ())
    prim = common.primitive(pd, args)
    arrays = [np.random.rand(max(1, prim.sizes[a] // 4)).astype(np.float32) for a in args]
    arrays[1] = dout
    return lambda: prim(*arrays, at=0)


def main() -> None:
    """Print one line per convolution."""
    n = 64
    for c, f, h in SHAPES:
        geo = geometry(dict(kernel=3, stride=1, pad=1, dilation=1, groups=1, filters=f),
                       (n, h, h, c), f)
        dout = np.random.rand(n, h, h, f).astype(np.float32)
        with_bias = _median_ms(_bwd_weights(geo, True, dout), dout)
        without = _median_ms(_bwd_weights(geo, False, dout), dout)
        product = _median_ms(lambda: conv_bias.bias_grad(dout), dout)
        print(f"{c}→{f} on {h}×{h}: diff_bias {with_bias:.3f} ms, without {without:.3f} ms "
              f"+ matmul {product:.3f} ms")


if __name__ == "__main__":
    main()
