"""The syntax tree of a `.net` program, as the parser builds it and the expander reads it.

Every node keeps the :class:`~netdsl.core.errors.Location` of the text it came from, so that any
later stage can point at it. Layer names are plain strings here: the tree knows nothing of
the registry; the expander resolves names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from ..core.errors import Location, SourceFile


def text_at(loc: Location) -> str:
    """The source text a (single-line) location covers."""
    if loc.source is None:
        return ""
    return loc.source.line(loc.line)[loc.col - 1:loc.col - 1 + loc.length]


# ---- expressions ----------------------------------------------------------------------------

@dataclass
class Literal:
    """A number, a "string" or a dims tuple like 32x32x3."""

    value: object
    loc: Location


@dataclass
class Name:
    """An identifier inside an expression: a parameter, a block parameter, or a bare word."""

    id: str
    loc: Location


@dataclass
class BinOp:
    """``left op right`` with op one of + - * / // %, a comparison (== != < <= > >=), and, or."""

    op: str
    left: "Expr"
    right: "Expr"
    loc: Location


@dataclass
class Unary:
    """``-x``, ``+x`` or ``not x``."""

    op: str
    operand: "Expr"
    loc: Location


@dataclass
class Dims:
    """``S x S x 3``: sizes joined by the dimension operator (a tuple once evaluated)."""

    parts: list["Expr"]
    loc: Location


@dataclass
class Attr:
    """``IN.c``: a property of a value (the shape of a block's input)."""

    value: Name
    attr: str
    loc: Location
    attr_loc: Location


Expr = Union[Literal, Name, BinOp, Unary, Dims, Attr]


# ---- chains ---------------------------------------------------------------------------------

@dataclass
class CallArg:
    """One argument of a call: positional when ``key`` is None."""

    key: str | None
    value: Expr
    loc: Location


@dataclass
class Call:
    """A layer or block call: ``NAME``, ``NAME(args)`` or a compact name such as ``CONV3-64``.

    ``loc`` covers the name and the argument list; ``name_loc`` just the name.
    """

    name: str
    args: list[CallArg]
    loc: Location
    name_loc: Location
    compact: bool = False        # lexed as a COMPACT token (has -INT groups)


@dataclass
class Group:
    """``[ chain ]``."""

    chain: "Chain"
    loc: Location


@dataclass
class Join:
    """``NAME(args) { chain | chain ... }``: a multi-input layer or ``residual``."""

    callee: Call
    branches: list["Chain"]
    loc: Location
    cond: "Expr | None" = None     # residual?(cond) { ... }: the add only when cond holds


@dataclass
class Ref:
    """``@name``: the output of a labelled element (or a node, by its full name);
    ``@name.port`` one output of a multi-output layer, by its name or its index."""

    name: str
    loc: Location
    port: str | None = None


@dataclass
class Repeat:
    """Postfix ``*N``."""

    count: Expr
    loc: Location


@dataclass
class Optional:
    """Postfix ``?``, ``?(FLAG)`` or ``?(condition)``; ``flag`` is None when the flag is implied
    by the name or when a condition other than a lone name is written (then ``cond``)."""

    flag: str | None
    flag_loc: Location | None
    loc: Location
    cond: "Expr | None" = None


Primary = Union[Call, Group, Join, Ref]
Postfix = Union[Repeat, Optional]


@dataclass
class Element:
    """One step of a chain: optional ``label:``, a primary, then postfixes in written order."""

    primary: Primary
    label: str | None
    label_loc: Location | None
    postfixes: list[Postfix]
    loc: Location


@dataclass
class Chain:
    """``element -> element -> ...``."""

    elements: list[Element]
    loc: Location
    end: tuple | None = None      # (line, column) just past its last token


# ---- statements -----------------------------------------------------------------------------

@dataclass
class NetName:
    name: str
    loc: Location


@dataclass
class ParamDef:
    name: str
    value: Expr
    loc: Location


@dataclass
class ParamStmt:
    params: list[ParamDef]
    loc: Location


@dataclass
class BlockParam:
    name: str
    default: Expr | None
    loc: Location
    tensor: bool = False          # written `@name`: the call passes a tensor (`up(64, @enc4)`)


@dataclass
class BlockDef:
    name: str
    params: list[BlockParam]
    body: Chain
    loc: Location
    name_loc: Location

    def signature(self) -> str:
        """The block's signature as written, e.g. ``basic(c, stride=1)``."""
        parts = [("@" if p.tensor else "") + p.name
                 + (f"={text_at(p.default.loc)}" if p.default is not None else "")
                 for p in self.params]
        return f"{self.name}({', '.join(parts)})"


@dataclass
class TrainItem:
    key: str
    value: Expr
    loc: Location


@dataclass
class TrainStmt:
    items: list[TrainItem]
    loc: Location


@dataclass
class ChainStmt:
    chain: Chain
    loc: Location
    terminated: bool = False      # ended with ';' (a following chain is then surely a new one)


Statement = Union[NetName, ParamStmt, BlockDef, TrainStmt, ChainStmt]


@dataclass
class Program:
    """A parsed file: its statements in order and the source they came from."""

    statements: list[Statement]
    source: SourceFile | None = None
