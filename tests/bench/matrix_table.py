"""Turn bench_matrix.sh's or isa_matrix.py's JSON lines into the markdown tables of
docs/performance.md.

Usage: python tests/bench/matrix_table.py results.jsonl [more.jsonl ...]
bench_matrix.sh's lines: one row per (network, mode, batch) with the oneDNN and NumPy columns
side by side. isa_matrix.py's lines (they carry ``peer`` and ``isa``): one row per case, one
column per ISA × peer, each cell netdsl's throughput / the peer's, the median over the outer
rounds (their range in brackets when there are several; ``skip`` where the peer was skipped,
``err`` where the run failed), then the host ISA the lines report.
"""
import json
import statistics
import sys

ISA_ORDER = ("native", "avx2")
PEER_ORDER = ("torch", "onnxruntime", "openvino", "torch.compile")
PEER_NAME = {"torch": "PyTorch", "onnxruntime": "ORT", "openvino": "OpenVINO",
             "torch.compile": "compile"}


def isa_table(lines) -> None:
    """The ISA × peer table of isa_matrix.py's results."""
    cells, cases, hosts = {}, [], set()
    for r in lines:
        if r["case"] not in cases:
            cases.append(r["case"])
        cells.setdefault((r["case"], r["isa"], r["peer"]), []).append(
            "err" if r.get("error") else r.get("peer_ratio") or "skip")
        if r.get("host_isa"):
            hosts.add(r["host_isa"]["widest"])
    cols = [(i, p) for i in ISA_ORDER for p in PEER_ORDER
            if any(k[1:] == (i, p) for k in cells)]
    print("| net, mode, batch | " + " | ".join(f"{i}: {PEER_NAME[p]}" for i, p in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for case in cases:
        row = []
        for i, p in cols:
            got = cells.get((case, i, p), [])
            nums = [v for v in got if isinstance(v, float)]
            if nums:
                cell = f"**{statistics.median(nums):.2f}**"
                if len(nums) > 1:
                    cell += f" ({min(nums):.2f}–{max(nums):.2f})"
            else:
                cell = got[0] if got else "—"
            row.append(cell)
        print(f"| {case} | " + " | ".join(row) + " |")
    print(f"\nhost ISA (widest cpuinfo flag): {', '.join(sorted(hosts)) or 'unknown'}; "
          "avx2 = ONEDNN_MAX_CPU_ISA=AVX2 (netdsl's and PyTorch's oneDNN) + "
          "MKL_ENABLE_INSTRUCTIONS=AVX2 (PyTorch's MKL) + OPENBLAS_CORETYPE=Haswell (NumPy); "
          "ratio = netdsl throughput / peer throughput")
    memory_table(lines, cases)


def memory_table(lines, cases) -> None:
    """Peak memory of the PyTorch-eager lines: netdsl measured and planned (and how far apart),
    PyTorch measured; the largest over the outer rounds, per ISA."""
    peaks = {}
    for r in lines:
        if r["peer"] == "torch" and not r.get("error") and r.get("torch_peak_mb"):
            peaks.setdefault((r["case"], r["isa"]), []).append(r)
    if not peaks:
        return
    print("\n| net, mode, batch | ISA | netdsl peak MB measured / planned (planned − measured) "
          "| PyTorch peak MB | netdsl ≤ PyTorch |")
    print("|---|---|---|---:|---|")
    for case in cases:
        for isa in ISA_ORDER:
            got = peaks.get((case, isa))
            if not got:
                continue
            meas = max(r["netdsl_peak_mb"] for r in got)
            plan = max(r["planned_peak_mb"] for r in got)
            torch = max(r["torch_peak_mb"] for r in got)
            print(f"| {case} | {isa} | {meas:.1f} / {plan:.1f} ({100 * (plan - meas) / meas:+.1f}%) "
                  f"| {torch:.1f} | {'yes' if meas <= torch else 'no'} |")


def main(paths):
    rows, isa_lines = {}, []
    for path in paths:
        with open(path) as f:
            for line in f:
                if line.startswith("{"):
                    r = json.loads(line)
                    if "peer" in r:
                        isa_lines.append(r)
                        continue
                    rows.setdefault((r["mode"], r["network"], r["batch"]), {})[r["kernels"]] = r
    if isa_lines:
        isa_table(isa_lines)
    if not rows:
        return
    print("| net | mode, batch | oneDNN ms | PyTorch ms | ratio (rounds) | NumPy ratio (rounds) "
          "| peak MB: oneDNN measured / planned, PyTorch | NumPy measured / planned |")
    print("|---|---|---:|---:|---|---|---|---|")
    for (mode, net, batch), by in sorted(rows.items(), key=lambda kv: (kv[0][0] != "train", kv[0][1])):
        d, n = by.get("onednn"), by.get("numpy")
        cell = lambda r: (f"**{r['ratio']:.2f}** ({r['ratio_rounds']['min']:.2f}–"
                          f"{r['ratio_rounds']['max']:.2f})") if r else "—"
        mem = (f"{d['netdsl_peak_mb']:.1f} / {d['planned_peak_mb']:.1f} / {d['torch_peak_mb']:.1f}"
               if d else "—")
        nmem = f"{n['netdsl_peak_mb']:.1f} / {n['planned_peak_mb']:.1f}" if n else "—"
        if d:
            print(f"| {net} | {mode} {batch} | {d['netdsl_ms']:.1f} | {d['torch_ms']:.1f} "
                  f"| {cell(d)} | {cell(n)} | {mem} | {nmem} |")
        else:
            print(f"| {net} | {mode} {batch} | — | — | — | {cell(n)} | — | {nmem} |")


if __name__ == "__main__":
    main(sys.argv[1:])
