"""A compiled net in a notebook: SVG diagram and HTML summary."""
import shutil

import pytest

from netdsl.compile.compiler import compile_file


def test_repr_html_is_the_summary_table():
    c = compile_file("nets/lenet5.net", num_classes=10)
    html = c._repr_html_()
    assert html.count("<tr>") == len(c.summary()["layers"]) + 2   # header + layers + total
    assert "61,706" in html            # LeNet-5's parameter count (nets/lenet5.net's header)
    assert "<td>C1</td>" in html


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed")
def test_repr_svg_is_the_diagram():
    svg = compile_file("nets/lenet5.net", num_classes=10)._repr_svg_()
    assert "<svg" in svg and "C1" in svg
