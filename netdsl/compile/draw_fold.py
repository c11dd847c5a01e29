"""Folding a diagram: each ``[...]*N`` repeat drawn once (``× N``), and runs of consecutive
identical block calls drawn once (``basic(64) ×2``), as :func:`fold_map` describes."""
from __future__ import annotations

from ..core.graph import nodes


def fold_map(g) -> dict[str, str]:
    """Map every node name to the node that represents it when repeats (and runs of equal
    block calls, :func:`block_runs`) are folded.

    Within one repeat (same enclosing frames and repeat id), node k of iteration i maps to node
    k of iteration 0, k being its rank in topological order among the nodes of its iteration.
    Repeats are folded outermost first, so a nested repeat folds inside the iteration that its
    outer repeat keeps. A node whose counterpart is missing or has another op stays itself.
    """
    order = nodes(g)
    rep = {n.name: n.name for n in order}
    alive = list(order)
    depth = 0
    while any(len(n.scope) > depth for n in alive):
        at_depth = [n for n in alive if len(n.scope) > depth and n.scope[depth].kind == "repeat"]
        groups: dict[tuple, dict[int, list]] = {}
        for n in at_depth:
            frame = n.scope[depth]
            key = (n.scope[:depth], frame.name)
            groups.setdefault(key, {}).setdefault(frame.index, []).append(n)
        moved = {}
        for iterations in groups.values():
            base = min(iterations)          # the first iteration present stands for all
            first = iterations[base]
            for index, members in iterations.items():
                if index == base:
                    continue
                for k, n in enumerate(members):
                    if k < len(first) and first[k].op == n.op:
                        moved[n.name] = first[k].name
        for name, target in rep.items():
            rep[name] = moved.get(target, target)
        alive = [n for n in alive if n.name not in moved]
        depth += 1
    moved = {m.name: n.name for first, others in block_runs(g).values()
             for instance in others for n, m in zip(first, instance)}
    return {name: moved.get(target, target) for name, target in rep.items()}


def _instances(g) -> dict[tuple, list]:
    """Block instances by scope (the frames down to the block's), nodes in source order."""
    out: dict[tuple, list] = {}
    for n in nodes(g):
        for d, frame in enumerate(n.scope):
            if frame.kind == "block":
                out.setdefault(n.scope[:d + 1], []).append(n)
    return out


def _signature(members) -> list:
    return [(n.op, repr(sorted(n.attrs.items(), key=lambda kv: kv[0])), n.out_shapes,
             len(n.scope)) for n in members]


def block_runs(g) -> dict[tuple, tuple[list, list[list]]]:
    """Runs of consecutive identical block calls: {scope of the run's first instance: (its
    nodes, [nodes of each following instance])}, for runs of two or more.

    Two instances are identical when they call the same block with the same text
    (``basic(64)``) and have the same ops, arguments and shapes in the same order; the second
    follows the first when every input it takes from outside itself is the first's output
    (its last node). Instances are compared among siblings (same enclosing frames)."""
    instances = _instances(g)
    siblings: dict[tuple, list] = {}
    for scope in instances:
        siblings.setdefault(scope[:-1], []).append(scope)
    rank = {n.name: i for i, n in enumerate(nodes(g))}
    runs = {}
    for scopes in siblings.values():
        scopes.sort(key=lambda sc: rank[instances[sc][0].name])
        current = None
        for prev, scope in zip(scopes, scopes[1:]):
            a, b = instances[prev], instances[scope]
            if _follows(a, b, prev[-1], scope[-1]):
                if current is None:
                    current = prev
                    runs[current] = (a, [])
                runs[current][1].append(b)
            else:
                current = None
    return runs


def _follows(a: list, b: list, fa, fb) -> bool:
    if not fa.call or fa.call != fb.call or fa.block != fb.block or len(a) != len(b):
        return False
    if _signature(a) != _signature(b):
        return False
    inside = {n.name for n in b}
    last = a[-1].name
    return all(p == last for n in b for p, _ in n.inputs if p not in inside)
