"""The residual add (and the ReLU after it) fused into the oneDNN conv at inference
(netdsl/runtime/residual.py): results equal the NumPy provider's, the shortcut is overwritten
only where nothing reads it later, the caller's input never, and no slow kernel runs."""
from pathlib import Path

import numpy as np
import pytest

from netdsl.compile.compiler import compile_file, compile_text
from netdsl.runtime.executor import Executor
from netdsl.runtime.kernels import available
from netdsl.runtime.kernels.onednn.footprint import RESIDUAL
from netdsl.runtime.memory import plan_memory
from netdsl.runtime.residual import FUSE_RESIDUAL

pytestmark = [pytest.mark.skipif(not available("onednn"), reason="oneDNN not available"),
              pytest.mark.skipif(not FUSE_RESIDUAL, reason="NETDSL_FUSE_RESIDUAL=0")]

NETS = Path(__file__).resolve().parent.parent / "nets"

# The shortcut @s is read again (by the concat) after the fused conv: a copy, not in place.
LATER_READER = """
INPUT(8x8x3) -> s: CONV(4, 3) -> add { CONV(4, 3) | @s } -> RELU -> concat { @s | RELU }
  -> GAP -> FC(5)
"""
# The shortcut is the network input (the caller's array): never written; no ReLU after.
INPUT_SHORTCUT = "INPUT(8x8x4) -> residual { CONV(4, 3) } -> GAP -> FC(5)"


def _pair(g):
    fused = Executor(g, seed=0, kernels="onednn").for_inference()
    ref = Executor(g, seed=0, kernels="numpy").for_inference()
    return fused, ref


def _fused(ex):
    return {st.node.name: st.meta[RESIDUAL] for st in ex.plan if st.meta.get(RESIDUAL)}


def _check_equal(fused, ref, x):
    kept = x.copy()
    want = ref.forward(x.copy()).logits
    for _ in range(2):   # a second batch: nothing the first one overwrote is read again
        got = fused.forward(x).logits
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    np.testing.assert_array_equal(x, kept)   # the caller's input is untouched


def test_resnet20_blocks_fused_in_place_and_equal_numpy():
    g = compile_file(str(NETS / "resnet20.net"), num_classes=10).graph
    fused, ref = _pair(g)
    info = _fused(fused)
    # nine blocks: each add (and the ReLU after it) joins the later conv of its two inputs
    assert len(info) == 9
    assert all(v == {"relu": True, "inplace": True} for v in info.values())
    assert {"basic4/add1_proj", "basic7/add1_proj"} <= set(info)
    x = np.random.default_rng(1).standard_normal((4,) + tuple(fused.input_shape))
    x = x.astype(np.float32)
    _check_equal(fused, ref, x)


@pytest.mark.parametrize("text, expected", [
    (LATER_READER, {"relu": True, "inplace": False}),
    (INPUT_SHORTCUT, {"relu": False, "inplace": False}),
])
def test_shortcut_copied_where_it_is_read_later(text, expected):
    g = compile_text(text, num_classes=5).graph
    fused, ref = _pair(g)
    assert list(_fused(fused).values()) == [expected]
    x = np.random.default_rng(2).standard_normal((3,) + tuple(fused.input_shape))
    _check_equal(fused, ref, x.astype(np.float32))


def test_fused_plan_memory_and_kernels():
    """Planned peak within 10% of tracemalloc's for the fused plan (the in-place add needs no
    buffer), and the fused convolutions run a direct kernel, not gemm/ref."""
    from netdsl.runtime.kernels.onednn.common import lib, slow_impl
    from netdsl.tools.bench import peak_memory
    from netdsl.runtime.kernels.onednn.conv import conv_add_impl
    g = compile_file(str(NETS / "resnet20.net"), num_classes=10).graph
    ex = Executor(g, seed=0, kernels="onednn").for_inference()
    for st in ex.plan:
        if st.meta.get(RESIDUAL):
            name = conv_add_impl(st.node.attrs, (8,) + tuple(st.node.in_shapes[0]),
                                 st.node.out_shapes[0][-1], "bias" in ex.params[st.node.name],
                                 st.meta[RESIDUAL]["relu"])
            assert not slow_impl(name), (st.node.name, name)
    x = np.random.default_rng(0).standard_normal((8,) + tuple(ex.input_shape))
    x = x.astype(np.float32)
    lib().scratchpad.release()      # earlier tests' primitives may have grown it further
    measured = peak_memory(lambda: ex.forward(x, training=False))   # bench's measure
    planned = plan_memory(ex.plan, 8, training=False).peak
    assert abs(planned - measured) <= 0.1 * measured, (planned, measured)
