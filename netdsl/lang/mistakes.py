"""Reporting a program's mistakes once each, where the user can act on them.

* A mistake inside a block is found once per call of the block; it is reported once, at the
  block's line, with the call site(s): "in block 'ir', called at m.net:14:8 (and 41 more
  calls: ...)". :func:`note_calls` records the calls an error was found under;
  :func:`merge_repeats` folds the copies together.
* Two chains with no ``->`` between them (``CONV(4) RELU``) parse as two statements, the second
  starting at RELU; :func:`missing_arrow` names that mistake instead of "a chain must start at
  INPUT or @name".
"""
from __future__ import annotations

from ..core.errors import Location, NetdslError
from . import ast

# How many further call sites a merged error lists (the rest are counted).
LISTED_CALLS = 3


def note_calls(err: NetdslError, calls: list) -> NetdslError:
    """Remember the block calls (``[(block name, call Location), ...]``, outermost first) under
    which ``err`` was found, unless an inner stage already did."""
    if getattr(err, "calls", None) is None:
        err.calls = tuple(calls)
    return err


def _where(calls) -> str:
    return ", ".join(f"in block '{name}', called at {loc}" for name, loc in reversed(calls))


def merge_repeats(errors: list[NetdslError]) -> list[NetdslError]:
    """One error per distinct mistake (same message at the same place), in first-seen order;
    an error found inside blocks says where the block was called, and how many calls share it."""
    groups: dict[tuple, list[NetdslError]] = {}
    for err in errors:
        loc = err.loc
        key = (err.message, (loc.path, loc.line, loc.col) if loc else None, err.detail)
        groups.setdefault(key, []).append(err)
    merged = []
    for copies in groups.values():
        first = copies[0]
        calls = [c for c in (getattr(e, "calls", None) or () for e in copies) if c]
        if calls:
            where = _where(calls[0])
            sites = list(dict.fromkeys(str(c[-1][1]) for c in calls))
            if len(sites) > 1:
                listed = ", ".join(sites[1:1 + LISTED_CALLS])
                rest = len(sites) - 1 - LISTED_CALLS
                where += (f" (and {len(sites) - 1} more call{'s' * (len(sites) > 2)}: {listed}"
                          + (f", … {rest} more" if rest > 0 else "") + ")")
            if len(calls) > len(sites):       # calls repeated by *N count once per site above
                where += f"; found in {len(calls)} instances"
            first.detail = f"{first.detail}\n  {where}" if first.detail else where
        merged.append(first)
    return merged


def missing_arrow(err: NetdslError, stmt: ast.ChainStmt, previous) -> NetdslError:
    """``err`` ("a chain must start at INPUT or @name") restated as a missing ``->`` when
    ``stmt`` directly follows the chain statement ``previous`` with no ``;`` between them, the
    error is at its first element, and that element is on the same line or indented (a
    continuation); else ``err`` itself (with a hint about the arrow at a line's start)."""
    if not getattr(err, "chain_start", False) or not isinstance(previous, ast.ChainStmt) \
            or previous.terminated or err.loc is None:
        return err
    first, last = stmt.chain.elements[0], previous.chain.elements[-1]
    inside = (err.loc.line == first.loc.line
              and first.loc.col <= err.loc.col < first.loc.col + max(1, first.loc.length))
    if not inside:
        return err
    before, after = _short(ast.text_at(last.loc)), _short(ast.text_at(first.loc))
    if first.loc.line != last.loc.line and first.loc.col == 1:
        # A chain written at the start of a line is most likely meant as a new statement.
        err.hint = (f"{err.hint}; if it continues the chain above, write '->' between "
                    f"{before} and {after}")
        return err
    return NetdslError(f"missing '->' between {before} and {after}",
                       Location(first.loc.source, first.loc.line, first.loc.col,
                                first.loc.length),
                       detail=f"{before} (at {last.loc}) ends one chain and {after} starts "
                              "another, which must start at INPUT or @name",
                       hint=f"write {before} -> {after}; or, if {after} begins a new chain, "
                            "start that chain at INPUT or @name")


def _short(text: str, width: int = 32) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"
