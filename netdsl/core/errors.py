"""Errors that netdsl shows to a user.

Every problem with a user's input (a `.net` file, a CLI argument, a data file) is raised as a
:class:`NetdslError`. It knows where in the source the problem is, what went wrong (with the
arithmetic that failed, when there is some) and how it might be fixed. The CLI prints it with
:meth:`NetdslError.render` and exits non-zero; no Python traceback reaches the user.
"""
from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class SourceFile:
    """The text of one `.net` program and the name to show for it."""

    path: str
    text: str

    @functools.cached_property
    def _lines(self) -> list[str]:
        # Split on \n only, as the parser counts lines: splitlines() would also break at form
        # feeds and U+2028, shifting every later line. Split once: the parser asks per
        # construct, and splitting per call made long multi-line files quadratic.
        return self.text.split("\n")

    def line(self, lineno: int) -> str:
        lines = self._lines
        return lines[lineno - 1].rstrip("\r") if 0 < lineno <= len(lines) else ""


@dataclass(frozen=True)
class Location:
    """A place in a source file: 1-based line and column, and how many characters to underline."""

    source: SourceFile | None
    line: int
    col: int
    length: int = 1

    @property
    def path(self) -> str:
        return self.source.path if self.source else "<input>"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"


class NetdslError(Exception):
    """A user-facing error: message, optional location, arithmetic detail and suggested fix."""

    def __init__(self, message: str, loc: Location | None = None, *, detail: str | None = None,
                 hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.detail = detail
        self.hint = hint
        self.others: list[NetdslError] = []   # further independent errors of the same file

    def render(self) -> str:
        """The error as the CLI prints it: `file:line:col: error: ...`, source line, caret, hint;
        then each further independent error the same way, and how many there are in all."""
        parts = [self._render_one()] + [e._render_one() for e in self.others[:MAX_SHOWN - 1]]
        if self.others:
            more = len(self.others) + 1 - len(parts)
            parts.append(f"{len(self.others) + 1} errors" + (f" ({more} not shown)" if more else ""))
        return "\n".join(parts)

    def _render_one(self) -> str:
        head = f"{self.loc}: error: {self.message}" if self.loc else f"netdsl: error: {self.message}"
        out = [head]
        if self.loc and self.loc.source:
            text = self.loc.source.line(self.loc.line)
            if text:
                # Tabs would shift the caret; show the line with tabs expanded to single spaces.
                shown, col = _window(text.replace("\t", " "), self.loc.col)
                out.append(f"    {shown}")
                width = max(1, min(self.loc.length, len(shown) - col + 1, SHOWN_COLUMNS))
                out.append("    " + " " * (col - 1) + "^" + "~" * (width - 1))
        if self.detail:
            out.append(f"  {self.detail}")
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render()


SHOWN_COLUMNS = 240
"""The most characters of a source line an error shows: a generated file's one-line chain of
100,000 layers would otherwise be printed whole, twice (the line and the caret's)."""


def _window(line: str, col: int) -> tuple[str, int]:
    """(the part of ``line`` shown around column ``col``, the column within it): the whole
    line when short, else SHOWN_COLUMNS characters around ``col`` with '…' where cut."""
    if len(line) <= SHOWN_COLUMNS:
        return line, col
    start = max(0, min(col - 1 - SHOWN_COLUMNS // 3, len(line) - SHOWN_COLUMNS))
    shown = line[start:start + SHOWN_COLUMNS]
    if start > 0:
        shown, col = "…" + shown, col - start + 1
    if start + SHOWN_COLUMNS < len(line):
        shown += "…"
    return shown, col


# How many errors of one file are shown at once; the rest are counted.
MAX_SHOWN = 20


def combined(errors: list[NetdslError]) -> NetdslError:
    """The first error, carrying the others (see :meth:`NetdslError.render`)."""
    first = errors[0]
    first.others = list(errors[1:])
    return first


class ShapeError(NetdslError):
    """A shape rule failed. Raised by layer shape rules without a location; the compiler adds it."""


def did_you_mean(word: str, choices) -> str | None:
    """A 'did you mean X?' hint for a misspelt name, or None when nothing is close."""
    others = [c.lower() for c in choices if c.lower() != word.lower()]
    close = difflib.get_close_matches(word.lower(), others, n=1, cutoff=0.6)
    if not close:
        return None
    original = {c.lower(): c for c in choices}[close[0]]
    return f"did you mean '{original}'?"
