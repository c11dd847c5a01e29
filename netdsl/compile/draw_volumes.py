"""``netdsl draw --style volumes``: the feature maps as 3-D boxes, as the LeNet-5 and AlexNet
papers drew their networks (and NN-SVG and PlotNeuralNet after them), written as SVG by
netdsl itself (no graphviz needed).

Each box is one feature map H×W×C: its height follows H, its receding side W and its
thickness C, on log scales (16 px per doubling of a side, 5 per doubling of the channels: a
linear scale would make 7×7 vanish beside 224×224), with ``H×W×C`` written under it and the
operation that made it (``CONV 96 11×11 /4``) above. A windowed operation (convolution, pooling) is drawn as its
kernel, a small square on the input volume's H×W face, with lines to the unit it computes in
the next volume. A flat vector (FC, global pooling) is a thin bar. Layers that keep their
input's shape and have no window or width of their own (ReLU, BN, dropout, LRN, flatten)
are not boxes: they are listed under the operation that made the box they apply to.

Layout, left to right: a box's column is the longest path to it from the input; branches
(concat's inputs, a projection shortcut, an auxiliary head) get lanes below in the order the
file writes them. An ``add`` is a ⊕; an edge that jumps columns within a lane (a residual
shortcut) is a bracket over the boxes it skips.
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field

from .. import layers
from ..core.files import atomic_write
from ..core.graph import nodes
from .draw import op_label
from .summary import count_with_units, summarize

# Ops drawn inside the previous box's label rather than as a box (when they keep the shape).
_WIDTH_ATTRS = ("kernel", "units", "filters")
_FONT = "font-family:Helvetica,Arial,sans-serif"
_FILL = {"input": "#e9ecef", "conv": "#cfe2ff", "deconv": "#cfe2ff", "local": "#cfe2ff",
         "fc": "#e2d9f3", "concat": "#fff3cd", "gap": "#d1e7dd"}
_POOL_FILL = "#d1e7dd"


@dataclass
class Volume:
    """One box of the picture: a feature map (or vector, or ⊕) and how it was made."""

    index: int
    node: str                  # the node whose output it is (the last one merged in)
    shape: tuple
    label: str                 # the operation that made it, e.g. "CONV 96 11×11 /4"
    kind: str                  # "map" | "vector" | "add"
    op: str
    inputs: list = field(default_factory=list)   # indices of the volumes it reads
    after: list = field(default_factory=list)    # shape-keeping ops applied to it
    kernel: tuple | None = None                  # the producing op's window (kh, kw)
    col: int = 0
    lane: int = 0
    # geometry (px): front face width (channels), height (H), receding side (W)
    d: float = 0.0
    h: float = 0.0
    w: float = 0.0
    x: float = 0.0
    y: float = 0.0             # the lane's centre line


def _window(node) -> tuple | None:
    value = node.attrs.get("kernel") or ("pool" in node.op and node.attrs.get("size"))
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    return tuple(value) if isinstance(value, tuple) and len(value) == 2 else None


def _keeps_shape(node, producer) -> bool:
    """A layer drawn as a note on its input's box: same shape, no window or width."""
    if layers.get(node.op).role != "layer" or len(node.inputs) != 1:
        return False
    if node.op == "flatten":
        return True
    if any(node.attrs.get(a) is not None for a in _WIDTH_ATTRS) or _window(node):
        return False
    return node.out_shape == producer.out_shape


def volumes_of(g) -> list[Volume]:
    """The boxes of ``g`` in source order (see the module's note for what becomes a box)."""
    order = nodes(g)
    consumers: dict[str, int] = {}
    for n in order:
        for producer, _ in n.inputs:
            consumers[producer] = consumers.get(producer, 0) + 1
    by_node: dict[str, Volume] = {}
    out: list[Volume] = []
    for n in order:
        spec = layers.get(n.op)
        if spec.role == "loss":
            continue
        if n.inputs:
            first = g.nodes[n.inputs[0][0]]["node"]
            if consumers.get(first.name, 0) == 1 and _keeps_shape(n, first):
                vol = by_node[first.name]
                vol.after.append(n.op.upper() if n.op != "batchnorm" else "BN")
                vol.node = n.name
                by_node[n.name] = vol
                continue
        shape = tuple(n.out_shape or ())
        kind = "add" if n.op == "add" else ("map" if len(shape) == 3 else "vector")
        label = "INPUT" if spec.role == "source" else op_label(n, spec)
        short = n.name.rsplit("/", 1)[-1]
        if n.meta.get("projection"):
            label = f"shortcut {label}"
        elif not re.fullmatch(rf"{re.escape(n.op)}\d*", short):   # a label the file gave
            label = f"{short}: {label}"
        if kind == "add":
            label = ""   # the ⊕ says it
        vol = Volume(len(out), n.name, shape, label, kind, n.op,
                     inputs=[by_node[p].index for p, _ in n.inputs if p in by_node],
                     kernel=_window(n))
        out.append(vol)
        by_node[n.name] = vol
    return out


# ---------------------------------------------------------------------------------------------
# Layout

def _size(n: int, base: float, per_doubling: float) -> float:
    return base + per_doubling * math.log2(max(int(n), 1) + 1)


def _measure(v: Volume) -> None:
    if v.kind == "add":
        v.d, v.h, v.w = 18, 18, 0
    elif v.kind == "vector":
        size = v.shape[0] if v.shape else 1
        v.d, v.h, v.w = 6, min(_size(size, 6, 12), 170), 6
    else:
        hh, ww, cc = v.shape
        v.h, v.w, v.d = _size(hh, 4, 16), 0.55 * _size(ww, 4, 16), _size(cc, 1, 5)


def _text_width(text: str, size: float = 10) -> float:
    return 0.58 * size * len(text)


def layout(vols: list[Volume]) -> tuple[float, float, float]:
    """Columns, lanes and coordinates of every volume; returns (width, height, top margin)."""
    consumers: dict[int, list[int]] = {}
    for v in vols:
        _measure(v)
        v.col = 1 + max((vols[i].col for i in v.inputs), default=-1)
        for i in v.inputs:
            consumers.setdefault(i, []).append(v.index)
    taken: set[tuple[int, int]] = set()
    for v in vols:
        lane = 0
        if v.inputs:
            src = vols[v.inputs[0]]
            first_reader = consumers[src.index][0] == v.index
            lane = src.lane if first_reader else src.lane + 1
        while (lane, v.col) in taken:
            lane += 1
        v.lane = lane
        taken.add((lane, v.col))
    columns: dict[int, float] = {}
    for v in vols:
        text = max(_text_width(v.label), _text_width(_shape_text(v), 9),
                   _text_width(", ".join(v.after), 8))
        columns[v.col] = max(columns.get(v.col, 0), v.d + v.w * 0.8, text)
    lanes = max(v.lane for v in vols) + 1
    extent = [max((v.h - _oblique(v)[1] for v in vols if v.lane == k), default=0) + 60
              for k in range(lanes)]
    skips = [v for v in vols for i in v.inputs if vols[i].lane == v.lane
             and v.col - vols[i].col > 1]
    centres = [60 + (40 if skips else 0) + extent[0] / 2]
    for k in range(1, lanes):
        centres.append(centres[-1] + extent[k - 1] / 2 + extent[k] / 2)
    x, starts = 20.0, {}
    for col in sorted(columns):
        starts[col] = x
        x += columns[col] + 28
    for v in vols:
        v.x = starts[v.col] + (columns[v.col] - v.d - v.w * 0.8) / 2
        v.y = centres[v.lane]
    return x + 10, centres[-1] + extent[-1] / 2 + 10, centres[0]


# ---------------------------------------------------------------------------------------------
# SVG

def _shape_text(v: Volume) -> str:
    return "" if v.kind == "add" else "×".join(map(str, v.shape))


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _pts(points) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in points)


def _oblique(v: Volume) -> tuple[float, float]:
    """The receding (W) side's screen offset: up and to the right."""
    return v.w * 0.8, -v.w * 0.6


def _box(v: Volume) -> list[str]:
    """The SVG of one volume: a group with the box's faces (or ⊕) and its labels."""
    fill = _FILL.get(v.op, _POOL_FILL if "pool" in v.op else "#f5f5f5")
    top_y, bottom = v.y - v.h / 2, v.y + v.h / 2
    parts = [f'<g class="volume" data-op="{_esc(v.op)}" data-node="{_esc(v.node)}" '
             f'data-shape="{_esc(_shape_text(v))}">']
    if v.kind == "add":
        cx = v.x + 9
        parts += [f'<circle cx="{cx:.1f}" cy="{v.y:.1f}" r="9" fill="#ffffff" stroke="#333"/>',
                  f'<path d="M{cx - 5:.1f},{v.y:.1f}h10M{cx:.1f},{v.y - 5:.1f}v10" '
                  f'stroke="#333"/>']
        top_label_y = v.y - 16
    else:
        ox, oy = _oblique(v)
        x0, x1 = v.x, v.x + v.d
        front = [(x0, top_y), (x1, top_y), (x1, bottom), (x0, bottom)]
        top = [(x0, top_y), (x0 + ox, top_y + oy), (x1 + ox, top_y + oy), (x1, top_y)]
        side = [(x1, top_y), (x1 + ox, top_y + oy), (x1 + ox, bottom + oy), (x1, bottom)]
        for face, shade in ((front, 1.0), (top, 0.93), (side, 0.85)):
            parts.append(f'<polygon points="{_pts(face)}" fill="{fill}" '
                         f'fill-opacity="{shade}" stroke="#333" stroke-width="0.8"/>')
        top_label_y = top_y + oy - 8
    centre = v.x + (v.d + v.w * 0.8) / 2
    if v.label:
        y = top_label_y - (10 if v.after else 0)
        parts.append(f'<text x="{centre:.1f}" y="{y:.1f}" text-anchor="middle" font-size="10" '
                     f'style="{_FONT}">{_esc(v.label)}</text>')
    if v.after:
        note_y = v.y + 20 if v.kind == "add" else top_label_y   # the ⊕'s input comes from above
        parts.append(f'<text x="{centre:.1f}" y="{note_y:.1f}" text-anchor="middle" '
                     f'font-size="8" fill="#555" style="{_FONT}">'
                     f'{_esc(", ".join(v.after))}</text>')
    if v.kind != "add":
        parts.append(f'<text x="{centre:.1f}" y="{bottom + 13:.1f}" text-anchor="middle" '
                     f'font-size="9" style="{_FONT}">{_esc(_shape_text(v))}</text>')
    parts.append("</g>")
    return parts


def _kernel(src: Volume, dst: Volume) -> list[str]:
    """The window of ``dst``'s operation as a square on ``src``'s H×W face, with lines to the
    unit it computes on ``dst``'s face."""
    kh, kw = dst.kernel
    hh, ww = src.shape[0], src.shape[1]
    ox, oy = _oblique(src)
    # fractions of the H×W face (at least 3 px), placed inside it a third of the way in
    fv = min(max(kh / hh, 3.0 / max(src.h, 1)), 1.0)
    fu = min(max(kw / ww, 3.0 / max(src.w, 1)), 1.0)
    u0, v0 = (1 - fu) * 0.4, (1 - fv) * 0.35
    x1, top = src.x + src.d, src.y - src.h / 2

    def at(u, v):
        return (x1 + ox * u, top + oy * u + src.h * v)
    corners = [at(u0, v0), at(u0 + fu, v0), at(u0 + fu, v0 + fv), at(u0, v0 + fv)]
    dox, doy = _oblique(dst)
    tx = dst.x + dst.d + dox * 0.5 if dst.kind == "map" else dst.x
    ty = dst.y - dst.h / 2 + dst.h * 0.35 + doy * 0.5 if dst.kind == "map" else dst.y
    out = [f'<g class="kernel"><polygon points="{_pts(corners)}" fill="#ff9f43" '
           f'fill-opacity="0.7" stroke="#c0392b" stroke-width="0.6"/>']
    out += [f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{tx:.1f}" y2="{ty:.1f}" stroke="#c0392b" '
            f'stroke-width="0.5"/>' for x, y in (corners[0], corners[2])]
    out.append("</g>")
    return out


def _top(v: Volume) -> float:
    """The highest point of a volume, its labels included."""
    return v.y - v.h / 2 + _oblique(v)[1] - (30 if v.after else 20)


def _edge(src: Volume, dst: Volume, vols: list) -> str:
    """An arrow from ``src`` to ``dst``: straight between neighbours in a lane, an arc above
    for a residual shortcut in the same lane, a curve between lanes."""
    ox, oy = _oblique(src)
    x1, y1 = src.x + src.d + ox * 0.5, src.y + oy * 0.5
    x2, y2 = dst.x, dst.y
    if src.lane == dst.lane and dst.col - src.col > 1:
        # over every box (and label) of the lane that it jumps, at most a little higher
        between = [v for v in vols if v.lane == src.lane and src.col <= v.col <= dst.col]
        if src.kind == "add":
            sx, sy = src.x + 9, src.y - 9
        else:   # from the far top corner, clear of the box's centred label
            sx, sy = src.x + src.d + ox, src.y - src.h / 2 + oy
        ex = dst.x + (dst.d + dst.w * 0.8) / 2
        ey = dst.y - 10 if dst.kind == "add" else _top(dst) + 8
        ya = min(_top(v) for v in between) - 6
        r = min(10.0, (ex - sx) / 2, max(sy - ya, 0.1))   # rounded corners of the bracket
        path = (f"M{sx:.1f},{sy:.1f} L{sx:.1f},{ya + r:.1f} Q{sx:.1f},{ya:.1f} {sx + r:.1f},"
                f"{ya:.1f} L{ex - r:.1f},{ya:.1f} Q{ex:.1f},{ya:.1f} {ex:.1f},{ya + r:.1f} "
                f"L{ex:.1f},{ey:.1f}")
    elif src.lane == dst.lane:
        path = f"M{x1:.1f},{y1:.1f} L{x2 - 2:.1f},{y2:.1f}"
    elif dst.kind == "add" and src.lane > dst.lane:
        # a shortcut from a lane below enters the ⊕ from its lower left (clear of the note
        # under it), not along the main edge behind the box before it, where it would seem
        # to feed that box
        ex, ey = dst.x + 9 - 7.5, dst.y + 7.5
        path = (f"M{x1:.1f},{y1:.1f} C{ex - 30:.1f},{y1:.1f} {ex - 16:.1f},{ey + 16:.1f} "
                f"{ex:.1f},{ey:.1f}")
    else:
        mid = (x1 + x2) / 2
        path = f"M{x1:.1f},{y1:.1f} C{mid:.1f},{y1:.1f} {mid:.1f},{y2:.1f} {x2 - 2:.1f},{y2:.1f}"
    return (f'<path class="edge" d="{path}" fill="none" stroke="#666" stroke-width="0.9" '
            f'marker-end="url(#arrow)"/>')


def to_volumes_svg(g) -> str:
    """The volume picture of ``g`` as SVG text."""
    vols = volumes_of(g)
    width, height, _ = layout(vols)
    totals = summarize(g)["totals"]
    title = (f"{g.graph.get('name', 'net')}: params {count_with_units(totals['params'])} · "
             f"MACs {count_with_units(totals['macs'], 2)}")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" '
           'markerHeight="6" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
           'fill="#666"/></marker></defs>',
           '<rect width="100%" height="100%" fill="#ffffff"/>',
           f'<text x="20" y="22" font-size="13" font-weight="bold" style="{_FONT}">'
           f'{_esc(title)}</text>']
    kernels, arcs = [], []
    for v in vols:
        for i in v.inputs:
            src = vols[i]
            if (v.kernel and src.kind == "map" and len(v.inputs) == 1
                    and src.lane == v.lane and v.col - src.col == 1):
                kernels.append((src, v))
            elif src.lane == v.lane and v.col - src.col > 1:
                arcs.append(_edge(src, v, vols))     # drawn over the boxes it jumps
            else:
                out.append(_edge(src, v, vols))
    for v in vols:
        out += _box(v)
    for src, dst in kernels:
        out += _kernel(src, dst)
    out += arcs
    out.append("</svg>")
    return "\n".join(out) + "\n"


def draw_volumes(g, out_path: str) -> str:
    """Write the volume picture of ``g`` to ``out_path`` (.svg); returns a message."""
    from ..core.errors import NetdslError
    if not out_path.lower().endswith(".svg"):
        raise NetdslError(f"--style volumes writes SVG, not '{out_path}'",
                          hint="give -o NAME.svg (convert it with rsvg-convert or a browser)")
    text = to_volumes_svg(g)
    atomic_write(out_path, lambda f: f.write(text.encode("utf-8")), "diagram")
    return f"wrote {out_path}"
