"""Turn bench_matrix.sh's JSON lines into the markdown table of docs/performance.md.

Usage: python tests/bench/matrix_table.py results.jsonl [more.jsonl ...]
One row per (network, mode, batch) with the oneDNN and NumPy columns side by side.
"""
import json
import sys


def main(paths):
    rows = {}
    for path in paths:
        with open(path) as f:
            for line in f:
                if line.startswith("{"):
                    r = json.loads(line)
                    rows.setdefault((r["mode"], r["network"], r["batch"]), {})[r["kernels"]] = r
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
