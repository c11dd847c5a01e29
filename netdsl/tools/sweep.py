"""`netdsl sweep`: every instance of a parameterised program, costed (and trained) side by side.

``--set N=1..3 --set POOL=true,false`` is the product of the listed values. Each instance is
compiled on its own: a compile error (say, a pool on a 1-pixel map) is that row's result, not
the sweep's end. With ``--epochs`` each valid instance is trained from the same seed on the same
data and scored on the held-out split.
"""
from __future__ import annotations

import csv
import io
import itertools
import re
from pathlib import Path

from ..core.errors import NetdslError
from ..core.files import write_text

_RANGE = re.compile(r"\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*")
MAX_INSTANCES = 256


def parse_sweep_sets(pairs: list[str]) -> dict[str, list]:
    """['N=1..3', 'POOL=true,false', 'lr=0.1'] → {'N': [1, 2, 3], 'POOL': [True, False], ...}."""
    from ..lang import parse_value
    axes: dict[str, list] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise NetdslError(f"--set expects NAME=VALUES, got '{pair}'",
                              hint="e.g. --set N=1..3 or --set POOL=true,false")
        key, text = (t.strip() for t in pair.split("=", 1))
        m = _RANGE.fullmatch(text)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo or hi - lo >= MAX_INSTANCES:
                raise NetdslError(f"--set {pair}: a range LO..HI needs LO ≤ HI and at most "
                                  f"{MAX_INSTANCES} values")
            values = list(range(lo, hi + 1))
        else:
            values = [parse_value(v) for v in text.split(",") if v.strip()]
        if not values:
            raise NetdslError(f"--set {pair} gives no value", hint="e.g. --set N=1..3")
        axes[key] = values
    n = 1
    for v in axes.values():
        n *= len(v)
    if n > MAX_INSTANCES:
        raise NetdslError(f"the sweep has {n:,} instances, more than {MAX_INSTANCES}",
                          hint="sweep fewer values at a time")
    return axes


def instances(axes: dict[str, list]) -> list[dict]:
    """Every combination of the axes' values, first axis slowest."""
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def cost(path: str, binding: dict, *, input_shape=None, cli_train=None) -> dict:
    """Compile one instance; its parameters, MACs, activation and training-step memory, or
    the compile error that stops it."""
    from ..lang.overrides import split_sets
    from ..compile.compiler import compile_file
    from ..runtime.memory import memory_table
    from ..compile.summary import summarize
    params, train = split_sets([f"{k}={_text(v)}" for k, v in binding.items()])
    train.update({k: v for k, v in (cli_train or {}).items() if v is not None})
    row = {"instance": " ".join(f"{k}={_text(v)}" for k, v in binding.items())}
    try:
        c = compile_file(path, overrides=params, cli_train=train, input_shape=input_shape)
        s = summarize(c.graph)["totals"]
        m = memory_table(c.graph, 1)
    except NetdslError as err:
        where = f"{err.loc}: " if err.loc else ""
        return dict(row, valid=False, error=f"{where}{err.message}")
    if "unplanned" in m:
        return dict(row, valid=False, error=f"memory cannot be planned: {m['unplanned']}")
    return dict(row, valid=True, error="", params=s["params"], macs=s["macs"],
                activation_bytes=s["activation_bytes"], train_peak_bytes=m["train_peak_bytes"],
                compiled=c)


def _text(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, tuple):
        return "x".join(map(str, v))
    return str(v)


def train_one(row: dict, *, data_spec=None, limit=None, quiet=True) -> float:
    """Train one compiled instance quietly (no checkpoints); its held-out accuracy."""
    from ..runtime.executor import Executor
    from ..data.loader import load_dataset
    from ..train.loop import Trainer
    c = row["compiled"]
    cfg = c.config
    ex = Executor(c.graph, seed=cfg.seed)
    data = load_dataset(data_spec or cfg.data, input_shape=ex.input_shape, holdout=cfg.holdout)
    if limit:
        data.x_train, data.y_train = data.x_train[:limit], data.y_train[:limit]
    trainer = Trainer(ex, cfg, data, out_dir=None, show_progress=not quiet, log=lambda *_: None)
    return trainer.run()["accuracy"]


COLUMNS = ("instance", "valid", "params", "macs", "activation_bytes", "train_peak_bytes",
           "accuracy", "error")


def write_csv(rows: list[dict], path) -> str:
    """The sweep as CSV, one row per instance (COLUMNS)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    write_text(path, text.getvalue(), "sweep table")
    return str(path)


def format_table(rows: list[dict]) -> str:
    """The sweep as an aligned table; an invalid instance shows its error."""
    from ..compile.summary import human_bytes, human_count
    trained = any("accuracy" in r for r in rows)
    head = ["instance", "params", "MACs", "activations", "train peak"] + (["accuracy"] if trained
                                                                          else [])
    body = []
    for r in rows:
        if not r["valid"]:
            body.append([r["instance"], r["error"] if r.get("untrained")
                         else "invalid: " + r["error"]])
            continue
        cells = [r["instance"], human_count(r["params"]), human_count(r["macs"], 2),
                 human_bytes(r["activation_bytes"]), human_bytes(r["train_peak_bytes"])]
        if trained:
            cells.append(f"{100 * r['accuracy']:.2f}%" if "accuracy" in r else "-")
        body.append(cells)
    widths = [max(len(c[i]) for c in [head] + [b for b in body if len(b) == len(head)])
              for i in range(len(head))]

    def line(cells):
        if len(cells) != len(head):
            return f"{cells[0].ljust(widths[0])}  {cells[1]}"
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), "-" * len(line(head)), *map(line, body)])


def plot(rows: list[dict], path_png) -> list[str]:
    """Accuracy (or, untrained, parameters) against MACs, one labelled point per instance."""
    from .plots import save_figure, pyplot
    plt = pyplot()
    ok = [r for r in rows if r["valid"]]
    trained = any("accuracy" in r for r in ok)
    ys = [100 * r["accuracy"] if trained else r["params"] for r in ok]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([r["macs"] for r in ok], ys)
    for r, y in zip(ok, ys):
        ax.annotate(r["instance"], (r["macs"], y), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set(xscale="log", xlabel="MACs per example",
           ylabel="held-out accuracy (%)" if trained else "parameters",
           title="sweep: accuracy against MACs" if trained else "sweep: parameters against MACs")
    ax.grid(alpha=0.3)
    png = Path(path_png)
    return save_figure(fig, [png, png.with_suffix(".svg")])
