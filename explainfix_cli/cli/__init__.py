"""The `explainfix` command line: Typer commands (parse → one job → render) and rich rendering.

The command modules register themselves on :data:`app` when imported; the import order is the order of
``explainfix --help``.
"""
from . import prune, inspect_cmds, train, compress, sweep, deploy  # noqa: F401,I001  (registers the commands, in this order)
from .app import app, main

__all__ = ["app", "main"]
