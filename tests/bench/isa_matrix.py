"""The issue-14 bench matrix: every case against every peer, natively and capped to AVX2.

Cases: the four nets (lenet5; cs231n N=2 M=3 K=2 at 32×32×3; resnet20; inception_small at
32×32×3) in training (b=64) and inference (b=256), and the seeds' nets at their real size:
ResNet-50 224×224 (train b=16, infer b=16), VGG-16 224×224 (infer b=8), AlexNet 227×227
(train b=32). Peers: PyTorch eager and torch.compile in both modes; onnxruntime and OpenVINO
at inference (on the ONNX file `netdsl export --optimize` writes). ISAs: the host as it is
("native") and capped to AVX2 ("avx2": ``ONEDNN_MAX_CPU_ISA=AVX2``, which netdsl's oneDNN and
PyTorch's bundled one both honour, ``MKL_ENABLE_INSTRUCTIONS=AVX2`` for PyTorch's MKL and
``OPENBLAS_CORETYPE=Haswell`` for NumPy's OpenBLAS).

Each (case, peer, ISA) is its own process, ``python -m netdsl bench CASE --compare PEER
--threads 2 --format json``, which itself alternates netdsl and the peer in ``--rounds``
rounds; the outer loop repeats the whole matrix ``--outer`` times, ISAs and peers interleaved
inside each round, so that drift in the machine's load spreads over all of them. One JSON line
per process on stdout: bench's result (per-layer timings left out) plus ``case``, ``peer``,
``isa``, ``outer``, ``wall_s`` and ``peer_ratio`` (netdsl's throughput / the peer's; None when
the peer was skipped, with bench's note in ``skipped``). The host's ISA is in ``host_isa``.
`tests/bench/matrix_table.py` turns the lines into the markdown table.

Usage: PYTHONPATH=. python tests/bench/isa_matrix.py [--outer 3] [--steps 10] [--rounds 5]
       [--cases REGEX] [--peers torch,onnxruntime,openvino,torch.compile] [--isa native,avx2]
       > matrix.jsonl
Smoke run (proves every case runs; numbers meaningless): --outer 1 --steps 1 --rounds 1.

Time (2-core AVX-512/AMX host, load average 5-11, 2026-12-06): the smoke run (--outer 1
--steps 1 --rounds 1: 72 processes, every case x peer x ISA once) took 23 min, two thirds of
it ResNet-50, VGG-16 and AlexNet; most of a process is fixed cost (compiling, ONNX export,
torch.compile, bench's 3 warm-up steps and its memory measurements). The full matrix at the
defaults (--outer 3 --steps 10 --rounds 5) adds 9 timed steps per framework per process:
~41 min per outer round from the smoke's step times, ~2 h in all at that load, ~1.5 h
quiet (a quiet rerun of the ResNet-50 training process took 29 s against the smoke's 36 s); --outer 1 takes a third, --cases/--peers/--isa cut it further.
Measured 2026-12-07, quiet (load < 2): --outer 1 at the defaults, all 72 processes, 22 min.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

CS231N = ["nets/cs231n.net", "--input", "32x32x3", "--set", "N=2", "--set", "M=3",
          "--set", "K=2"]
NETS = {"lenet5": ["nets/lenet5.net"], "cs231n": CS231N, "resnet20": ["nets/resnet20.net"],
        "inception_small": ["nets/inception_small.net", "--input", "32x32x3"]}
CASES = {}
for _name, _args in NETS.items():
    CASES[f"{_name} train 64"] = (_args, "train", 64)
    CASES[f"{_name} infer 256"] = (_args, "infer", 256)
CASES.update({
    "resnet50 train 16": (["nets/resnet50.net"], "train", 16),
    "resnet50 infer 16": (["nets/resnet50.net"], "infer", 16),
    "vgg16 infer 8": (["nets/vgg16.net"], "infer", 8),
    "alexnet train 32": (["nets/alexnet.net"], "train", 32),
})
MIN_STEPS = {"lenet5 train 64": 60, "lenet5 infer 256": 60}
"""Timed steps at least, per case: LeNet-5's steps take 2–5 ms, so rounds of two steps (the
default 10 steps in 5 rounds) are dominated by each turn's first steps; 60 steps make rounds
of 12 (2026-12-07: 1.20 at 10 steps, 1.31 at 60 for the same tree, quiet)."""
PEERS = {"train": ("torch", "torch.compile"),
         "infer": ("torch", "onnxruntime", "openvino", "torch.compile")}
# An AVX2 host emulated: every library that dispatches on the CPU's ISA capped to AVX2 —
# oneDNN (netdsl's and PyTorch's bundled one), MKL (PyTorch's BLAS: its Linear layers) and
# NumPy's OpenBLAS. onnxruntime's MLAS and OpenVINO have no such switch: their "avx2" numbers
# still run their AVX-512 kernels (so the avx2 ORT/OpenVINO ratios understate netdsl).
ISAS = {"native": {}, "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                               "OPENBLAS_CORETYPE": "Haswell"}}


def command(python, case, peer, steps, rounds, threads):
    """The bench command line of one (case, peer)."""
    args, mode, batch = CASES[case]
    steps = max(steps, MIN_STEPS.get(case, 0))
    return [python, "-m", "netdsl", "bench", *args, "--mode", mode, "--batch-size", str(batch),
            "--compare", peer, "--threads", str(threads), "--steps", str(steps),
            "--rounds", str(rounds), "--no-layers", "--format", "json"]


def run_one(cmd, isa, timeout):
    """One bench process under ``isa``'s environment: its JSON result or an ``error``."""
    env = dict(os.environ)
    from netdsl.tools.bench_peers import ISA_CAPS
    for k in ISA_CAPS:
        env.pop(k, None)   # native means native, whatever the caller's shell had
    env.update(ISAS[isa])
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}, time.perf_counter() - t0
    wall = time.perf_counter() - t0
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        return {"error": (p.stderr or p.stdout)[-800:] or f"exit status {p.returncode}"}, wall
    return json.loads(lines[-1]), wall


def peer_ratio(result, peer):
    """(ratio, its rounds' spread) of netdsl's throughput to ``peer``'s, or (None, None)."""
    if peer == "torch":
        return result.get("ratio"), result.get("ratio_rounds")
    p = result.get("peers", {}).get(peer)
    return (p["ratio"], p["ratio_rounds"]) if p else (None, None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--outer", type=int, default=3, help="repeats of the whole matrix")
    ap.add_argument("--steps", type=int, default=10, help="bench --steps (timed, per framework)")
    ap.add_argument("--rounds", type=int, default=5, help="bench --rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", default=".", help="regex on the case names (e.g. 'resnet50')")
    ap.add_argument("--peers", default="torch,onnxruntime,openvino,torch.compile")
    ap.add_argument("--isa", default="native,avx2")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per process")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    a = ap.parse_args(argv)
    cases = [c for c in CASES if re.search(a.cases, c)]
    peers, isas = a.peers.split(","), a.isa.split(",")
    for r in range(a.outer):
        for case in cases:
            for peer in [p for p in PEERS[CASES[case][1]] if p in peers]:
                # alternate which ISA goes first from round to round
                for isa in (isas if r % 2 == 0 else isas[::-1]):
                    cmd = command(a.python, case, peer, a.steps, a.rounds, a.threads)
                    if a.dry_run:
                        print(" ".join(f"{k}={v}" for k, v in ISAS[isa].items()), *cmd[1:])
                        continue
                    res, wall = run_one(cmd, isa, a.timeout)
                    ratio, spread = peer_ratio(res, peer)
                    res.pop("layers", None)
                    if "host_isa" not in res:   # a failed run: the ISA still goes on the line
                        from netdsl.tools.bench_peers import host_isa
                        res["host_isa"] = dict(host_isa(), onednn_max_cpu_isa=ISAS[isa].get(
                            "ONEDNN_MAX_CPU_ISA"))
                    print(json.dumps({"case": case, "peer": peer, "isa": isa, "outer": r,
                                      "wall_s": round(wall, 1), "peer_ratio": ratio,
                                      "peer_ratio_rounds": spread, **res}), flush=True)


if __name__ == "__main__":
    main()
