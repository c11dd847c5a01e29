"""Turning Lark's parse exceptions into located, readable :class:`NetdslError`s.

Users should read "unexpected '->' here" or "unclosed '['", never a Lark token name such as
``__ANON_0`` or ``RSQB``. Brackets are checked first because an unclosed bracket makes the
parser fail far from where the mistake is (often at the end of the file).
"""
from __future__ import annotations

import re

from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from ..core.errors import Location, NetdslError, SourceFile

# Regex terminals described in words; string terminals are shown as the text itself.
_TERMINAL_WORDS = {
    "NAME": "a name", "COMPACT": "a compact layer name such as CONV3-64", "REF": "@name",
    "INT": "a number", "FLOAT": "a number", "DIMS": "dimensions such as 32x32x3",
    "STRING": 'a "string"', "$END": "end of file",
    "RESIDUAL_IF": "residual?(condition) { body }",
}
_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = {v: k for k, v in _OPENERS.items()}
_OPERATORS = {"+", "-", "*", "/", "//", "%", "==", "!=", "<", "<=", ">", ">=", "and", "or"}


def _scan(text: str, on_char, on_open_string=None, on_string=None) -> None:
    """Call ``on_char(i, ch)`` for every character outside strings and `#` comments,
    ``on_open_string(i)`` for a string that is not closed on its line, and
    ``on_string(start, stop)`` for every string, ``text[start:stop]`` (without a line end)."""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        if ch == '"':
            start, i = i, i + 1
            while i < n and text[i] not in '"\n':
                i += 2 if text[i] == "\\" else 1
            if (i >= n or text[i] == "\n") and on_open_string is not None:
                on_open_string(start)
            if on_string is not None:
                on_string(start, min(n, i + 1) if i < n and text[i] == '"' else min(n, i))
            i += 1
            continue
        skip = on_char(i, ch)
        i += 1 + (skip or 0)


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, col


def check_brackets(text: str, source: SourceFile) -> NetdslError | None:
    """An error for the first unclosed or unmatched bracket, or None when they balance."""
    stack: list[tuple[str, int]] = []
    problem: list[NetdslError] = []

    def at(offset: int) -> Location:
        line, col = _position(text, offset)
        return Location(source, line, col, 1)

    def on_char(i, ch):
        if problem:
            return 0
        if ch in _OPENERS:
            stack.append((ch, i))
        elif ch in _CLOSERS:
            if not stack:
                problem.append(NetdslError(f"unmatched '{ch}'", at(i),
                                           hint=f"remove it or add a '{_CLOSERS[ch]}' before it"))
            elif stack[-1][0] != _CLOSERS[ch]:
                opener, where = stack[-1]
                line, col = _position(text, i)
                problem.append(NetdslError(
                    f"unclosed '{opener}'", at(where),
                    hint=f"add '{_OPENERS[opener]}' before the '{ch}' at line {line}, "
                         f"column {col}"))
            else:
                stack.pop()
        return 0

    def on_open_string(i):
        if not problem:
            problem.append(NetdslError("unterminated string", at(i),
                                       hint='close it with " on the same line'))

    _scan(text, on_char, on_open_string)
    if problem:
        return problem[0]
    if stack:
        opener, where = stack[-1]
        return NetdslError(f"unclosed '{opener}'", at(where),
                           hint=f"add a matching '{_OPENERS[opener]}'")
    return None


def _describe(name: str, parser) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    try:
        term = parser.get_terminal(name)
    except KeyError:
        return name.lower()
    if term.pattern.type == "str":
        return f"'{term.pattern.value}'"
    return name.lower()


def _expected(names, parser) -> str | None:
    words = sorted({_describe(n, parser) for n in names})
    if not words:
        return None
    if len(words) > 8:
        words = words[:8] + ["..."]
    return "expected " + (words[0] if len(words) == 1 else "one of: " + ", ".join(words))


def _code_before(text: str, offset: int) -> str:
    """The program text before ``offset`` with `#` comments removed, right-stripped."""
    kept = []

    def on_char(i, ch):
        if i < offset:
            kept.append(ch)
        return 0

    _scan(text[:offset], on_char)
    return "".join(kept).rstrip()


def _end_location(text: str, source: SourceFile) -> Location:
    """Just after the last non-blank character that is not in a comment: where 'unexpected end
    of file' points. Measured in ``text`` itself, so that strings before it count."""
    end = [0]

    def on_char(i, ch):
        if not ch.isspace():
            end[0] = i + 1
        return 0

    def on_string(start, stop):
        end[0] = stop

    _scan(text, on_char, on_string=on_string)
    line, col = _position(text, end[0])
    return Location(source, line, col, 1)


def syntax_error(exc: UnexpectedInput, source: SourceFile, text: str, parser) -> NetdslError:
    """A located NetdslError for a Lark parse failure."""
    bracket_error = check_brackets(text, source)
    if bracket_error is not None:
        return bracket_error
    slash = _slash_comment(exc, text, source)
    if slash is not None:
        return slash
    if isinstance(exc, UnexpectedCharacters):
        offset = exc.pos_in_stream
        ch = text[offset] if offset < len(text) else ""
        loc = Location(source, exc.line, exc.column, 1)
        if ch == "@":
            return NetdslError("'@' must be followed by a name", loc,
                               hint="refer to a labelled element as @name")
        if ch == '"':
            return NetdslError("unterminated string", loc, hint='close it with " on the same line')
        if _code_before(text, offset).endswith("->"):
            return _after_arrow(loc, f"'{ch}'")
        return NetdslError(f"unexpected character '{ch}'", loc,
                           hint=_expected(exc.allowed or (), parser))
    if isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        tok = exc.token
        offset = tok.start_pos
        loc = Location(source, tok.line, tok.column, max(1, len(tok)))
        shown = f"'{tok}'"
    else:  # end of input (UnexpectedEOF, or an UnexpectedToken for $END)
        offset = len(text)
        loc = _end_location(text, source)
        shown = "end of file"
        tok = None
    before = _code_before(text, offset)
    if before.endswith("->"):
        return _after_arrow(loc, shown)
    expected = _expected(getattr(exc, "expected", None) or (), parser)
    if tok is not None and str(tok) in _OPERATORS and re.search(r"\*\s*\w+$", before):
        return NetdslError(f"unexpected '{tok}' after a repeat count", loc,
                           hint="put an expression repeat count in parentheses, e.g. *(N-1)")
    if tok is not None and re.search(r"(^|[^A-Za-z0-9_])[xX]$", before) and \
            re.search(r"[A-Za-z0-9_)]\s+[xX]$", before):
        # `param N = 3` then `x: INPUT ...`: the lone x continued the expression as `3 x ...`.
        return NetdslError(f"unexpected {shown} here", loc,
                           hint="a lone x between sizes builds dimensions (S x S x 3); end the "
                                "statement before it with ';' or rename the label")
    if tok is None:
        return NetdslError("unexpected end of file", loc, hint=expected)
    if str(tok) == "->":
        return NetdslError("unexpected '->' here", loc,
                           hint="'->' must come between two elements of a chain")
    return NetdslError(f"unexpected {shown} here", loc, hint=expected)


def _slash_comment(exc: UnexpectedInput, text: str, source: SourceFile) -> NetdslError | None:
    """An old-style `// comment`: the parse failed on a line with `//` (outside strings and
    `#` comments) at or before the failure. `//` is integer division in netdsl."""
    line_no = getattr(exc, "line", None)
    if not isinstance(line_no, int) or line_no < 1:
        return None
    col = getattr(exc, "column", None) or 1
    line = source.line(line_no)
    found = []

    def on_char(i, ch):
        if line.startswith("//", i) and i < col + 1:
            found.append(i)
            return 1
        return 0

    _scan(line, on_char)
    if not found:
        return None
    return NetdslError("'//' is integer division, not a comment",
                       Location(source, line_no, found[0] + 1, 2),
                       hint="comments start with #")


def _after_arrow(loc: Location, found: str) -> NetdslError:
    return NetdslError("expected a layer, '[' or '@name' after '->'", loc,
                       hint=f"found {found}; a chain continues with an element such as CONV, "
                            "[ ... ] or @label")

