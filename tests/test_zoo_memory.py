"""The memory planner on every net of the zoo (nets/*.net) at the reduced sizes of
tests/test_zoo.py: the planned peak of a training step and of an inference batch within 10% of
the measured one, with the NumPy kernels and with oneDNN's (where the library loads).

Measured as `netdsl bench` measures (netdsl.tools.bench.peak_memory): tracemalloc's peak during a
steady-state step beyond what was held before it, plus what is held across steps on purpose
(netdsl.core.workspace.held_bytes(): the Scratch region, oneDNN's scratchpad). An independent
measurement: the expected values never come from the planner.

The bound is 10% of the measured peak plus 1 KiB per plan step: the Python objects a call
makes (array views, tuples, oneDNN's argument arrays; ~0.7 KB a step measured on LeNet-5) are
in tracemalloc's figure but not in the plan, which models arrays. At the reduced sizes LeNet-5's
inference plan is ~58 KB, where those ~6 KB alone are 10%; at a real batch they are nothing.
"""
from __future__ import annotations

import gc

import numpy as np
import pytest

from conftest import NETS
from netdsl.runtime import kernels
from netdsl.tools.bench import peak_memory
from netdsl.compile.compiler import compile_file
from netdsl.runtime.executor import Executor
from netdsl.runtime.memory import plan_memory
from test_zoo import SMALL, compile_small

BATCH = 2
# 0.5–4 s each (both modes): the nets whose training step holds ≥ 50 MB at the reduced size
BIG = {"alexnet", "deepface", "googlenet", "resnet18", "resnet34", "resnet50", "vgg16",
       "vgg19", "zfnet"}
PROVIDERS = ["numpy"] + (["onednn"] if kernels.available("onednn") else [])


def _objects(plan) -> int:
    """The slack for the Python objects of a pass (module docstring): 1 KiB a step."""
    return 1024 * len(plan)


def _release():
    if kernels.available("onednn"):     # the region as this net's primitives alone grow it
        from netdsl.runtime.kernels.onednn.common import lib
        lib().scratchpad.release()


def _setup(name, provider, batch=None):
    g, classes = compile_small(name)                    # classes: (K,) or (H, W, K)
    ex = Executor(g, seed=0, kernels=provider)
    rng = np.random.default_rng(0)
    batch = batch or BATCH
    x = rng.standard_normal((batch, *ex.input_shape)).astype(np.float32)
    y = rng.integers(0, classes[-1], size=(batch, *classes[:-1]))
    return ex, x, y


def _params():
    for name in sorted(SMALL):
        for provider in PROVIDERS:
            marks = [pytest.mark.slow] if name in BIG else []
            yield pytest.param(name, provider, marks=marks, id=f"{name}-{provider}")


@pytest.mark.parametrize("name,provider", list(_params()))
def test_planned_peaks_within_10_percent_of_measured(name, provider):
    assert set(SMALL) == {p.stem for p in NETS.glob("*.net")}   # every net of the zoo
    ex, x, y = _setup(name, provider)
    _release()
    measured = peak_memory(lambda: (ex.forward(x, y, training=True), ex.backward()))
    planned = plan_memory(ex.plan, BATCH, training=True).peak
    assert abs(planned - measured) <= 0.10 * measured + _objects(ex.plan), \
        ("train", planned, measured)
    inf = ex.for_inference()
    del ex          # its Scratch region would count in held_bytes()
    gc.collect()
    _release()
    measured = peak_memory(lambda: inf.forward(x, training=False))
    planned = plan_memory(inf.plan, BATCH, training=False).peak
    assert abs(planned - measured) <= 0.10 * measured + _objects(inf.plan), \
        ("infer", planned, measured)


def test_bench_runs_a_segmentation_net():
    """`netdsl bench` draws one label per pixel for a per-pixel head (SegNet, U-Net): its
    step runs, and its measured peak is the planned one within 10%."""
    from netdsl.tools.bench import label_shape, netdsl_setup
    g = compile_file(str(NETS / "segnet_mini.net"), need_data=False).graph
    assert label_shape(g, 3) == (3, 28, 28)
    c = type("Compiled", (), {"graph": g})()
    step, ex, x, y = netdsl_setup(c, BATCH, "train", "numpy")
    assert y.shape == (BATCH, 28, 28) and y.max() < 11
    measured = peak_memory(step)
    planned = plan_memory(ex.plan, BATCH, training=True).peak
    assert abs(planned - measured) <= 0.10 * measured, (planned, measured)


# oneDNN only: with the NumPy kernels the planner has batchnorm1's backward 10% high (its
# pairwise fold is counted but not seen there; memory.py's batch-norm rule), lifetimes apart.
@pytest.mark.skipif("onednn" not in PROVIDERS, reason="oneDNN (libdnnl.so.3) cannot load here")
def test_segnet_timeline_step_by_step(monkeypatch):
    """Not only the peak: at every step of a SegNet training step (forward and backward) the
    bytes the planner has live (+ that step's temporaries) are what tracemalloc sees at that
    call's peak, within 5% + 128 KB. This pins lifetimes: the switches and the pooled values
    (one step's two outputs) die apart, the prediction lives to the end of the step."""
    import tracemalloc
    import netdsl.runtime.memory as M
    batch = 16     # lifetimes scale with it, NumPy's iterator buffers (~100 KB) do not
    ex, x, y = _setup("segnet_mini", "onednn", batch)
    ex.carver = None   # every array fresh: tracemalloc sees each step's buffers come and go
    step = lambda: (ex.forward(x, y, training=True), ex.backward())  # noqa: E731
    _release()
    step()
    planned: dict = {}
    touch = M._Sim.touch

    def spy(self, extra, where):
        planned[where] = max(planned.get(where, 0), self.live + extra)
        return touch(self, extra, where)
    monkeypatch.setattr(M._Sim, "touch", spy)
    M.plan_memory(ex.plan, batch, training=True, arena=False)
    monkeypatch.setattr(M._Sim, "touch", touch)
    measured: dict = {}
    base = [0]

    def wrap(fn, where):
        def call(*a):
            tracemalloc.reset_peak()
            r = fn(*a)
            measured.setdefault(where, tracemalloc.get_traced_memory()[1] - base[0])
            return r
        return call
    for st in ex.plan:
        monkeypatch.setattr(st, "forward", wrap(st.forward, f"forward {st.node.name}"))
        monkeypatch.setattr(st, "backward", wrap(st.backward, f"backward {st.node.name}"))
    tracemalloc.start()
    try:
        base[0] = tracemalloc.get_traced_memory()[0]
        step()
    finally:
        tracemalloc.stop()
    compared = 0
    for where, got in measured.items():     # (what is held across steps: on neither side)
        assert abs(planned[where] - got) <= 0.05 * got + 131072, (where, planned[where], got)
        compared += 1
    assert compared >= 30
