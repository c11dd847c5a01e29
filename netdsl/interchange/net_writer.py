"""Write a list of layers (a DAG) as a readable `.net` program, as ``netdsl import`` needs.

The DAG is cut into chains: a layer continues its producer's chain when it has one input and
that producer has no other reader; otherwise it starts a statement, ``@producer -> ...`` or a
join ``concat { @a | @b } -> ...``. The statement that ends in the network's output is written
first, because the first statement of a file is the one that gets the implicit loss;
references may point forward, so the rest follow in graph order. Layers with weights, and
layers another statement refers to, get labels (so the checkpoint can name them). A pseudo-layer
``port`` (args ``{"port": p}``, reading a layer with several outputs such as SPLIT) stands for
that layer's output p: it is no element, and is referred to as ``@label.p``.
"""
from __future__ import annotations

import re

from ..layers import all_names

RESERVED = {"net", "param", "block", "train"}


def _number(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.7g}"
    return str(v)


def _pair(v) -> str:
    h, w = v
    return str(h) if h == w else f"{h}x{w}"


def layer_text(op: str, args: dict) -> str:
    """The element for one layer, writing only what differs from the layer's default."""
    if op == "input":
        return "INPUT(" + "x".join(map(str, args["shape"])) + ")"
    if op == "conv":
        parts = [str(args["filters"]), _pair(args["kernel"])]
        if tuple(args["stride"]) != (1, 1):
            parts.append(f"stride={_pair(args['stride'])}")
        parts.append(f"pad={_pair(args['pad'])}")
        if tuple(args["dilation"]) != (1, 1):
            parts.append(f"dilation={_pair(args['dilation'])}")
        if args["groups"] != 1:
            parts.append(f"groups={args['groups']}")
        if not args["bias"]:
            parts.append("bias=false")
        return f"CONV({', '.join(parts)})"
    if op in ("maxpool", "avgpool"):
        parts = [_pair(args["size"]), f"stride={_pair(args['stride'])}"]
        if tuple(args["pad"]) != (0, 0):
            parts.append(f"pad={_pair(args['pad'])}")
        if args["ceil"]:
            parts.append("ceil=true")
        if not args.get("count_include_pad", True):
            parts.append("count_include_pad=false")
        return f"{op.upper()}({', '.join(parts)})"
    if op == "fc":
        return f"FC({args['units']}" + (")" if args["bias"] else ", bias=false)")
    if op == "batchnorm":
        parts = [f"{k}={_number(args[k])}" for k, default in (("eps", 1e-5), ("momentum", 0.1))
                 if abs(args[k] - default) > 1e-6 * default]
        return "BN" + (f"({', '.join(parts)})" if parts else "")
    if op == "dropout":
        return f"DROPOUT({_number(args['rate'])})"
    if not args:
        return op.upper()
    # Any other layer: every argument by keyword (pairs as HxW).
    return f"{op.upper()}(" + ", ".join(
        f"{k}={_pair(v) if isinstance(v, tuple) else _number(v)}" for k, v in args.items()) + ")"


def _labels(layers, consumers, needs_label) -> dict:
    """Unique labels from the ONNX node names: identifiers that cannot collide with the
    automatic names ({layer}{k}) or keywords."""
    taken, labels = set(), {}
    auto = re.compile(r"^(%s)\d+$" % "|".join(map(re.escape, all_names())), re.IGNORECASE)
    for i, layer in enumerate(layers):
        if not needs_label(i):
            continue
        base = re.sub(r"[^A-Za-z0-9_]+", "_", layer.hint or "").strip("_") or layer.op
        if base[0].isdigit():
            base = "n" + base
        if auto.match(base) or base.lower() in RESERVED or base.lower() in all_names():
            base += "_"
        label, k = base, 2
        while label in taken:
            label, k = f"{base}_{k}", k + 1
        taken.add(label)
        labels[i] = label
    return labels


def _inline_joins(layers, order, consumers) -> dict:
    """Joins that can be written inline after their fork, ``-> concat { a | b }``: every input
    is a plain branch (single-input, single-reader layers) from one common fork layer, or the
    fork itself, and the fork feeds nothing else. Returns {join: (fork, [branch layers])}."""
    out = {}
    for j in order:
        ins = layers[j].inputs
        if len(ins) < 2:
            continue
        branches, forks = [], set()
        for i in ins:
            path = []
            while len(layers[i].inputs) == 1 and len(consumers[i]) == 1 and \
                    layers[i].op != "port":
                path.append(i)
                i = layers[i].inputs[0]
            forks.add(i)
            branches.append(path[::-1])
        if len(forks) != 1 or len(branches) != len(ins):
            continue
        fork = forks.pop()
        if layers[fork].op == "port":   # a branch from a second output is a reference
            continue
        starts = {b[0] for b in branches if b}
        readers = set(consumers[fork]) - starts - {j}
        if not readers and all(b or fork in ins for b in branches):
            out[j] = (fork, branches)
    return out


def write_net(layers, output: int, name: str, header: str = "") -> tuple[str, dict, list]:
    """(.net text, {layer index: label}, spans) for ``layers`` whose prediction is layer
    ``output``; spans are (start, end, layer index), the characters each layer's element
    takes in the text (nested for inline joins), so that an error found in the written text
    can be told in terms of the layer it came from. Layers the output does not depend on are
    left out."""
    live, stack = set(), [output]
    while stack:
        i = stack.pop()
        if i not in live:
            live.add(i)
            stack.extend(layers[i].inputs)
    order = [i for i in range(len(layers)) if i in live]
    consumers = {i: [] for i in order}
    for i in order:
        for j in layers[i].inputs:
            consumers[j].append(i)
    inline = _inline_joins(layers, order, consumers)
    absorbed = {i for _, branches in inline.values() for b in branches for i in b}
    # Seen from the chains, an inline join reads its fork and is the fork's only reader.
    inputs = {i: ([inline[i][0]] if i in inline else layers[i].inputs) for i in order}
    readers = {i: [] for i in order}
    for i in order:
        if i not in absorbed:
            for j in inputs[i]:
                readers[j].append(i)

    def continues(i):   # joins its producer's chain (a port is no element: never)
        return len(inputs[i]) == 1 and len(readers[inputs[i][0]]) == 1 and \
            layers[inputs[i][0]].op != "port"

    def owner(j):   # the layer whose label a reference to j uses
        return layers[j].inputs[0] if layers[j].op == "port" else j

    def ref(j):     # @label, or @label.p for output p of a layer with several
        return f"@{labels[owner(j)]}" + (f".{layers[j].args['port']}"
                                         if layers[j].op == "port" else "")

    chains, chain_of = [], {}
    for i in order:
        if i in absorbed or layers[i].op == "port":
            continue
        if continues(i):
            chain_of[i] = chain_of[inputs[i][0]]
            chains[chain_of[i]].append(i)
        else:
            chain_of[i] = len(chains)
            chains.append([i])
    referenced = {owner(j) for c in chains for j in inputs[c[0]]} | {
        f for j, (f, branches) in inline.items() if not all(branches)}
    labels = _labels(layers, consumers,
                     lambda i: i in referenced or bool(layers[i].params))

    def element(i):   # marked: \x01index\x02 text \x03 (removed by _spans)
        return f"\x01{i}\x02{bare(i)}\x03"

    def bare(i):
        if i in inline:
            fork, branches = inline[i]
            texts = [_wrap([element(k) for k in b]) if b else f"@{labels[fork]}"
                     for b in branches]
            body = "\n       " + "\n     | ".join(texts) + "\n     }"
            return _labelled(f"{layers[i].op} {{{body}", labels.get(i))
        if len(layers[i].inputs) > 1:
            refs = " | ".join(ref(j) for j in layers[i].inputs)
            return _labelled(f"{layers[i].op} {{ {refs} }}", labels.get(i))
        return _labelled(layer_text(layers[i].op, layers[i].args), labels.get(i))

    statements = []
    main = chain_of[output]
    for index in [main] + [k for k in range(len(chains)) if k != main]:
        chain = chains[index]
        first = chain[0]
        elements = [element(i) for i in chain]
        if len(inputs[first]) == 1:   # starts from a labelled layer's output
            elements.insert(0, ref(inputs[first][0]))
        one_line = " -> ".join(elements)
        statements.append(one_line if _width(one_line) <= 60 and "\n" not in one_line else
                          elements[0] + "".join(f"\n  -> {e}" for e in elements[1:]))
    text = (header + f"net {name}\n\n" + _round_param() + "\n\n".join(statements) + "\n")
    return _finish(text, labels)


def _width(text: str) -> int:
    """Characters shown: the length without the layer markers."""
    return len(_MARK.sub("", text))


_MARK = re.compile("\x01\\d+\x02|\x03")


def _finish(text: str, labels: dict) -> tuple[str, dict, list]:
    """The text without markers, the labels, and each marked layer's (start, end, index)."""
    out, spans, stack, pos, at = [], [], [], 0, 0
    for m in _MARK.finditer(text):
        out.append(text[pos:m.start()])
        at += m.start() - pos
        pos = m.end()
        if m.group() == "\x03":
            start, i = stack.pop()
            spans.append((start, at, i))
        else:
            stack.append((at, int(m.group()[1:-1])))
    out.append(text[pos:])
    return "".join(out), labels, spans


def _round_param() -> str:
    """``param ROUND = floor`` where windowed layers take a ``round`` argument (whose default
    refuses sizes that do not divide): ONNX, like PyTorch, rounds window counts down."""
    from ..layers import lookup
    if any(a.name == "round" for a in lookup("conv").args):
        return "param ROUND = floor      # ONNX rounds window counts down\n\n"
    return ""


def _wrap(elements: list[str], width: int = 88) -> str:
    """A branch's elements joined by ' -> ', continued on indented lines past ``width``."""
    lines = [elements[0]]
    for e in elements[1:]:
        if _width(lines[-1]) + _width(e) + 4 > width - 7:
            lines.append(f"-> {e}")
        else:
            lines[-1] += f" -> {e}"
    return "\n         ".join(lines)


def _labelled(element: str, label: str | None) -> str:
    return f"{label}: {element}" if label else element
