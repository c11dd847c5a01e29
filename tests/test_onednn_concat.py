"""oneDNN's concat kernel (netdsl/runtime/kernels/onednn/concat.py) against a plain NumPy
concatenation in float64: a copy, so the result must be exact, for contiguous inputs and for
strided ones (a crop's window, read in place), and its implementation must be oneDNN's
``simple`` copy, not the ``ref`` loops."""
import numpy as np
import pytest

from netdsl.layers import Ctx, get
from netdsl.runtime import kernels

if not kernels.available("onednn"):
    pytest.skip("oneDNN (libdnnl.so.3) cannot load here", allow_module_level=True)


def _inputs(rng, n, h, w, widths, crop=False):
    xs = []
    for k, c in enumerate(widths):
        if crop and k == 0:   # a window of a larger map: strided in H, W and N
            big = rng.normal(size=(n, h + 3, w + 2, c)).astype(np.float32)
            xs.append(big[:, 1:1 + h, 2:2 + w, :])
        else:
            xs.append(rng.normal(size=(n, h, w, c)).astype(np.float32))
    return xs


@pytest.mark.parametrize("widths,crop", [((16, 32, 8, 8), False), ((3, 1, 5), False),
                                         ((4, 6), True), ((1,) * 9, False)])
def test_concat_kernel_is_an_exact_copy(widths, crop):
    from netdsl.runtime.kernels.onednn.common import lib
    from netdsl.runtime.kernels.onednn.concat import concat_forward
    kernel = kernels.kernels_for("concat")["onednn"]
    shapes = [(5, 7, c) for c in widths]
    assert kernel.supports({}, shapes, np.float32)
    rng = np.random.default_rng(1)
    xs = _inputs(rng, 3, 5, 7, widths, crop)
    out, cache = kernel.forward(Ctx(xp=np), {}, {}, xs)
    want = np.concatenate([x.astype(np.float64) for x in xs], axis=-1)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out.astype(np.float64), want)
    dout = rng.normal(size=want.shape).astype(np.float32)
    dins, dparams = kernel.backward(Ctx(xp=np), {}, {}, cache, dout)
    start = 0
    for x, d in zip(xs, dins):
        np.testing.assert_array_equal(d, dout[..., start:start + x.shape[-1]])
        start += x.shape[-1]
    assert dparams == {}
    assert concat_forward is kernel.forward   # what the executor runs is what was tested
    from netdsl.runtime.kernels.onednn.common import cached
    pd = cached(("concat_fwd_pd", tuple((x.shape, x.strides) for x in xs)), None)
    assert "simple" in lib().impl_name(pd), lib().impl_name(pd)


def test_vectors_and_other_dtypes_stay_numpy():
    kernel = kernels.kernels_for("concat")["onednn"]
    assert not kernel.supports({}, [(4,), (6,)], np.float32)
    assert not kernel.supports({}, [(2, 2, 3), (2, 2, 1)], np.float64)
    spec = get("concat")
    assert kernels.select(spec, {}, [(4,), (6,)], np.float32, "onednn")[2] == "numpy"
    xs = [np.ones((2, 2, 2, 3)), np.zeros((2, 2, 2, 1))]   # float64 arrays: the reference
    out, _ = kernel.forward(Ctx(xp=np), {}, {}, xs)
    np.testing.assert_array_equal(out, np.concatenate(xs, axis=-1))
