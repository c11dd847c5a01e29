"""`netdsl bench`: time one training step of the cs231n net in netdsl and in PyTorch CPU.

The network is the issue's yardstick: INPUT 32×32×3 -> [[CONV -> RELU]*2 -> POOL]*3 ->
[FC -> RELU]*2 -> FC with widths 32/64/128, hidden 256, batch 64, SGD with momentum.
Both run in the same process with the same thread count, taking turns in rounds so that drift
in the machine's load affects both alike. PyTorch is optional: without it, only netdsl's
numbers are printed. Results go to stdout; docs/performance.md records them.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np

NET = Path(__file__).resolve().parents[1] / "nets" / "cs231n.net"
SETS = {"N": 2, "M": 3, "K": 2, "WIDTH": 32, "HIDDEN": 256, "POOL": True}


def _time_steps(step, count: int) -> list[float]:
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def _compare(steps: dict, total: int, rounds: int = 5, warmup: int = 3) -> dict:
    """Median seconds per step of each named step function. The functions take turns in
    ``rounds`` rounds, so drift in the machine's load hits them alike."""
    for step in steps.values():
        _time_steps(step, warmup)
    times = {name: [] for name in steps}
    per_round = max(1, total // rounds)
    for _ in range(rounds):
        for name, step in steps.items():
            times[name] += _time_steps(step, per_round)
    return {name: float(np.median(t)) for name, t in times.items()}


def netdsl_step(batch: int, xp=np, passes=None):
    from .compiler import compile_file
    from .executor import Executor
    from .train.config import TrainConfig
    from .train.optim import make_optimizer
    c = compile_file(str(NET), overrides=dict(SETS), input_shape=(32, 32, 3), num_classes=10)
    ex = Executor(c.graph, xp=xp, seed=0, passes=passes)
    opt = make_optimizer(TrainConfig(lr=0.01, momentum=0.9))
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((batch, 32, 32, 3)).astype(np.float32))
    y = xp.asarray(rng.integers(0, 10, batch))

    def step():
        ex.forward(x, y, training=True)
        opt.step(ex.params, ex.backward())
        if xp is not np:
            xp.cuda.runtime.deviceSynchronize()
    return step


def torch_step(batch: int, threads: int):
    import torch
    from torch import nn
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layers, c_in = [], 3
    for width in (32, 64, 128):
        for _ in range(2):
            layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU()]
            c_in = width
        layers.append(nn.MaxPool2d(2))
    layers += [nn.Flatten(), nn.Linear(128 * 4 * 4, 256), nn.ReLU(), nn.Linear(256, 256),
               nn.ReLU(), nn.Linear(256, 10)]
    model = nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return step, torch.__version__


def _thread_limit(threads: int):
    """A context that caps BLAS threads at ``threads``; threadpoolctl is optional (the `bench`
    extra), and without it the BLAS default applies and the printout says so."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib
        print("threadpoolctl is not installed (pip install netdsl[bench]): BLAS threads are "
              "not limited")
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads)


def main(args) -> int:
    result = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
              "threads": args.threads, "batch": args.batch, "steps": args.steps}
    xp = np
    if args.device == "gpu":
        from .backend import get_xp
        xp = get_xp("gpu")
    steps = {"netdsl": netdsl_step(args.batch, xp, getattr(args, "passes", None))}
    version = None
    try:
        steps["torch"], version = torch_step(args.batch, args.threads)
    except ImportError:
        print("PyTorch is not installed: pip install torch to compare")
    with _thread_limit(args.threads):
        med = _compare(steps, args.steps)
    t = med["netdsl"]
    result["netdsl_ms"] = 1000 * t
    result["netdsl_img_s"] = args.batch / t
    print(f"netdsl ({args.device}): {1000 * t:.1f} ms/step, {args.batch / t:.0f} images/s")
    if version:
        tt = med["torch"]
        result.update(torch_version=version, torch_ms=1000 * tt, torch_img_s=args.batch / tt,
                      ratio=tt / t)
        print(f"pytorch {version} cpu, {args.threads} threads: {1000 * tt:.1f} ms/step, "
              f"{args.batch / tt:.0f} images/s")
        print(f"netdsl throughput / pytorch throughput = {tt / t:.2f}")
    print(json.dumps(result))
    return 0
