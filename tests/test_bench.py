"""`netdsl bench FILE` and the kernel-provider choice (`--kernels`, `--threads`)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from netdsl.runtime import kernels
from netdsl.cli.app import main
from netdsl.core.errors import NetdslError

ROOT = Path(__file__).resolve().parents[1]
LENET = str(ROOT / "nets" / "lenet5.net")


def bench_json(capsys, *args):
    assert main(["bench", *map(str, args), "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bench_file_reports_every_layer_and_the_step(capsys):
    r = bench_json(capsys, LENET, "--batch-size", 4, "--steps", 2, "--rounds", 1,
                   "--kernels", "numpy", "--threads", 1)
    assert r["network"] == "lenet5" and r["batch"] == 4 and r["kernels"] == "numpy"
    ops = [row["op"] for row in r["layers"]]
    # LeNet-5 as the paper draws it: C1 S2 C3 S4 C5 F6 OUT, with tanh after the convs and F6
    # (fused into them by fuse_activations: applied in place to their outputs).
    assert ops == ["input", "conv+tanh", "avgpool", "conv+tanh", "avgpool", "conv+tanh",
                   "fc+tanh", "fc", "softmax_xent"]
    assert {row["provider"] for row in r["layers"]} == {"numpy"}
    assert all(row["backward_ms"] >= 0 and row["forward_ms"] >= 0 for row in r["layers"])
    assert r["netdsl_ms"] > 0 and r["netdsl_img_s"] == pytest.approx(4000 / r["netdsl_ms"])
    # LeNet-5's multiply-adds (full C3 connectivity, biases not counted): C1 28·28·6·25,
    # C3 10·10·16·150, C5 120·400, F6 120·84, OUT 84·10; a training step is 3 forward passes'
    # worth, 2 FLOPs per MAC.
    macs = 28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 + 120 * 400 + 120 * 84 + 84 * 10
    assert r["gflops"] == pytest.approx(2 * 3 * 4 * macs / (r["netdsl_ms"] / 1000) / 1e9)
    assert r["netdsl_peak_mb"] * 2**20 >= 4 * 28 * 28 * 6 * 4  # at least C1's activations
    assert r["planned_peak_mb"] * 2**20 >= 4 * 28 * 28 * 6 * 4  # the planner's figure too
    # How each NumPy conv computes d(input): C1 reads the data (none needed); C3 and C5 are
    # 5×5 'valid' convs, whose dout padded by 4 would be mostly zeros (layers/conv.py).
    assert [row["dx"] for row in r["layers"] if row["op"].startswith("conv")] == \
        [None, "offsets", "offsets"]
    assert r["minor_faults_per_step"] >= 0


def test_bench_infer_mode_has_no_backward(capsys):
    r = bench_json(capsys, LENET, "--batch-size", 4, "--steps", 1, "--rounds", 1,
                   "--mode", "infer", "--kernels", "numpy")
    assert r["mode"] == "infer" and all(row["backward_ms"] == 0 for row in r["layers"])


@pytest.mark.skipif(not kernels.available("onednn"), reason="oneDNN cannot load here")
def test_bench_onednn_kernels_are_used(capsys):
    r = bench_json(capsys, LENET, "--batch-size", 4, "--steps", 1, "--rounds", 1,
                   "--kernels", "auto")
    providers = {row["op"]: row["provider"] for row in r["layers"]}
    assert r["kernels"] == "onednn"
    assert providers["conv+tanh"] == providers["fc"] == providers["avgpool"] == "onednn"
    assert providers["fc+tanh"] == "onednn"   # the tanh fused into its producer's kernel
    assert providers["softmax_xent"] == "numpy"  # no oneDNN kernel: the reference


def test_torch_net_from_the_graph_matches_published_parameter_count():
    torch = pytest.importorskip("torch")
    from netdsl.tools.bench_torch import build
    from netdsl.compile.compiler import compile_file
    g = compile_file(LENET, num_classes=10).graph
    model = build(g)
    assert sum(p.numel() for p in model.parameters()) == 61_706  # LeCun et al. 1998, Fig. 2
    x = torch.zeros(3, 1, 32, 32)
    assert tuple(model(x).shape) == (3, 10)
    loss = model(x, torch.zeros(3, dtype=torch.long))
    assert loss.ndim == 0 and float(loss.detach()) == pytest.approx(np.log(10), rel=0.2)


def test_torch_net_refuses_layers_it_cannot_map(monkeypatch):
    from netdsl.tools import bench_torch
    from netdsl.compile.compiler import compile_file
    pytest.importorskip("torch")
    monkeypatch.setattr(bench_torch, "MAPPED", tuple(m for m in bench_torch.MAPPED
                                                      if m != "tanh"))
    g = compile_file(LENET, num_classes=10).graph
    with pytest.raises(NetdslError, match="cannot map layer 'tanh'"):
        bench_torch.build(g)


def test_bench_compare_torch_prints_ratio_with_spread():
    pytest.importorskip("torch")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "netdsl", "bench", LENET, "--batch-size", "4",
                        "--steps", "2", "--rounds", "2", "--compare", "torch", "--no-layers"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "netdsl throughput / pytorch throughput = " in r.stdout
    result = json.loads(r.stdout.strip().splitlines()[-1])
    spread = result["ratio_rounds"]
    ratios = [t / n for t, n in zip(result["torch_ms_rounds"], result["netdsl_ms_rounds"])]
    assert len(ratios) == 2
    assert spread["min"] == pytest.approx(min(ratios)) and spread["max"] == pytest.approx(max(ratios))
    # A LeNet-5 step at batch 4 allocates at least its activations: 4·28·28·6 floats for C1.
    assert result["torch_peak_mb"] * 2**20 >= 4 * 28 * 28 * 6 * 4


# --kernels: resolution and fallback


@pytest.fixture
def no_onednn(monkeypatch):
    from netdsl.runtime.kernels import onednn
    monkeypatch.setattr(onednn, "_LOADED", False)
    monkeypatch.setattr(onednn, "LOAD_ERROR", "libdnnl.so.3 not found (test)")
    monkeypatch.setattr(kernels, "_NOTED", set())


def test_auto_falls_back_to_numpy_with_one_note(no_onednn, capsys):
    assert kernels.resolve("auto") == "numpy"
    assert kernels.resolve("auto") == "numpy"
    err = capsys.readouterr().err
    assert err.count("note: oneDNN kernels unavailable") == 1 and "(test)" in err


def test_onednn_asked_for_but_missing_is_a_user_error(no_onednn):
    with pytest.raises(NetdslError, match="cannot load") as e:
        kernels.resolve("onednn")
    assert "--kernels numpy" in e.value.hint


def test_unknown_provider_and_non_numpy_arrays():
    with pytest.raises(NetdslError, match="unknown kernel provider"):
        kernels.resolve("mkl")
    fake_cupy = object()
    assert kernels.resolve("auto", xp=fake_cupy) == "numpy"
    with pytest.raises(NetdslError, match="CPU only"):
        kernels.resolve("onednn", xp=fake_cupy)
    assert kernels.resolve("numpy") == "numpy"


def test_run_without_the_library(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), NETDSL_DNNL_LIB=str(tmp_path / "missing.so"))
    net = str(ROOT / "nets" / "patterns" / "one_conv.net")

    def run(k):
        return subprocess.run([sys.executable, "-m", "netdsl", "run", net, "--epochs", "1",
                               "--quiet", "--kernels", k, "--threads", "1",
                               "--out", str(tmp_path / k)],
                              capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    bad = run("onednn")
    assert bad.returncode == 1 and "cannot load" in bad.stderr and "Traceback" not in bad.stderr
    ok = run("auto")
    assert ok.returncode == 0, ok.stderr
    assert "using NumPy" in ok.stderr and "final" in ok.stdout


@pytest.mark.skipif(not kernels.available("onednn"), reason="oneDNN cannot load here")
def test_one_thread_setting_governs_blas_and_openmp():
    import ctypes

    from threadpoolctl import threadpool_info
    omp = ctypes.CDLL("libgomp.so.1")  # the runtime libdnnl linked (loaded RTLD_GLOBAL)
    before = omp.omp_get_max_threads()
    from netdsl.core import workspace
    workers = workspace.threads()
    try:
        kernels.set_threads(1)
        assert omp.omp_get_max_threads() == 1
        blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
        assert blas and all(i["num_threads"] == 1 for i in blas)
    finally:
        kernels._LIMITS.restore_original_limits()
        omp.omp_set_num_threads(before)
        workspace.set_threads(workers)


def test_peak_memory_counts_only_the_held_regions_the_step_uses():
    """Regions another model holds (its Scratch, a oneDNN scratchpad grown by another
    network's primitives) are not this step's memory: the measurement must not depend on what
    ran before in the process (test_bench_runs_a_segmentation_net failed in full runs so)."""
    from netdsl.core.workspace import Scratch, held_bytes
    from netdsl.tools.bench import peak_memory
    mine = Scratch()

    def step():            # one kernel call that takes 64 KB of scratch
        mine.reset()
        mine.take((16384,), np.float32)

    step()                 # the region has grown to the step's need (at the next reset)
    alone = peak_memory(step)
    idle = Scratch()       # another model's region, 8 MB, not used by the step
    idle.take((1 << 21,), np.float32)
    idle.reset()
    pads = []
    if kernels.available("onednn"):   # the shared scratchpad, grown by "another network"
        from netdsl.runtime.kernels.onednn.common import lib
        pads.append(lib().scratchpad)
        pads[0].reserve(1 << 23)
    try:
        assert 65536 <= alone < 65536 + 4096     # the region, and a few small Python objects
        assert held_bytes() >= alone + idle.nbytes
        assert abs(peak_memory(step) - alone) < 4096
    finally:
        for pad in pads:    # leave no grown region to the tests after this one
            pad.release()
