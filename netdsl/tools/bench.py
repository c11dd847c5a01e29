"""`netdsl bench [FILE]`: time a network's training step or inference, per layer and whole,
optionally against the same network built in PyTorch (the equivalent of `caffe time`).

Without FILE it times the issue's yardstick, nets/cs231n.net with N=2, M=3, K=2 and widths
32/64/128 on 32×32×3, batch 64, as it always did. With ``--compare torch`` both frameworks run
in one process with the same thread count, taking turns in rounds so that drift in the
machine's load hits both alike; the ratio is reported per round (median and spread). PyTorch is
optional and imported only for the comparison.
"""
from __future__ import annotations

import json
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from ..core.errors import NetdslError
from ..runtime.kernels.onednn.footprint import RESIDUAL
from ..runtime.plan import ALIAS

NET = Path(__file__).resolve().parents[2] / "nets" / "cs231n.net"
SETS = {"N": 2, "M": 3, "K": 2, "WIDTH": 32, "HIDDEN": 256, "POOL": True}


def _time_steps(step, count: int) -> list[float]:
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


PEER_PAUSE = 0.05
"""Seconds of sleep before each framework's turn when several take turns (``interleave``):
long enough for the other's spinning worker threads to go to sleep."""


def interleave(steps: dict, total: int, rounds: int = 5, warmup: int = 3, settle: int = 0,
               pause: float = 0.0) -> dict:
    """Per-round median seconds per step of each named step function; the functions take
    turns in ``rounds`` rounds of total/rounds steps after ``warmup`` untimed steps each.
    ``pause`` seconds of sleep and ``settle`` untimed steps start every turn, so that what the
    previous turn left behind is not timed against the next: OpenBLAS's threads spin for a
    while after a NumPy-kernel step, and on 2 cores they slow the oneDNN step after it ~2×."""
    for step in steps.values():
        _time_steps(step, warmup)
    per_round = max(1, total // rounds)
    out = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            if pause:
                time.sleep(pause)
            _time_steps(step, settle)
            out[name].append(float(np.median(_time_steps(step, per_round))))
    return out


def compile_bench_args(args, graph_passes=None):
    """Compile `bench`'s FILE (or the yardstick net when none) with --set and --input."""
    from ..lang.overrides import parse_dims, split_sets
    from ..compile.compiler import compile_file
    params, train = split_sets(args.set)
    input_shape = parse_dims(args.input) if args.input else None
    path = args.file
    if path is None:  # the yardstick; --set still overrides its parameters
        params, path = {**SETS, **params}, str(NET)
        input_shape = input_shape or (32, 32, 3)
    return compile_file(path, overrides=params, cli_train=train, input_shape=input_shape,
                        num_classes=10, mode=args.mode, graph_passes=graph_passes)


def classes(g) -> int:
    """Logits of the main loss head (the heaviest, first in source order)."""
    return _logits_shape(g)[-1]


def label_shape(g, batch: int) -> tuple:
    """The labels' shape for a batch: (N,), or (N, H, W) for per-pixel logits (a segmentation
    net's softmax_xent2d head)."""
    return (batch,) + tuple(_logits_shape(g)[:-1])


def bench_labels(g, rng, batch: int):
    """Random labels for a batch: class ids, or 0/1 float targets (N, K) for a regression or
    multi-label head (mse, l1, smooth_l1, bce)."""
    from ..train.metrics import head_kind
    if head_kind(g) in ("values", "labels"):
        return rng.integers(0, 2, (batch, classes(g))).astype(np.float32)
    return rng.integers(0, classes(g), label_shape(g, batch))


def _logits_shape(g) -> tuple:
    from ..core.graph import node
    from ..compile.verify import losses
    heads = losses(g)
    main = max(heads, key=lambda h: (h.attrs.get("weight", 1.0), -heads.index(h)))
    src, port = main.inputs[0]
    return tuple(node(g, src).out_shapes[port])


def netdsl_setup(c, batch: int, mode: str, kernels: str, xp=np, passes=None):
    """(step function, executor, x, labels) for one training step or one inference batch."""
    from ..runtime.executor import Executor
    from ..lang.train_config import TrainConfig
    from ..train.optim import make_optimizer
    # passes: the compiler's -O0/--passes, where the executor and the CLI offer them
    extra = {} if passes is None else {"passes": passes}
    ex = Executor(c.graph, xp=xp, seed=0, kernels=kernels, **extra)
    if mode == "infer" and hasattr(ex, "for_inference"):
        ex = ex.for_inference()  # the inference pipeline: BN folded, dropout and aux heads gone
    opt = make_optimizer(TrainConfig(lr=0.01, momentum=0.9))
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((batch,) + tuple(ex.input_shape)).astype(np.float32))
    y = xp.asarray(bench_labels(c.graph, rng, batch))
    sync = (lambda: xp.cuda.runtime.deviceSynchronize()) if xp is not np else (lambda: None)

    def train_step():
        # The result (its logits) is held through backward, as the training loop holds it
        # (train/loop.py reads the accuracy after the step) and the memory planner plans.
        res = ex.forward(x, y, training=True)
        opt.step(ex.params, ex.backward())
        sync()
        del res

    def infer_step():
        ex.forward(x, training=False)
        sync()
    return (train_step if mode == "train" else infer_step), ex, x, y


def torch_setup(c, batch: int, mode: str, threads: int):
    """(step function, torch version) for the same network in PyTorch (NCHW)."""
    import warnings
    with warnings.catch_warnings():   # a CUDA build on a machine without a GPU warns on import
        warnings.simplefilter("ignore", UserWarning)
        import torch

    from .bench_torch import build, make_step
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(c.graph)
    from ..core.graph import nodes
    h, w, ch = next(n for n in nodes(c.graph) if n.op == "input").out_shape
    x = torch.randn(batch, ch, h, w)
    y = torch.randint(0, classes(c.graph), label_shape(c.graph, batch))
    return make_step(model, x, y, mode), torch.__version__


def per_layer(ex, x, y, mode: str, repeats: int = 3) -> list[dict]:
    """Median forward/backward ms of each plan step over ``repeats`` untimed-elsewhere runs.

    Wraps each step's chosen kernels with timers for these runs only, so the whole-step
    timings are not slowed by the instrumentation.
    """
    plan = getattr(ex, "plan", None) or []
    if not all(hasattr(st, "forward") and hasattr(st, "backward") for st in plan):
        return []  # an executor whose steps do not expose their kernels: no per-layer times
    times = {i: {"fwd": [], "bwd": []} for i in range(len(ex.plan))}
    saved = [(st.forward, st.backward) for st in ex.plan]

    def timed(fn, bucket):
        def call(*a):
            t0 = time.perf_counter()
            r = fn(*a)
            bucket.append(time.perf_counter() - t0)
            return r
        return call
    try:
        for i, st in enumerate(ex.plan):
            st.forward = timed(st.forward, times[i]["fwd"])
            st.backward = timed(st.backward, times[i]["bwd"])
        for _ in range(repeats):
            if mode == "train":
                ex.forward(x, y, training=True)
                ex.backward()
            else:
                ex.forward(x, training=False)
    finally:
        for st, (f, b) in zip(ex.plan, saved):
            st.forward, st.backward = f, b
    rows = []
    for i, st in enumerate(ex.plan):
        t = times[i]
        if not t["fwd"]:
            continue
        act = (getattr(st.node, "meta", None) or {}).get("act")  # a fused activation
        op = st.node.op + (f"+{act}" if act else "")
        meta = getattr(st, "meta", None) or {}
        if meta.get(RESIDUAL):     # the residual add (+ ReLU) it took over
            op += "+add" + ("+relu" if meta[RESIDUAL]["relu"] else "")
        elif meta.get(ALIAS):
            op += " (fused)"
        rows.append({"layer": st.node.name, "op": op,
                     "provider": st.provider, "dx": (getattr(st, "meta", None) or {}).get("dx"),
                     "forward_ms": 1000 * float(np.median(t["fwd"])),
                     "backward_ms": 1000 * float(np.median(t["bwd"])) if t["bwd"] else 0.0})
    return rows


def peak_memory(step) -> int:
    """Peak bytes of one step: what NumPy allocated during it beyond what was held before it
    (tracemalloc), plus the persistent workspace the step uses, held across steps on purpose
    (netdsl/core/workspace.py: its Scratch region, the part of oneDNN's shared scratchpad its
    primitives need). Weights, optimizer state, the input and regions other models hold are
    not counted, so the answer does not depend on what ran before in the process."""
    import gc

    from ..core.workspace import held_bytes_used, open_window
    step()  # caches, primitives and workspaces exist before measuring
    gc.collect()   # a dropped model caught in a reference cycle: gone before measuring
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        open_window()   # only the held regions this step uses count (not an earlier model's)
        step()
        return tracemalloc.get_traced_memory()[1] - base + held_bytes_used()
    finally:
        tracemalloc.stop()


def minor_faults(step, count: int = 3) -> float:
    """Median minor page faults of one steady-state step (getrusage's ru_minflt): each is a
    fresh page the allocator got from the OS and the kernel zeroed, the cost of temporaries
    allocated anew every step. None where getrusage is unavailable (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    faults = []
    for _ in range(count):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return float(np.median(faults))


def spread(values) -> dict:
    """Median, min and max of the per-round values, as the JSON reports them."""
    return {"median": float(np.median(values)), "min": float(min(values)),
            "max": float(max(values))}


def run(args) -> dict:
    """Everything `netdsl bench` measures, as one dict (what --format json prints)."""
    from ..runtime import kernels as K
    from ..core.graph import nodes
    xp = np
    if args.device == "gpu":
        from ..core.backend import get_xp
        xp = get_xp("gpu")
    K.set_threads(args.threads)
    c = compile_bench_args(args)
    batch = args.batch
    from ..runtime.memory_estimate import check_allocatable
    check_allocatable(c.graph, batch=batch, what=f"benchmarking {c.graph.graph['name']} at "
                                                 f"batch {batch}")
    step, ex, x, y = netdsl_setup(c, batch, args.mode, args.kernels, xp,
                                  getattr(args, "passes", None))
    steps = {"netdsl": step}
    compare = args.compare
    version = None
    from . import bench_peers
    peers, notes = {}, {}
    if compare not in (None, "torch"):
        try:
            steps[compare], peers[compare] = bench_peers.setup(
                compare, c, ex, x, batch, args.mode, args.threads,
                (classes(c.graph), label_shape(c.graph, batch)))
        except bench_peers.Skipped as e:
            notes[compare] = str(e)
            print(f"note: {compare} skipped: {e}", file=sys.stderr)
    if compare == "torch":
        try:
            steps["torch"], version = torch_setup(c, batch, args.mode, args.threads)
        except ImportError:
            if args.file is not None:
                raise NetdslError("--compare torch needs PyTorch, which is not installed",
                                  hint="pip install torch (only the benchmark uses it)")
            print("PyTorch is not installed: pip install torch to compare", file=sys.stderr)
    # Each turn starts with one untimed step after a short pause: what the previous turn left
    # behind (a peer's worker threads spinning after its last call: onnxruntime's, PyTorch's
    # OpenMP's, netdsl's own) would otherwise run against the first timed steps of the next
    # one. On 2 cores it cost netdsl's cs231n inference 44 → 56 ms a step with rounds of two
    # steps after onnxruntime's (and onnxruntime 44 → 48 ms after netdsl's); the same numbers
    # as one framework alone come back with it (docs/performance.md).
    peer = len(steps) > 1
    rounds = interleave(steps, args.steps, rounds=args.rounds, settle=int(peer),
                        pause=PEER_PAUSE if peer else 0.0)
    t = float(np.median(rounds["netdsl"]))
    macs = sum(n.macs for n in nodes(c.graph)) * batch
    flops = 2 * macs * (3 if args.mode == "train" else 1)  # backward ≈ 2× forward
    result = {"network": c.graph.graph["name"], "mode": args.mode, "batch": batch,
              "threads": args.threads, "steps": args.steps, "rounds": args.rounds,
              "kernels": K.resolve(args.kernels, xp, np.float32, note=False), "machine": f"{platform.machine()}, "
                                                f"{platform.processor() or 'cpu'}",
              "netdsl_ms": 1000 * t, "netdsl_img_s": batch / t,
              "netdsl_ms_rounds": [1000 * r for r in rounds["netdsl"]],
              "gflops": flops / t / 1e9, "host_isa": bench_peers.host_isa()}
    if not args.no_layers:
        result["layers"] = per_layer(ex, x, y, args.mode)
    if xp is np:
        result["netdsl_peak_mb"] = peak_memory(step) / 2**20
        result["minor_faults_per_step"] = minor_faults(step)
    try:  # the memory planner's figure for the same step, where the compiler provides one
        from ..runtime.memory import memory_table
        table = memory_table(c.graph, batch, passes=getattr(args, "passes", None),
                             kernels=args.kernels)
        result["planned_peak_mb"] = table[f"{args.mode}_peak_bytes"] / 2**20
    except ImportError:
        pass
    from ..runtime.kernels import onednn
    result["openmp_runtimes"] = onednn.openmp_runtimes()
    if args.mode == "infer" and any(st.provider == "onednn" for st in ex.plan):
        from ..runtime.layouts import choose_layouts   # the plan's layout decision, and why
        result["layouts"] = choose_layouts(ex.plan, batch)
    if version:
        tt = float(np.median(rounds["torch"]))
        ratios = [a / b for a, b in zip(rounds["torch"], rounds["netdsl"])]
        from .bench_torch import peak_memory as torch_peak
        result["torch_peak_mb"] = torch_peak(steps["torch"]) / 2**20
        result.update(torch_version=version, torch_ms=1000 * tt, torch_img_s=batch / tt,
                      torch_ms_rounds=[1000 * r for r in rounds["torch"]], ratio=tt / t,
                      ratio_rounds=spread(ratios))
    for name, peer_version in peers.items():   # ratio: netdsl's throughput / the peer's
        tp = float(np.median(rounds[name]))
        result.setdefault("peers", {})[name] = {
            "version": peer_version, "ms": 1000 * tp, "img_s": batch / tp,
            "ms_rounds": [1000 * r for r in rounds[name]], "ratio": tp / t,
            "ratio_rounds": spread([a / b for a, b in zip(rounds[name], rounds["netdsl"])])}
    if notes:
        result["skipped"] = notes
    return result


def format_report(r: dict) -> str:
    """The human-readable report: per-layer table, then whole-step numbers."""
    lines = [f"{r['network']}: {r['mode']}, batch {r['batch']}, {r['threads']} threads, "
             f"kernels {r['kernels']}"]
    if r.get("layers"):
        lines.append(f"{'layer':<28} {'op':<14} {'kernels':<7} {'fwd ms':>8} {'bwd ms':>8}")
        for row in r["layers"]:
            # dx: how a NumPy conv's backward computes d(input) (layers/conv.py dx_method)
            lines.append(f"{row['layer'][:28]:<28} {row['op']:<14} {row['provider']:<7} "
                         f"{row['forward_ms']:8.2f} {row['backward_ms']:8.2f}"
                         + (f"  dx {row['dx']}" if row.get("dx") and r["mode"] == "train"
                            else ""))
    lines.append(f"netdsl: {r['netdsl_ms']:.1f} ms/step, {r['netdsl_img_s']:.0f} images/s, "
                 f"{r['gflops']:.1f} GFLOP/s" + (f", peak {r['netdsl_peak_mb']:.1f} MB"
                                                  if "netdsl_peak_mb" in r else "")
                 + (f" (planned {r['planned_peak_mb']:.1f} MB)" if "planned_peak_mb" in r
                    else ""))
    if "torch_ms" in r:
        s = r["ratio_rounds"]
        lines.append(f"pytorch {r['torch_version']} cpu: {r['torch_ms']:.1f} ms/step, "
                     f"{r['torch_img_s']:.0f} images/s, peak {r['torch_peak_mb']:.1f} MB")
        lines.append(f"netdsl throughput / pytorch throughput = {r['ratio']:.2f} "
                     f"(rounds {s['min']:.2f}–{s['max']:.2f})")
    for name, p in r.get("peers", {}).items():
        s = p["ratio_rounds"]
        lines.append(f"{name} {p['version']}: {p['ms']:.1f} ms/step, {p['img_s']:.0f} images/s;"
                     f" netdsl / {name} = {p['ratio']:.2f} (rounds {s['min']:.2f}–{s['max']:.2f})")
    for name, why in r.get("skipped", {}).items():
        lines.append(f"{name}: skipped ({why})")
    if r.get("layouts"):
        from ..runtime.layouts import describe
        lines.append(describe(r["layouts"]))
    isa = r.get("host_isa")
    if isa:
        caps = isa.get("caps") or {}
        lines.append(f"host ISA: {isa['widest']}"
                     + "".join(f", {k}={v}" for k, v in caps.items()))
    return "\n".join(lines)


def main(args) -> int:
    """`netdsl bench` (without --ablate, which cli/run.py sends to bench_ablate.main)."""
    if args.file is None and args.compare is None:
        args.compare = "torch"  # the yardstick always compared when PyTorch is there
    if args.compare == "none":
        args.compare = None
    result = run(args)
    if args.format == "json":
        print(json.dumps(result))
    else:
        print(format_report(result))
        print(json.dumps({k: v for k, v in result.items() if k != "layers"}))
    return 0
