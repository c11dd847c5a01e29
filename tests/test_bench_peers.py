"""`netdsl bench --compare onnxruntime|openvino|torch.compile` and the host ISA record
(netdsl/tools/bench_peers.py). The peers' outputs are checked against netdsl's own logits on
the same ONNX model (independent runtimes), never only their timings."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from netdsl.cli.app import main
from netdsl.tools import bench_peers

from conftest import ROOT

LENET = str(ROOT / "nets" / "lenet5.net")


def _bench(capsys, *args):
    assert main(["bench", LENET, "--batch-size", "4", "--steps", "1", "--rounds", "1",
                 "--no-layers", "--format", "json", *map(str, args)]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_host_isa_from_cpuinfo_flags_and_the_onednn_cap(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma bmi2\n")
    for k in bench_peers.ISA_CAPS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    isa = bench_peers.host_isa(str(info))
    assert isa == {"flags": ["sse4_2", "avx", "avx2", "fma"], "widest": "avx2",
                   "onednn_max_cpu_isa": "AVX2",
                   "caps": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}
    info.write_text("flags\t\t: avx2 fma avx512f avx512bw avx512_vnni\n")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS")
    isa = bench_peers.host_isa(str(info))
    assert isa["widest"] == "avx512" and isa["onednn_max_cpu_isa"] is None
    assert isa["caps"] == {}


def _executor_and_batch():
    from netdsl.compile.compiler import compile_file
    from netdsl.runtime.executor import Executor
    g = compile_file(LENET, num_classes=10).graph
    ex = Executor(g, seed=0).for_inference()
    x = np.random.default_rng(0).standard_normal((3, *ex.input_shape)).astype(np.float32)
    return ex, x


@pytest.mark.parametrize("peer", ["onnxruntime", "openvino"])
def test_onnx_peers_run_the_same_network(peer):
    pytest.importorskip(peer)
    ex, x = _executor_and_batch()
    setup = {"onnxruntime": bench_peers.onnxruntime_setup,
             "openvino": bench_peers.openvino_setup}[peer]
    step, version = setup(ex, x, 1)
    out = step()
    got = out[0] if peer == "onnxruntime" else next(iter(out.values()))
    ours = np.asarray(ex.forward(x, training=False).logits)
    np.testing.assert_allclose(np.asarray(got), ours, rtol=1e-3, atol=1e-4)
    assert version


def test_bench_compare_onnxruntime_reports_the_ratio(capsys):
    pytest.importorskip("onnxruntime")
    r = _bench(capsys, "--mode", "infer", "--compare", "onnxruntime")
    p = r["peers"]["onnxruntime"]
    assert p["ms"] > 0 and p["ratio"] == pytest.approx(p["ms"] / r["netdsl_ms"])
    assert r["host_isa"]["widest"]


def test_training_on_an_inference_runtime_is_skipped_with_a_note(capsys):
    r = _bench(capsys, "--mode", "train", "--compare", "openvino")
    assert "peers" not in r and "inference only" in r["skipped"]["openvino"]


def test_a_peer_not_installed_is_skipped_with_a_note(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)       # import torch fails
    r = _bench(capsys, "--mode", "infer", "--compare", "torch.compile")
    assert "pip install torch" in r["skipped"]["torch.compile"]
