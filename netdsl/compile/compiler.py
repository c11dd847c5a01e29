"""The compiler driver: `.net` text to an annotated, optimised graph, stage by stage.

Stages, in order (docs/architecture.md explains each):

1. ``parse``          text → AST with source locations           (netdsl.lang)
2. ``expand``         AST → DAG: blocks, repeats, options, refs   (netdsl.lang)
3. ``resolve_auto``   default widths, classes, input shape        (netdsl.compile.shapes)
4. ``infer_shapes``   shapes, params, MACs; residual projections  (netdsl.compile.shapes)
5. passes             dead nodes, identities, inference dropout   (netdsl.compile.passes)

``verify`` runs after shape inference and after every pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import networkx as nx

from ..core import graph as G
from ..core.errors import NetdslError, SourceFile
from ..lang import expand, parse
from .passes import PIPELINE, run_passes
from .shapes import bare_classifiers, infer_shapes, needs_input_shape, resolve_auto
from ..lang.train_config import TrainConfig, make_config


def read_source(path: str) -> SourceFile:
    p = Path(path)
    if not p.is_file():
        raise NetdslError(f"cannot read '{path}': no such file",
                          hint="give the path of a .net file, e.g. nets/lenet5.net")
    try:
        return SourceFile(str(path), p.read_text(encoding="utf-8-sig"))  # editors may add a BOM
    except (OSError, UnicodeDecodeError) as err:
        raise NetdslError(f"cannot read '{path}': {err}") from None


def build_graph(source: SourceFile, overrides: dict | None = None, *, shapes=None) -> nx.DiGraph:
    """Stages 1–2: the expanded graph, before its shapes are inferred. A block that reads
    ``IN`` has the part of the network before it shaped by ``shapes`` (default:
    :func:`prefix_shapes` with the input shape the file writes)."""
    return expand(parse(source), overrides or {}, name=Path(source.path).stem,
                  shapes=shapes or prefix_shapes())


def prefix_shapes(*, input_shape=None, input_override=None, num_classes=None, cli_train=None):
    """Stages 3–4 for the part of a network before a block that reads ``IN`` (while the
    network is still being expanded): the same defaults as :func:`compile_source` will use,
    the dataset's image shape read only when the INPUT has none. The graph it is given grows
    between calls; nodes shaped by an earlier call are not shaped again."""
    def infer(g: nx.DiGraph, new: list) -> None:
        shape = input_shape
        if input_override is None and shape is None and needs_input_shape(g):
            from ..data.loader import dataset_info
            shape, _classes = dataset_info(train_config(g, cli_train).data)
        # The prefix grows call by call: resolve and shape only its new nodes, in order.
        resolve_auto(g, input_shape=shape, num_classes=num_classes or DEFAULT_CLASSES,
                     input_override=input_override, order=new)
        infer_shapes(g, order=new)
    return infer


def train_config(g: nx.DiGraph, cli: dict | None = None) -> TrainConfig:
    """The training settings: defaults < the file's train section < CLI flags."""
    return make_config(g.graph.get("train", {}), cli or {})


def require_one_input(g: nx.DiGraph) -> None:
    """A network reads exactly one INPUT (the executor feeds one batch); a located error at the
    second one otherwise. The verifier checks the same invariant, as a compiler bug, later."""
    from ..layers import get
    sources = [rec for rec in G.records(g) if get(rec.op).role == "source"]
    if not sources:
        raise NetdslError("the network has no INPUT", hint="start it with INPUT(HxWxC) -> ...")
    if len(sources) > 1:
        first, second = sorted(sources, key=lambda r: (r.loc.line, r.loc.col) if r.loc else (0, 0))[:2]
        raise NetdslError(f"a network has exactly one INPUT, this one has {len(sources)}",
                          second.loc, detail=f"the first INPUT is at {first.loc}",
                          hint="join branches with concat{...} or add{...} after one INPUT, "
                               "or refer back to a layer with @name")


def finish(g: nx.DiGraph, *, input_shape=None, num_classes: int = 10, mode: str = "train",
           input_override=None, graph_passes=None):
    """Stages 3–5 on an expanded graph. Returns the graph and the pass log. ``graph_passes``
    replaces stage 5's passes (default ``netdsl.compile.passes.PIPELINE``; ``()`` for none: `bench
    --ablate` leaves every pass to the bound model's pipeline, to see what each one does)."""
    require_one_input(g)
    resolve_auto(g, input_shape=input_shape, num_classes=num_classes,
                 input_override=input_override)
    infer_shapes(g)
    passes = PIPELINE if graph_passes is None else graph_passes
    return g, run_passes(g, mode, passes)     # verifies after shape inference, then after each pass


@dataclass
class Compiled:
    """A compiled program: the shaped graph, its training settings, the passes that ran.
    In a notebook it shows its diagram (SVG) and its summary (an HTML table)."""
    graph: nx.DiGraph
    config: TrainConfig
    pass_log: list

    def summary(self, batch: int = 1) -> dict:
        """The per-layer summary (see netdsl.compile.summary.summarize)."""
        from .summary import summarize
        return summarize(self.graph, batch=batch)

    def _repr_svg_(self):
        from .draw import to_svg
        try:
            return to_svg(self.graph)
        except NetdslError:     # graphviz failed or hung: the notebook falls back to HTML
            return None

    def _repr_html_(self):
        from .summary import format_html
        return format_html(self.summary())


# The class count assumed by `check`, `summary` and `draw` for a classifier whose last FC is
# bare, when the input shape is known without the dataset (the dataset decides at `run`).
DEFAULT_CLASSES = 10


def compile_source(source: SourceFile, *, overrides=None, cli_train=None, input_shape=None,
                   num_classes=None, mode: str = "train", input_override=None,
                   need_data: bool = True, graph_passes=None) -> Compiled:
    """The whole pipeline. ``input_shape`` fills a bare INPUT; ``input_override`` (``--input``)
    replaces any INPUT's shape, with a note when the file fixed another. ``input_shape`` and
    ``num_classes`` default to the configured dataset's; with ``need_data=False`` (check,
    summary, draw) the dataset is read only when the input shape is known no other way, and a
    bare classifier is given DEFAULT_CLASSES units, with a note. ``graph_passes``: see
    :func:`finish`."""
    g = build_graph(source, overrides, shapes=prefix_shapes(
        input_shape=input_shape, input_override=input_override, num_classes=num_classes,
        cli_train=cli_train))
    config = train_config(g, cli_train)
    shape_known = input_override is not None or input_shape is not None or not needs_input_shape(g)
    if not need_data and shape_known and num_classes is None:
        num_classes = _classes_without_data(g, config)
    if (input_shape is None and not shape_known) or num_classes is None:
        from ..data.loader import dataset_info
        native, classes = dataset_info(config.data)
        input_shape = input_shape or native
        num_classes = num_classes or classes
    g, log = finish(g, input_shape=input_shape, num_classes=num_classes, mode=mode,
                    input_override=input_override, graph_passes=graph_passes)
    return Compiled(g, config, log)


def _classes_without_data(g: nx.DiGraph, config: TrainConfig) -> int:
    """The class count for check, summary and draw: the data's, when its headers can be read
    (``g.graph["data_facts"]`` keeps them for the data checks), else DEFAULT_CLASSES with a
    note when a bare classifier depends on it. A data spec that is not even well-formed is an
    error (a train setting); a dataset that is missing is not, here."""
    from ..data.loader import data_facts, parse_spec
    parse_spec(config.data)
    try:
        facts = data_facts(config.data)
    except NetdslError as err:
        g.graph["data_unreadable"] = err.message
        bare = bare_classifiers(g)
        if bare:
            g.graph.setdefault("notes", []).append((
                f"{bare[0].name} has no width and the data cannot be read ({err.message}): "
                f"assuming {DEFAULT_CLASSES} classes ('run' uses the data's count; write "
                f"FC(K) to fix it)", bare[0].loc))
        return DEFAULT_CLASSES
    g.graph["data_facts"] = facts
    return facts.num_classes


def compile_file(path: str, **kwargs) -> Compiled:
    return compile_source(read_source(path), **kwargs)


def compile_text(text: str, name: str = "<text>.net", **kwargs) -> Compiled:
    return compile_source(SourceFile(name, text), **kwargs)
