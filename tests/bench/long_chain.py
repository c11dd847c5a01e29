"""`netdsl check` and `netdsl summary` on a generated chain of FC/ReLU layers: wall time of
each (the median of --repeat runs, interleaved) and the ratio summary / check (issue 16 asks
for < 2 on 100,000 layers; the memory planner's arena was quadratic before).

    python tests/bench/long_chain.py --layers 99990 --repeat 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def chain(layers: int) -> str:
    pairs = max(1, (layers - 3) // 2)
    return "net chain\nINPUT(16) -> " + " -> ".join(["FC(16) -> RELU"] * pairs) + " -> FC(10)\n"


def wall(argv) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "netdsl", *argv], capture_output=True, text=True,
                       env=env, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=99_990)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chain.net"
        path.write_text(chain(args.layers))
        times = {"check": [], "summary": []}
        for _ in range(args.repeat):      # interleaved, so load changes hit both alike
            for cmd in times:
                times[cmd].append(wall([cmd, str(path)]))
    check, summary = (statistics.median(times[c]) for c in ("check", "summary"))
    print(f"{args.layers:,} layers: check {check:.2f} s, summary {summary:.2f} s, "
          f"summary / check = {summary / check:.2f} (medians of {args.repeat}; "
          f"load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
