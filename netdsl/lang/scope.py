"""Scopes, labels and node names used while expanding chains.

A *scope* is the file level, one block instance, or one iteration of a repeat. Labels are
defined in the scope where their element is written; a reference looks for its label in its
own scope first and then outwards to the file level. Node names are global and unique:
block instances prefix their nodes (``inc3a/conv1``), repeats suffix labels (``enc_2``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Union

from ..core.errors import Location, NetdslError
from ..core.graph import Frame


@dataclass(frozen=True)
class PendingRef:
    """A reference whose target is looked up once every statement is expanded."""

    index: int   # position in the expander's list of references


Tensor = Union[tuple, PendingRef]   # (node name, output port) or a pending reference


@dataclass(eq=False)
class Scope:
    """Where an element is expanded: name prefix and label suffix, frames, visible values."""

    parent: "Scope | None"
    prefix: str                      # prepended to node names: "" or "inc3a/"
    frames: tuple[Frame, ...]        # becomes Node.scope
    suffix: str                      # appended to labels: "_2" inside iteration 2 of a repeat
    env: Mapping                     # parameter values (block parameters shadow program ones)
    labels: dict = field(default_factory=dict)   # label -> (Tensor, Location)

    def repeat(self, repeat_id: str, index: int, count: int) -> "Scope":
        """The scope of iteration ``index`` (1-based) of a repeat with ``count`` iterations."""
        return Scope(self, self.prefix, self.frames + (Frame("repeat", repeat_id, index, count),),
                     self.suffix + (f"_{index}" if count > 1 else ""), self.env)

    def block(self, instance: str, block_name: str, env: Mapping, call: str = "",
              called_at: Location | None = None) -> "Scope":
        """The scope of a block instance whose full name is ``instance`` (``call``: the call
        as written, ``called_at``: where)."""
        frame = Frame("block", instance, 0, 1, block=block_name, call=call, called_at=called_at)
        return Scope(self, instance + "/", self.frames + (frame,), "", env)

    def check_new_label(self, label: str, loc: Location | None) -> None:
        """Refuse a label already defined in this very scope."""
        if label in self.labels:
            first = self.labels[label][1]
            raise NetdslError(f"label '{label}' is defined twice", loc,
                              detail=f"first defined at {first}" if first else None,
                              hint="labels must be unique within the file, a block or a repeat")

    def define(self, label: str, tensor: Tensor, loc: Location | None) -> None:
        self.check_new_label(label, loc)
        self.labels[label] = (tensor, loc)

    def find(self, label: str):
        """The tensor a label names, searching this scope and then outwards; None if absent."""
        scope = self
        while scope is not None:
            if label in scope.labels:
                return scope.labels[label][0]
            scope = scope.parent
        return None

    def visible_labels(self) -> list[str]:
        names, scope = [], self
        while scope is not None:
            names.extend(scope.labels)
            scope = scope.parent
        return names


class Namer:
    """Hands out unique node and block-instance names: labels as written, others ``conv3``."""

    def __init__(self):
        self.taken: dict[str, Location | None] = {}
        self._counters: dict[tuple[str, str], int] = {}

    def claim(self, name: str, loc: Location | None) -> str:
        """Reserve a name a label asked for; an error when another node already has it."""
        if name in self.taken:
            first = self.taken[name]
            raise NetdslError(f"the name '{name}' is already used by another node", loc,
                              detail=f"that node comes from {first}" if first else None,
                              hint="choose a different label")
        self.taken[name] = loc
        return name

    def auto(self, prefix: str, base: str, loc: Location | None) -> str:
        """The next free ``{prefix}{base}{k}``, counting k per base within the prefix."""
        k = self._counters.get((prefix, base), 0)
        while True:
            k += 1
            name = f"{prefix}{base}{k}"
            if name not in self.taken:
                break
        self._counters[(prefix, base)] = k
        self.taken[name] = loc
        return name

    def fresh(self, name: str, loc: Location | None) -> str:
        """``name`` itself when free, else ``name1``, ``name2``, ..."""
        if name not in self.taken:
            self.taken[name] = loc
            return name
        return self.auto("", name, loc)
