"""The per-layer summary of a compiled network: a JSON-ready dict and a plain-text table.

Input is a graph after shape inference (every Node has its shapes, parameter specs, MACs and
activation counts filled in). Counting conventions, stated once here and repeated in the output
so that a reader of the JSON does not have to guess:

* ``params`` counts trainable elements only; buffers such as batch-norm running statistics are
  reported apart as ``non_trainable``.
* ``macs`` are the multiply-accumulates of conv and fc layers, as the layer registry reports
  them; bias adds, activations, pooling and normalisation are not counted.
* ``activations`` are output elements × batch, and the total is their sum over every layer:
  the executor allocates each layer's output (as torchsummary counts them).
* Loss heads are not layers of the network proper: they are listed under ``heads``.
"""
from __future__ import annotations

from decimal import Decimal, localcontext

from .. import layers
from ..core.errors import NetdslError
from ..core.graph import nodes

MAC_CONVENTION = ("multiply-accumulates of conv and fc layers, and of their kin local and deconv "
                  "(bias adds, activations, pooling, normalisation not counted)")
ACTIVATION_CONVENTION = ("output elements × batch per layer; the total sums every layer's output, "
                         "as the executor allocates them (the input included)")

_NAME_WIDTH = 28   # longer layer names are shortened in the table, the JSON keeps them whole


def _spec(op: str):
    # Looked up through the package at call time so that the registry can be swapped in tests.
    return layers.get(op)


def _output_shape(node) -> str:
    if node.out_shapes is None:
        raise NetdslError(f"layer '{node.name}' has no shape yet: summarize needs a graph after "
                          f"shape inference", node.loc)
    return ", ".join(layers.shape_str(s) for s in node.out_shapes)


def _non_trainable(node) -> int:
    return sum(layers.numel(p.shape) for p in (node.param_specs or {}).values() if not p.trainable)


def summarize(g, *, batch: int = 1, dtype_bytes: int = 4) -> dict:
    """The summary of graph ``g`` as a JSON-serialisable dict (see the module docstring).

    ``batch`` scales activations and MACs (parameters do not depend on it); ``dtype_bytes`` is
    the size of one activation element (4 for float32).
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise NetdslError(f"batch size for the summary must be a whole number ≥ 1, got {batch!r}")
    if isinstance(dtype_bytes, bool) or not isinstance(dtype_bytes, int) or dtype_bytes < 1:
        raise NetdslError(f"bytes per element must be a whole number ≥ 1, got {dtype_bytes!r}")

    rows, heads, input_shapes = [], [], []
    non_trainable = 0
    total_activations = 0
    for node in nodes(g):
        spec = _spec(node.op)
        if spec.role == "loss":
            heads.append({"name": node.name,
                          "weight": float(node.attrs.get("weight", 1.0)),
                          "input": node.inputs[0][0] if node.inputs else None,
                          # OUTPUT ends an inference-only net: a head with no loss
                          **({"inference_only": True} if spec.name == "output" else {})})
            continue
        shape = _output_shape(node)
        if spec.role == "source":
            input_shapes.append(shape)
        activations = node.activations * batch
        total_activations += activations
        non_trainable += _non_trainable(node)
        rows.append({
            "name": node.name,
            "op": node.op,
            "output_shape": shape,
            "params": node.n_params,
            "activations": activations,
            "activation_bytes": activations * dtype_bytes,
            "macs": node.macs * batch,
            "inputs": [producer for producer, _port in node.inputs],
            "source": str(node.loc) if node.loc else None,
        })

    params = sum(r["params"] for r in rows)
    return {
        "network": g.graph.get("name", "net"),
        "input_shape": ", ".join(input_shapes) if input_shapes else None,
        "batch": batch,
        "mac_convention": MAC_CONVENTION,
        "activation_convention": ACTIVATION_CONVENTION,
        "layers": rows,
        "heads": heads,
        "totals": {
            "params": params,
            "trainable_params": params,
            "non_trainable": non_trainable,
            "activations": total_activations,
            "activation_bytes": total_activations * dtype_bytes,
            "macs": sum(r["macs"] for r in rows),
        },
    }


# ---------------------------------------------------------------------------------------------
# Number formatting shared with the diagram's title.

def _ratio(n: int, size: int, digits: int) -> str:
    """``n / size`` to ``digits`` places. Decimal, not float: a legal program can count more
    than a float holds (FC(10^300) -> FC(10^300)), and float division would overflow."""
    with localcontext() as ctx:
        ctx.prec = len(str(abs(n))) + digits + 2
        return f"{Decimal(n) / size:.{digits}f}"


def human_count(n: int, digits: int = 1) -> str:
    """A count in decimal units: 138357544 → '138.4 M' (digits=1); plain below a thousand;
    scientific past a thousand T: '1.0e+300'."""
    if abs(n) >= 10**15:
        return f"{Decimal(n):.{digits}e}"
    for size, unit in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "K")):
        if abs(n) >= size:
            return f"{_ratio(n, size, digits)} {unit}"
    return str(n)


def count_with_units(n: int, digits: int = 1) -> str:
    """'138,357,544 (138.4 M)'; small counts have no parenthesis: '120'."""
    short = human_count(n, digits)
    return f"{n:,}" if short == str(n) else f"{n:,} ({short})"


def human_bytes(n: int) -> str:
    """A byte count in binary units: 1536 → '1.5 KiB'; scientific past 1024 TiB."""
    if n >= 1 << 50:
        return f"{Decimal(n):.1e} B"
    for size, unit in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= size:
            return f"{_ratio(n, size, 1)} {unit}"
    return f"{n} B"


def _shorten(name: str, width: int = _NAME_WIDTH) -> str:
    # Keep both ends: the head names the block instance, the tail the layer inside it.
    if len(name) <= width:
        return name
    head = (width - 1) // 2
    return name[:head] + "…" + name[-(width - 1 - head):]


def format_table(summary: dict) -> str:
    """The summary as an aligned plain-text table with a totals line and the MAC convention."""
    header = ("name", "op", "output", "params", "activations", "act bytes", "MACs")
    right = (False, False, False, True, True, True, True)
    body = [(_shorten(r["name"]), r["op"], r["output_shape"], f"{r['params']:,}",
             f"{r['activations']:,}", human_bytes(r["activation_bytes"]), f"{r['macs']:,}")
            for r in summary["layers"]]
    t = summary["totals"]
    total_row = ("total", "", "", f"{t['params']:,}", f"{t['activations']:,}",
                 human_bytes(t["activation_bytes"]), f"{t['macs']:,}")
    widths = [max(len(row[i]) for row in (header, total_row, *body)) for i in range(len(header))]

    def line(cells) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w)
                         for c, w, r in zip(cells, widths, right)).rstrip()

    rule = "-" * len(line(header))
    out = [f"network {summary['network']}  input {summary['input_shape'] or '?'}  "
           f"batch {summary['batch']}", line(header), rule, *map(line, body), rule,
           line(total_row), ""]
    out.append(f"params: {count_with_units(t['params'])} trainable"
               + (f", {t['non_trainable']:,} non-trainable (buffers, not counted)"
                  if t["non_trainable"] else ""))
    out.append(f"MACs: {count_with_units(t['macs'], 2)}"
               + (f" for a batch of {summary['batch']}" if summary["batch"] != 1 else ""))
    out.append(f"activations: {count_with_units(t['activations'])} "
               f"({human_bytes(t['activation_bytes'])})")
    for head in summary.get("heads", []):
        if head.get("inference_only"):   # OUTPUT (layers/loss_targets.py)
            out.append(f"prediction {head['name']} on {head['input']} (OUTPUT: no loss, "
                       f"inference only)")
            continue
        out.append(f"loss head {head['name']} on {head['input']}, weight {head['weight']:g}")
    out.append(f"MACs count {summary['mac_convention']}.")
    out.append(f"Activations count {summary.get('activation_convention', ACTIVATION_CONVENTION)}"
               ".")
    return "\n".join(out)


def format_html(summary: dict) -> str:
    """The summary as an HTML table (what a notebook shows for a compiled net)."""
    from html import escape
    t = summary["totals"]
    cells = "".join(
        f"<tr><td>{escape(r['name'])}</td><td>{escape(r['op'])}</td>"
        f"<td>{escape(r['output_shape'])}</td><td style='text-align:right'>{r['params']:,}</td>"
        f"<td style='text-align:right'>{r['macs']:,}</td></tr>" for r in summary["layers"])
    return (f"<p><b>{escape(summary['network'])}</b>: input "
            f"{escape(summary['input_shape'] or '?')}, {count_with_units(t['params'])} parameters, "
            f"{count_with_units(t['macs'], 2)} MACs</p><table><thead><tr><th>name</th><th>op</th>"
            f"<th>output</th><th>params</th><th>MACs</th></tr></thead><tbody>{cells}</tbody>"
            f"<tfoot><tr><th>total</th><th></th><th></th><th style='text-align:right'>"
            f"{t['params']:,}</th><th style='text-align:right'>{t['macs']:,}</th></tr></tfoot>"
            f"</table>")
