"""A compiled network with its weights, ready for inference (export, predict, eval).

``load_trained`` compiles a `.net` file in inference mode (dropout removed) and binds the
weights of a checkpoint to it, or the net's seeded initial weights when there is none. The
checkpoint's meta supplies what the file alone does not: the ``--set`` values and the input
shape used in training, and how images were preprocessed (see :mod:`netdsl.data.preprocess`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from ..core import graph as G
from ..core.errors import NetdslError
from ..compile.verify import main_head

_SIMPLE_VALUE = re.compile(r"^(-?\d+(\.\d*)?([eE][-+]?\d+)?|true|false|True|False|\d+x\d+(x\d+)?)$")


@dataclass
class Trained:
    """An inference graph, its parameters ``{node: {name: array}}`` and the checkpoint meta."""

    graph: nx.DiGraph
    params: dict
    meta: dict = field(default_factory=dict)
    weights_path: str | None = None

    def executor(self):
        """A NumPy float32 executor over the graph with these parameters."""
        from ..runtime.executor import Executor
        return Executor(self.graph, params=self.params)

    def bound(self):
        """The graph and weights as a :class:`netdsl.compile.model.BoundModel` (for its passes)."""
        from ..compile.model import BoundModel
        return BoundModel(self.graph, self.params)


def inference_nodes(g: nx.DiGraph) -> tuple[list[G.Node], tuple[str, int]]:
    """The nodes the prediction depends on, in topological order, and its (node, port):
    auxiliary heads and every loss are left out."""
    logits = main_head(g).inputs[0]
    keep = nx.ancestors(g, logits[0]) | {logits[0]}
    return [rec for rec in G.nodes(g) if rec.name in keep], logits


def checkpoint_overrides(meta: dict) -> dict:
    """The program parameters a checkpoint was trained with (stored as text), re-parsed. Only
    plain numbers, booleans and dims are taken: anything else is left to the file's default."""
    from ..lang import parse_value
    out = {}
    for key, text in (meta.get("params") or {}).items():
        if isinstance(text, str) and _SIMPLE_VALUE.match(text.strip()):
            out[key] = parse_value(text)
    return out


def bind_params(g: nx.DiGraph, saved: dict, path: str, *, dtype=np.float32) -> dict:
    """The checkpoint's arrays for every parameterised node of ``g``, checked against the
    shapes the compiler worked out, and finite; a NetdslError naming the first mismatch."""
    params = {}
    for rec in G.nodes(g):
        for key, spec in (rec.param_specs or {}).items():
            have = saved.get(rec.name, {}).get(key)
            if have is None:
                raise NetdslError(
                    f"checkpoint '{path}' has no weights for {rec.name}/{key}", rec.loc,
                    hint="use the .net file and --set values the checkpoint was trained with")
            if tuple(have.shape) != tuple(spec.shape):
                raise NetdslError(
                    f"checkpoint '{path}' does not fit this network: {rec.name}/{key} is "
                    f"{'×'.join(map(str, have.shape))} there but "
                    f"{'×'.join(map(str, spec.shape))} here", rec.loc,
                    hint="use the .net file, --set values and --input the checkpoint was "
                         "trained with")
            if have.dtype.kind not in "fiu":
                raise NetdslError(f"checkpoint '{path}': {rec.name}/{key} holds {have.dtype} "
                                  "values, not numbers", rec.loc)
            value = np.array(have, dtype=dtype)
            if not np.all(np.isfinite(value)):   # every prediction from it would be NaN
                bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
                raise NetdslError(
                    f"checkpoint '{path}': {rec.name}/{key} holds {bad} NaN or infinite "
                    f"value(s) (in {dtype.__name__})", rec.loc,
                    hint="the run that wrote it diverged: use an earlier checkpoint, or "
                         "train again with a lower lr")
            params.setdefault(rec.name, {})[key] = value
    return params


def load_trained(path: str, weights: str | None = None, *, sets: dict | None = None,
                 input_shape=None, num_classes: int | None = None, mode: str = "infer"):
    """Compile ``path`` for inference and bind ``weights`` (a checkpoint .npz, or .safetensors)
    or the net's seeded initial weights.

    Program parameters: the checkpoint's, then ``sets``. Input shape and classes: the
    arguments, then the checkpoint's preprocessing record, then the file's dataset.
    """
    from ..compile.compiler import compile_file
    from ..runtime.executor import Executor
    from ..train.checkpoint import load_checkpoint
    meta, saved = {}, None
    if weights:
        if str(weights).lower().endswith(".safetensors"):
            from .safetensors_io import read_safetensors
            ck = read_safetensors(weights)
        else:
            ck = load_checkpoint(weights)
        meta, saved = ck.get("meta") or {}, ck["params"]
    overrides = {**checkpoint_overrides(meta), **(sets or {})}
    pre = meta.get("preprocess") or {}
    input_shape = input_shape or (tuple(pre["input_shape"]) if pre.get("input_shape") else None)
    num_classes = num_classes or pre.get("classes")
    cli_train = {}
    data = (meta.get("config") or {}).get("data")
    if data and (input_shape is None or num_classes is None):
        cli_train["data"] = data
    c = compile_file(path, overrides=overrides, cli_train=cli_train, input_shape=input_shape,
                     num_classes=num_classes, mode=mode)
    from ..runtime.memory_estimate import check_allocatable
    check_allocatable(c.graph, batch=2, what=f"{c.graph.graph['name']} with its weights")
    if saved is not None:
        params = bind_params(c.graph, saved, weights)
    else:
        params = Executor(c.graph, seed=c.config.seed).params
    return Trained(c.graph, params, meta, weights)
