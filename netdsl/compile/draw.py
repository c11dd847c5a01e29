"""The network diagram: a graphviz Digraph built from a compiled graph, and rendering to a file.

Each layer is a node labelled with its name (small), its op and key arguments (``CONV 64 3×3
/2``) and its output shape. Edges follow ``Node.inputs`` one for one, so ``concat{@a | @a}``
draws two edges. Block instances and repeat iterations become nested ``cluster_`` subgraphs.

``fold=True`` draws each repeat once: see :func:`fold_map` for the matching rule.
"""
from __future__ import annotations

import html
import os
import shutil
import subprocess

import graphviz

from .. import layers
from ..core.errors import NetdslError
from ..core.files import atomic_write
from ..core.graph import nodes
from .draw_fold import block_runs, fold_map  # noqa: F401  (fold_map: draw's public name)
from .summary import count_with_units, summarize

RENDERED_FORMATS = ("svg", "png", "pdf")
# graphviz's layout is superlinear; a huge unfolded net can keep `dot` busy for hours. Past
# this many seconds the run is stopped and the user is told to fold or write the .dot source.
RENDER_TIMEOUT_S = 120.0


def render_timeout() -> float:
    """Seconds `dot` may run: NETDSL_DOT_TIMEOUT when it is a positive number, else the default."""
    try:
        value = float(os.environ.get("NETDSL_DOT_TIMEOUT", ""))
    except ValueError:
        return RENDER_TIMEOUT_S
    return value if 0 < value < float("inf") else RENDER_TIMEOUT_S
SOURCE_FORMATS = ("dot", "gv")

_NODE_DEFAULTS = {"shape": "box", "style": "rounded,filled", "fillcolor": "#f5f5f5",
                  "fontname": "Helvetica", "fontsize": "11"}
# Shapes that make the role of a node readable at a glance; they win over a spec's own shape.
_FORCED_SHAPE = {"concat": {"shape": "invtrapezium"}, "add": {"shape": "circle"}}
_LOSS_SHAPE = {"shape": "ellipse", "style": "filled", "fillcolor": "#fde2e2"}


def _spec(op: str):
    # Looked up through the package at call time so that the registry can be swapped in tests.
    return layers.get(op)


# ---------------------------------------------------------------------------------------------
# Labels

def _arg_text(name: str, value) -> str | None:
    """How one label argument reads in a diagram, or None when it is not worth showing.

    Values stand bare ("64", "3×3", "max") since the spec chose them as the telling ones; the
    few whose number means nothing without its name get a marker, and are hidden at 1.
    """
    if value is None or value is False or value is layers.AUTO or value == "":
        return None
    if value is True:
        return name
    if isinstance(value, str):
        return value
    pair = value if isinstance(value, tuple) else None
    text = "×".join(str(v) for v in pair) if pair else (f"{value:g}" if isinstance(value, float)
                                                         else str(value))
    trivial = all(v == 1 for v in pair) if pair else value == 1
    square = pair is not None and len(set(pair)) == 1
    if "stride" in name:
        return None if trivial else f"/{pair[0] if square else text}"
    if "dilation" in name:
        return None if trivial else f"dil {pair[0] if square else text}"
    if name == "groups":
        return None if trivial else f"g{text}"
    if "pad" in name:
        return f"pad {pair[0] if square else text}"
    return text


def op_label(node, spec, *, skip: tuple = ()) -> str:
    """The op and its key arguments, e.g. 'CONV 64 3×3 /2' (arguments in ``skip`` left out)."""
    parts = [node.op.upper()]
    for name in spec.label:
        if name in node.attrs and name not in skip:
            text = _arg_text(name, node.attrs[name])
            if text:
                parts.append(text)
    return " ".join(parts)


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _small(text: str) -> str:
    return f'<font point-size="8" color="#555555">{_esc(text)}</font>'


def _node_label(node, spec) -> str:
    """An HTML-like label: name (small), op line, output shape(s); one cell per output port."""
    if spec.role == "loss":
        weight = float(node.attrs.get("weight", 1.0))
        # The weight gets its own line, so it is not repeated among the label's arguments.
        text = op_label(node, spec, skip=("weight",))
        return f"<{_small(node.name)}<br/>{_esc(text)}<br/>weight {weight:g}>"
    shapes = [layers.shape_str(s) for s in (node.out_shapes or (None,))]
    if len(shapes) > 1:
        # Several outputs: a port cell per output so that edges show which one they read.
        # Cells read by the spec's output names (out, switches), by index without them.
        names = list(getattr(spec, "output_names", ())) or list(range(len(shapes)))
        cells = "".join(f'<td port="o{i}">{_esc(names[i])}: {_esc(s)}</td>'
                        for i, s in enumerate(shapes))
        span = len(shapes)
        return (f'<<table border="0" cellborder="1" cellspacing="0">'
                f'<tr><td colspan="{span}" border="0">{_small(node.name)}</td></tr>'
                f'<tr><td colspan="{span}" border="0">{_esc(op_label(node, spec))}</td></tr>'
                f"<tr>{cells}</tr></table>>")
    # INPUT's shape is its argument and its output: written once, on the shape line
    skip = ("shape",) if spec.role == "source" else ()
    return (f"<{_small(node.name)}<br/>{_esc(op_label(node, spec, skip=skip))}<br/>"
            f"{_esc(shapes[0])}>")


def _node_attrs(node, spec) -> dict:
    attrs = {"label": _node_label(node, spec),
             "tooltip": f"{node.name}" + (f" ({node.loc})" if node.loc else "")}
    attrs.update({k: str(v) for k, v in spec.style.items()})
    if spec.role == "loss":
        attrs.update(_LOSS_SHAPE)
    elif spec.role == "join" and node.op in _FORCED_SHAPE:
        attrs.update(_FORCED_SHAPE[node.op])
    elif spec.role == "join":
        attrs.setdefault("shape", "invtrapezium")
    if node.op == "add" and spec.role == "join":
        # A small "+" circle; the name and shape go beside it so the circle stays small.
        shape = layers.shape_str(node.out_shape)
        attrs.update(label="+", xlabel=f"<{_small(node.name)}<br/>{_small(shape)}>",
                     width="0.35", fixedsize="true", fontsize="16")
    if len(node.out_shapes or ()) > 1 and spec.role != "loss":
        attrs["shape"] = "plain"  # the HTML table draws its own cells
    return attrs


# ---------------------------------------------------------------------------------------------
# The Digraph

def _cluster_label(frame, folded: bool, run: int = 1) -> str:
    if frame.kind == "block" and run > 1:   # consecutive equal calls folded: basic(64) ×2
        return f"{frame.call or frame.block} ×{run}"
    if frame.kind == "block":
        return f"{frame.name} ({frame.block})" if frame.block else frame.name
    if folded:
        return f"× {frame.count}"
    return f"repeat {frame.index}/{frame.count}"   # iterations are numbered from 1


RANKDIRS = ("TB", "LR")


def to_dot(g, *, fold: bool = False, rankdir: str = "TB") -> graphviz.Digraph:
    """The diagram of ``g`` as a graphviz Digraph, titled with the totals: top to bottom
    (``rankdir="TB"``) or left to right ("LR"); branches in the order the file writes them
    (left to right, or top to bottom for LR)."""
    order = nodes(g)
    rep = fold_map(g) if fold else {n.name: n.name for n in order}
    runs = {scope: 1 + len(others) for scope, (_, others) in block_runs(g).items()} \
        if fold else {}
    shown = [n for n in order if rep[n.name] == n.name]
    ids = {n.name: f"n{i}" for i, n in enumerate(order)}   # safe DOT ids; names may hold ':'
    rank = {n.name: i for i, n in enumerate(order)}

    totals = summarize(g)["totals"]
    title = (f"<<b>{_esc(g.graph.get('name', 'net'))}</b><br/>"
             f"params {_esc(count_with_units(totals['params']))} · "
             f"MACs {_esc(count_with_units(totals['macs'], 2))}>")
    dot = graphviz.Digraph(name=str(g.graph.get("name", "net")))
    # ordering=out: a node's successors in the order of its out-edges, which are added in
    # source order below, so the file's first branch is drawn first (left, or top for LR)
    dot.attr("graph", rankdir=rankdir, ordering="out", label=title, labelloc="t", fontname="Helvetica",
             fontsize="14")
    dot.attr("node", **_NODE_DEFAULTS)
    dot.attr("edge", color="#444444", arrowsize="0.7")

    # Clusters: a tree keyed by scope prefix; each node sits in the cluster of its whole scope.
    members: dict[tuple, list] = {}
    children: dict[tuple, list] = {}
    for n in shown:
        members.setdefault(n.scope, []).append(n)
        for d in range(len(n.scope)):
            parent, child = n.scope[:d], n.scope[:d + 1]
            if child not in children.setdefault(parent, []):
                children[parent].append(child)

    counter = iter(range(1_000_000))
    siblings = _branch_heads(g, shown)

    def fill(target, prefix):
        for n in members.get(prefix, []):
            target.node(ids[n.name], **_node_attrs(n, _spec(n.op)))
        for heads in siblings.get(prefix, []):
            # graphviz orders nodes inside clusters as it likes (Inception's branches came out
            # right to left); invisible edges on one rank keep the file's order
            row = graphviz.Digraph()
            row.attr("graph", rank="same")
            # LR turns the rank's left-to-right order into bottom-to-top: reverse it there
            chain = heads[::-1] if rankdir == "LR" else heads
            for a, b in zip(chain, chain[1:]):
                row.edge(ids[a], ids[b], style="invis")
            target.subgraph(row)
        for child in children.get(prefix, []):
            frame = child[-1]
            sub = graphviz.Digraph(name=f"cluster_{next(counter)}")
            sub.attr("graph", label=_cluster_label(frame, fold and frame.kind == "repeat",
                                                   runs.get(child, 1)),
                     style="rounded,dashed" if frame.kind == "repeat" else "rounded",
                     color="#888888", fontname="Helvetica", fontsize="10", labeljust="l")
            fill(sub, child)
            target.subgraph(sub)

    fill(dot, ())

    # Edges: the graph's own edges keep their multiplicity; those made by folding are drawn once.
    seen = set()
    remapped = []
    for n in order:
        for producer, port in n.inputs:
            tail, head = rep[producer], rep[n.name]
            edge = (tail, port, head)
            if tail == producer and head == n.name:
                seen.add(edge)
                _add_edge(dot, g, ids, tail, port, head, backward=False)
            else:
                remapped.append(edge)
    for tail, port, head in remapped:
        if tail != head and (tail, port, head) not in seen:
            seen.add((tail, port, head))
            # An edge from a later iteration into an earlier one's node loops back upward.
            _add_edge(dot, g, ids, tail, port, head, backward=rank[tail] >= rank[head])
    return dot


def _branch_heads(g, shown) -> dict[tuple, list[list[str]]]:
    """{scope: [[first nodes of the branches that leave one node, in source order]]} for
    nodes read by two or more layers of one scope, none a join (a residual's add is not a
    branch beside its body)."""
    visible = {n.name for n in shown}
    readers: dict[str, list] = {}
    for n in shown:
        for producer, _ in n.inputs:
            if n.name not in readers.setdefault(producer, []):
                readers[producer].append(n.name)
    out: dict[tuple, list] = {}
    for names in readers.values():
        heads = [g.nodes[x]["node"] for x in names if x in visible]
        if len(heads) > 1 and len({h.scope for h in heads}) == 1 \
                and all(_spec(h.op).role == "layer" for h in heads):
            out.setdefault(heads[0].scope, []).append([h.name for h in heads])
    return out


def _add_edge(dot, g, ids, tail, port, head, *, backward: bool) -> None:
    attrs = {}
    producer = g.nodes[tail]["node"]
    if len(producer.out_shapes or ()) > 1:
        attrs["tailport"] = f"o{port}"
    if backward:
        attrs.update(style="dashed", constraint="false", color="#999999")
    dot.edge(ids[tail], ids[head], **attrs)


# ---------------------------------------------------------------------------------------------
# Writing files

def _write(path: str, data, what: str) -> None:
    """``data`` (text or bytes) to ``path``, atomically (netdsl/core/files.py)."""
    raw = data if isinstance(data, bytes) else data.encode("utf-8")
    atomic_write(path, lambda f: f.write(raw), what)


def _render(program: str, source: str, fmt: str, out_path: str) -> bytes | None:
    """graphviz's ``dot -T<fmt>`` output for ``source``, within :func:`render_timeout` seconds;
    None when the program cannot be started (the caller then writes the source instead)."""
    timeout = render_timeout()
    try:
        proc = subprocess.run([program, f"-T{fmt}"], input=source.encode("utf-8"),
                              capture_output=True, timeout=timeout)
    except (FileNotFoundError, PermissionError):
        return None
    except subprocess.TimeoutExpired:
        stem = os.path.splitext(out_path)[0]
        raise NetdslError(f"graphviz took longer than {timeout:g} s to render "
                          f"'{out_path}' and was stopped",
                          hint=f"draw with --fold, or write the source (-o {stem}.dot) and run "
                               f"dot yourself; NETDSL_DOT_TIMEOUT=SECONDS allows longer") from None
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip() or None
        raise NetdslError(f"graphviz failed to render '{out_path}'", detail=detail)
    return proc.stdout


def draw(g, out_path: str, *, fold: bool = False, rankdir: str = "TB") -> str:
    """Draw ``g`` to ``out_path``; the format follows the extension. Returns a message for the user.

    ``.dot``/``.gv`` write the graphviz source; ``.svg``/``.png``/``.pdf`` run graphviz's
    ``dot`` program. Without that program the source is written next to the requested file
    (same stem, ``.dot``) and the message says how to render it.
    """
    stem, ext = os.path.splitext(out_path)
    fmt = ext[1:].lower()
    supported = ", ".join("." + f for f in (*SOURCE_FORMATS, *RENDERED_FORMATS))
    if fmt not in SOURCE_FORMATS + RENDERED_FORMATS:
        raise NetdslError(f"cannot draw to '{out_path}': "
                          + (f"unknown format '{ext}'" if ext else "the file name has no extension"),
                          hint=f"use one of {supported}")
    dot = to_dot(g, fold=fold, rankdir=rankdir)
    if fmt in SOURCE_FORMATS:
        _write(out_path, dot.source, "diagram")
        return f"wrote {out_path} (graphviz source)"
    program = shutil.which("dot")
    rendered = _render(program, dot.source, fmt, out_path) if program else None
    if rendered is None:
        dot_path = stem + ".dot"
        _write(dot_path, dot.source, "diagram")
        return (f"graphviz's 'dot' program was not found, so the diagram source was written to "
                f"{dot_path}; install graphviz (apt-get install graphviz) or run: "
                f"dot -T{fmt} {dot_path} -o {out_path}")
    _write(out_path, rendered, "diagram")
    return f"wrote {out_path}"


def to_svg(g, *, fold: bool = False) -> str | None:
    """The diagram as SVG text (for notebooks), or None without graphviz's ``dot`` program."""
    program = shutil.which("dot")
    rendered = _render(program, to_dot(g, fold=fold).source, "svg", "<notebook>") if program else None
    return rendered.decode("utf-8") if rendered is not None else None
