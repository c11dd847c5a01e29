"""Time forward + backward of the zoo layers at the sizes of the nets that use them, against
PyTorch CPU when it is installed (float32, same thread count, medians of alternating rounds).

    python tests/bench/bench_zoo_layers.py [--threads 2] [--rounds 5]

Results go to stdout; docs/performance.md records them. Not a test: timings on a shared
machine vary, so nothing here asserts.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from netdsl.layers import Ctx, bind_args, get
from netdsl.layers.init import init_param

# (label, layer, attrs, per-example input shapes, batch): the nets' own layers.
CASES = [
    ("AlexNet LRN 55×55×96", "lrn", {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0},
     [(55, 55, 96)], 16),
    ("U-Net up-conv 2×2 64×64×256→128", "deconv", {"filters": 128}, [(64, 64, 256)], 2),
    ("deconv 3×3/2 p1 op1 28×28×64→32", "deconv",
     {"filters": 32, "kernel": 3, "stride": 2, "pad": 1, "output_padding": 1}, [(28, 28, 64)], 16),
    ("DeepFace L5 local 7×7/2 55×55×16", "local", {"filters": 16, "kernel": 7, "stride": 2},
     [(55, 55, 16)], 16),
    ("SegNet pool+switches 2×2 112×112×64", "maxpool_switches", {"size": 2}, [(112, 112, 64)], 8),
    ("SegNet unpool 56×56×64→112", "maxunpool", {"size": 2},
     [(56, 56, 64), (56, 56, 64)], 8),
]


def _ours(name, attrs, shapes, batch, rng):
    spec = get(name)
    bound = bind_args(spec, [], attrs)
    bound = spec.resolve(bound, None) if spec.resolve else bound
    params = {k: init_param(np, rng, ps, np.float32)
              for k, ps in spec.params(bound, shapes).items()}
    if spec.make_inputs is not None:
        inputs = [x.astype(np.float32) if x.dtype.kind == "f" else x
                  for x in spec.make_inputs(rng, bound, shapes, batch)]
    else:
        inputs = [rng.standard_normal((batch,) + s, dtype=np.float32) for s in shapes]
    ctx = Ctx(xp=np, training=True, dtype=np.float32)

    def step():
        out, cache = spec.forward(ctx, bound, params, inputs)
        dout = (np.ones_like(out[0]), None) if isinstance(out, tuple) else np.ones_like(out)
        spec.backward(ctx, bound, params, cache, dout)
    return step, bound, params, inputs


def _torch(name, bound, params, inputs):
    """The same computation in PyTorch (NCHW), or None when it has no counterpart."""
    import torch
    F = torch.nn.functional
    t = [torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)),
                      requires_grad=x.dtype.kind == "f") for x in inputs]
    if name == "lrn":
        def fn():
            return F.local_response_norm(t[0], bound["size"], bound["alpha"], bound["beta"],
                                         bound["k"])
    elif name == "deconv":
        w = params["weight"]
        kh, kw, c, f = w.shape
        wt = torch.tensor(w.transpose(2, 3, 0, 1).copy(), requires_grad=True)
        bt = torch.tensor(params["bias"], requires_grad=True)

        def fn():
            return F.conv_transpose2d(t[0], wt, bt, stride=bound["stride"], padding=bound["pad"],
                                      output_padding=bound["output_padding"])
    elif name == "maxpool_switches":
        def fn():
            return F.max_pool2d(t[0], bound["size"], bound["stride"], return_indices=True)[0]
    elif name == "maxunpool":
        t[1] = t[1].detach()

        def fn():
            return F.max_unpool2d(t[0], t[1], bound["size"], bound["stride"])
    elif name == "local":
        w = params["weight"]
        ho, wo, kh, kw, c, f = w.shape
        wt = torch.tensor(w.transpose(0, 1, 4, 2, 3, 5).reshape(ho * wo, -1, f).copy(),
                          requires_grad=True)

        def fn():
            cols = F.unfold(t[0], bound["kernel"], stride=bound["stride"])
            return torch.einsum("nkl,lkf->nlf", cols, wt)
    else:
        return None

    def step():
        out = fn()
        out.backward(torch.ones_like(out))
    return step


def _median_ms(step, rounds, reps=3):
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            step()
        times.append((time.perf_counter() - t0) / reps * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    print(f"{'case':40s} {'batch':>5s} {'netdsl ms':>10s} {'PyTorch ms':>10s} {'ratio':>6s}")
    with threadpool_limits(args.threads):
        for label, name, attrs, shapes, batch in CASES:
            step, bound, params, inputs = _ours(name, attrs, shapes, batch, rng)
            tstep = _torch(name, bound, params, inputs) if torch else None
            step()
            if tstep:
                tstep()
            ours = _median_ms(step, args.rounds)
            theirs = _median_ms(tstep, args.rounds) if tstep else float("nan")
            print(f"{label:40s} {batch:5d} {ours:10.1f} {theirs:10.1f} {ours / theirs:6.2f}")


if __name__ == "__main__":
    main()
