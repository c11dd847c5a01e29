"""Did-you-mean for unknown layer names that never proposes the inverse operation.

Edit distance alone turns UNPOOL into 'pool' and DECONV into 'conv': the one suggestion that
does the opposite of what the user asked for. So the word is first read for an inverse prefix
(un-, de-, inv-): the layer it inverts is never suggested. Then the registry is searched by
meaning: a layer whose name, aliases or one-line doc contain the word (or the word's stem:
'deconvolution' for DECONV) is offered, e.g. DECONV → a transposed convolution whose doc says
"deconvolution", UNPOOL → maxunpool. Only then does spelling distance decide.
"""
from __future__ import annotations

import difflib
import re

from ..layers import all_specs

# Prefixes that name the inverse of an operation: UNPOOL, DECONV, INVCONV.
_INVERSE_PREFIXES = ("inverse", "inv", "un", "de")
# Written forms a doc may use for an inverted operation, beyond the word itself.
_EXPANSIONS = {"deconv": ("deconvolution", "transposed conv", "transpose conv"),
               "unpool": ("unpooling", "unpool")}


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9_]+", text.lower()))


def inverted(word: str) -> str | None:
    """The operation ``word`` is the inverse of (``unpool`` → ``pool``), when the rest after an
    inverse prefix is a registered layer name or alias; else None."""
    low = word.lower()
    names = {n for s in all_specs() for n in (s.name, *s.aliases)}
    for prefix in _INVERSE_PREFIXES:
        # The prefix may follow a qualifier: MAXUNPOOL is the inverse of maxpool.
        start = low.find(prefix)
        while start >= 0:
            rest = low[:start].rstrip("_-") + low[start + len(prefix):].lstrip("_-")
            if rest in names:
                return rest
            start = low.find(prefix, start + 1)
    return None


def suggest_layer(word: str, extra_names=()) -> str | None:
    """A 'did you mean' hint for an unknown layer or block name (``extra_names``: the blocks)."""
    low = word.lower()
    inverse = inverted(word)
    banned = set()
    if inverse is not None:
        # Every layer of the inverted family (pool, maxpool, avgpool for UNPOOL: names with the
        # operation's root, its last four letters), unless a name has the whole word (maxunpool).
        root = inverse[-4:]
        for spec in all_specs():
            names = [n.lower() for n in (spec.name, *spec.aliases)]
            if any(root in n for n in names) and not any(low in n for n in names):
                banned.update(names)
    phrases = (low,) + _EXPANSIONS.get(low, ())
    by_name, by_doc = [], []
    for spec in all_specs():
        names = [spec.name, *spec.aliases]
        # A name or doc that has the word itself is never the inverse, even in its family.
        if any(low in n.lower() for n in names):
            by_name.append(spec)
        elif any(p in spec.doc.lower() for p in phrases) and len(low) >= 4:
            by_doc.append(spec)
    for spec in by_name + by_doc:
        return f"did you mean '{spec.name}'? ({spec.doc.rstrip('.')})"
    choices = [n for s in all_specs() for n in (s.name, *s.aliases) if n.lower() not in banned]
    choices += list(extra_names)
    close = difflib.get_close_matches(low, [c.lower() for c in choices], n=1, cutoff=0.6)
    if close:
        original = {c.lower(): c for c in choices}[close[0]]
        return f"did you mean '{original}'?"
    if inverse is not None:
        return (f"'{word}' reads as the inverse of '{inverse}', and netdsl has no such layer; "
                "see `netdsl layers`")
    return None
