"""`netdsl bench FILE --ablate`: what each pass, plan decision and kernel provider is worth.

One variant is the full pipeline as `bench` runs it, a second copy of it is the control (its
ratio to the first is the noise of the measurement); every other variant switches exactly one
thing off: one pass of the mode's pipeline (netdsl/compile/passes.py), one per-layer decision of the
compiled plan (netdsl/runtime/plan.py: recomputing im2col in backward, skipping d(input) of the layers
that read only the data), or the kernel provider (numpy ↔ onednn). All variants run
interleaved in one process (bench.interleave: rounds alternate the variants, so load drift
hits all alike; a 0.2 s pause and one untimed step start every turn, so that the previous
variant's spinning thread pools and cache contents are not timed against the next), each from a graph compiled with *no*
compile-time pass, so that every pass, the graph-only ones included, does its work in the bound
model's pipeline where it can be switched off and counted.

Per variant: ms/step, time ÷ the full pipeline's per round (median, min–max), measured peak
(bench.peak_memory, measured one variant at a time: the workspace registry counts every live
model), the planner's peak for the plan that runs, and how many graph nodes the switched-off
thing changes in the full pipeline. A variant that changes nothing is not timed: it is the
full pipeline, and the report says why ("no dropout in this net").
"""
from __future__ import annotations

import gc
import json
import os

import numpy as np

from .bench import compile_bench_args, spread, interleave, netdsl_setup, peak_memory
from ..core.errors import NetdslError

NOTHING_TO_DO = {
    "eliminate_dead_nodes": "no dead branch in this net",
    "remove_identities": "no identity layer in this net",
    "remove_inference_dropout": "no dropout in this net",
    "remove_aux_heads": "no auxiliary head in this net",
    "fold_batchnorm": "no batch norm right after a conv/fc in this net",
    "fuse_activations": "no ReLU right after a conv/fc/batch norm in this net",
    "max_pool_first": "no ReLU right before a max pooling in this net",
    "recompute": "no NumPy im2col convolution here (other kernels keep no columns)",
    "data_only": "no layer reads only the data",
}
"""Why a variant has nothing to switch off, by pass or plan decision."""

PAUSE = 0.2
"""Seconds of sleep before every turn of a variant: OpenBLAS's threads spin on after a NumPy
step, and on a 2-core machine they slow whatever oneDNN step follows."""

PLAN_DECISIONS = {
    "recompute": "plan: keep im2col columns (no recompute)",
    "data_only": "plan: compute d(input) of the first layers",
}
"""The plan's per-step flags the ablation switches off, and their row labels. Training only:
neither matters without a backward pass."""


def _snapshot(g) -> dict:
    from ..core.graph import nodes
    return {rec.name: (rec.op, repr(sorted(rec.attrs.items())), repr(sorted(rec.meta.items())))
            for rec in nodes(g)}


def pass_changes(g, mode: str, passes: list[str]) -> dict:
    """{pass: {"removed": n, "rewritten": n, "added": n}}: the graph nodes each pass of the
    pipeline changes on ``g``, run in the order the executor runs them (the training pipeline,
    then for inference the inference pipeline on its result). A node is rewritten when its
    attributes or its meta (a fused activation, a folded BN) change; the consumers a removal
    rewires are not counted. Weights are placeholders (netdsl.runtime.memory), as the planner's."""
    from ..core.graph import copy_graph
    from ..runtime.memory import placeholder_params
    from ..compile.model import BoundModel
    from ..compile.passes import run_model_passes, select_passes
    model = BoundModel(copy_graph(g), placeholder_params(g))
    counts = {name: {"removed": 0, "rewritten": 0, "added": 0} for name in passes}
    for stage in ("train",) + (("infer",) if mode == "infer" else ()):
        for p in select_passes(stage, passes):
            before = _snapshot(model.graph)
            run_model_passes(model, stage, [p.name])
            after = _snapshot(model.graph)
            c = counts[p.name]
            c["removed"] += len(before.keys() - after.keys())
            c["added"] += len(after.keys() - before.keys())
            c["rewritten"] += sum(1 for n in before.keys() & after.keys() if before[n] != after[n])
    return counts


def _plan_facts(plan) -> dict:
    """What the other variants are compared with: each step's provider, by node name, and how
    many steps each plan decision applies to. (Kept instead of the plan itself: a live plan may
    hold workspace, which the next variant's measured peak would count.)"""
    return {"providers": {st.node.name: st.provider for st in plan},
            **{flag: sum(1 for st in plan if getattr(st, flag)) for flag in PLAN_DECISIONS}}


def _variants(c, mode: str, kernels: str, base: list[str], full: dict) -> list[dict]:
    """The variants to run: full, then one per pass, plan decision and other provider."""
    from ..runtime import kernels as K
    full_provider = K.resolve(kernels, np, np.float32, note=False)
    out = [{"name": "full", "kind": "full", "label": f"full pipeline ({full_provider})",
            "passes": base, "kernels": kernels, "changed": None},
           {"name": "full_again", "kind": "control", "label": "full pipeline again (noise)",
            "passes": base, "kernels": kernels, "changed": None}]
    for name, cnt in pass_changes(c.graph, mode, base).items():
        out.append({"name": name, "kind": "pass", "label": f"- {name}",
                    "passes": [n for n in base if n != name], "kernels": kernels,
                    "changed": sum(cnt.values()), **cnt})
    if mode == "train":
        for flag, label in PLAN_DECISIONS.items():
            out.append({"name": flag, "kind": "plan", "label": label, "passes": base,
                        "kernels": kernels, "off": flag,
                        "changed": full[flag]})
    for provider in ("numpy", "onednn"):
        if provider == full_provider:
            continue
        v = {"name": provider, "kind": "kernels", "label": f"kernels {provider}",
             "passes": base, "kernels": provider, "changed": None}  # counted once built
        if not K.available(provider):
            from ..runtime.kernels import onednn
            v.update(changed=0, note=f"{provider} cannot load here ({onednn.LOAD_ERROR})")
        out.append(v)
    for v in out:
        if v.get("changed") == 0 and "note" not in v:
            v["note"] = NOTHING_TO_DO[v["name"]]
    return out


def _build(c, v: dict, batch: int, mode: str):
    """(step function, executor) of one variant; plan decisions are switched off on the built
    plan, so what runs is what the planner is given."""
    step, ex, _, _ = netdsl_setup(c, batch, mode, v["kernels"], np, v["passes"])
    if v.get("off"):
        for st in ex.plan:
            setattr(st, v["off"], False)
    return step, ex


def _provider_changes(full: dict, plan) -> int:
    """Steps whose kernels come from another provider than in the full plan (by node name)."""
    return sum(1 for st in plan if full["providers"].get(st.node.name, st.provider) != st.provider)


def run_ablation(args) -> dict:
    """Everything `netdsl bench --ablate` measures, as one dict (what --format json prints)."""
    from ..runtime import kernels as K
    from ..runtime.memory import plan_memory
    from ..compile.passes import select_passes
    if args.device != "cpu":
        raise NetdslError("--ablate runs on the CPU only", hint="drop --device gpu")
    K.set_threads(args.threads)
    c = compile_bench_args(args, graph_passes=())
    mode, batch = args.mode, args.batch
    base = [p.name for p in select_passes(mode, getattr(args, "passes", None))]
    facts = _plan_facts(_build(c, {"passes": base, "kernels": args.kernels}, batch, mode)[1].plan)
    gc.collect()
    variants = _variants(c, mode, args.kernels, base, facts)
    timed = [v for v in variants if v["changed"] != 0]
    for v in timed:   # one at a time: the measured peak counts every live model's workspace
        step, ex = _build(c, v, batch, mode)
        if v["kind"] == "kernels":
            v["changed"] = _provider_changes(facts, ex.plan)
        v["peak_mb"] = peak_memory(step) / 2**20
        v["planned_peak_mb"] = plan_memory(ex.plan, batch, itemsize=4,
                                           training=mode == "train").peak / 2**20
        del step, ex
        gc.collect()
    steps = {v["name"]: _build(c, v, batch, mode)[0] for v in timed}
    rounds = interleave(steps, args.steps, rounds=args.rounds, settle=1, pause=PAUSE)
    full = rounds["full"]
    for v in timed:
        r = rounds[v["name"]]
        v.update(ms=1000 * float(np.median(r)), ms_rounds=[1000 * t for t in r],
                 ratio_rounds=spread([a / b for a, b in zip(r, full)]))
    for v in variants:
        v.pop("passes", None)
    return {"network": c.graph.graph["name"], "mode": mode, "batch": batch,
            "threads": args.threads, "steps": args.steps, "rounds": args.rounds,
            "kernels": K.resolve(args.kernels, np, np.float32, note=False),
            "load": [round(x, 2) for x in os.getloadavg()], "variants": variants}


def format_ablation(r: dict) -> str:
    """The table: one row per variant."""
    lines = [f"{r['network']}: {r['mode']}, batch {r['batch']}, {r['threads']} threads, "
             f"{r['rounds']} rounds of {max(1, r['steps'] // r['rounds'])} steps, load "
             f"{' '.join(map(str, r['load']))}",
             f"{'variant':<42} {'nodes':>5} {'ms/step':>8} {'time ÷ full (min–max)':<22} "
             f"{'peak MB':>8} {'planned':>8}"]
    for v in r["variants"]:
        changed = "" if v["changed"] is None else str(v["changed"])
        if "ms" not in v:
            lines.append(f"{v['label'][:42]:<42} {changed:>5} {'-':>8} {v.get('note', '')}")
            continue
        s = v["ratio_rounds"]
        ratio = "1" if v["kind"] == "full" else f"{s['median']:.2f} ({s['min']:.2f}–{s['max']:.2f})"
        lines.append(f"{v['label'][:42]:<42} {changed:>5} {v['ms']:8.1f} {ratio:<22} "
                     f"{v['peak_mb']:8.1f} {v['planned_peak_mb']:8.1f}")
    lines.append("nodes: graph nodes the pass removes or rewrites (plan rows: steps; kernels: "
                 "steps on another provider); time ÷ full > 1: switching it off is slower")
    return "\n".join(lines)


def main(args) -> int:
    """`netdsl bench --ablate`: print the table, or with --format json one JSON object."""
    if args.compare == "torch":
        raise NetdslError("--ablate times netdsl against itself, not against PyTorch",
                          hint="run --compare torch and --ablate separately")
    result = run_ablation(args)
    print(json.dumps(result) if args.format == "json" else format_ablation(result))
    return 0
