"""Evaluating expressions: parameters, arithmetic, bare words, and CLI ``--set`` values."""
from __future__ import annotations

import math
import operator
import re
import sys
from typing import Mapping

from ..core.errors import Location, NetdslError, did_you_mean
from . import ast


class Word(str):
    """A bare identifier that is not a bound name, e.g. ``same``, ``max`` or ``he``.

    It evaluates to itself as a string, but remembers where it was written: when it ends up
    where a number is needed, the likelier story is a parameter that was never declared, and
    that is what the error then says (see :func:`unbound_error`).
    """

    loc: Location | None

    def __new__(cls, text: str, loc: Location | None = None):
        word = super().__new__(cls, text)
        word.loc = loc
        return word


class Failed:
    """The value of a parameter whose default failed: the error is reported once, and
    anything that uses the parameter is skipped rather than reported again."""

    def __repr__(self) -> str:
        return "<failed>"


FAILED = Failed()


class CascadeError(NetdslError):
    """A consequence of an error already reported (a use of a FAILED parameter): not shown."""


def cascade(name: str) -> CascadeError:
    return CascadeError(f"'{name}' has no value: its declaration failed")


def unbound_error(name: str, loc: Location | None, bound: Mapping) -> NetdslError:
    """'unbound parameter' with the declare/--set hint and a did-you-mean over bound names."""
    hint = f"declare it with 'param {name} = ...' or pass --set {name}=..."
    close = did_you_mean(name, [str(k) for k in bound if str(k) != name])
    return NetdslError(f"unbound parameter '{name}'", loc,
                       hint=f"{close} Otherwise {hint}" if close else hint)


# Every number in a program is finite and no larger than the largest float, so that any of them
# can be converted to a float (rates, learning rates) and printed (Python refuses to print
# integers of more than 4,300 digits).
MAX_NUMBER = sys.float_info.max
_MAX_DIGITS = len(str(int(MAX_NUMBER)))          # 309
_NUMBER_HINT = f"numbers must lie between -{MAX_NUMBER:.4g} and {MAX_NUMBER:.4g}"


def shown(value) -> str:
    """``value`` for a message, with very long numbers shortened: 99999…999 (400 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** 24:
        return f"{float(value):.4g} ({len(str(abs(value)))} digits)"
    text = value if isinstance(value, str) else repr(value)
    digits = text.lstrip("+-")
    if len(digits) > 24 and digits.isdigit():
        return f"{text[:len(text) - len(digits) + 8]}…{digits[-3:]} ({len(digits)} digits)"
    return text if len(text) <= 60 else text[:57] + "..."


def is_finite_number(value) -> bool:
    """True for an int or float that a program may hold (see MAX_NUMBER)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return abs(value) <= MAX_NUMBER


def number_from_text(text: str, loc: Location | None, what: str = "number"):
    """An int (all digits) or float literal as a number; a located error when it is too large.

    Long digit strings are measured before conversion: ``int()`` refuses more than 4,300
    digits with a ValueError.
    """
    is_int = text.isdigit()
    if is_int and len(text.lstrip("0")) > _MAX_DIGITS:
        raise NetdslError(f"{what} too large: {shown(text)}", loc, hint=_NUMBER_HINT)
    try:
        value = int(text) if is_int else float(text)
    except ValueError:  # a bug in a caller's pattern, but still the user's text
        raise NetdslError(f"not a number: {shown(text)}", loc) from None
    if not is_finite_number(value):
        raise NetdslError(f"{what} too large: {shown(text)}", loc, hint=_NUMBER_HINT)
    return value


class BlockInput:
    """``IN`` inside a block: the block's input tensor, whose shape is inferred on first use
    (``shape()`` runs shape inference over what precedes the call). ``IN.h``, ``IN.w``,
    ``IN.c`` read an H×W×C map; ``IN.c`` is the feature count of a flat input."""

    ATTRS = ("h", "w", "c")

    def __init__(self, shape_fn):
        self._shape_fn = shape_fn
        self._shape = None

    def shape(self) -> tuple:
        if self._shape is None:
            self._shape = tuple(self._shape_fn())
        return self._shape

    def attribute(self, expr: ast.Attr):
        """The value of ``IN.<attr>``; a located error for an unknown one or the wrong rank."""
        name = expr.attr.lower()
        if name not in self.ATTRS:
            raise NetdslError(f"'{expr.value.id}.{expr.attr}' is not a size of the block's input",
                              expr.attr_loc, hint="IN.h, IN.w and IN.c are its height, width "
                              "and channels" + (f"; {did_you_mean(name, list(self.ATTRS))}"
                                                if did_you_mean(name, list(self.ATTRS)) else ""))
        shape = self.shape()
        if len(shape) == 3:
            return shape["hwc".index(name)]
        if len(shape) == 1 and name == "c":
            return shape[0]
        dims = "×".join(map(str, shape)) or "a scalar"
        raise NetdslError(f"'{expr.value.id}.{expr.attr}': the block's input is {dims}, not an "
                          "H×W×C map", expr.loc,
                          hint="IN.c is the feature count of a flat input; IN.h and IN.w need a map")

    def __repr__(self) -> str:
        return "IN"


_COMPARISONS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
                ">": operator.gt, ">=": operator.ge}

_ARITHMETIC = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
               "//": operator.floordiv, "%": operator.mod}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def evaluate(expr: ast.Expr, env: Mapping, *, join_words: bool = False,
             declared_later=frozenset()):
    """The value of ``expr`` with names looked up in ``env``.

    Unbound names evaluate to a :class:`Word` (``true``/``false`` to booleans). Names in
    ``declared_later`` are parameters used before their ``param`` statement: an error.
    With ``join_words``, ``a + b`` of two words gives ``"a+b"`` (train: ``augment = crop+flip``).
    """
    if isinstance(expr, ast.Literal):
        return expr.value
    if isinstance(expr, ast.Name):
        if expr.id in env:
            value = env[expr.id]
            if value is FAILED:
                raise cascade(expr.id)
            return value
        if expr.id.lower() in ("true", "false"):
            return expr.id.lower() == "true"
        if expr.id in declared_later:
            raise NetdslError(f"parameter '{expr.id}' is used before its 'param' statement",
                              expr.loc, hint="declare parameters before the ones that use them")
        return Word(expr.id, expr.loc)
    if isinstance(expr, ast.Dims):
        return _dims(expr, env, declared_later)
    if isinstance(expr, ast.Attr):
        return _attribute(expr, env, declared_later)
    if isinstance(expr, ast.Unary):
        value = evaluate(expr.operand, env, join_words=join_words, declared_later=declared_later)
        if expr.op == "not":
            return not _need_bool(value, expr.operand, env, "not")
        _need_number(value, expr.operand, env, expr.op)
        return -value if expr.op == "-" else value
    if isinstance(expr, ast.BinOp) and expr.op in ("and", "or"):
        # Short-circuit, as in Python: `IN.c == c or ...` reads no more than it needs.
        left = _need_bool(evaluate(expr.left, env, declared_later=declared_later), expr.left,
                          env, expr.op)
        if left == (expr.op == "or"):
            return left
        return _need_bool(evaluate(expr.right, env, declared_later=declared_later), expr.right,
                          env, expr.op)
    if isinstance(expr, ast.BinOp):
        left = evaluate(expr.left, env, join_words=join_words, declared_later=declared_later)
        right = evaluate(expr.right, env, join_words=join_words, declared_later=declared_later)
        if expr.op in _COMPARISONS:
            return _compare(expr, left, right, env)
        if join_words and expr.op == "+" and isinstance(left, str) and isinstance(right, str):
            return f"{left}+{right}"
        _need_number(left, expr.left, env, expr.op)
        _need_number(right, expr.right, env, expr.op + ("right" if expr.op == "//" else ""))
        if expr.op in ("/", "//", "%") and right == 0:
            raise NetdslError("division by zero", expr.loc)
        try:
            result = _ARITHMETIC[expr.op](left, right)
        except OverflowError:
            result = math.inf
        if not is_finite_number(result):
            raise NetdslError("the result is too large", expr.loc,
                              detail=f"{shown(left)} {expr.op} {shown(right)} overflows",
                              hint=_NUMBER_HINT)
        return result
    raise TypeError(f"not an expression: {expr!r}")  # a parser bug, not a user error


def _attribute(expr: ast.Attr, env: Mapping, declared_later):
    value = evaluate(expr.value, env, declared_later=declared_later)
    if isinstance(value, BlockInput):
        return value.attribute(expr)
    if expr.value.id == "IN" and isinstance(value, Word):
        raise NetdslError(f"'IN.{expr.attr}' is used outside a block", expr.loc,
                          hint="IN is the input of a block: use it inside 'block name(...) { }'")
    raise NetdslError(f"'{expr.value.id}' has no sizes to read with '.{expr.attr}'", expr.loc,
                      hint="only a block's input has them: IN.h, IN.w, IN.c")


def _need_bool(value, node: ast.Expr, env: Mapping, op: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, Word):
        raise unbound_error(str(value), value.loc, env)
    raise NetdslError(f"'{op}' needs true or false, got {shown(value)}", node.loc,
                      hint="compare numbers to get true or false: c == 64, stride > 1")


def _compare(expr: ast.BinOp, left, right, env: Mapping) -> bool:
    """``==``/``!=`` compare any two values (numbers, booleans, text, dimensions); the order
    comparisons need two numbers."""
    for value, side in ((left, expr.left), (right, expr.right)):
        if isinstance(value, BlockInput):
            raise NetdslError("IN is a tensor, not a number", side.loc,
                              hint="compare one of its sizes: IN.c, IN.h, IN.w")
    if expr.op in ("==", "!="):
        # A Word against a number is an undeclared parameter, not an unequal value.
        for value, other in ((left, right), (right, left)):
            if isinstance(value, Word) and _is_number(other):
                raise unbound_error(str(value), value.loc, env)
        same = left == right if type(left) is type(right) or (
            _is_number(left) and _is_number(right)) or (
            isinstance(left, str) and isinstance(right, str)) else False
        return same if expr.op == "==" else not same
    _need_number(left, expr.left, env, expr.op)
    _need_number(right, expr.right, env, expr.op)
    return _COMPARISONS[expr.op](left, right)


def _dims(expr: ast.Dims, env: Mapping, declared_later) -> tuple:
    """``S x S x 3``: a tuple of whole positive sizes; a part that is itself dimensions
    (``SHAPE x 2`` with SHAPE = 8x8) is spliced in."""
    dims: list[int] = []
    for part in expr.parts:
        value = evaluate(part, env, declared_later=declared_later)
        if isinstance(value, Word):
            raise unbound_error(str(value), value.loc, env)
        for size in value if isinstance(value, tuple) else (value,):
            if not _is_number(size) or int(size) != size or size < 1:
                raise NetdslError(f"a dimension must be a positive whole number, got "
                                  f"{shown(size)}", part.loc,
                                  detail=f"in {ast.text_at(expr.loc)}" if expr.loc.length > 1
                                  else None)
            dims.append(int(size))
    return tuple(dims)


def _need_number(value, node: ast.Expr, env: Mapping, op: str) -> None:
    if _is_number(value):
        return
    if op == "//right" and isinstance(value, Word):
        # `param N = 4 // four stages`: an old-style comment that happens to parse.
        raise NetdslError("'//' is integer division, not a comment", value.loc,
                          hint="comments start with #; if this is division, "
                               f"declare '{value}' with 'param {value} = ...'")
    if isinstance(value, Word):
        raise unbound_error(str(value), value.loc, env)
    if isinstance(value, BlockInput):
        raise NetdslError("IN is a tensor, not a number", node.loc,
                          hint="read one of its sizes: IN.c, IN.h, IN.w")
    raise NetdslError(f"'{op.removesuffix('right')}' needs numbers, got {value!r}", node.loc)


def as_count(value, loc: Location, env: Mapping, what: str = "repeat count") -> int:
    """A whole number ≥ 0 for ``*N``; located errors otherwise."""
    if isinstance(value, Word):
        raise unbound_error(str(value), value.loc or loc, env)
    if not _is_number(value) or not is_finite_number(value) or int(value) != value:
        raise NetdslError(f"{what} must be a whole number, got {shown(value)}", loc)
    if value < 0:
        raise NetdslError(f"{what} must not be negative, got {int(value)}", loc,
                          hint="use *0 to leave the element out")
    return int(value)


_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+(?=[eE]))([eE][+-]?\d+)?")
_DIMS = re.compile(r"\d+([xX]\d+)+")


_NOT_FINITE = re.compile(r"[+-]?(inf|infinity|nan)", re.IGNORECASE)


def as_identifier(text: str, fallback: str = "net") -> str:
    """``text`` as a name the language accepts ([A-Za-z_][A-Za-z_0-9]*): every other run of
    characters one '_', a leading digit prefixed with 'n'; ``fallback`` when nothing is left.
    What a command writes into a .net file from outside (a file name, an ONNX node name) goes
    through here, so that it can never be read as code."""
    import re
    name = re.sub(r"[^A-Za-z0-9_]+", "_", str(text)).strip("_") or fallback
    return "n" + name if name[0].isdigit() else name


def source_comment(text: str) -> str:
    """``text`` (a path, say) for a ``#`` comment of a generated file: quoted, with newlines,
    control and non-ASCII characters escaped, so that it ends where the line ends."""
    import json
    return json.dumps(str(text))


def parse_value(text: str):
    """A CLI ``--set K=V`` value: int, float, true/false, a dims tuple (12x12x3), else the text.

    A number too large to hold (see MAX_NUMBER), or ``inf``/``nan``, is a NetdslError.
    """
    stripped = text.strip()
    if _INT.fullmatch(stripped):
        value = number_from_text(stripped.lstrip("+-"), None, what="--set value")
        return -value if stripped.startswith("-") else value
    if _FLOAT.fullmatch(stripped):
        return number_from_text(stripped, None, what="--set value")
    if _NOT_FINITE.fullmatch(stripped):
        raise NetdslError(f"--set value '{stripped}' is not a finite number",
                          hint="give a number such as 0.5 or 1e-3")
    if stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    if _DIMS.fullmatch(stripped):
        return tuple(number_from_text(d, None, what="--set value")
                     for d in stripped.lower().split("x"))
    return text
