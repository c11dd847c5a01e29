"""Training-memory report against tracemalloc of real training steps, and the --memory answer."""
import tracemalloc

import numpy as np
import pytest

from netdsl.cli.app import main
from netdsl.compile.compiler import compile_file
from netdsl.core.errors import NetdslError
from netdsl.runtime.executor import Executor
from netdsl.train.optim import SGD, Adam
from netdsl.tools.trainmem import TrainMemory, parse_bytes

NETS = {"lenet5": None, "cs231n": (32, 32, 3)}


def _measured_peak(g, optimizer, batch):
    """tracemalloc peak from before the weights exist through two full training steps."""
    rng = np.random.default_rng(0)
    x = None
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        ex = Executor(g, seed=0, kernels="numpy")
        opt = Adam(1e-3) if optimizer == "adam" else SGD(0.01, momentum=0.9)
        x = rng.standard_normal((batch, *ex.input_shape)).astype(np.float32)
        y = rng.integers(0, 10, batch)
        for _ in range(2):
            ex.forward(x, y, training=True)
            opt.step(ex.params, ex.backward())
        return tracemalloc.get_traced_memory()[1] - base - x.nbytes
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("name", list(NETS))
def test_report_within_15_percent_of_tracemalloc(name, optimizer):
    g = compile_file(f"nets/{name}.net", input_shape=NETS[name], num_classes=10).graph
    batch = 32
    tm = TrainMemory(g, optimizer=optimizer, momentum=0.9, kernels="numpy")
    planned = tm.report(batch)["peak"]
    measured = _measured_peak(g, optimizer, batch)
    assert abs(planned - measured) <= 0.15 * measured, (planned, measured)


def test_largest_batch_is_the_last_that_fits():
    g = compile_file("nets/lenet5.net", num_classes=10).graph
    tm = TrainMemory(g, optimizer="adam")
    budget = tm.report(100)["peak"] + 1
    assert tm.largest_batch(budget) == 100
    assert tm.largest_batch(tm.report(1)["peak"] - 1) == 0


def test_parse_bytes():
    assert parse_bytes("8GB") == 8 * 10**9
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1.5G") == 3 * 2**29
    with pytest.raises(NetdslError):
        parse_bytes("lots")


def test_cli_summary_memory(capsys):
    assert main(["summary", "nets/lenet5.net", "--batch", "64", "--optimizer", "adam",
                 "--memory", "64MiB"]) == 0
    out = capsys.readouterr().out
    assert "optimizer state (adam" in out and "largest batch that fits 64.0 MiB:" in out
    assert main(["summary", "nets/lenet5.net", "--memory", "8x"]) == 1


def test_peak_agrees_with_the_run_safety_estimate():
    # Two modules count the same run: the report's peak is the estimate without the dataset.
    from netdsl.runtime.memory_estimate import estimate_run_bytes
    g = compile_file("nets/lenet5.net", num_classes=10).graph
    ours = TrainMemory(g, optimizer="adam", weight_decay=1e-4).report(64)["peak"]
    theirs = estimate_run_bytes(g, batch_size=64, optimizer="adam", momentum=0.0,
                                weight_decay=1e-4)
    assert ours == theirs["total"]
