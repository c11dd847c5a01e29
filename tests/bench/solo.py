"""Time one framework alone in its own process: the cross-check of `netdsl bench --compare torch`.

`bench --compare torch` runs both frameworks in one process, interleaved, so that load drift hits
both alike; but two engines in one process can also slow each other (OpenMP teams, BLAS threads,
the allocator). This script runs netdsl *or* PyTorch alone, with bench's own step functions.

Usage: PYTHONPATH=. python tests/bench/solo.py netdsl|torch STEPS -- <netdsl bench arguments>
e.g.   ... solo.py torch 20 -- nets/resnet20.net --threads 2 --batch 64
Prints one JSON line: framework, network, mode, batch, kernels, median ms/step.
"""
import json
import sys

import numpy as np


def main(argv):
    who, steps = argv[0], int(argv[1])
    from netdsl.tools import bench
    from netdsl.runtime import kernels
    from netdsl.cli.app import build_parser
    args = build_parser().parse_args(["bench"] + argv[argv.index("--") + 1:])
    kernels.set_threads(args.threads)
    c = bench.compile_bench_args(args)
    if who == "torch":
        step, _ = bench.torch_setup(c, args.batch, args.mode, args.threads)
    else:
        step = bench.netdsl_setup(c, args.batch, args.mode, args.kernels)[0]
    times = bench.interleave({who: step}, steps, rounds=1)[who]
    print(json.dumps({"framework": who, "network": c.graph.graph.get("name", args.file),
                      "mode": args.mode, "batch": args.batch,
                      "kernels": args.kernels if who == "netdsl" else "torch",
                      "ms": 1000 * float(np.median(times))}))


if __name__ == "__main__":
    main(sys.argv[1:])
