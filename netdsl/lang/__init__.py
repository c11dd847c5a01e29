"""The netdsl language: parse a `.net` file and expand it into the network graph.

    >>> from netdsl.lang import parse, expand
    >>> g = expand(parse(SourceFile("lenet.net", text)), {"N": 2})
"""
from .expand import expand
from .parser import parse
from .values import parse_value

__all__ = ["expand", "parse", "parse_value"]
