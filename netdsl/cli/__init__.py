"""The `netdsl` command line: one module per command group (app.py builds the parser).
Nothing in netdsl imports from this package."""
from .app import main

__all__ = ["main"]
