"""A compiled graph's fingerprint, stored in checkpoints so that resume can refuse another net.

Why more than parameter shapes: swapping RELU for TANH, or a different ``init``, changes no
parameter shape, yet resuming such a run silently trains another network. The fingerprint is a
readable per-node listing (name, op, attributes as a .net file writes them, input wiring) plus
the bound ``--set`` program parameters, and a SHA-256 over all of it. :func:`diff_fingerprints`
explains a mismatch line by line, e.g. ``conv3: filters 64 → 32`` or ``relu2 → tanh1``.
"""
from __future__ import annotations

import difflib
import hashlib
import json

from ..core.graph import nodes

_MAX_DIFF_LINES = 20


def _written(value) -> str:
    """An attribute value the way a .net file writes it: 3x3, true, same, 0.5."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return "x".join(_written(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value).lower() if isinstance(value, str) else str(value)


def graph_fingerprint(g) -> dict:
    """``{"hash": sha256 hex, "nodes": [{name, op, attrs, inputs}], "params": {name: value}}``,
    nodes in execution order; every value is a string or list, so it round-trips through JSON."""
    listing = [{"name": rec.name, "op": rec.op,
                "attrs": {k: _written(v) for k, v in sorted(rec.attrs.items())},
                "inputs": [f"{src}:{port}" if port else src for src, port in rec.inputs]}
               for rec in nodes(g)]
    params = {str(k): _written(v) for k, v in sorted(g.graph.get("params", {}).items())}
    text = json.dumps({"nodes": listing, "params": params}, sort_keys=True)
    return {"hash": hashlib.sha256(text.encode()).hexdigest(), "nodes": listing,
            "params": params}


def well_formed(fp) -> bool:
    """True when ``fp`` (read back from a checkpoint) has the structure graph_fingerprint
    writes, so that diffing it cannot fail."""
    def texts(values):
        return all(isinstance(v, str) for v in values)
    return isinstance(fp, dict) and isinstance(fp.get("hash"), str) and \
        isinstance(fp.get("params"), dict) and texts(fp["params"].values()) and \
        isinstance(fp.get("nodes"), list) and all(
            isinstance(n, dict) and isinstance(n.get("name"), str) and
            isinstance(n.get("op"), str) and isinstance(n.get("attrs"), dict) and
            texts(n["attrs"].values()) and isinstance(n.get("inputs"), list) and
            texts(n["inputs"]) for n in fp["nodes"])


def _attr_changes(old: dict, new: dict) -> list[str]:
    changes = []
    for key in sorted(set(old["attrs"]) | set(new["attrs"])):
        a, b = old["attrs"].get(key, "(none)"), new["attrs"].get(key, "(none)")
        if a != b:
            changes.append(f"{key} {a} → {b}")
    return changes


def _blocks(a: list, b: list, key):
    matcher = difflib.SequenceMatcher(None, [key(n) for n in a], [key(n) for n in b],
                                      autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        yield tag, a[i1:i2], b[j1:j2]


# difflib is quadratic on repetitive sequences (a chain of FC/RELU pairs): past this many
# node pairs in the part that differs, a linear resynchronising scan aligns them instead.
_MAX_MATCH_WORK = 4_000_000
_RESYNC_WINDOW = 64


def _key(n: dict):
    return n["op"], tuple(sorted(n["attrs"].items()))   # attribute values are strings


def _resync(a: list, b: list, ka: list, kb: list):
    """Greedy alignment in linear time: equal keys advance both sides; at a difference, the
    smallest skip (within a window) on either or both sides that makes the keys meet again."""
    i = j = 0
    while i < len(a) and j < len(b):
        if ka[i] == kb[j]:
            yield "equal", a[i:i + 1], b[j:j + 1]
            i, j = i + 1, j + 1
            continue
        skip = next(((di, dj) for d in range(1, _RESYNC_WINDOW)
                     for di, dj in ((d, d), (d, 0), (0, d))
                     if i + di < len(a) and j + dj < len(b) and ka[i + di] == kb[j + dj]),
                    (len(a) - i, len(b) - j))
        yield "replace", a[i:i + skip[0]], b[j:j + skip[1]]
        i, j = i + skip[0], j + skip[1]
    yield "replace", a[i:], b[j:]


def _align(a: list, b: list):
    """(tag, old nodes, new nodes) blocks: identical nodes first, so that an unchanged layer is
    never paired with a changed one; then, inside what differs, nodes of the same op ("equal":
    compare their attributes) and the rest. The common head and tail are taken off first, so
    one change in a 60,000-layer chain costs a linear scan."""
    ka, kb = [_key(n) for n in a], [_key(n) for n in b]
    head = 0
    while head < min(len(a), len(b)) and ka[head] == kb[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and ka[-1 - tail] == kb[-1 - tail]:
        tail += 1
    yield "equal", a[:head], b[:head]
    mid = slice(head, len(a) - tail), slice(head, len(b) - tail)
    if (mid[0].stop - head) * (mid[1].stop - head) <= _MAX_MATCH_WORK:
        blocks = _blocks(a[mid[0]], b[mid[1]], _key)
    else:
        blocks = _resync(a[mid[0]], b[mid[1]], ka[mid[0]], kb[mid[1]])
    for tag, olds, news in blocks:
        if tag == "equal":
            yield tag, olds, news
        else:
            yield from _blocks(olds, news, lambda n: n["op"])
    yield "equal", a[len(a) - tail:], b[len(b) - tail:]


def diff_fingerprints(old: dict, new: dict) -> list[str]:
    """What changed from ``old`` to ``new``, one readable line per difference.

    Nodes are aligned by sequence, not name (names are per-op counters, so one inserted CONV
    renames every later conv); aligned nodes are compared by attributes and wiring, with the
    old names translated through the alignment.
    """
    lines = []
    for key in sorted(set(old["params"]) | set(new["params"])):
        a, b = old["params"].get(key, "(unset)"), new["params"].get(key, "(unset)")
        if a != b:
            lines.append(f"--set {key}: {a} → {b}")
    renamed, pairs = {}, []
    for tag, olds, news in _align(old["nodes"], new["nodes"]):
        if tag == "equal":
            renamed.update((a["name"], b["name"]) for a, b in zip(olds, news))
            pairs += zip(olds, news)
            continue
        for a, b in zip(olds, news):          # a replaced block: pair them up in order
            renamed[a["name"]] = b["name"]
            lines.append(f"{a['name']} → {b['name']} ({a['op']} → {b['op']})")
        lines += [f"removed {a['name']} ({a['op']})" for a in olds[len(news):]]
        lines += [f"added {b['name']} ({b['op']})" for b in news[len(olds):]]
    for a, b in pairs:
        changes = _attr_changes(a, b) if a["attrs"] != b["attrs"] else []
        # "conv2:1" is port 1 of conv2: rename the producer, keep the port.
        wired = ["".join((renamed.get(name, name), sep, port))
                 for name, sep, port in (src.partition(":") for src in a["inputs"])]
        if wired != b["inputs"]:
            changes.append(f"inputs {', '.join(a['inputs'])} → {', '.join(b['inputs'])}")
        label = a["name"] if a["name"] == b["name"] else f"{a['name']} (now {b['name']})"
        lines += [f"{label}: {change}" for change in changes]
    if not lines and old.get("hash") != new.get("hash"):
        lines.append("the graphs differ (fingerprint hashes differ)")
    if len(lines) > _MAX_DIFF_LINES:
        lines = lines[:_MAX_DIFF_LINES] + [f"… and {len(lines) - _MAX_DIFF_LINES} more"]
    return lines
