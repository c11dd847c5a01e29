"""Two oneDNN builds against each other, on netdsl's own step: the issue-14 item-5 comparison.

Each run is its own process (`python -m netdsl bench ... --compare none --format json`) with
the library named by NETDSL_DNNL_LIB, so both builds run under the same Python and NumPy and
only oneDNN differs. The builds alternate inside every outer round (A, B, A, B ...), natively
and with ``ONEDNN_MAX_CPU_ISA=AVX2``, so drift in the machine's load hits both alike; the
summary is the median over rounds of A's step time / B's step time (> 1: B is faster).

Usage (the `onednn` 2026.1 wheel, oneDNN 3.13, in its own venv; see docs/performance.md):
  V=/tmp/venv-onednn313
  LD_LIBRARY_PATH=$V/lib OCL_ICD_FILENAMES=$V/lib/libintelocl.so PYTHONPATH=. \\
    $V/bin/python tests/bench/onednn_builds.py --python $V/bin/python \\
    --lib 3.2=/work/main/.venv/lib/libdnnl.so.3 --lib 3.13=$V/lib/libdnnl.so.3 \\
    [--outer 3] [--steps 10] [--rounds 5] > builds.jsonl
The 3.13 wheel is a SYCL build: it finds its CPU device only through the OpenCL ICD named in
OCL_ICD_FILENAMES, and its libraries only through LD_LIBRARY_PATH (the 3.2 build ignores both).
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

CASES = {
    "resnet20 infer 256": ["nets/resnet20.net", "--input", "32x32x3", "--mode", "infer",
                           "--batch-size", "256"],
    "resnet20 train 64": ["nets/resnet20.net", "--input", "32x32x3", "--mode", "train",
                          "--batch-size", "64"],
    "cs231n infer 256": ["nets/cs231n.net", "--input", "32x32x3", "--set", "N=2", "--set", "M=3",
                         "--set", "K=2", "--mode", "infer", "--batch-size", "256"],
    "cs231n train 64": ["nets/cs231n.net", "--input", "32x32x3", "--set", "N=2", "--set", "M=3",
                        "--set", "K=2", "--mode", "train", "--batch-size", "64"],
}
ISAS = {"native": {}, "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "OPENBLAS_CORETYPE": "Haswell"}}


def run_one(python, lib, case, isa, steps, rounds, threads):
    """One bench process; its JSON result, or a dict with ``error``."""
    env = dict(os.environ, NETDSL_DNNL_LIB=lib, **ISAS[isa])
    env.pop("ONEDNN_MAX_CPU_ISA", None) if isa == "native" else None
    cmd = [python, "-m", "netdsl", "bench", *CASES[case], "--kernels", "onednn",
           "--threads", str(threads), "--steps", str(steps), "--rounds", str(rounds),
           "--compare", "none", "--no-layers", "--format", "json"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        return {"error": (p.stderr or p.stdout)[-600:]}
    return json.loads(lines[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--lib", action="append", required=True, metavar="LABEL=PATH",
                    help="a build: label and its libdnnl.so.3 (give two)")
    ap.add_argument("--outer", type=int, default=3, help="outer rounds (builds alternate)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--isa", default="native,avx2")
    a = ap.parse_args(argv)
    libs = [tuple(s.split("=", 1)) for s in a.lib]
    ms = {}
    for r in range(a.outer):
        for case in a.cases.split(","):
            for isa in a.isa.split(","):
                # alternate which build goes first, so neither always follows the other
                for label, lib in (libs if r % 2 == 0 else libs[::-1]):
                    res = run_one(a.python, lib, case, isa, a.steps, a.rounds, a.threads)
                    line = {"build": label, "lib": lib, "case": case, "isa": isa, "outer": r,
                            **{k: res.get(k) for k in ("netdsl_ms", "host_isa", "error")}}
                    print(json.dumps(line), flush=True)
                    if res.get("netdsl_ms"):
                        ms.setdefault((case, isa, label), {})[r] = res["netdsl_ms"]
    (a_label, _), (b_label, _) = libs[:2]
    for case in a.cases.split(","):
        for isa in a.isa.split(","):
            ta, tb = ms.get((case, isa, a_label), {}), ms.get((case, isa, b_label), {})
            ratios = [ta[r] / tb[r] for r in ta if r in tb]
            if ratios:
                print(f"# {case:20s} {isa:6s} {a_label} ms / {b_label} ms = "
                      f"{np.median(ratios):.2f} (each round: "
                      f"{', '.join(f'{x:.2f}' for x in ratios)}); median ms "
                      f"{np.median(list(ta.values())):.1f} vs {np.median(list(tb.values())):.1f}",
                      flush=True)


if __name__ == "__main__":
    main()
