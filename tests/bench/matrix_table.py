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
          "avx2 = ONEDNN_MAX_CPU_ISA=AVX2 (netdsl and PyTorch) + OPENBLAS_CORETYPE=Haswell; "
          "ratio = netdsl throughput / peer throughput")


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
