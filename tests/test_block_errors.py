"""Issue 15, errors: one report per distinct mistake inside blocks, with the call sites; a
missing '->' named as such. Expected counts and places are written by hand from the programs."""
from __future__ import annotations

import pytest

from netdsl.core.errors import NetdslError, SourceFile
from netdsl.lang import expand, parse


def error_of(text: str) -> NetdslError:
    with pytest.raises(NetdslError) as info:
        expand(parse(SourceFile("m.net", text)))
    return info.value


def test_a_typo_in_a_block_called_42_times_is_one_error():
    err = error_of("block ir(c) {\n  CONV(c) -> RELUU\n}\nINPUT(8x8x3) -> ir(4)*42 -> FC")
    assert err.others == []                                   # one error, not 42
    assert (err.loc.line, err.loc.col) == (2, 14)             # at the block's line ...
    assert "in block 'ir', called at m.net:4:17" in err.detail  # ... and the call
    assert "42 instances" in err.detail
    assert "did you mean 'relu'?" in err.hint


def test_three_mistakes_in_a_block_called_twice_are_three_errors():
    err = error_of("block b(c) {\n  CNV(c) -> RELUU -> FC(units=c, bais=true)\n}\n"
                   "INPUT(8x8x3) -> b(4) -> b(8) -> FC")
    assert len(err.others) == 2 and err.render().endswith("3 errors")
    assert all("(and 1 more call: m.net:4:25)" in e.detail for e in [err] + err.others)


def test_unknown_block_name_inside_a_block_gets_a_did_you_mean():
    err = error_of("block basic(c) { CONV(c) }\nblock stage(c) { basc(c) -> basic(c) }\n"
                   "INPUT(8x8x3) -> stage(4) -> FC")
    assert "did you mean 'basic'?" in err.hint
    assert "in block 'stage', called at m.net:3:17" in err.detail


@pytest.mark.parametrize("text, where", [
    ("INPUT(8x8x3) -> CONV(4) RELU -> FC", (1, 25)),
    ("INPUT(8x8x3) -> CONV(4)\n    [RELU -> POOL] -> FC", (2, 5))])
def test_missing_arrow_is_named(text, where):
    err = error_of(text)
    assert err.message.startswith("missing '->' between CONV(4) and ")
    assert (err.loc.line, err.loc.col) == where


def test_a_new_chain_at_a_line_start_keeps_the_start_message_with_an_arrow_hint():
    err = error_of("INPUT(8x8x3) -> CONV(4)\nRELU -> FC")
    assert err.message == "a chain must start at INPUT or @name"
    assert "write '->' between CONV(4) and RELU" in err.hint
    # After a ';' the next chain is surely a new statement: no arrow is suggested.
    err = error_of("INPUT(8x8x3) -> CONV(4);  RELU -> FC")
    assert err.message == "a chain must start at INPUT or @name" and "'->'" not in err.hint
