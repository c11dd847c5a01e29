"""Text to syntax tree: the Lark parser (built once) and the tree-to-AST transformer."""
from __future__ import annotations

import functools
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import LarkError, UnexpectedInput

from ..core.errors import Location, NetdslError, SourceFile
from . import ast
from .syntax_errors import syntax_error
from .values import number_from_text

def _grammar_path() -> Path:
    """grammars/netdsl.lark beside the package (a checkout or editable install), else the copy
    a regular install puts under <prefix>/share/netdsl/grammars (pyproject data-files)."""
    import sys
    for base in (Path(__file__).resolve().parents[2], Path(sys.prefix) / "share" / "netdsl"):
        path = base / "grammars" / "netdsl.lark"
        if path.is_file():
            return path
    raise FileNotFoundError("netdsl's grammar file grammars/netdsl.lark is missing: reinstall netdsl")


GRAMMAR_PATH = _grammar_path()


@functools.lru_cache(maxsize=1)
def lark_parser() -> Lark:
    """The LALR parser for the grammar file, built on first use and cached.

    Positions are not propagated by lark and punctuation is kept: :class:`_ToAst` takes each
    construct's span from its first and last token itself, which is several times faster on
    long files (lark's propagation dominated a 60,000-layer parse)."""
    return Lark(GRAMMAR_PATH.read_text(encoding="utf-8"), parser="lalr", lexer="contextual",
                propagate_positions=False, keep_all_tokens=True, maybe_placeholders=False)


def parse(source: SourceFile) -> ast.Program:
    """Parse a `.net` file into an :class:`ast.Program`; a located NetdslError on bad syntax."""
    text = source.text
    parser = lark_parser()
    try:
        tree = parser.parse(text)
    except UnexpectedInput as exc:
        raise syntax_error(exc, source, text, parser) from None
    except LarkError as exc:  # anything else lark raises is still a problem with the input
        raise NetdslError(f"cannot parse {source.path}: {exc}") from None
    statements, _span = _ToAst(source).build(tree, 1)
    return ast.Program(statements=statements, source=source)


# How deep the syntax tree may be. Building the AST and expanding it recurse once or a few
# times per level, so a program nested hundreds deep would exhaust Python's stack; each
# bracket level is about three tree levels, each operator in a row one.
MAX_DEPTH = 200

# The tokens the AST is built from; the rest is punctuation (kept only for positions).
_KEPT = frozenset({"NAME", "COMPACT", "REF", "DIMS", "FLOAT", "INT", "STRING", "RESIDUAL_IF"})


def _first_token(tree) -> Token | None:
    while isinstance(tree, Tree):
        if not tree.children:
            return None
        tree = tree.children[0]
    return tree


def _unquote(text: str) -> str:
    """The value of a "string" token: quotes removed, backslash escapes resolved."""
    body, out, i = text[1:-1], [], 0
    escapes = {"n": "\n", "t": "\t"}
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            out.append(escapes.get(body[i + 1], body[i + 1]))
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


class _ToAst:
    """Builds :mod:`netdsl.lang.ast` objects from the Lark tree, attaching locations.

    Each rule (or alias) ``r`` has a method ``r(meta, children)``. The walk is our own rather
    than lark's Transformer: its per-call wrappers made long files several times slower. It
    recurses once per tree level, which _check_depth bounds."""

    def __init__(self, source: SourceFile):
        self.source = source

    def build(self, tree, depth: int):
        """(AST of ``tree``, its span): children first, then the rule's method. A located
        error where the tree gets deeper than MAX_DEPTH, before Python's stack runs out."""
        if depth > MAX_DEPTH:
            tok = _first_token(tree)
            loc = (Location(self.source, tok.line, tok.column) if tok is not None
                   else Location(self.source, 1, 1))
            raise NetdslError("the program is nested too deeply here", loc,
                              hint="brackets inside brackets or a long run of operators: "
                                   "split it with a block or a parameter")
        children, start, end = [], None, None
        for child in tree.children:
            if isinstance(child, Token):
                if start is None:
                    start = (child.line, child.column)
                end = (child.end_line, child.end_column)
                if child.type in _KEPT:
                    children.append(child)
                continue
            value, span = self.build(child, depth + 1)
            if span is not None:
                if start is None:
                    start = span[0]
                end = span[1]
            children.append(value)
        # The span doubles as the rule's "meta": ((line, column), (end_line, end_column)).
        span = (start, end) if start is not None else None
        return getattr(self, tree.data)(span, children), span

    def atom(self, meta, children):   # "(" expr ")"
        return children[0]

    # -- locations --------------------------------------------------------------------------
    def _loc(self, meta) -> Location:
        """The location of a rule's span ((line, column), (end_line, end_column))."""
        if meta is None:
            return Location(self.source, 1, 1, 1)
        (line, column), (end_line, end_column) = meta
        if end_line == line:
            length = end_column - column
        else:  # a multi-line construct: underline to the end of its first line
            length = len(self.source.line(line)) - column + 1
        return Location(self.source, line, column, length if length > 1 else 1)

    def _tok(self, tok: Token) -> Location:
        return Location(self.source, tok.line, tok.column, max(1, len(tok)))

    # -- statements -------------------------------------------------------------------------
    def start(self, meta, children):
        return list(children)

    def net_stmt(self, meta, children):
        return ast.NetName(str(children[0]), self._tok(children[0]))

    def param_stmt(self, meta, children):
        return ast.ParamStmt(list(children), self._loc(meta))

    def param_item(self, meta, children):
        name, value = children
        return ast.ParamDef(str(name), value, self._tok(name))

    def block_def(self, meta, children):
        name, *rest = children
        params = rest[0] if len(rest) == 2 else []
        return ast.BlockDef(str(name), params, rest[-1], self._loc(meta), self._tok(name))

    def block_params(self, meta, children):
        return list(children)

    def block_param(self, meta, children):
        default = children[1] if len(children) > 1 else None
        return ast.BlockParam(str(children[0]), default, self._tok(children[0]))

    def tensor_param(self, meta, children):
        ref = self.ref(meta, children)
        if ref.port is not None:
            raise NetdslError("a tensor parameter is written @name, without a port", ref.loc)
        return ast.BlockParam(ref.name, None, ref.loc, tensor=True)

    def train_stmt(self, meta, children):
        return ast.TrainStmt(list(children), self._loc(meta))

    def train_item(self, meta, children):
        key, value = children
        loc = self._tok(key)
        if value.loc.line == loc.line:  # underline `key = value`, not a trailing separator
            end = value.loc.col + value.loc.length
            loc = Location(self.source, loc.line, loc.col, end - loc.col)
        return ast.TrainItem(str(key), value, loc)

    def chain_stmt(self, meta, children):
        # The statement's span reaches past its chain's only when a ';' ends it.
        return ast.ChainStmt(children[0], self._loc(meta),
                             terminated=meta is not None and meta[1] != children[0].end)

    # -- chains -----------------------------------------------------------------------------
    def chain(self, meta, children):
        return ast.Chain(list(children), self._loc(meta), meta[1] if meta else None)

    def element(self, meta, children):
        label = label_loc = None
        if isinstance(children[0], Token):  # the label rule returns its NAME token
            label, label_loc = str(children[0]), self._tok(children[0])
            children = children[1:]
        return ast.Element(children[0], label, label_loc, list(children[1:]), self._loc(meta))

    def label(self, meta, children):
        return children[0]

    def call(self, meta, children):
        return children[0]

    def callee(self, meta, children):
        name = children[0]
        args = children[1] if len(children) > 1 else []
        return ast.Call(str(name), args, self._loc(meta), self._tok(name),
                        compact=name.type == "COMPACT")

    def arglist(self, meta, children):
        return list(children)

    def pos_arg(self, meta, children):
        return ast.CallArg(None, children[0], self._loc(meta))

    def kw_arg(self, meta, children):
        return ast.CallArg(str(children[0]), children[1], self._loc(meta))

    def pos_ref_arg(self, meta, children):
        return ast.CallArg(None, self.ref(meta, children), self._loc(meta))

    def kw_ref_arg(self, meta, children):
        return ast.CallArg(str(children[0]), self.ref(meta, children[1:]), self._loc(meta))

    def join(self, meta, children):
        return ast.Join(children[0], children[1], self._loc(meta))

    def cond_residual(self, meta, children):
        token, cond, branches = children
        name_loc = Location(self.source, token.line, token.column, len("residual"))
        callee = ast.Call("residual", [], name_loc, name_loc)
        return ast.Join(callee, branches, self._loc(meta), cond=cond)

    def branches(self, meta, children):
        return list(children)

    def group(self, meta, children):
        return ast.Group(children[0], self._loc(meta))

    def ref(self, meta, children):
        name, dot, port = str(children[0])[1:].partition(".")
        return ast.Ref(name, self._tok(children[0]), port if dot else None)

    def repeat(self, meta, children):
        return ast.Repeat(children[0], self._loc(meta))

    def count(self, meta, children):
        value = children[0]
        if isinstance(value, Token):
            if value.type == "INT":
                loc = self._tok(value)
                return ast.Literal(number_from_text(str(value), loc), loc)
            return ast.Name(str(value), self._tok(value))
        return value

    def optional(self, meta, children):
        cond = children[0] if children else None
        if isinstance(cond, ast.Name):      # ?(FLAG): a boolean parameter, by name
            return ast.Optional(cond.id, cond.loc, self._loc(meta))
        return ast.Optional(None, cond.loc if cond else None, self._loc(meta), cond=cond)

    def cond(self, meta, children):
        return children[0]

    # -- expressions ------------------------------------------------------------------------
    def _binop(op):  # noqa: N805  (a factory used only inside the class body)
        def method(self, meta, children):
            return ast.BinOp(op, children[0], children[1], self._loc(meta))
        return method

    add, sub, mul = _binop("+"), _binop("-"), _binop("*")
    div, floordiv, mod = _binop("/"), _binop("//"), _binop("%")
    eq, ne, lt, le, gt, ge = (_binop("=="), _binop("!="), _binop("<"), _binop("<="),
                              _binop(">"), _binop(">="))
    and_, or_ = _binop("and"), _binop("or")

    def not_(self, meta, children):
        return ast.Unary("not", children[0], self._loc(meta))

    def attr(self, meta, children):
        value, attr = children
        return ast.Attr(ast.Name(str(value), self._tok(value)), str(attr), self._loc(meta),
                        self._tok(attr))

    def neg(self, meta, children):
        return ast.Unary("-", children[0], self._loc(meta))

    def pos(self, meta, children):
        return ast.Unary("+", children[0], self._loc(meta))

    def int_lit(self, meta, children):
        loc = self._tok(children[0])
        return ast.Literal(number_from_text(str(children[0]), loc), loc)

    def float_lit(self, meta, children):
        loc = self._tok(children[0])
        return ast.Literal(number_from_text(str(children[0]), loc), loc)

    def dims_lit(self, meta, children):
        loc = self._tok(children[0])
        dims = tuple(number_from_text(d, loc, what="dimension")
                     for d in str(children[0]).lower().split("x"))
        return ast.Literal(dims, loc)

    def dims_expr(self, meta, children):
        return ast.Dims(list(children), self._loc(meta))

    def string_lit(self, meta, children):
        return ast.Literal(_unquote(str(children[0])), self._tok(children[0]))

    def name(self, meta, children):
        return ast.Name(str(children[0]), self._tok(children[0]))
