"""Before/after timing of the accurate reductions (docs/performance.md, "float32 numerics").

"before" is batch norm and GAP as they were up to commit a4743b0 (NumPy's row-by-row
``mean``/``sum`` over N·H·W, one temporary per operation), copied below; "after" is the code in
netdsl/layers (pairwise sums of layers/reduce.py, fewer passes). Both run in this process, taking
turns round by round so that load drift on a shared machine hits both alike; medians reported.

    python tests/bench/bench_numerics.py [--rounds 7] [--threads 2] [--clock wall|cpu]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from netdsl.compile.compiler import compile_file          # noqa: E402
from netdsl.runtime.executor import Executor              # noqa: E402
from netdsl.layers import Ctx, get                # noqa: E402


def _old_bn_forward(ctx, attrs, params, inputs):
    xp, x = ctx.xp, inputs[0]
    axes = tuple(range(x.ndim - 1))
    gamma, beta = params["gamma"], params["beta"]
    mean = x.mean(axis=axes)
    centred = x - mean
    var = (centred * centred).mean(axis=axes)
    count = x.size // x.shape[-1]
    m = attrs["momentum"]
    unbiased = var * (count / (count - 1)) if count > 1 else var
    params["running_mean"][...] = (1 - m) * params["running_mean"] + m * mean
    params["running_var"][...] = (1 - m) * params["running_var"] + m * unbiased
    inv_std = 1.0 / xp.sqrt(var + attrs["eps"])
    xhat = centred * inv_std
    return xhat * gamma + beta, (xhat, inv_std, True)


def _old_bn_backward(ctx, attrs, params, cache, dout):
    xhat, inv_std, _ = cache
    axes = tuple(range(dout.ndim - 1))
    gamma = params["gamma"]
    grads = {"gamma": (dout * xhat).sum(axis=axes), "beta": dout.sum(axis=axes)}
    dxhat = dout * gamma
    dx = (dxhat - dxhat.mean(axis=axes) - xhat * (dxhat * xhat).mean(axis=axes)) * inv_std
    return [dx], grads


def _old_gap_forward(ctx, attrs, params, inputs):
    return inputs[0].mean(axis=(1, 2)), inputs[0].shape


OLD = {"batchnorm": {"forward": _old_bn_forward, "backward": _old_bn_backward},
       "gap": {"forward": _old_gap_forward}}


def _use_old(ex):
    """Point the plan's batch-norm and GAP steps at the old functions (the plan calls
    ``step.forward``/``step.backward``, the kernels chosen per node)."""
    for st in ex.plan:
        for name, fn in OLD.get(st.node.op, {}).items():
            setattr(st, name, fn)


def _time(fn, reps, clock):
    t = clock()
    for _ in range(reps):
        fn()
    return (clock() - t) / reps * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this process's CPU time, steadier on a loaded shared machine "
                         "(use with --threads 1)")
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits
    threadpool_limits(args.threads)
    rng = np.random.default_rng(0)
    bn, ctx = get("batchnorm"), Ctx(xp=np, training=True, dtype=np.float32)
    attrs = {"eps": 1e-5, "momentum": 0.1}
    cases = {}
    for shape in [(args.batch, 32, 32, 16), (args.batch, 16, 16, 32), (args.batch, 8, 8, 64)]:
        c = shape[-1]
        params = {"gamma": np.ones(c, np.float32), "beta": np.zeros(c, np.float32),
                  "running_mean": np.zeros(c, np.float32), "running_var": np.ones(c, np.float32)}
        x = rng.standard_normal(shape).astype(np.float32)
        dout = rng.standard_normal(shape).astype(np.float32)

        def step(fwd, bwd, x=x, dout=dout, params=params):
            _, cache = fwd(ctx, attrs, params, [x])
            bwd(ctx, attrs, params, cache, dout)
        cases["BN fwd+bwd " + "×".join(map(str, shape))] = (
            lambda s=step: s(_old_bn_forward, _old_bn_backward),
            lambda s=step: s(bn.forward, bn.backward), 10)
    g = compile_file(str(Path(__file__).resolve().parents[2] / "nets" / "resnet20.net"),
                     input_shape=(32, 32, 3), num_classes=10).graph
    new_ex = Executor(g, seed=0)
    old_ex = Executor(g, seed=0, params={n: {k: v.copy() for k, v in t.items()}
                                         for n, t in new_ex.params.items()})
    _use_old(old_ex)
    xb = rng.standard_normal((args.batch, 32, 32, 3)).astype(np.float32)
    yb = rng.integers(0, 10, args.batch)

    def train_step(ex):
        ex.forward(xb, yb, training=True)
        ex.backward()
    cases[f"ResNet-20 step (fwd+bwd), batch {args.batch}"] = (
        lambda: train_step(old_ex), lambda: train_step(new_ex), 2)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"| case ({args.clock} time, {args.threads} thread(s)) | before ms | after ms | "
          "after / before |\n|---|---:|---:|---:|")
    for name, (old, new, reps) in cases.items():
        old(), new()                       # warm-up
        t_old, t_new = [], []
        for _ in range(args.rounds):
            t_old.append(_time(old, reps, clock))
            t_new.append(_time(new, reps, clock))
        mo, mn = statistics.median(t_old), statistics.median(t_new)
        print(f"| {name} | {mo:.2f} | {mn:.2f} | {mn / mo:.2f} |", flush=True)


if __name__ == "__main__":
    main()
