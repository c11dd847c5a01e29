"""Program to graph: parameters and ``--set`` overrides, blocks, chains, the train section."""
from __future__ import annotations

import functools
import re
from dataclasses import fields
from pathlib import PurePath

import networkx as nx

from ..core.errors import NetdslError, combined, did_you_mean
from ..core.graph import new_graph
from ..layers import lookup
from .train_config import SETTING_TYPES as _TRAIN_KINDS  # train key -> "int", "float", "bool", "str"
from .train_config import coerce_setting
from . import ast
from .elements import ChainExpander
from .mistakes import merge_repeats, missing_arrow
from .resolve import build_graph
from .values import (FAILED, CascadeError, Word, evaluate, is_finite_number, shown,
                     unbound_error)

# Parameters that tune the defaults of bare layers (netdsl.compile.shapes.resolve_auto reads them from
# g.graph["params"]): --set accepts them whether or not the program mentions them.
LAYER_DEFAULT_KNOBS = ("WIDTH", "MAX_WIDTH", "HIDDEN", "ROUND")


def expand(program: ast.Program, overrides: dict[str, object] | None = None, *,
           name: str | None = None, shapes=None) -> nx.DiGraph:
    """Expand a parsed program into the network graph.

    ``overrides`` bind or replace program parameters (the CLI's ``--set K=V``). The graph's
    ``name`` is the ``net`` statement's, else ``name``, else the file stem. ``shapes`` is the
    compiler's shape inference, ``shapes(graph)``, run on the part of the network before a
    block that reads ``IN`` (see netdsl.lang.prefix). Raises a located NetdslError for any
    problem in the program.
    """
    overrides = dict(overrides or {})
    statements = program.statements
    blocks = _collect_blocks(statements)
    param_errors: list[NetdslError] = []
    params = _bind_params(program, overrides, blocks, param_errors)

    param_locs = {d.name: d.loc for s in statements if isinstance(s, ast.ParamStmt)
                  for d in s.params}

    def graph_data() -> dict:
        try:
            train = _train_settings(statements, params)
        except NetdslError:       # reported by the full expansion below
            train = {}
        return {"params": dict(params), "param_locs": param_locs, "train": train}

    expander = ChainExpander(params, blocks, shapes, graph_data, _network_name(program, name),
                             program.source)
    expander.errors.extend(param_errors)
    chains = [s for s in statements if isinstance(s, ast.ChainStmt)]
    if not chains and param_errors:
        raise combined(param_errors)
    if not chains:
        raise NetdslError("the program has no chain such as 'INPUT -> CONV -> FC'",
                          hint="a network is described by at least one chain statement")
    try:
        first_output, first_loc = None, chains[0].chain.elements[-1].loc
        before = {id(s): statements[k - 1] if k else None for k, s in enumerate(statements)}
        for i, stmt in enumerate(chains):
            try:
                output = expander.statement(stmt.chain)
            except NetdslError as err:   # statements are independent: check the others too
                if not isinstance(err, CascadeError):
                    expander.errors.append(missing_arrow(err, stmt, before[id(stmt)]))
                continue
            if i == 0:
                first_output = output
        if expander.errors:
            raise combined(merge_repeats(expander.errors))
        g = new_graph(_network_name(program, name), program.source)
        build_graph(g, expander.nodes, expander.refs, expander.namer, first_output, first_loc)
    except RecursionError:
        # Blocks calling blocks hundreds deep, `X*1*1*1...`, or labels aliasing references
        # through many blocks: Python's stack runs out before a limit of ours is reached.
        raise NetdslError("the network is nested too deeply to expand",
                          expander.last_loc or chains[0].loc,
                          hint="blocks inside blocks, brackets inside brackets or postfixes "
                               "after postfixes go too deep around here; flatten some of "
                               "them") from None
    g.graph["params"] = dict(params)
    if expander.widths_read:      # default widths that IN read while expanding (lang.prefix)
        g.graph["widths_read"] = dict(expander.widths_read)
    # Where each parameter is declared: later stages locate errors about a value (ROUND).
    g.graph["param_locs"] = param_locs
    g.graph["train"] = _train_settings(statements, params)
    return g


def _network_name(program: ast.Program, name: str | None) -> str:
    named = [s for s in program.statements if isinstance(s, ast.NetName)]
    if len(named) > 1:
        raise NetdslError("the network is named twice", named[1].loc,
                          detail=f"first named at {named[0].loc}")
    if named:
        return named[0].name
    if name:
        return name
    path = program.source.path if program.source else ""
    return PurePath(path).stem if path and not path.startswith("<") else "net"


def _collect_blocks(statements) -> dict[str, ast.BlockDef]:
    blocks: dict[str, ast.BlockDef] = {}
    for stmt in statements:
        if not isinstance(stmt, ast.BlockDef):
            continue
        key = stmt.name.lower()
        if lookup(stmt.name) is not None or key == "residual":
            raise NetdslError(f"block '{stmt.name}' has the name of a built-in layer",
                              stmt.name_loc, hint="choose another block name")
        if key in blocks:
            raise NetdslError(f"block '{stmt.name}' is defined twice", stmt.name_loc,
                              detail=f"first defined at {blocks[key].name_loc}")
        seen = {}
        for param in stmt.params:
            if param.name in seen:
                raise NetdslError(f"block '{stmt.name}' has two parameters named "
                                  f"'{param.name}'", param.loc)
            seen[param.name] = param
        blocks[key] = stmt
    return blocks


def _referenced_names(root, out: set) -> set:
    """Every name a program could read as a parameter: in expressions, counts and flags.
    (Walked without recursion, fields looked up once per class: it visits every AST node.)"""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.Optional) and node.flag:
            out.add(node.flag)
        elif isinstance(node, ast.Element):
            implied = any(isinstance(p, ast.Optional) and not p.flag for p in node.postfixes)
            callee = node.primary.callee if isinstance(node.primary, ast.Join) else node.primary
            if implied and isinstance(callee, ast.Call):
                out.add(callee.name.upper())
                out.add(re.match(r"[A-Za-z_]*", callee.name).group().upper())
        fields_of = _ast_fields(type(node))
        if fields_of:
            stack.extend(getattr(node, f) for f in fields_of)
    return out


@functools.lru_cache(maxsize=None)
def _ast_fields(cls) -> tuple[str, ...]:
    """The fields of an AST class that may hold other AST nodes; () for anything else."""
    if not hasattr(cls, "__dataclass_fields__") or cls.__module__ != ast.__name__:
        return ()
    return tuple(f.name for f in fields(cls) if f.name != "source" and not f.name.endswith("loc"))


def _bind_params(program: ast.Program, overrides: dict, blocks, errors: list) -> dict:
    """Program parameters in file order, each default evaluated over the earlier ones, with
    ``--set`` values taking precedence. A ``--set`` name that the program does not declare is
    bound before any default is evaluated (``param M = N + 1`` with ``--set N=2``). Unknown
    ``--set`` names are refused, except the layer-default knobs WIDTH, MAX_WIDTH, HIDDEN."""
    defs: list[ast.ParamDef] = [p for s in program.statements if isinstance(s, ast.ParamStmt)
                                for p in s.params]
    first: dict[str, ast.ParamDef] = {}
    for d in defs:
        if d.name in first:
            raise NetdslError(f"parameter '{d.name}' is declared twice", d.loc,
                              detail=f"first declared at {first[d.name].loc}")
        first[d.name] = d
    referenced = _referenced_names(program.statements, set())
    for key, value in overrides.items():
        if key not in first and key not in referenced and key not in LAYER_DEFAULT_KNOBS:
            known = sorted(set(first) | {n for n in referenced if n.isupper()}
                           | set(LAYER_DEFAULT_KNOBS))
            raise NetdslError(f"unknown parameter '{key}' in --set",
                              hint=did_you_mean(key, known) or
                              (f"the program's parameters are: {', '.join(sorted(first))}"
                               if first else "the program declares no parameters"))
        if isinstance(value, (int, float)) and not is_finite_number(value):
            raise NetdslError(f"--set {key}={shown(value)}: not a finite number that netdsl "
                              "can hold")
    undeclared = {k: v for k, v in overrides.items() if k not in first}
    params: dict = dict(undeclared)
    # Declared names not bound yet, kept up to date as we go (recomputing it per parameter
    # made 20,000 declarations take minutes).
    later = {d.name for d in defs} - set(params)
    for d in defs:
        later.discard(d.name)
        try:
            default = evaluate(d.value, params, declared_later=later)
        except NetdslError as err:
            # Reported with the program's other independent errors; uses of this parameter
            # are skipped (FAILED) instead of reported again.
            if not isinstance(err, CascadeError):
                errors.append(err)
            params[d.name] = FAILED
            continue
        if isinstance(default, Word):  # a declared word is meant as text: `param INIT = he`
            default = str(default)
        if d.name in overrides:
            params[d.name] = _checked_override(d, default, overrides[d.name])
        else:
            params[d.name] = default
    # Declared parameters first, in file order, then the undeclared --set ones.
    return {**{d.name: params[d.name] for d in defs}, **undeclared}


def _checked_override(d: ast.ParamDef, default, value):
    """A --set value must be of the same sort as the declared default (bool, number, text)."""
    def sort(v):
        if isinstance(v, bool):
            return "true or false"
        if isinstance(v, (int, float)):
            return "a number"
        return "dimensions" if isinstance(v, tuple) else "text"
    if sort(default) != sort(value):
        raise NetdslError(f"--set {d.name}={value!r}: the parameter is {sort(default)} "
                          f"(declared at {d.loc})")
    return value


def _train_settings(statements, params: dict) -> dict:
    """The train sections' settings, validated: ``{key: (value, Location)}``."""
    settings: dict = {}
    for stmt in statements:
        if not isinstance(stmt, ast.TrainStmt):
            continue
        for item in stmt.items:
            if item.key in settings:
                raise NetdslError(f"train setting '{item.key}' is set twice", item.loc,
                                  detail=f"first set at {settings[item.key][1]}")
            value = evaluate(item.value, params, join_words=True)
            if isinstance(value, Word) and _TRAIN_KINDS.get(item.key, "str") != "str":
                raise unbound_error(str(value), value.loc, params)
            settings[item.key] = (coerce_setting(item.key, value, item.loc), item.loc)
    return settings
