"""Inference with the oneDNN provider against the NumPy reference provider on every network
in nets/ and nets/modern/ whose inference plan runs a concat or a GAP, the two joins/reductions
that moved to oneDNN (kernels/onednn/concat.py, pool.py gap_forward), at the zoo's reduced
sizes, batch 2: the logits within float32 round-off of the reference's (1e-4 of their
largest magnitude). Slow: every net is run twice, the reference's convolutions in NumPy."""
from __future__ import annotations

import numpy as np
import pytest

from netdsl.runtime import kernels

from conftest import NETS
from test_zoo import ALL_NETS, compile_small

if not kernels.available("onednn"):
    pytest.skip("oneDNN (libdnnl.so.3) cannot load here", allow_module_level=True)

MODERN = sorted(p.stem for p in (NETS / "modern").glob("*.net"))


def _graph(name):
    if name in MODERN:
        from netdsl.compile.compiler import compile_file
        return compile_file(str(NETS / "modern" / f"{name}.net"), need_data=False,
                            input_override=(32, 32, 3)).graph
    return compile_small(name)[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_NETS + MODERN)
def test_inference_matches_the_reference(name):
    from netdsl.runtime.executor import Executor
    g = _graph(name)
    fast = Executor(g, seed=0, kernels="onednn").for_inference()
    moved = [st.node.name for st in fast.plan
             if st.node.op in ("concat", "gap") and st.provider == "onednn"]
    if not moved:
        pytest.skip(f"{name}: no concat or GAP on oneDNN")
    ref = Executor(g, seed=0, kernels="numpy").for_inference()
    x = np.random.default_rng(0).standard_normal((2,) + tuple(fast.input_shape))
    want = ref.forward(x.astype(np.float32)).logits
    got = fast.forward(x.astype(np.float32)).logits
    scale = max(float(np.abs(want).max()), 1e-6)
    assert np.abs(got - want).max() <= 1e-4 * scale, (name, moved)
