"""The executor's fan-out gradient sum (plan.summed): two batches added split over the worker
threads, against NumPy's own a + b, for contiguous and strided inputs and odd batch sizes."""
import numpy as np
import pytest

from netdsl.core import workspace
from netdsl.runtime.plan import summed


@pytest.fixture(autouse=True)
def two_threads():
    """The split path needs worker threads (the executor's --threads)."""
    saved = workspace.threads()
    workspace.set_threads(2)
    yield
    workspace.set_threads(saved)


@pytest.mark.parametrize("n", [1, 3, 64])
def test_summed_equals_numpy_sum(n, monkeypatch):
    split = []
    real = workspace.parallel_for
    monkeypatch.setattr(workspace, "parallel_for",
                        lambda items, body: (split.append(len(items)), real(items, body)))
    rng = np.random.default_rng(0)
    # 64×32×32×16 float32 is 4 MB: above the size where the rows are split over threads
    a = rng.normal(size=(n, 32, 32, 16)).astype(np.float32)
    b = rng.normal(size=(n, 32, 32, 16)).astype(np.float32)
    out = summed(a, b)
    assert out is not a and out is not b
    assert out.flags.c_contiguous and out.dtype == np.float32
    np.testing.assert_array_equal(out, a + b)      # the same float32 additions, exactly
    if a.nbytes >= 1 << 20 and workspace.workers(n) > 1:   # (1 where BLAS cannot be held)
        assert split and split[0] > 1


def test_summed_strided_and_broadcast_inputs():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(8, 16, 16, 32)).astype(np.float32)
    a = base.transpose(0, 3, 1, 2).copy().transpose(0, 2, 3, 1)   # NHWC values, NCHW memory
    b = rng.normal(size=a.shape).astype(np.float32)
    out = summed(a, b)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, a + b)
    scalar = np.float32(2.0)
    assert summed(scalar, np.float32(3.0)) == 5.0
    vec = rng.normal(size=(5,)).astype(np.float32)
    np.testing.assert_array_equal(summed(vec, vec), vec + vec)
